"""``secrets/vault-versions.toml``: which Vault value each master file holds.

``vaultpy pull`` records, for every secret it fetched, where its value came from and which
KV v2 version it was; ``vaultpy push`` records the version it wrote.  With that, push can
tell a value edited here since (Vault's field still as recorded: safe to write) from one
changed in Vault meanwhile (a conflict), which it could not without ``--force``.

A version number alone names no value: the same secret deleted and written again starts
from version 1, and the same number exists at another path, namespace or server.  So an
entry holds the whole address and the version's creation time, and is used only when
all of them still match (:meth:`Entry.matches`).  The file is committed with the masters
and holds no value.  A missing, damaged or stale entry only ever makes push refuse,
never overwrite:

    [versions.db_password]
    vault = "secret/app/db#password"
    server = "https://vault.example.com:8200"
    namespace = ""
    version = 4
    created = "2026-11-27T15:00:00.123456789Z"
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from vaultpy._internal import fsutil, writes
from vaultpy.model import VAULT_VERSIONS_FILE, Config

FILENAME = VAULT_VERSIONS_FILE
HEADER = ("# Written by vaultpy pull/push: the Vault (KV v2) value each master file holds.\n"
          "# Commit it with the masters; push uses it to tell your edits from Vault's.\n")


@dataclass(frozen=True)
class Entry:
    vault: str              # the secret's `vault = …` reference
    server: str             # Vault's address
    namespace: str          # "" for none
    version: int
    created: str            # the version's created_time, as Vault gives it

    def matches(self, vault: str, server: str, namespace: str | None) -> bool:
        """Whether this records a value of the same field, at the same server."""
        return (self.vault, self.server, self.namespace) == (vault, server, namespace or "")


def path(cfg: Config) -> Path:
    return cfg.secrets_dir / FILENAME


def _read(cfg: Config) -> bytes | None:
    try:
        return fsutil.read_regular(path(cfg))[0]
    except OSError:
        return None


def load(cfg: Config, *, strict: bool = False) -> dict[str, Entry]:
    """id -> entry; well-formed entries only, and none when the file is missing or
    unreadable (push then refuses what it cannot tell apart, as without the file).

    ``strict`` (pull and push, unless --force): a file that is there but cannot be read
    as TOML (a git merge left its conflict markers in it) raises instead: read as no
    record, pull took Vault's value over a master edited here and never pushed, and
    dropped every other id's record."""
    if not strict:
        return _parse(_read(cfg))
    from vaultpy.errors import Problem, VaultpyError, display_path

    where = path(cfg)
    try:
        data = fsutil.read_regular(where)[0]
    except FileNotFoundError:
        return {}
    except OSError as exc:
        why = exc.strerror or str(exc)
    else:
        try:
            return _entries(tomllib.loads(data.decode("utf-8")))
        except UnicodeDecodeError:
            why = "not UTF-8"
        except tomllib.TOMLDecodeError as exc:
            why = f"not valid TOML ({exc})"
    raise VaultpyError(Problem(
        display_path(where), f"cannot be read: {why}", "", "it records which Vault version "
        "each master was pulled at, to tell an edit made here from a change in Vault: "
        "mend it (a merge conflict: take both sides' [versions.<id>] tables, the higher "
        "version of an id), or restore it (git checkout); --force takes Vault's values "
        "(pull) or writes over Vault's (push) without it"))


def _parse(data: bytes | None) -> dict[str, Entry]:
    try:
        doc = tomllib.loads((data or b"").decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    return _entries(doc)


def _entries(doc: dict[str, object]) -> dict[str, Entry]:
    """The well-formed entries of the decoded file."""
    versions = doc.get("versions")
    if not isinstance(versions, dict):
        return {}
    out: dict[str, Entry] = {}
    for sid, raw in versions.items():
        if not isinstance(raw, dict):
            continue
        strings = [raw.get(k) for k in ("vault", "server", "namespace", "created")]
        version = raw.get("version")
        if (all(isinstance(v, str) for v in strings) and isinstance(version, int)
                and not isinstance(version, bool) and 0 < version < 2**63):
            out[str(sid)] = Entry(str(raw["vault"]), str(raw["server"]),
                                  str(raw["namespace"]), version, str(raw["created"]))
    return out


def _kept(cfg: Config, old: dict[str, Entry], changes: Mapping[str, Entry]
          ) -> dict[str, Entry]:
    entries = {**old, **changes}
    return {sid: e for sid, e in sorted(entries.items())
            if sid in cfg.secrets and cfg.secrets[sid].vault is not None}


def _render(kept: Mapping[str, Entry]) -> bytes:
    import tomli_w

    doc = {"versions": {sid: asdict(e) for sid, e in kept.items()}}
    return (HEADER + tomli_w.dumps(doc)).encode("utf-8")


def render(cfg: Config, changes: Mapping[str, Entry]) -> bytes:
    """The file's bytes with ``changes`` applied; ids no longer taken from Vault dropped."""
    return _render(_kept(cfg, load(cfg), changes))


def pending(cfg: Config, changes: Mapping[str, Entry]) -> bytes | None:
    """:func:`render`, or None when that changes nothing on disk: no churn in git, and
    no file at all until some value is recorded (the file is read once)."""
    old = _read(cfg)
    kept = _kept(cfg, _parse(old), changes)
    if old is None and not kept:
        return None
    new = _render(kept)
    return None if new == old else new


def under_lock(cfg: Config, changes: Mapping[str, Entry]) -> Callable[[], bytes]:
    """The file's new bytes, computed when called (by masters.write_all, under the lock,
    so that a push recorded meanwhile is not lost)."""
    return lambda: render(cfg, changes)


def record(cfg: Config, changes: Mapping[str, Entry]) -> None:
    """Apply ``changes`` on their own (after a push), under the repository lock."""
    with writes.lock(cfg):
        data = pending(cfg, changes)
        if data is not None:
            fsutil.atomic_write(path(cfg), data)
