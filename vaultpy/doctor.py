"""``vaultpy doctor``: is this machine ready to run vaultpy, and if not, what to fix.

Each check returns a :class:`Check` with a status:

* ``ok``       — works;
* ``warning``  — works, but something deserves attention (a single master recipient, an
                 identity readable by others, an optional tool missing);
* ``problem``  — a vaultpy command will fail until it is fixed (exit 1);
* ``skipped``  — could not be checked here (and why).

Checks: hosts.toml (valid), recipients (parse; a backup recipient), masters (each
master file a regular file and a well-formed age file: needs no key), identity (present,
private, unlocks, decrypts the well-formed master files), git-ignore (git ignores
vaultpy's local files: the write journal, the lock, the verification index, the memo),
clock (nothing renc and check read is dated in the future: their memo would not answer),
ram-dir (RAM-backed storage for ``vaultpy edit``), ramfs (in the kernel; as root,
actually mountable inside a throwaway ``unshare -m`` namespace), and the versions of the
external tools vaultpy works with.
Nothing is written.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vaultpy import __version__
from vaultpy._internal import fsutil
from vaultpy.errors import VaultpyError, display_path
from vaultpy.model import Config

OK, WARNING, PROBLEM, SKIPPED = "ok", "warning", "problem", "skipped"
TOOL_TIMEOUT = 10


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class Tool:
    command: str
    version_args: tuple[str, ...]
    used_for: str
    package: str
    minimum: tuple[int, ...] = ()


TOOLS = (
    Tool("age", ("--version",), "interop checks and manual decryption", "age", (1, 0)),
    Tool("age-keygen", ("--version",), "making age identities by hand", "age", (1, 0)),
    Tool("ssh-keygen", (), "vaultpy host add --generate", "openssh-client"),
    Tool("ssh-keyscan", (), "vaultpy host add --keyscan", "openssh-client"),
    Tool("nix-instantiate", ("--version",), "the NixOS module (evaluation)", "nix-bin",
         (2, 8)),
)


def _first_problem(exc: VaultpyError) -> tuple[str, str]:
    first = exc.problems[0]
    more = f" (and {len(exc.problems) - 1} more)" if len(exc.problems) > 1 else ""
    return f"{first.file}: {first.field + ': ' if first.field else ''}{first.message}{more}", (
        first.hint or "run vaultpy check for every problem")


def check_config(repo: Path | None) -> tuple[Check, Config | None]:
    from vaultpy import model

    try:
        cfg = model.load(repo)
    except VaultpyError as exc:
        detail, fix = _first_problem(exc)
        return Check("hosts.toml", PROBLEM, detail, fix), None
    people = cfg.people()
    return Check("hosts.toml", OK, f"{display_path(cfg.path)}: {len(cfg.hosts) - people} "
                 f"host(s), {f'{people} person(s), ' if people else ''}"
                 f"{len(cfg.secrets)} secret(s)"), cfg


def _raw_recipients(repo: Path | None) -> list[str] | None:
    """The recipients list of a hosts.toml that does not validate as a whole."""
    from vaultpy import model

    try:
        path = model.find(Path.cwd()) if repo is None else (
            repo / model.FILENAME if repo.is_dir() else repo)
        doc = tomllib.loads(fsutil.read_regular(path)[0].decode("utf-8"))
    except (VaultpyError, OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        return None
    value = doc.get("vaultpy", {}).get("recipients") if isinstance(doc.get("vaultpy"),
                                                                  dict) else None
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    return None


def check_recipients(cfg: Config | None, repo: Path | None) -> Check:
    from vaultpy import age

    if cfg is None:
        raw = _raw_recipients(repo)
        if raw is None:
            return Check("recipients", SKIPPED, "hosts.toml could not be read")
        bad = []
        for i, text in enumerate(raw):
            try:
                age.normalize_recipient(text, allow_rsa=True)
            except ValueError as exc:
                bad.append(f"recipients[{i}]: {exc}")
        if bad:
            return Check("recipients", PROBLEM, "; ".join(bad),
                         "use age1… keys (age-keygen -y) or ssh-ed25519 public key lines")
        if not raw:
            return Check("recipients", PROBLEM, "no master recipients: nothing can be "
                         "encrypted", "add at least one age1… key (age-keygen -y) or "
                         "ssh-ed25519 public key line to [vaultpy] recipients")
        return Check("recipients", OK, f"{len(raw)} master recipient(s) parse")
    kinds = sorted({r.split()[0] if " " in r else "age1" for r in cfg.recipients})
    hosts = sum(len(h.recipients) for h in cfg.hosts.values() if not h.user)
    people = sum(len(h.recipients) for h in cfg.hosts.values() if h.user)
    detail = f"{len(cfg.recipients)} master recipient(s) ({', '.join(kinds)}); " \
             f"{hosts} host key(s){f', {people} person key(s)' if people else ''} parse"
    if len(cfg.recipients) == 1:
        return Check("recipients", WARNING, detail + "; a single master recipient: losing "
                     "that key loses every secret", "add a backup recipient to [vaultpy] "
                     "recipients, then run vaultpy rekey")
    return Check("recipients", OK, detail)


# The fix for a master file that is no age file, or no file at all (a directory, a FIFO).
RESTORE = "restore it from git, or recreate it with vaultpy edit"


@dataclass
class Masters:
    """The master files as doctor finds them (:func:`read_masters`)."""

    good: dict[Path, bytes]         # well-formed age files, by path
    bad: list[tuple[str, str, str]]     # (file, what, fix): unreadable, no file, not age
    missing: list[str]              # declared secrets whose master file does not exist
    unaddressed: list[tuple[str, str]]  # (file, what): not encrypted to exactly the
                                        # recipients
    # Well-formed ones the identity could not decrypt (filled by check_identity): their
    # headers cannot say whose their X25519 stanzas are.
    unopened: list[str] = field(default_factory=list)


def read_masters(cfg: Config) -> Masters:
    """Every declared master file, sorted as :class:`Masters` says (a FIFO is not read:
    a plain read would block forever)."""
    from vaultpy._internal import ageformat, fsutil
    from vaultpy.errors import os_problem
    from vaultpy.recovery import header_problems

    out = Masters({}, [], [], [])
    for s in cfg.secrets.values():
        try:
            data = fsutil.read_regular(s.file)[0]
        except FileNotFoundError:
            out.missing.append(s.id)
            continue
        except OSError as exc:
            # No permission: the file may be fine, as check says (os_problem's fix).
            fix = (os_problem(s.file, exc, "read").hint if isinstance(exc, PermissionError)
                   else RESTORE)
            out.bad.append((display_path(s.file), f"cannot read: {exc.strerror or exc}",
                            fix))
            continue
        try:
            header = ageformat.parse(data)
        except ageformat.FormatError as exc:
            out.bad.append((display_path(s.file), f"not a valid age file: {exc}", RESTORE))
            continue
        out.good[s.file] = data
        out.unaddressed += [(p.file, p.message) for p in header_problems(cfg, s.id, header)]
    return out


def _first(lines: Sequence[str]) -> str:
    return lines[0] + (f" (and {len(lines) - 1} more)" if len(lines) > 1 else "")


def _per_kind(kinds: Sequence[tuple[Sequence[str], str]]) -> str:
    """The fix of one kind of problem; of several, each after the files it is for
    (``kinds``: (files, fix) each)."""
    if len(kinds) == 1:
        return kinds[0][1]
    return "; ".join(f"{_first(files)}: {fix}" for files, fix in kinds)


def check_masters(cfg: Config | None, masters: Masters | None = None) -> Check:
    """As ``check`` sees them: each present, an age file, addressed to exactly the
    ``[vaultpy] recipients`` (a backup key added without rekey covers nothing).  Every
    kind of problem is said, each with its fix."""
    if cfg is None:
        return Check("masters", SKIPPED, "needs a valid hosts.toml")
    m = masters if masters is not None else read_masters(cfg)
    kinds: dict[str, list[tuple[str, str]]] = {}    # fix -> (file, what) each
    for file, what, fix in m.bad:
        kinds.setdefault(fix, []).append((file, what))
    if m.missing:
        from vaultpy.cache import missing_master

        kinds.setdefault(missing_master(cfg, m.missing[0]).hint, []).extend(
            (display_path(cfg.secrets[sid].file), "missing") for sid in m.missing)
    if m.unaddressed:
        kinds.setdefault("run vaultpy rekey", []).extend(m.unaddressed)
    if kinds:
        detail = "; ".join(_first([f"{file}: {what}" for file, what in found])
                           for found in kinds.values())
        fix = _per_kind([(list(dict.fromkeys(file for file, _what in found)), fix)
                         for fix, found in kinds.items()])
        if sum(map(len, kinds.values())) > 1:
            fix += ("; vaultpy check lists every one" if len(kinds) > 1
                    else " (vaultpy check lists every one)")
        return Check("masters", PROBLEM, detail, fix)
    if m.unopened:
        return Check("masters", OK, f"{len(m.good)} master file(s) are well-formed age "
                     "files, each with a stanza per [vaultpy] recipient, but the identity "
                     f"cannot open {len(m.unopened)} of them (see identity): an age1 "
                     "key's stanza does not say whose it is")
    return Check("masters", OK, f"{len(m.good)} master file(s) are well-formed age files, "
                 "each addressed to the [vaultpy] recipients")


def local_state(cfg: Config) -> list[Path]:
    """vaultpy's local files, which must never be committed: the write journal beside
    hosts.toml, and the cache directory's lock, verification index and no-op memo."""
    from vaultpy import cache
    from vaultpy._internal import memo, writes

    return [cfg.root / writes.JOURNAL, cfg.lock_path, cfg.cache_dir / cache.INDEX,
            cfg.cache_dir / memo.FILENAME]


def check_git_ignore(cfg: Config | None) -> Check:
    """Does git ignore vaultpy's local state?  (``vaultpy init`` writes the lines; a
    repository made by hand, or before init wrote the journal's, may lack them: a kill
    mid-write then leaves the journal in ``git status``, and a commit would carry it.)"""
    name = "git-ignore"
    if cfg is None:
        return Check(name, SKIPPED, "needs a valid hosts.toml")
    git = shutil.which("git")
    if git is None:
        return Check(name, SKIPPED, "git is not installed")
    # git's messages in English whatever the locale: "not a git repository" is matched.
    env = {**os.environ, "LC_ALL": "C", "LANGUAGE": ""}
    exposed: list[Path] = []
    tracked: list[Path] = []            # ignored by a pattern, but committed already
    in_a_tree = False
    for path in local_state(cfg):
        base = path.parent
        while not base.is_dir():        # a cache directory no renc has made yet
            base = base.parent
        rel = os.path.relpath(path, base)
        try:
            proc = subprocess.run([git, "-C", str(base), "check-ignore", "-q", "--", rel],
                                  capture_output=True, text=True, timeout=TOOL_TIMEOUT,
                                  stdin=subprocess.DEVNULL, env=env)
            if proc.returncode == 1:    # a tracked file is never "ignored": which is it?
                pattern = subprocess.run([git, "-C", str(base), "check-ignore", "-q",
                                          "--no-index", "--", rel], capture_output=True,
                                         timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL,
                                         env=env)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Check(name, SKIPPED, f"git check-ignore does not run: {exc}")
        if proc.returncode == 128 and "not a git repository" in proc.stderr:
            continue
        if proc.returncode not in (0, 1):
            said = proc.stderr.strip().splitlines()
            said = [ln for ln in said if ln.startswith("fatal:")] or said   # git's reason
            return Check(name, SKIPPED, f"git check-ignore failed: "
                         f"{said[-1] if said else proc.returncode}")
        in_a_tree = True
        if proc.returncode == 1:
            (tracked if pattern.returncode == 0 else exposed).append(path)
    if not in_a_tree:
        return Check(name, SKIPPED, "not in a git work tree")
    if not exposed and not tracked:
        return Check(name, OK, "git ignores vaultpy's local state (journal, lock, "
                     "verification index, memo)")
    by_folder: dict[Path, list[str]] = {}
    for path in exposed:
        by_folder.setdefault(path.parent, []).append("/" + path.name)
    fixes = [f"add {', '.join(names)} to {display_path(folder / '.gitignore')}"
             for folder, names in by_folder.items()]
    if tracked:
        fixes.append("git rm --cached " + " ".join(display_path(p) for p in tracked))
    return Check(name, WARNING, "git does not ignore "
                 + ", ".join(display_path(p) for p in exposed + tracked)
                 + " (local state: a kill mid-write leaves the journal for git to show, "
                 "and a commit would carry it)", "; ".join(fixes))


def check_identity(cfg: Config | None, explicit: Sequence[Path],
                   masters: Masters | None = None) -> Check:
    """Whether the identity decrypts the master files; only the well-formed ones are
    tried (a damaged file is a masters problem, not a wrong key).  Those it cannot
    decrypt are noted in ``masters`` (:attr:`Masters.unopened`), for its check."""
    if cfg is None:
        return Check("identity", SKIPPED, "needs a valid hosts.toml")
    from vaultpy import age, identities

    try:
        in_memory = bool(identities._in_memory) and not explicit
        paths = [] if in_memory else identities.identity_paths(cfg, explicit)
    except VaultpyError as exc:
        detail, fix = _first_problem(exc)
        return Check("identity", PROBLEM, detail, fix)
    notes: list[str] = []
    for p in paths:
        try:
            mode = p.stat().st_mode
        except FileNotFoundError:
            return Check("identity", PROBLEM, f"{display_path(p)}: no such file",
                         "pass -i FILE, set VAULTPY_IDENTITY, or fix [vaultpy] identity "
                         "(or create one: vaultpy init --generate-identity PATH)")
        except OSError as exc:
            return Check("identity", PROBLEM, f"{display_path(p)}: {exc.strerror}",
                         "check the path and its permissions")
        if mode & 0o077:
            notes.append(f"{display_path(p)} is readable by others (mode {mode & 0o777:04o})")
    try:
        keys = identities.load(cfg, explicit)
    except VaultpyError as exc:
        detail, fix = _first_problem(exc)
        return Check("identity", PROBLEM, detail, fix)
    m = masters if masters is not None else read_masters(cfg)
    readable, damaged = m.good, m.bad
    failed: list[str] = []
    broken: list[str] = []      # the key opened it, the payload did not check out
    for path, data in readable.items():
        try:
            age.decrypt(data, keys, display_path(path))
        except VaultpyError as exc:
            (broken if isinstance(exc, age.Damaged) else failed).append(display_path(path))
    m.unopened[:] = failed
    where = "in memory" if not paths else ", ".join(display_path(p) for p in paths)
    wrong_key = ("pass the right key with -i FILE, or re-encrypt them with a key that can "
                 "(vaultpy rekey)")
    # (a cut file, a flipped byte: the key is right, the file is not)
    first = next((s.id for s in (cfg.secrets.values() if cfg is not None else ())
                  if broken and display_path(s.file) == broken[0]), "ID")
    damaged_fix = (f"restore it from git, or give it a new value: vaultpy encrypt {first} "
                   "< FILE" + (" (vaultpy check names every one)" if len(broken) > 1 else ""))
    if failed:
        also = (f"; of those it opens, {len(broken)} {'is' if len(broken) == 1 else 'are'} "
                f"damaged (first: {broken[0]})" if broken else "")
        return Check("identity", PROBLEM, f"{where} cannot decrypt {len(failed)} of "
                     f"{len(readable)} master file(s) (first: {failed[0]}){also}",
                     _per_kind([(failed, wrong_key), *([(broken, damaged_fix)] if broken
                                                        else [])]))
    if broken:
        return Check("identity", PROBLEM, f"{where} opens every master file, but "
                     f"{len(broken)} of them are damaged (first: {broken[0]})", damaged_fix)
    which = " well-formed" if damaged else ""
    detail = (f"{where} decrypts all {len(readable)}{which} master file(s)" if readable else
              f"{where} unlocks (no master file yet to test it on)")
    if notes:
        return Check("identity", WARNING, detail + "; " + "; ".join(notes),
                     "chmod 600 " + " ".join(str(p) for p in paths))
    return Check("identity", OK, detail)


def check_clock(cfg: Config | None, now_ns: int | None = None) -> Check:
    """Is anything renc and check read dated in the future?  Their no-op memo trusts
    only inputs older than the run (a change within the same clock tick could hide
    otherwise), so a file from a clock set back, or unpacked from a machine whose clock
    ran ahead, has every run do the full work until the clock passes it: nothing fails,
    it is only slow, and nothing else would say why."""
    import time

    from vaultpy._internal import memo

    name = "clock"
    if cfg is None:
        return Check(name, SKIPPED, "needs a valid hosts.toml")
    now = time.time_ns() if now_ns is None else now_ns
    lists = memo.inputs(cfg)
    stamps: list[tuple[int, str]] = []
    for path in [*memo._code_files(), *lists["files"]]:
        with contextlib.suppress(OSError):
            st = os.stat(path)
            stamps.append((max(st.st_mtime_ns, st.st_ctime_ns), path))
    for folder in lists["scanned"]:
        with contextlib.suppress(OSError), os.scandir(folder) as it:
            for entry in it:
                with contextlib.suppress(OSError):
                    st = entry.stat(follow_symlinks=False)
                    stamps.append((max(st.st_mtime_ns, st.st_ctime_ns), entry.path))
    ahead = sorted(((t, p) for t, p in stamps if t > now + _CLOCK_SLACK_NS), reverse=True)
    if not ahead:
        return Check(name, OK, f"the {len(stamps)} file(s) renc and check read are dated in "
                     "the past: unchanged, they are answered from the no-op memo")
    shown = [display_path(p) for _, p in ahead[:3]]
    more = f" and {len(ahead) - 3} more" if len(ahead) > 3 else ""
    return Check(name, WARNING, f"{len(ahead)} file(s) are dated in the future, up to "
                 f"{_span(ahead[0][0] - now)} ahead of this machine's clock ("
                 f"{', '.join(shown)}{more}): renc and check do their full work every time "
                 "until the clock passes them",
                 "if the clock is right, touch them (touch -h -c -- " + " ".join(shown)
                 + (" ..." if more else "") + "), else set the clock right")


_CLOCK_SLACK_NS = 2 * 10**9        # (a file just written by another process: not news)


def check_signing(cfg: Config | None) -> Check:
    """Whether the cache is signed (vaultpy/signing.py), and by which key: said, never a
    warning when it is not (a repository whose writers are all trusted needs none)."""
    if cfg is None:
        return Check("signing", SKIPPED, "needs a valid hosts.toml")
    if cfg.signing is None:
        return Check("signing", OK, "the cache is not signed: a host takes any cache file "
                     "encrypted to its key (vaultpy signing-key makes check and hosts "
                     "refuse files the master key's holders did not write)")
    from vaultpy.age import fingerprint

    master = cfg.secrets[cfg.signing.secret].file
    if not os.path.lexists(master):
        return Check("signing", PROBLEM, f"{display_path(master)}, the signing key's "
                     "secret, is missing: renc cannot sign", "make a new key: vaultpy "
                     "signing-key --new")
    return Check("signing", OK, f"renc signs each host's cache with "
                 f"{fingerprint(cfg.signing.key)} (secret {cfg.signing.secret!r}); vaultpy "
                 "check verifies it")


def _span(ns: int) -> str:
    """A duration as people say it: "40 s", "3 min", "2 h 5 min", "12 days"."""
    s = ns // 10**9
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    if s < 2 * 86400:
        return f"{s // 3600} h {s % 3600 // 60} min"
    return f"{(s + 43200) // 86400} days"   # (2 days 23 h is nearer 3 days than 2)


def check_ram_dir() -> Check:
    from vaultpy.edit import ram_candidates, sweep, unusable

    tried = []
    for base in ram_candidates():
        why = unusable(base)
        if why is None:
            fstype = fsutil.mount_fstype(base)
            detail = f"{base} is {fstype}: vaultpy edit keeps plaintext there"
            left = sweep(remove=False)      # (found, not removed: doctor writes nothing)
            if left:
                shown = ", ".join(map(str, left[:3])) + (" ..." if len(left) > 3 else "")
                return Check("ram-dir", WARNING, f"{detail}; {len(left)} killed edit(s) "
                             f"left plaintext there: {shown}", "vaultpy edit removes it "
                             "when it next runs; or rm -rf " + " ".join(map(str, left[:3])))
            return Check("ram-dir", OK, detail)
        tried.append(f"{base} ({why})")
    return Check("ram-dir", PROBLEM, "no private RAM-backed directory for vaultpy edit "
                 "(tried " + ", ".join(tried) + ")", "mount a tmpfs on /dev/shm or set "
                 "XDG_RUNTIME_DIR to a tmpfs directory of your own (or accept disk: vaultpy "
                 "edit --allow-disk)")


def _ramfs_in_kernel() -> bool | None:
    try:
        with open("/proc/filesystems", encoding="utf-8") as fh:
            return any(line.split()[-1:] == ["ramfs"] for line in fh)
    except OSError:
        return None


def check_ramfs() -> Check:
    """Activation (on hosts) mounts ramfs; check the kernel has it and, as root, that a
    mount works in a private mount namespace that disappears with the test."""
    known = _ramfs_in_kernel()
    if known is False:
        return Check("ramfs", WARNING, "the kernel has no ramfs: vaultpy activate cannot run "
                     "here (only hosts need it)", "use a kernel with ramfs (CONFIG_RAMFS)")
    if os.geteuid() != 0:
        return Check("ramfs", SKIPPED, "ramfs is in the kernel; mounting it needs root "
                     "(vaultpy activate runs as root on hosts)")
    unshare, mount = shutil.which("unshare"), shutil.which("mount")
    if unshare is None or mount is None:
        return Check("ramfs", SKIPPED, "ramfs is in the kernel; unshare/mount are not "
                     "installed to test a mount", "install util-linux and mount")
    with tempfile.TemporaryDirectory(prefix="vaultpy-doctor-") as target:
        try:
            proc = subprocess.run(
                [unshare, "-m", "--propagation", "private", mount, "-t", "ramfs", "-o",
                 "nosuid,nodev,noexec,mode=0700", "ramfs", target],
                capture_output=True, text=True, timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Check("ramfs", WARNING, f"could not test a ramfs mount: {exc}",
                         "only hosts that run vaultpy activate need it")
    if proc.returncode != 0:
        said = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        return Check("ramfs", WARNING, f"ramfs is in the kernel but mounting it failed "
                     f"here ({said})", "only hosts need it; in a container, allow "
                     "CAP_SYS_ADMIN and mount namespaces")
    return Check("ramfs", OK, "mountable (tested in a private mount namespace)")


def _version(text: str) -> tuple[int, ...] | None:
    m = re.search(r"(\d+)\.(\d+)(?:\.(\d+))?", text)
    return tuple(int(g) for g in m.groups() if g is not None) if m else None


def _ssh_version() -> str:
    ssh = shutil.which("ssh")
    if ssh is None:
        return "installed"
    try:
        proc = subprocess.run([ssh, "-V"], capture_output=True, text=True,
                              timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "installed"
    return (proc.stderr or proc.stdout).strip().split(",")[0] or "installed"


def check_tool(tool: Tool) -> Check:
    path = shutil.which(tool.command)
    name = f"tool:{tool.command}"
    if path is None:
        return Check(name, WARNING, f"not installed (needed for {tool.used_for})",
                     f"apt-get install {tool.package}")
    if not tool.version_args:
        return Check(name, OK, f"{_ssh_version()} ({path})")
    try:
        proc = subprocess.run([path, *tool.version_args], capture_output=True, text=True,
                              timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check(name, WARNING, f"{path} does not run: {exc}",
                     f"reinstall {tool.package}")
    said = (proc.stdout or proc.stderr).strip().splitlines()
    text = said[0] if said else ""
    version = _version(text)
    if proc.returncode != 0 or version is None:
        return Check(name, WARNING, f"{path}: cannot tell its version ({text or 'no output'})",
                     f"reinstall {tool.package}")
    if tool.minimum and version < tool.minimum:
        want = ".".join(map(str, tool.minimum))
        return Check(name, WARNING, f"{text} is older than {want}",
                     f"upgrade {tool.package} to {want} or later")
    return Check(name, OK, f"{text} ({path})")


def check_python() -> Check:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    try:
        pyrage = version("pyrage")
    except PackageNotFoundError:
        pyrage = "unknown"
    return Check("vaultpy", OK, f"vaultpy {__version__}, pyrage {pyrage}, Python "
                 f"{platform.python_version()}")


def run(repo: Path | None = None, identity_files: Sequence[Path] = (),
        tools: Sequence[Tool] = TOOLS,
        on_check: Callable[[Check], None] | None = None) -> list[Check]:
    """Every check, in order; ``on_check`` sees each as soon as it is done."""
    out: list[Check] = []

    def add(c: Check) -> None:
        out.append(c)
        if on_check is not None:
            on_check(c)

    add(check_python())
    config_check, cfg = check_config(repo)
    add(config_check)
    add(check_recipients(cfg, repo))
    masters = read_masters(cfg) if cfg is not None else None
    # The identity is tried first: the masters line must not call a file it cannot
    # open addressed to the recipients (an age1 stanza does not say whose it is).
    identity = check_identity(cfg, identity_files, masters)
    add(check_masters(cfg, masters))
    add(identity)
    add(check_git_ignore(cfg))
    add(check_clock(cfg))
    add(check_signing(cfg))
    add(check_ram_dir())
    add(check_ramfs())
    for tool in tools:
        add(check_tool(tool))
    return out


def ok(checks: Sequence[Check]) -> bool:
    return all(c.status != PROBLEM for c in checks)
