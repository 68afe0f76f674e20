"""``vaultpy check`` and ``vaultpy status``: what the cache holds versus what it should.

Needs no key: master files and cache files are validated structurally (age
header, stanzas for exactly the host's recipients, plausible payload size).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass

from vaultpy import cache, model, signing
from vaultpy.errors import Problem, display_path, key_path
from vaultpy.model import Config

FIX_RENC = "run vaultpy renc"
# From this many cache files to read (none vouched for by the verification index: a
# fresh clone, as CI checks it), forked workers read and parse them, at most this many.
PARALLEL_FILES = 2048
MAX_WORKERS = 4


@dataclass(frozen=True)
class Entry:
    """The state of one (host, secret) pair."""

    host: str
    id: str
    state: str  # ok | outdated | missing | damaged | unsigned | no-master | bad-master
    file: str
    detail: str = ""
    installed: bool = True


def survey(cfg: Config) -> tuple[list[Entry], list[Problem]]:
    """Every (host, secret) pair's state, plus the problems that make ``check`` fail."""
    p = cache.plan(cfg)
    problems = list(p.problems)
    from vaultpy.recovery import header_problems

    # Declared masters no host needs yet are checked too: CI must not pass a missing or
    # damaged one (a generated key made ahead of its host, a secret being phased in).
    unused, unused_problems = cache.master_hashes(cfg, set(cfg.secrets) - set(p.masters)
                                                  - p.broken_ids())
    problems += unused_problems
    damaged_masters: set[str] = set()
    for sid, master in sorted({**p.masters, **unused}.items()):
        if master.format_error is not None:
            damaged_masters.add(sid)
            shown = display_path(cfg.secrets[sid].file)
            problems.append(Problem(shown, "master file is "
                                    f"not a valid age file: {master.format_error}",
                                    key_path("secrets", sid),
                                    f"restore it from git (git checkout -- {shown}), or "
                                    f"give it a new value: {model.command_for(cfg.path)} "
                                    f"encrypt {sid} < FILE"))
        elif master.header is not None:
            # A backup key added without `vaultpy rekey` covers nothing yet.
            problems += header_problems(cfg, sid, master.header)
    # Stale cache files in a host's directory, as (host, id): older copies of a secret
    older = {path: (path.parent.name, m.group("id")) for path in p.stale
             if path.parent.parent == cfg.cache_dir
             and (m := cache.NAME_RE.fullmatch(path.name)) is not None}
    older_ids = set(older.values())
    entries: list[Entry] = []
    index = cache.VerifiedIndex(cfg.cache_dir)     # read, never written, by check
    if cfg.signing is not None:
        index.use_signatures(cfg.signing.key, cache.signed_dirs(cfg, p))
        for name, unsigned in sorted(index.unsigned.items()):   # (its files' lines: not said)
            problems.append(Problem(display_path(unsigned.path), f"the cache of host "
                                    f"{name!r} is not signed: {unsigned.reason}",
                                    key_path("hosts", name), signing.FIX))
    planned = {(i.host, i.id): i for i in p.items}
    reasons = _reasons(index, [item for host in cfg.hosts.values() for sid in host.needed
                               if (item := planned.get((host.name, sid))) is not None
                               and item.dir not in p.linked])
    shown_cache = display_path(cfg.cache_dir)        # once, not per file (resolve() is slow)
    for host in cfg.hosts.values():
        installed = {d.id for d in host.deployments}
        for sid in host.needed:
            item = planned.get((host.name, sid))
            if item is None:
                entries.append(Entry(host.name, sid, "no-master",
                                     display_path(cfg.secrets[sid].file),
                                     installed=sid in installed))
                continue
            shown = f"{shown_cache}/{item.host}/{item.name}"
            reason = reasons.get((item.host, item.id))   # (none: a linked host directory)
            blocker = cache.blocker(item, reason, p.linked)
            if blocker is not None:
                entries.append(Entry(host.name, sid, "damaged", shown, blocker,
                                     sid in installed))
                problems.append(Problem(shown, f"cache file cannot be written: {blocker}",
                                        key_path("hosts", host.name, "secrets", sid),
                                        cache.FIX_IN_THE_WAY))
                continue
            state = ("ok" if reason is None else "missing" if reason == "missing"
                     else "unsigned" if reason == signing.UNSIGNED else "damaged")
            if state == "unsigned" and host.name in index.unsigned:    # the host's why
                reason = f"not signed: {index.unsigned[host.name].reason}"
            bad_master = sid in damaged_masters and reason == "missing"
            if reason == "missing" and not bad_master and (host.name, sid) in older_ids:
                # The master (an edit) or the host's key changed since renc: the host's
                # copy is not lost, it is out of date.
                why = "its master or the host's key changed since renc"
                entries.append(Entry(host.name, sid, "outdated", shown, why,
                                     sid in installed))
                problems.append(Problem(shown, f"cache file is out of date: {why}",
                                        key_path("hosts", host.name, "secrets", sid), FIX_RENC))
                continue
            entries.append(Entry(host.name, sid, "bad-master" if bad_master else state,
                                 shown, "its master file is damaged" if bad_master
                                 else reason or "", sid in installed))
            if bad_master:
                continue        # the master's own line says what to do
            if reason == "missing":
                problems.append(Problem(shown, "cache file is missing",
                                        key_path("hosts", host.name, "secrets", sid), FIX_RENC))
            elif reason is not None and not (state == "unsigned"
                                             and host.name in index.unsigned):
                problems.append(Problem(shown, f"cache file is {reason}",
                                        key_path("hosts", host.name, "secrets", sid), FIX_RENC))
    if cfg.signing is not None and p.masters:
        problems += _masters_signed(cfg, p, entries)
    outdated = {(e.host, e.id) for e in entries if e.state == "outdated"}
    for path in p.stale:
        host_id = older.get(path)
        if host_id is not None and host_id[1] in damaged_masters and host_id[0] in cfg.hosts:
            problems.append(Problem(display_path(path), "the host's last good copy, kept "
                                    "while its master file is damaged", "",
                                    "restore the master file; renc then replaces this copy"))
            continue
        if host_id in outdated:
            continue            # the out-of-date line above says it, and renc replaces it
        top, is_dir, leftover = (path.parent == cfg.cache_dir, path.is_dir(),
                                 cache.is_leftover(path))
        what = ("leftover temporary directory (a new host's cache, from an interrupted "
                "renc)" if leftover and is_dir and top else
                "leftover temporary file" if leftover and not is_dir else
                f"directory of a host that is not in {cfg.declared_in}" if is_dir and top else
                "stale cache file")     # (a directory in a host's is foreign: cache.plan)
        problems.append(Problem(display_path(path), what, "", f"{FIX_RENC} to remove it"))
    problems += [cache.foreign(path) for path in p.foreign]
    return entries, problems


def _masters_signed(cfg: Config, p: cache.Plan, entries: Sequence[Entry]) -> list[Problem]:
    """The signed list of masters (vaultpy/signing.py) verifies, and has the value of
    every master whose cache files are all signed (one whose files are out of date
    is said by their lines; renc then vouches for its value or asks --accept)."""
    assert cfg.signing is not None
    try:
        listed = signing.read_masters(cfg.cache_dir, cfg.signing.key)
    except signing.Unsigned as exc:
        return [Problem(display_path(exc.path), f"the signed list of masters: {exc.reason}",
                        "vaultpy.signing_key", "run vaultpy renc with the master key: it "
                        "signs the masters' values (asking --accept for any it cannot "
                        "vouch for)")]
    not_ok = {e.id for e in entries if e.state != "ok"}
    out = []
    for sid, m in sorted(p.masters.items()):
        if sid not in not_ok and listed.get(sid) != m.sha256:
            out.append(Problem(display_path(cfg.secrets[sid].file), "its value is not the "
                               "one the signed list of masters gives (secrets/cache/MASTERS)",
                               key_path("secrets", sid), "run vaultpy renc with the master "
                               "key"))
    return out


def _reasons(index: cache.VerifiedIndex, items: Sequence[cache.Item]
             ) -> dict[tuple[str, str], str | None]:
    """``index.check`` of each item, by (host, id).  When there are many files to read,
    forked workers take shares of them (every 8th item from an offset each: the big
    secrets spread over the shares), and a share whose worker died is done here."""
    workers = min(len(os.sched_getaffinity(0)), MAX_WORKERS)
    to_read = sum(1 for i in items if i not in index)
    if workers < 2 or to_read < PARALLEL_FILES:
        return {(i.host, i.id): index.check(i) for i in items}
    from vaultpy._internal import forkpool, forksafe  # (a few ms: only when needed)

    if not forksafe.settled(0):
        return {(i.host, i.id): index.check(i) for i in items}
    n = workers * 8
    shares = [items[k::n] for k in range(n)]
    done: dict[int, list[str | None]] = {}

    def deliver(k: int, result: list[str | None] | forkpool.Failed) -> None:
        if not isinstance(result, forkpool.Failed):
            done[k] = result

    with contextlib.suppress(forkpool.NoWorker):    # no process to spare: all of it here
        forkpool.run(n, workers, lambda k: [index.check(i) for i in shares[k]], deliver)
    out: dict[tuple[str, str], str | None] = {}
    for k, share in enumerate(shares):
        got = done[k] if k in done else [index.check(i) for i in share]
        out.update(zip(((i.host, i.id) for i in share), got, strict=True))
    return out


def check(cfg: Config) -> list[Problem]:
    """Empty when the cache is complete, well-formed and has nothing stale, every
    master is addressed to exactly the [vaultpy] recipients as far as its header shows,
    and no master key rotation is left unfinished."""
    from vaultpy._internal import writes
    from vaultpy.recovery import rotation_problems

    # Temp files an interrupted write lists are not leftovers: renc finishes the write.
    listed = writes.listed(cfg)
    found = [p for p in survey(cfg)[1] if p.file not in listed]
    return writes.problems(cfg) + found + rotation_problems(cfg)


def has_rotation(cfg: Config) -> bool:
    """Whether some secret has ``rotate_days``: then time alone can change check's answer."""
    return any(s.rotate_days is not None for s in cfg.secrets.values())


def overdue(cfg: Config) -> list[Problem]:
    """Secrets whose ``rotate_days`` have passed (warnings; errors with ``check --strict``).
    Reads secrets/rotation.toml only when some secret has ``rotate_days``."""
    if not has_rotation(cfg):
        return []
    from vaultpy.errors import VaultpyError
    from vaultpy.generate import overdue_problems

    try:
        return overdue_problems(cfg)
    except VaultpyError as exc:      # a damaged rotation.toml is reported, not fatal
        return exc.problems
