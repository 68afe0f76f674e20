"""Passphrase prompts on a real terminal: one per identity file and run, whatever the
number of hosts and secrets.

Every interactive test runs the real CLI on a pseudo-terminal that is its
*controlling* terminal (a new session, ``TIOCSCTTY``), so ``getpass`` opens
``/dev/tty`` exactly as for a user; the prompts are read from the terminal, counted
and answered.  The identities: an OpenSSH ed25519 key with a passphrase (ssh-keygen)
and an identity file encrypted by ``age -p`` itself, typed at through the terminal.
Automation without any terminal: ``--passphrase-fd N`` (a pipe) and
``VAULTPY_PASSPHRASE_FILE``.
"""

from __future__ import annotations

import fcntl
import os
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import (
    Host,
    Repo,
    age_decrypt,
    age_keygen,
    assert_one_clean_error,
    hosts_toml,
    need,
    ssh_keygen,
)

HOSTS, SECRETS = 3, 4
PLAINTEXTS = {f"s{i}": f"secret number {i}\n".encode() for i in range(SECRETS)}
ANSI = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


# --------------------------------------------------------------------------- the terminal


@dataclass
class PtyRun:
    returncode: int
    output: bytes                   # what the terminal showed (escape sequences removed)
    prompts: list[str] = field(default_factory=list)    # every prompt answered, in order

    def count(self, pattern: str) -> int:
        return sum(1 for p in self.prompts if re.search(pattern, p))


def _controlling_tty() -> None:     # in the child, after setsid(): fd 0 becomes its tty
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def run_in_pty(argv: Sequence[str], answers: Sequence[tuple[str, str]], *,
               env: Mapping[str, str], cwd: Path, timeout: float = 120,
               pass_fds: Sequence[int] = ()) -> PtyRun:
    """Run ``argv`` with a new pseudo-terminal as stdin, stdout, stderr and controlling
    terminal.  Whenever the output since the last answer matches one of ``answers``'
    patterns, the prompt is recorded and its answer typed (with Enter; a Ctrl-C,
    ``"\x03"``, alone)."""
    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
    proc = subprocess.Popen(list(argv), stdin=slave, stdout=slave, stderr=slave, cwd=cwd,
                            env=dict(env), start_new_session=True, pass_fds=pass_fds,
                            preexec_fn=_controlling_tty)
    os.close(slave)
    compiled = [(re.compile(p.encode()), a) for p, a in answers]
    raw, pos, prompts = b"", 0, []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                pytest.fail(f"{argv[-1]} did not finish; the terminal showed:\n"
                            f"{ANSI.sub(b'', raw).decode(errors='replace')}")
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:             # EIO: every process let go of the terminal
                break
            if not chunk:
                break
            raw += chunk
            for pattern, answer in compiled:
                m = pattern.search(ANSI.sub(b"", raw[pos:]))
                if m:
                    prompts.append(m.group(0).decode())
                    pos = len(raw)
                    os.write(master, answer.encode() + (b"" if answer == "\x03" else b"\n"))
                    break
        returncode = proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    return PtyRun(returncode, ANSI.sub(b"", raw), prompts)


def vaultpy_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "vaultpy", *args]


def tty_env(repo: Repo, **extra: str) -> dict[str, str]:
    env = {**os.environ, "TERM": "xterm", "COLUMNS": "200", **repo.env, **extra}
    for name in ("NO_COLOR", "VAULTPY_DEBUG", "VAULTPY_PASSPHRASE_FILE"):
        env.pop(name, None)
    return env


def no_tty(repo: Repo, *args: str, env: Mapping[str, str] | None = None,
           pass_fds: Sequence[int] = ()) -> subprocess.CompletedProcess[bytes]:
    """The CLI with no terminal at all (new session, stdin closed)."""
    full = {**os.environ, "NO_COLOR": "1", **repo.env, **(env or {})}
    full.pop("VAULTPY_DEBUG", None)
    return subprocess.run(vaultpy_argv(*args), cwd=repo.root, env=full,
                          stdin=subprocess.DEVNULL, capture_output=True,
                          start_new_session=True, pass_fds=pass_fds, timeout=120)


def assert_clean(run: PtyRun) -> None:
    assert b"Traceback" not in run.output, run.output.decode(errors="replace")


# --------------------------------------------------------------------------- fixtures

SSH_PW = "correct horse battery"
AGE_PW = "staple tuning fork"


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, object]:
    """An ed25519 key with a passphrase, and an identity file made by ``age -p``
    through a terminal (age refuses to read a passphrase from anywhere else)."""
    d = tmp_path_factory.mktemp("pwkeys")
    ssh_key, ssh_pub = ssh_keygen(d, "id_ed25519", passphrase=SSH_PW)
    inner, age_pub = age_keygen(d, "inner.txt")
    sealed = d / "master.age"
    run = run_in_pty([need("age"), "-p", "-o", str(sealed), str(inner)],
                     [(r"Enter passphrase[^:]*: ", AGE_PW), (r"Confirm passphrase: ", AGE_PW)],
                     env={**os.environ, "TERM": "xterm"}, cwd=d)
    assert run.returncode == 0, run.output
    assert len(run.prompts) == 2
    inner.unlink()
    assert sealed.read_bytes().startswith(b"age-encryption.org/v1\n-> scrypt ")
    return {"ssh": ssh_key, "ssh_pub": ssh_pub, "age_p": sealed, "age_pub": age_pub}


class Repos:
    """Repositories of HOSTS hosts x SECRETS secrets, built once per module (keys and
    master files cost seconds) for each set of master recipients; :meth:`get` hands one
    out with an empty cache and VAULTPY_IDENTITY naming ``identities``."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.built: dict[tuple[str, ...], Repo] = {}

    def get(self, recipients: list[str], identities: list[Path]) -> Repo:
        key = tuple(recipients)
        if key not in self.built:
            self.built[key] = self._build(recipients)
        repo = self.built[key]
        if repo.cache.exists():
            shutil.rmtree(repo.cache)
        repo.env = {"VAULTPY_IDENTITY": ":".join(map(str, identities)),
                    "HOME": str(repo.root / "home")}
        return repo

    def _build(self, recipients: list[str]) -> Repo:
        root = self.base / f"repo{len(self.built)}"
        (root / "keys").mkdir(parents=True)
        (root / "secrets").mkdir()
        repo = Repo(root, Path("/nonexistent"), recipients[0])
        for i in range(HOSTS):
            key, pub = ssh_keygen(root / "keys", f"host{i}", comment=f"root@host{i}")
            repo.hosts[f"host{i}"] = Host(f"host{i}", key, pub)
        repo.write_hosts(hosts_toml(recipients, list(PLAINTEXTS),
                                    {h.name: (h.pubkey, list(PLAINTEXTS))
                                     for h in repo.hosts.values()}))
        for sid, plaintext in PLAINTEXTS.items():
            repo.ok("encrypt", sid, input=plaintext)
        return repo


@pytest.fixture(scope="module")
def repos(tmp_path_factory) -> Repos:
    return Repos(tmp_path_factory.mktemp("pwrepos"))


def assert_cache_complete(repo: Repo) -> None:
    """Every host has every secret, and age opens each with the host's key."""
    files = repo.cache_files()
    assert len(files) == HOSTS * SECRETS, sorted(files)
    for name in files:
        host, fname = name.split("/")
        assert age_decrypt(repo.cache / name, repo.hosts[host].key) == \
            PLAINTEXTS[fname.split(".")[0]]


PROMPT = r"Passphrase for [^\n]*?: "


# --------------------------------------------------------------------------- one prompt per file


@pytest.mark.parametrize("jobs", ["1", "4"])
def test_renc_asks_once_per_identity_file(repos, keys, jobs):
    repo = repos.get([keys["ssh_pub"], keys["age_pub"]], [keys["ssh"], keys["age_p"]])
    answers = [(r"Passphrase for [^\n]*id_ed25519: ", SSH_PW),
               (r"Passphrase for [^\n]*master\.age: ", AGE_PW)]
    run = run_in_pty(vaultpy_argv("renc", "-j", jobs), answers, env=tty_env(repo),
                     cwd=repo.root)
    assert run.returncode == 0, run.output.decode(errors="replace")
    assert_clean(run)
    # exactly one prompt per identity file, for 3 hosts x 4 secrets
    assert run.count("id_ed25519") == 1 and run.count("master.age") == 1, run.prompts
    assert len(re.findall(PROMPT.encode(), run.output)) == 2
    # typed with echo off: the passphrases never appear on the terminal
    assert SSH_PW.encode() not in run.output and AGE_PW.encode() not in run.output
    assert_cache_complete(repo)


@pytest.mark.parametrize("which", ["ssh", "age_p"])
def test_each_kind_alone_asks_once(repos, keys, which):
    pub, pw = (keys["ssh_pub"], SSH_PW) if which == "ssh" else (keys["age_pub"], AGE_PW)
    repo = repos.get([pub], [keys[which]])
    run = run_in_pty(vaultpy_argv("renc"), [(PROMPT, pw)], env=tty_env(repo), cwd=repo.root)
    assert run.returncode == 0, run.output.decode(errors="replace")
    assert len(run.prompts) == 1
    assert_cache_complete(repo)
    # decrypt one secret: one prompt again (a new run), the plaintext on the terminal
    run = run_in_pty(vaultpy_argv("decrypt", "s2"), [(PROMPT, pw)], env=tty_env(repo),
                     cwd=repo.root)
    assert run.returncode == 0 and len(run.prompts) == 1
    assert b"secret number 2" in run.output


@pytest.mark.parametrize("which", ["ssh", "age_p"])
def test_wrong_passphrase_on_the_terminal_is_a_clean_error(repos, keys, which):
    pub = keys["ssh_pub"] if which == "ssh" else keys["age_pub"]
    repo = repos.get([pub], [keys[which]])
    run = run_in_pty(vaultpy_argv("renc"), [(PROMPT, "not it at all")], env=tty_env(repo),
                     cwd=repo.root)
    assert run.returncode == 1, run.output.decode(errors="replace")
    assert_clean(run)
    assert len(run.prompts) == 1                    # asked once, no loop
    assert b"wrong passphrase" in run.output and b"not it at all" not in run.output
    assert repo.cache_files() == {}                 # nothing written


# --------------------------------------------------------------------------- no terminal at all


def test_passphrase_fd_without_a_terminal(repos, keys):
    repo = repos.get([keys["ssh_pub"], keys["age_pub"]], [keys["ssh"], keys["age_p"]])
    r, w = os.pipe()
    try:
        # one line per identity file, in order, and a line that must stay unread
        os.write(w, f"{SSH_PW}\n{AGE_PW}\nNOT-READ\n".encode())
        os.close(w)
        proc = no_tty(repo, "--passphrase-fd", str(r), "renc", "-j", "4", pass_fds=[r])
        assert proc.returncode == 0, proc.stderr.decode()
        assert b"Passphrase for" not in proc.stdout + proc.stderr
        assert os.read(r, 100) == b"NOT-READ\n"     # exactly one line per identity file
    finally:
        os.close(r)
    assert_cache_complete(repo)


def test_passphrase_fd_wrong_or_closed(repos, keys):
    repo = repos.get([keys["ssh_pub"]], [keys["ssh"]])
    r, w = os.pipe()
    os.write(w, b"nope\n")
    os.close(w)
    proc = no_tty(repo, "--passphrase-fd", str(r), "renc", pass_fds=[r])
    os.close(r)
    assert_one_clean_error(proc, "id_ed25519", "wrong passphrase")
    assert b"nope" not in proc.stderr and repo.cache_files() == {}
    proc = no_tty(repo, "--passphrase-fd", "97", "renc")
    assert_one_clean_error(proc, "--passphrase-fd", "cannot read passphrase")


@pytest.mark.parametrize("which", ["ssh", "age_p"])
def test_passphrase_file_without_a_terminal(repos, keys, tmp_path, which):
    pub, pw = (keys["ssh_pub"], SSH_PW) if which == "ssh" else (keys["age_pub"], AGE_PW)
    repo = repos.get([pub], [keys[which]])
    pwfile = tmp_path / "pw"
    pwfile.write_text(pw + "\n")
    proc = no_tty(repo, "renc", "-j", "4", env={"VAULTPY_PASSPHRASE_FILE": str(pwfile)})
    assert proc.returncode == 0, proc.stderr.decode()
    assert_cache_complete(repo)


def test_no_terminal_and_no_passphrase_source(repos, keys):
    repo = repos.get([keys["ssh_pub"]], [keys["ssh"]])
    proc = no_tty(repo, "renc")
    assert_one_clean_error(proc, "VAULTPY_PASSPHRASE_FILE", "no terminal")
    assert repo.cache_files() == {}


# --------------------------------------------------------------------------- progress bar


def test_renc_progress_bar_on_a_terminal_counts_to_the_end(make_repo):
    repo = make_repo(hosts=3)
    run = run_in_pty(vaultpy_argv("renc", "-j", "2"), [], env=tty_env(repo), cwd=repo.root)
    assert run.returncode == 0, run.output.decode(errors="replace")
    shown = ANSI.sub(b"", run.output)
    assert b"encrypting" in shown and b"6/6" in shown, shown


def test_renc_progress_bar_starts_no_thread():
    """renc forks its workers while the bar is up, and fork() must not cut a thread off
    in the middle of a write: rich's refresh thread is not used (the callback redraws)."""
    from vaultpy import cli

    before = threading.enumerate()
    with cli._progress() as report:
        assert threading.enumerate() == before
        report(1, 2)
        report(2, 2)
    assert threading.enumerate() == before


# --------------------------------------------------------------------------- Ctrl-C at a prompt


def test_a_pending_signal_ends_a_terminal_read_it_did_not_interrupt():
    """A signal whose C handler ran in another thread, or before the read() began,
    interrupts no read: its Python handler waits for the reading thread to run bytecode.
    A blocking read() would wait for the next key; renc hung so at a PIN prompt after a
    Ctrl-C about once in 400 runs. The terminal read waits at most 0.1 s at a time."""
    from vaultpy import age

    class Stop(Exception):
        pass

    def handler(_signum: int, _frame: object) -> None:
        raise Stop

    master, slave = os.openpty()
    done = threading.Event()

    def other_thread() -> None:
        time.sleep(0.3)
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)   # handled here, in C
        if not done.wait(5):
            os.write(master, b"key\n")      # what a blocking read() would wait for

    old = signal.signal(signal.SIGUSR1, handler)
    sender = threading.Thread(target=other_thread)
    try:
        start = time.monotonic()
        sender.start()
        with pytest.raises(Stop):
            age._read_tty_line(slave)
        assert time.monotonic() - start < 3
    finally:
        done.set()
        sender.join()
        signal.signal(signal.SIGUSR1, old)
        os.close(master)
        os.close(slave)
