"""The per-host cache: naming (DESIGN §3), the plan, verification and pruning.

    h   = sha256_hex( sha256_hex(master bytes) + "\\n" + "\\n".join(recipients) )
    out = <cache_dir>/<host>/<id>.<h[:32]>.age

A cache file's name is a function of exactly what went into it, so "present"
means "done": renc never re-encrypts an unchanged secret (no git churn), and a
changed master file or host key yields a new name while the old one is stale.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from vaultpy import age
from vaultpy._internal import ageformat
from vaultpy._internal.fsutil import is_tmp
from vaultpy.errors import Problem, display_path, os_problem
from vaultpy.model import Config

NAME_RE = re.compile(r"(?P<id>.+)\.(?P<hash>[0-9a-f]{32})\.age")


def cache_hash(master_sha256: str, recipients: Sequence[str]) -> str:
    """The full 64-hex-digit hash of DESIGN §3."""
    text = master_sha256 + "\n" + "\n".join(recipients)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def cache_name(secret_id: str, master_sha256: str, recipients: Sequence[str]) -> str:
    return f"{secret_id}.{cache_hash(master_sha256, recipients)[:32]}.age"


@dataclass(frozen=True)
class Master:
    """What the plan needs of a master file: its hash, and its payload length when the
    header parses (age's payload length depends only on the plaintext length, so every
    cache file of this secret must have exactly the same)."""

    sha256: str
    payload: int | None
    format_error: str | None = None


def read_master_info(path: Path) -> Master:
    data = path.read_bytes()
    try:
        payload: int | None = ageformat.parse(data).payload_size
        error = None
    except ageformat.FormatError as exc:
        payload, error = None, str(exc)
    return Master(hashlib.sha256(data).hexdigest(), payload, error)


@dataclass(frozen=True)
class Item:
    """One ciphertext a host needs: secret ``id`` encrypted to ``recipients`` at ``path``."""

    host: str
    id: str
    path: Path
    recipients: tuple[str, ...]
    payload: int | None = None       # expected payload length (the master's)


@dataclass
class Plan:
    items: list[Item] = field(default_factory=list)
    masters: dict[str, Master] = field(default_factory=dict)
    stale: list[Path] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)   # missing/unreadable masters


def missing_master(cfg: Config, sid: str) -> Problem:
    return Problem(display_path(cfg.secrets[sid].file), "master file is missing",
                   f"secrets.{sid}", f"create it with vaultpy edit {sid} (or vaultpy "
                   f"encrypt {sid})")


def master_hashes(cfg: Config, ids: Iterable[str]) -> tuple[dict[str, Master], list[Problem]]:
    hashes: dict[str, Master] = {}
    problems: list[Problem] = []
    for sid in sorted(set(ids)):
        secret = cfg.secrets[sid]
        try:
            hashes[sid] = read_master_info(secret.file)
        except FileNotFoundError:
            problems.append(missing_master(cfg, sid))
        except OSError as exc:
            p = os_problem(secret.file, exc, "read master file")
            problems.append(Problem(p.file, p.message, f"secrets.{sid}", p.hint))
    return hashes, problems


def plan(cfg: Config, hosts: Sequence[str] | None = None) -> Plan:
    """What the cache should hold for ``hosts`` (all by default), and what is stale.

    Only hashing, no crypto and no writes.
    """
    selected = [cfg.hosts[h] for h in hosts] if hosts else list(cfg.hosts.values())
    result = Plan()
    result.masters, result.problems = master_hashes(
        cfg, (sid for h in selected for sid in h.needed))
    expected: dict[str, set[str]] = {}
    for host in selected:
        names = expected.setdefault(host.name, set())
        for sid in host.needed:
            master = result.masters.get(sid)
            if master is None:
                continue
            name = cache_name(sid, master.sha256, host.recipients)
            names.add(name)
            result.items.append(Item(host.name, sid, cfg.cache_dir / host.name / name,
                                     host.recipients, master.payload))
    for host_name, names in expected.items():
        host_dir = cfg.cache_dir / host_name
        for entry in _listdir(host_dir):
            if entry not in names:
                result.stale.append(host_dir / entry)
    if not hosts:
        for entry in _listdir(cfg.cache_dir):
            path = cfg.cache_dir / entry
            if entry not in cfg.hosts and path.is_dir() and not path.is_symlink():
                result.stale.append(path)
    # A master that could not be hashed keeps its old cache files: they are the
    # host's last good copy until the master is fixed.
    broken = {p.field.removeprefix("secrets.") for p in result.problems}
    result.stale = [p for p in result.stale if _stale_id(p) not in broken]
    return result


def _stale_id(path: Path) -> str | None:
    m = NAME_RE.fullmatch(path.name)
    return m.group("id") if m else None


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def verify(path: Path, recipients: Sequence[str], payload: int | None = None) -> str | None:
    """Why the cache file at ``path`` is not a complete age file for ``recipients``
    (None when it is).  Structure only: no key is needed.  ``payload`` is the master's
    payload length: equal plaintexts have equal payload lengths, so any truncation
    or extension shows."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        return f"unreadable ({exc.strerror})"
    try:
        header = ageformat.parse(data)
    except ageformat.FormatError as exc:
        return f"damaged: {exc}"
    if payload is not None and header.payload_size != payload:
        return (f"damaged: payload is {header.payload_size} bytes, the master's is "
                f"{payload} (truncated or altered)")
    stanzas = header.recipient_stanzas()
    if len(stanzas) != len(recipients):
        return (f"encrypted to {len(stanzas)} recipient(s), the host has "
                f"{len(recipients)}")
    tags = sorted(s.args[0] for s in stanzas if s.type == "ssh-ed25519")
    want = sorted(t for t in (age.ssh_stanza_tag(r) for r in recipients) if t is not None)
    if tags != want:
        return "not encrypted to the host's current key"
    return None


def is_leftover(path: Path) -> bool:
    """A temporary file from an interrupted run."""
    return is_tmp(path.name)
