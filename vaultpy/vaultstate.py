"""``secrets/vault-versions.toml``: the Vault version each master file holds.

``vaultpy pull`` records, for every secret it fetched, the KV v2 version its value came
from; ``vaultpy push`` records the version it wrote.  With that, push can tell a value
edited here since the last pull (Vault's field still as pulled: safe to write) from one
changed in Vault meanwhile (a conflict), which it could not before without ``--force``.

The file is committed with the masters.  It holds version numbers only, never values.
A missing, damaged or stale entry only ever makes push refuse, never overwrite:

    # Written by vaultpy pull/push: the Vault (KV v2) version each master file holds.
    [versions]
    db_password = 4
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path

from vaultpy._internal import fsutil
from vaultpy.model import VAULT_VERSIONS_FILE, Config

FILENAME = VAULT_VERSIONS_FILE
HEADER = ("# Written by vaultpy pull/push: the Vault (KV v2) version each master file "
          "holds.\n# Commit it with the masters; push uses it to tell your edits from "
          "Vault's.\n")


def path(cfg: Config) -> Path:
    return cfg.secrets_dir / FILENAME


def load(cfg: Config) -> dict[str, int]:
    """id -> version; empty when the file is missing or unreadable (push then refuses
    what it cannot tell apart, as without the file)."""
    try:
        doc = tomllib.loads(fsutil.read_regular(path(cfg))[0].decode("utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return {}
    versions = doc.get("versions")
    if not isinstance(versions, dict):
        return {}
    return {str(k): v for k, v in versions.items()
            if isinstance(v, int) and not isinstance(v, bool) and v > 0}


def pending(cfg: Config, changes: Mapping[str, int]) -> bytes | None:
    """The file's bytes with ``changes`` applied (ids no longer taken from Vault
    dropped), or None when that changes nothing on disk: no churn in git, and no file
    at all until some version is known."""
    import tomli_w

    versions = {**load(cfg), **changes}
    kept = {sid: v for sid, v in sorted(versions.items())
            if sid in cfg.secrets and cfg.secrets[sid].vault is not None}
    new = (HEADER + tomli_w.dumps({"versions": kept})).encode("utf-8")
    try:
        old: bytes | None = fsutil.read_regular(path(cfg))[0]
    except OSError:
        old = None
    return None if new == old or (old is None and not kept) else new


def record(cfg: Config, changes: Mapping[str, int]) -> None:
    """Apply ``changes`` on their own (after a push), under the repository lock."""
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    with fsutil.locked(cfg.lock_path):
        data = pending(cfg, changes)
        if data is not None:
            fsutil.atomic_write(path(cfg), data)
