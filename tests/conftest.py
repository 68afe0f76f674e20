"""Shared fixtures: real keys from the real tools, and the real CLI in a subprocess.

* keys come from Debian's ``age-keygen`` and OpenSSH's ``ssh-keygen``;
* :class:`Repo` builds an operator repository in a temp dir and runs
  ``python -m vaultpy`` against it, so exit codes, stderr and the absence of
  tracebacks are tested exactly as a user sees them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
from hangs import pytest_runtest_makereport, pytest_runtest_protocol  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
# Where vaultpy keeps the ledger of master values it wrote (vaultpy/signing.py): one per
# test process, never the home of whoever runs the suite.  A test that needs a ledger
# of its own sets XDG_STATE_HOME in its repository's environment.
os.environ["XDG_STATE_HOME"] = __import__("tempfile").mkdtemp(prefix="vaultpy-test-state-")
LOCAL_STATE = {".vaultpy.lock", ".vaultpy-verified", ".vaultpy-memo"}   # git-ignored


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is required in CI (installed by make deps)")
        pytest.skip(f"{tool} not installed (make deps installs it)")
    return path


def age_keygen(directory: Path, name: str) -> tuple[Path, str]:
    """A new X25519 identity file made by the real age-keygen; returns (file, recipient)."""
    path = directory / name
    subprocess.run([need("age-keygen"), "-o", str(path)], check=True, capture_output=True)
    public = subprocess.run([need("age-keygen"), "-y", str(path)], check=True,
                            capture_output=True, text=True).stdout.strip()
    return path, public


def ssh_keygen(directory: Path, name: str, comment: str = "", passphrase: str = ""
               ) -> tuple[Path, str]:
    """A new ed25519 key pair made by the real ssh-keygen; returns (private file, pub line)."""
    path = directory / name
    subprocess.run([need("ssh-keygen"), "-q", "-t", "ed25519", "-N", passphrase, "-C",
                    comment, "-f", str(path)], check=True, capture_output=True)
    return path, (directory / f"{name}.pub").read_text().strip()


@dataclass
class Host:
    name: str
    key: Path          # private SSH host key
    pubkey: str        # the .pub line (with comment)


@dataclass
class Repo:
    """An operator repository: hosts.toml, secrets/, a master identity, host keys."""

    root: Path
    identity: Path
    recipient: str
    hosts: dict[str, Host] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def cache(self) -> Path:
        return self.root / "secrets" / "cache"

    def run(self, *args: str, input: bytes | None = None, env: Mapping[str, str] | None = None,
            cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
        """Run the real CLI; never raises on a non-zero exit."""
        full_env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **self.env, **(env or {})}
        full_env.pop("VAULTPY_DEBUG", None)
        return subprocess.run([sys.executable, "-m", "vaultpy", *args], input=input,
                              capture_output=True, cwd=cwd or self.root, env=full_env,
                              timeout=timeout)

    def ok(self, *args: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
        proc = self.run(*args, **kw)  # type: ignore[arg-type]
        assert proc.returncode == 0, (args, proc.stdout.decode(), proc.stderr.decode())
        return proc

    def write_hosts(self, text: str) -> None:
        (self.root / "hosts.toml").write_text(text)

    def cache_files(self) -> dict[str, bytes]:
        """Every file under the cache (relative path -> bytes), except renc's lock and
        verification index (local state, git-ignored)."""
        out = {}
        for p in sorted(self.cache.rglob("*")):
            if p.is_file() and p.name not in LOCAL_STATE and not is_cache_gitignore(self, p):
                out[str(p.relative_to(self.cache))] = p.read_bytes()
        return out

    def snapshot(self) -> dict[str, tuple[bytes, int]]:
        """Bytes and mtime_ns of every file in the repository (for "nothing changed")."""
        out = {}
        for p in sorted(self.root.rglob("*")):
            if p.is_file():
                out[str(p.relative_to(self.root))] = (p.read_bytes(), p.stat().st_mtime_ns)
        return out


def is_cache_gitignore(repo: Repo, path: Path) -> bool:
    """The cache directory's .gitignore (vaultpy's local state there), which whatever
    creates the directory writes: no cache file."""
    return path.name == ".gitignore" and path.parent == repo.cache


def toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def toml_key(key: str) -> str:
    """A bare TOML key when possible, quoted otherwise (ids may contain dots)."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else toml_str(key)


def hosts_toml(recipients: list[str], secrets: list[str],
               hosts: Mapping[str, tuple[str, list[str]]], extra: str = "") -> str:
    """A hosts.toml: ``hosts`` maps name -> (pubkey, [secret ids])."""
    lines = ["[vaultpy]", "recipients = [" + ", ".join(map(toml_str, recipients)) + "]", ""]
    lines += [f"[secrets.{toml_key(s)}]" for s in secrets]
    for name, (pubkey, ids) in hosts.items():
        lines += ["", f"[hosts.{toml_key(name)}]", f"pubkey = {toml_str(pubkey)}",
                  "secrets = [" + ", ".join(map(toml_str, ids)) + "]"]
    return "\n".join(lines) + "\n" + extra


@pytest.fixture(autouse=True)
def _no_identities_left_in_memory() -> Iterator[None]:
    """A test that runs vaultpy in this process may leave keys it unlocked in
    ``identities._in_memory`` (the incremental renc hands them to the full run it falls
    back to, which the test never starts): the next test's repository, with another
    master key, would be read with them and fail (seen as a flaky Ctrl-C soak)."""
    yield
    from vaultpy import identities

    identities._in_memory.clear()


@pytest.fixture
def syncfs_as_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing else waits to be written, as far as renc can tell: ``fsutil.sync_files``
    then always takes its ``syncfs`` path.  The kernel's real count is the machine's
    (the other test worker's writes), and a test that injects a fault into ``syncfs``
    would pass without it whenever that count is high (the fdatasync path ran).  The
    other path is tested on its own (tests/test_sync_files.py and the fdatasync case
    of test_a_failed_sync_puts_no_new_host_in_place)."""
    from vaultpy._internal import fsutil
    monkeypatch.setattr(fsutil, "unwritten_bytes", lambda: 0)


@pytest.fixture
def disk_path(tmp_path: Path) -> Iterator[Path]:
    """A fresh directory on a disk file system: ``tmp_path``, unless the temp directory
    is in RAM (Debian 13 mounts a tmpfs on /tmp by default; TMPDIR may point to one),
    then one under /var/tmp.  For tests whose point is a disk: dirty pages that wait to
    be written, a directory edit must refuse for plaintext."""
    from vaultpy._internal import fsutil

    if fsutil.mount_fstype(tmp_path) not in fsutil.RAM_FILESYSTEMS:
        yield tmp_path
        return
    base = Path("/var/tmp")
    if not base.is_dir() or fsutil.mount_fstype(base) in fsutil.RAM_FILESYSTEMS:
        if os.environ.get("CI"):
            pytest.fail(f"{tmp_path} and /var/tmp are in RAM: no disk directory to test with")
        pytest.skip(f"{tmp_path} and /var/tmp are in RAM: no disk directory to test with")
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="vaultpy-test-disk-", dir=base))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def make_repo(tmp_path: Path) -> Iterator[object]:
    """Factory: make_repo(hosts=3, secrets={"id": b"plaintext", ...}) -> Repo.

    Every host gets every secret.  Master files are written with ``vaultpy
    encrypt`` (so they are real age files for the master recipient), and
    VAULTPY_IDENTITY points at the master identity.
    """
    counter = iter(range(1000))

    def factory(hosts: int = 3, secrets: Mapping[str, bytes] | None = None,
                encrypt: bool = True) -> Repo:
        root = tmp_path / f"repo{next(counter)}"
        (root / "keys").mkdir(parents=True)
        identity, recipient = age_keygen(root / "keys", "master.txt")
        repo = Repo(root, identity, recipient, env={"VAULTPY_IDENTITY": str(identity)})
        for i in range(hosts):
            name = f"host{i}"
            key, pub = ssh_keygen(root / "keys", name, comment=f"root@{name}")
            repo.hosts[name] = Host(name, key, pub)
        secrets = dict(secrets if secrets is not None else
                       {"alpha": b"alpha-secret\n", "beta": b"beta-secret"})
        repo.write_hosts(hosts_toml([recipient], list(secrets),
                                    {h.name: (h.pubkey, list(secrets))
                                     for h in repo.hosts.values()}))
        (root / "secrets").mkdir()
        if encrypt:
            for sid, plaintext in secrets.items():
                repo.ok("encrypt", sid, input=plaintext)
        return repo

    yield factory


def age_decrypt(path: Path, identity: Path) -> bytes:
    """Decrypt with the real age CLI."""
    proc = subprocess.run([need("age"), "-d", "-i", str(identity), str(path)],
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def assert_one_clean_error(proc: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    """Non-zero exit, no traceback, and every needle on one stderr line."""
    err = proc.stderr.decode()
    assert proc.returncode not in (0, 70), (proc.returncode, err)
    assert "Traceback" not in err and "Traceback" not in proc.stdout.decode(), err
    lines = [ln for ln in err.splitlines() if all(n in ln for n in needles)]
    assert lines, f"no line with {needles!r} in:\n{err}"
    return lines[0]


# ------------------------------------------------ reading devices and FIFOs

_GIB = 1 << 30


def capped_run(argv: list[str], env: dict[str, str], cwd: Path, *, input: bytes | None = None,
               stdin: int | None = None, timeout: float = 60, limit: int = _GIB
               ) -> subprocess.CompletedProcess[bytes]:
    """The real CLI in 1 GiB of address space (``limit``): a run that reads /dev/zero
    to its end fails in a second (MemoryError), instead of filling this machine's RAM."""
    import resource

    def cap() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    full = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **env}
    full.pop("VAULTPY_DEBUG", None)
    return subprocess.run(argv, input=input, stdin=stdin, capture_output=True, cwd=cwd,
                          env=full, timeout=timeout, preexec_fn=cap)


def vaultpy_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "vaultpy", *args]


def read_if_regular(path: str | Path) -> bytes | None:
    """The bytes of the regular file at ``path``; None for anything else, or gone.
    Opened without waiting: the plaintext scans cover the shared temp dir, where
    another worker's test can turn a name just listed as a file into a FIFO (a plain
    open of it once hung the suite until CI's time limit)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    except OSError:
        return None
    with open(fd, "rb") as fh:
        try:
            return fh.read() if stat.S_ISREG(os.fstat(fd).st_mode) else None
        except OSError:
            return None


@contextlib.contextmanager
def fifo_writer(path: Path, data: bytes, hold: bool = False) -> Iterator[None]:
    """A FIFO at ``path`` that a thread fills with ``data`` once a reader opens it,
    then closes, or (``hold``) holds open, no end of file, until the block ends: a
    reader that wants a line must not wait for more."""
    os.mkfifo(path)
    done = threading.Event()

    def write() -> None:
        fd = os.open(path, os.O_WRONLY)         # waits for the reader
        try:
            os.write(fd, data)
            if hold:
                done.wait(120)
        except BrokenPipeError:                 # the reader was gone
            pass
        finally:
            os.close(fd)

    thread = threading.Thread(target=write, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join(1)
        if thread.is_alive():                   # never opened: open it to let it end
            with contextlib.suppress(OSError):
                os.close(os.open(path, os.O_RDONLY | os.O_NONBLOCK))
            thread.join(10)


@pytest.fixture(scope="module")
def memo_template(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """Three hosts, three secrets, the cache complete (tests/memo_helpers.py): built
    once per module, copied by each test."""
    from memo_helpers import make_template

    return make_template(tmp_path_factory.mktemp("memo") / "template")


# ------------------------------------------------ Nix (tests/test_nix.py, test_nixhosts.py)

DEFAULT_NIXPKGS_LIB = ROOT.parent / "shared" / "nixpkgs-lib" / "lib"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(f"{reason}; CI must run the Nix tests", pytrace=False)
    pytest.skip(reason)


@dataclass(frozen=True)
class Nix:
    exe: str
    env: dict[str, str]

    def run(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.exe, "--readonly-mode", *map(str, args)],
                              capture_output=True, text=True, env=self.env, timeout=120)

    def eval(self, expr: str | None = None, *, file: Path | None = None,
             args: Iterable[str] = (), attr: str | None = None) -> Any:
        """``nix-instantiate --eval --strict --json`` of ``expr`` (or ``file``)."""
        proc = self.eval_proc(expr, file=file, args=args, attr=attr)
        assert proc.returncode == 0, f"nix-instantiate failed:\n{proc.stderr}\n{expr or ''}"
        return json.loads(proc.stdout)

    def eval_proc(self, expr: str | None = None, *, file: Path | None = None,
                  args: Iterable[str] = (), attr: str | None = None
                  ) -> subprocess.CompletedProcess[str]:
        cmd: list[str | Path] = ["--eval", "--strict", "--json", *args]
        if attr is not None:
            cmd += ["-A", attr]
        cmd += ["-E", expr] if expr is not None else [file or ""]
        return self.run(*cmd)


@pytest.fixture(scope="session")
def nix(tmp_path_factory: pytest.TempPathFactory) -> Nix:
    exe = shutil.which("nix-instantiate")
    if exe is None:
        _unavailable("nix-instantiate not installed (make deps installs nix-bin)")
    state = tmp_path_factory.mktemp("nix-state")
    env = {**os.environ, "NIX_STATE_DIR": str(state), "XDG_CACHE_HOME": str(state / "cache"),
           "NIX_PATH": ""}
    return Nix(str(exe), env)


@pytest.fixture(scope="session")
def nixpkgs_lib(nix: Nix) -> Nix:
    """``nix`` with NIXPKGS_LIB pointing at a nixpkgs lib (for lib.evalModules)."""
    given_path = os.environ.get("NIXPKGS_LIB")
    path = Path(given_path) if given_path else DEFAULT_NIXPKGS_LIB
    if not (path / "default.nix").is_file():
        where = f"NIXPKGS_LIB={given_path}" if given_path else f"the default {path}"
        _unavailable(f"no nixpkgs lib at {where}: set NIXPKGS_LIB to a nixpkgs checkout's "
                     "lib/ directory (nix-community/nixpkgs.lib), see the README")
    return Nix(nix.exe, {**nix.env, "NIXPKGS_LIB": str(path.resolve())})
