"""Reliability and security of the operator side (issue 7, parts 2, 3, 5 and 6).

1. ``renc`` under SIGKILL: hundreds of kills of the whole process group at random
   moments, after each an independent audit of the cache (every final name decrypts
   with the real ``age`` CLI and the host's key to the plaintext its name promises),
   then a normal run converges (``vaultpy check`` exits 0, no temp file left).
2. Concurrency: renc/renc, rekey/rekey, renc/encrypt and rekey/encrypt at once are
   serialised by the repository lock; a lock file left by a killed holder blocks
   nobody (flock semantics).
3. Plaintext hygiene: every command under ``strace -f``; every file opened for
   writing outside RAM-backed directories is scanned for the plaintext, and so are
   /tmp, $HOME, the repository and the cache; error messages never echo secret
   content; no command that holds plaintext can dump core; umask 077 for edit and
   activate.
4. Activation hardening not covered by test_activate*.py: a store that is a bind
   mount of a disk directory, or a ramfs writable by others, is refused.

Everything is real: keys from ``age-keygen``/``ssh-keygen``, master files from the
``age`` CLI or ``vaultpy encrypt``, SIGKILL from the kernel, strace, unshare, ramfs.
Nothing of vaultpy is mocked.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from activate_helpers import (
    activate_cmd,
    make_host_root,
    make_recorder,
    unshare_sh,
    vaultpy_env,
    write_deploy_hosts,
)
from conftest import (
    ROOT,
    Host,
    Repo,
    age_keygen,
    assert_one_clean_error,
    need,
    read_if_regular,
    ssh_keygen,
    toml_str,
)
from memo_helpers import trusted

from vaultpy import signing
from vaultpy._internal.writes import CACHE_GITIGNORE

TMP_MARK = ".vaultpy-tmp-"           # docs/contracts.md: temp names never end in .age
NAME_RE = re.compile(r"(?P<id>[A-Za-z0-9][A-Za-z0-9_.-]*)\.(?P<hash>[0-9a-f]{32})\.age")
LOCK = ".vaultpy.lock"
INDEX = ".vaultpy-verified"
MEMO = ".vaultpy-memo"
BIG = 256 * 1024

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts, chown, setpriv)")


def token(label: str) -> bytes:
    """A distinctive random plaintext; the tests never write it to a file themselves."""
    return f"vpy-{label}-{os.urandom(16).hex()}".encode()


def normalise(pubkey: str) -> str:
    """DESIGN §3, independently of vaultpy: ``type base64`` (comment dropped)."""
    pubkey = pubkey.strip()
    return pubkey if pubkey.startswith("age1") else " ".join(pubkey.split()[:2])


def cache_name(sid: str, master: bytes, recipients: Sequence[str]) -> str:
    """DESIGN §3, independently of vaultpy."""
    text = hashlib.sha256(master).hexdigest() + "\n" + "\n".join(recipients)
    return f"{sid}.{hashlib.sha256(text.encode()).hexdigest()[:32]}.age"


def age_encrypt_to(path: Path, recipients: Sequence[str], plaintext: bytes) -> None:
    """A master file written by the real age CLI (plaintext through a pipe only)."""
    args = [need("age")]
    for r in recipients:
        args += ["-r", r]
    proc = subprocess.run([*args, "-o", str(path)], input=plaintext, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()


def env_of(repo: Repo, **extra: str) -> dict[str, str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **repo.env, **extra}
    env.pop("VAULTPY_DEBUG", None)
    return env


def vaultpy_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "vaultpy", *args]


def killpg(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


def flock_holders(lock: Path) -> tuple[set[int], set[int]]:
    """(pids holding, pids waiting for) an flock on ``lock``, from /proc/locks."""
    ino = os.stat(lock).st_ino
    holding: set[int] = set()
    waiting: set[int] = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "FLOCK" not in fields:
            continue
        i = fields.index("FLOCK")
        try:
            pid = int(fields[i + 3])
            file_ino = int(fields[i + 4].split(":")[2])
        except (IndexError, ValueError):
            continue
        if file_ino == ino:
            (waiting if "->" in fields else holding).add(pid)
    return holding, waiting


def wait_until(pred: object, timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


# =============================================================== 1. renc under SIGKILL

@dataclass
class Fleet:
    """An operator repository whose masters the test rewrites with the age CLI, and
    everything needed to audit its cache independently of vaultpy."""

    name: str
    repo: Repo
    sizes: dict[str, int]                              # secret id -> plaintext size
    needs: dict[str, list[str]]                        # host -> ids it receives
    recipients: dict[str, tuple[str, ...]]             # host -> normalised recipients
    keys: dict[str, list[Path]]                        # host -> its private key files
    # (host, cache file name) -> sha256 of the plaintext that name stands for; every
    # master version the test ever wrote is in here
    promised: dict[tuple[str, str], str] = field(default_factory=dict)
    audited: dict[str, tuple[int, int, int, int]] = field(default_factory=dict)
    decrypted: int = 0
    # With a signing key (vaultpy signing-key): each host's list beside its files, the
    # list of masters at the top.  The test writes masters with the age CLI, which
    # nothing vouches for: its renc runs accept them (--accept-all).
    signed: bool = False

    @property
    def renc_args(self) -> tuple[str, ...]:
        return ("renc", "--jobs", "2", *(("--accept-all",) if self.signed else ()))

    @property
    def cache(self) -> Path:
        return self.repo.cache

    def master(self, sid: str) -> Path:
        return self.repo.root / "secrets" / f"{sid}.age"

    def set_master(self, sid: str, rng: random.Random) -> None:
        size = self.sizes[sid]
        plain = (rng.randbytes(size) if size >= 1024
                 else f"{self.name}-{sid}-{rng.getrandbits(96):024x}".encode())
        age_encrypt_to(self.master(sid), [self.repo.recipient], plain)
        digest = hashlib.sha256(plain).hexdigest()
        data = self.master(sid).read_bytes()
        for host, ids in self.needs.items():
            if sid in ids:
                self.promised[(host, cache_name(sid, data, self.recipients[host]))] = digest

    def planned(self) -> set[Path]:
        """The final paths the current masters call for."""
        out = set()
        for host, ids in self.needs.items():
            for sid in ids:
                out.add(self.cache / host / cache_name(sid, self.master(sid).read_bytes(),
                                                       self.recipients[host]))
        return out

    def decrypt(self, path: Path, host: str) -> str:
        """sha256 of what the real age CLI decrypts ``path`` to, with each host key."""
        digests = set()
        for key in self.keys[host]:
            proc = subprocess.run([need("age"), "-d", "-i", str(key), str(path)],
                                  capture_output=True)
            assert proc.returncode == 0, f"{path} does not decrypt with {key}: " \
                                         f"{proc.stderr.decode().strip()}"
            digests.add(hashlib.sha256(proc.stdout).hexdigest())
            self.decrypted += 1
        assert len(digests) == 1, path
        return digests.pop()

    def audit(self) -> list[Path]:
        """Every file with a final name is complete and decrypts to the plaintext its
        name promises; anything else in the cache is a temp name.  Returns the temp
        files (a killed run may leave them)."""
        temps: list[Path] = []
        for entry in sorted(os.scandir(self.cache), key=lambda e: e.name):
            path = Path(entry.path)
            if entry.name in (LOCK, INDEX, MEMO):
                assert entry.is_file(follow_symlinks=False), path
            elif entry.name == ".gitignore":     # the first renc's: whole, or not there
                assert path.read_text() == CACHE_GITIGNORE, path
            elif self.signed and entry.name in (signing.MASTERS, signing.MASTERS_SIGNATURE):
                assert entry.is_file(follow_symlinks=False), path
            elif TMP_MARK in entry.name and entry.name.startswith("."):
                temps.append(path)
            else:
                assert entry.is_dir(follow_symlinks=False) and entry.name in self.needs, \
                    f"unexpected entry {path}"
                temps += self._audit_host(entry.name)
        return temps

    def _audit_host(self, host: str) -> list[Path]:
        temps = []
        for entry in os.scandir(self.cache / host):
            path = Path(entry.path)
            st = entry.stat(follow_symlinks=False)
            if entry.name.startswith(".") and TMP_MARK in entry.name:
                assert not entry.name.endswith(".age")
                temps.append(path)
                continue
            assert stat.S_ISREG(st.st_mode), f"{path} is not a regular file"
            if self.signed and entry.name in signing.FILES:
                continue        # (check verifies them after each recovery)
            assert NAME_RE.fullmatch(entry.name), f"{path}: not a cache name"
            promise = self.promised.get((host, entry.name))
            assert promise is not None, f"{path}: no master version has this name"
            assert st.st_size > 0, f"{path} is empty under a final name"
            key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            if self.audited.get(str(path)) == key:
                continue                    # the very bytes already decrypted
            assert self.decrypt(path, host) == promise, f"{path}: wrong plaintext"
            self.audited[str(path)] = key
        return temps

    def temp_files(self) -> set[Path]:
        dirs = [self.cache, *(self.cache / h for h in self.needs)]
        return {p for d in dirs if d.is_dir() for p in d.iterdir()
                if p.name.startswith(".") and TMP_MARK in p.name}

    def finals(self) -> set[Path]:
        return {p for h in self.needs if (self.cache / h).is_dir()
                for p in (self.cache / h).iterdir() if NAME_RE.fullmatch(p.name)}


def build_fleet(root: Path, name: str, hosts: Mapping[str, Sequence[str]],
                sizes: Mapping[str, int], needs: Mapping[str, Sequence[str]],
                templates: Mapping[str, str] = {}, signed: bool = False) -> Fleet:
    """``hosts``: host -> key kinds ("ssh" or "age"; several = a pubkey list);
    ``templates``: host -> a secret id it only uses in a template; ``signed``: with a
    signing key."""
    keydir = root / "keys"
    keydir.mkdir(parents=True)
    identity, recipient = age_keygen(keydir, "master.txt")
    repo = Repo(root, identity, recipient, env={"VAULTPY_IDENTITY": str(identity)})
    fleet = Fleet(name, repo, dict(sizes), {}, {}, {})
    lines = ["[vaultpy]", f"recipients = [{toml_str(recipient)}]", ""]
    lines += [f"[secrets.{sid}]" for sid in sizes]
    for host, kinds in hosts.items():
        pubs, keys = [], []
        for n, kind in enumerate(kinds):
            if kind == "ssh":
                key, pub = ssh_keygen(keydir, f"{host}-{n}", comment=f"root@{host}")
            else:
                key, pub = age_keygen(keydir, f"{host}-{n}.txt")
            pubs.append(pub)
            keys.append(key)
        repo.hosts[host] = Host(host, keys[0], pubs[0])
        fleet.keys[host] = keys
        fleet.recipients[host] = tuple(normalise(p) for p in pubs)
        fleet.needs[host] = list(needs[host]) + ([templates[host]] if host in templates
                                                 else [])
        lines += ["", f"[hosts.{host}]",
                  "pubkey = [" + ", ".join(map(toml_str, pubs)) + "]",
                  "secrets = [" + ", ".join(map(toml_str, needs[host])) + "]"]
        if host in templates:
            lines += [f'[hosts.{host}.templates."t.env"]',
                      f'content = "T={{{{ secrets.{templates[host]} }}}}\\n"']
    repo.write_hosts("\n".join(lines) + "\n")
    (root / "secrets").mkdir()
    rng = random.Random(name)
    for sid in sizes:
        fleet.set_master(sid, rng)
    repo.ok("renc")
    if signed:
        repo.ok("signing-key")
        fleet.signed = True
        repo.ok(*fleet.renc_args)       # every file again, and the lists signed
        repo.ok("check")
    assert fleet.finals() == fleet.planned()
    assert fleet.audit() == []
    return fleet


def fleet_ssh(root: Path) -> Fleet:
    """4 ssh-ed25519 hosts x 9 secrets (3 of 256 KiB): 34 cache files."""
    sizes = {f"s{i}": 40 for i in range(6)} | {f"big{i}": BIG for i in range(3)}
    ids = list(sizes)
    needs = {"web1": ids, "web2": ids, "db1": [*ids[:3], "big0", "big1"],
             "mail1": [*ids[2:6], "big2"]}
    return build_fleet(root, "ssh", {h: ["ssh"] for h in needs}, sizes, needs)


def fleet_mixed(root: Path) -> Fleet:
    """6 hosts: age1 keys, ssh keys, a host with two keys (a rotation in progress),
    template-only secrets; 8 secrets (2 of 256 KiB)."""
    sizes = {f"k{i}": 32 for i in range(6)} | {"blob0": BIG, "blob1": BIG}
    hosts = {"a1": ["age"], "a2": ["age"], "s1": ["ssh"], "s2": ["ssh"],
             "rot": ["ssh", "age"], "lone": ["age"]}
    needs = {"a1": ["k0", "k1", "blob0"], "a2": ["k1", "k2", "k3", "blob1"],
             "s1": ["k0", "k4", "blob0", "blob1"], "s2": ["k5", "k2"],
             "rot": ["k0", "k1", "k2", "k3", "blob1"], "lone": ["k5"]}
    templates = {"a1": "k5", "s2": "blob0", "lone": "k4"}
    return build_fleet(root, "mixed", hosts, sizes, needs, templates)


def fleet_signed(root: Path) -> Fleet:
    """A signed cache (vaultpy signing-key): 3 ssh-ed25519 hosts x 7 secrets (2 of
    256 KiB), where a kill can also land among the lists' writes."""
    sizes = {f"v{i}": 48 for i in range(5)} | {f"big{i}": BIG for i in range(2)}
    ids = list(sizes)
    needs = {"app1": ids, "app2": [*ids[:4], "big0"], "gw1": [*ids[3:], "v0"]}
    return build_fleet(root, "signed", {h: ["ssh"] for h in needs}, sizes, needs,
                       signed=True)


class Inotify:
    """Wake up when a file is created or renamed into any of ``dirs`` (inotify(7))."""

    IN_OPEN, IN_CREATE, IN_MOVED_TO = 0x20, 0x100, 0x80

    def __init__(self, dirs: Sequence[Path], mask: int = IN_CREATE | IN_MOVED_TO) -> None:
        import ctypes

        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        assert self.fd >= 0, os.strerror(ctypes.get_errno())
        self.names: dict[int, Path] = {}
        for d in dirs:
            wd = self._libc.inotify_add_watch(self.fd, os.fsencode(d), mask)
            assert wd >= 0, (d, os.strerror(ctypes.get_errno()))
            self.names[wd] = d

    def drain(self) -> list[tuple[int, str]]:
        """Pending events: (mask, name)."""
        import struct

        out = []
        while True:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            pos = 0
            while pos < len(buf):
                _wd, mask, _cookie, size = struct.unpack_from("iIII", buf, pos)
                name = buf[pos + 16: pos + 16 + size].rstrip(b"\0").decode()
                out.append((mask, name))
                pos += 16 + size

    def wait(self, mask: int, proc: subprocess.Popen[bytes], timeout: float = 30,
             name: str | None = None) -> bool:
        """Until an event matching ``mask`` (and ``name``) (True) or the process ends
        (False)."""
        import select

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(m & mask and name in (None, n) for m, n in self.drain()):
                return True
            if proc.poll() is not None:
                return False
            select.select([self.fd], [], [], 0.005)
        raise AssertionError("renc did not finish")

    def close(self) -> None:
        os.close(self.fd)


def _launch(fleet: Fleet) -> subprocess.Popen[bytes]:
    return subprocess.Popen(vaultpy_argv(*fleet.renc_args), cwd=fleet.repo.root,
                            env=env_of(fleet.repo), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def _renc_timeline(fleet: Fleet, watch: Inotify, rng: random.Random, rounds: int = 3
                   ) -> dict[str, float]:
    """Medians of a renc with work: time to its first temp file, to its first rename,
    to its exit."""
    marks: dict[str, list[float]] = {"create": [], "rename": [], "end": []}
    for _ in range(rounds):
        for sid in rng.sample(sorted(fleet.sizes), 3):
            fleet.set_master(sid, rng)
        watch.drain()
        t0 = time.monotonic()
        proc = _launch(fleet)
        assert watch.wait(Inotify.IN_CREATE, proc)
        marks["create"].append(time.monotonic() - t0)
        assert watch.wait(Inotify.IN_MOVED_TO, proc)
        marks["rename"].append(time.monotonic() - t0)
        assert proc.wait() == 0
        marks["end"].append(time.monotonic() - t0)
    return {k: sorted(v)[rounds // 2] for k, v in marks.items()}


PHASES = ("before-encryption", "encrypting", "renaming", "after-encryption", "finished")


def _soak(fleet: Fleet, kills: int, seed: int, recover_every: int) -> dict[str, int]:
    """``kills`` SIGKILLs of ``renc --jobs 2`` (the whole process group); a normal
    run and ``vaultpy check`` after every ``recover_every``-th kill (in between, the
    next run is killed on top of the leftovers of the previous one)."""
    rng = random.Random(seed)
    watch = Inotify([fleet.cache / h for h in fleet.needs])
    try:
        t = _renc_timeline(fleet, watch, rng)
        counts = dict.fromkeys(PHASES, 0)
        leftovers_seen = 0
        for i in range(kills):
            where = f"{fleet.name} kill {i} (seed {seed})"
            for sid in rng.sample(sorted(fleet.sizes), rng.randint(1, 3)):
                fleet.set_master(sid, rng)
            planned = fleet.planned()
            before = fleet.finals()
            work = planned - before
            assert work
            old_temps = fleet.temp_files()        # left by the previous kill, if any
            watch.drain()
            proc = _launch(fleet)
            # 30 % anywhere in the run; the rest timed from the first temp file
            # (encryption under way) or from the first rename (half of those at once)
            pick = rng.random()
            if pick < 0.3:
                time.sleep(rng.uniform(0, t["end"]))
            elif pick < 0.75:
                if watch.wait(Inotify.IN_CREATE, proc):
                    time.sleep(rng.uniform(0, max(0.001, t["rename"] - t["create"])))
            elif watch.wait(Inotify.IN_MOVED_TO, proc) and pick < 0.875:
                time.sleep(rng.uniform(0, max(0.001, t["end"] - t["rename"])))
            killpg(proc)
            rc = proc.wait()

            temps = set(fleet.audit()) - old_temps    # every final name complete, correct
            after = fleet.finals()
            done = work & after
            if rc == 0:
                phase = "finished"
            elif done == work:
                phase = "after-encryption"      # renames done: index, prune, fsync
            elif done:
                phase = "renaming"
            elif any(p.parent != fleet.cache for p in temps):
                phase = "encrypting"
            else:
                phase = "before-encryption"
            if phase in ("before-encryption", "encrypting"):
                assert after == before, f"{where}: final names changed before a rename"
            counts[phase] += 1
            leftovers_seen += len(temps)
            if phase != "finished":
                assert rc == -signal.SIGKILL, (where, rc)

            if (i + 1) % recover_every == 0 or i == kills - 1:
                fleet.repo.ok(*fleet.renc_args)             # a normal run converges
                assert fleet.audit() == [], f"{where}: temp files survive a normal run"
                assert fleet.finals() == planned, where
                fleet.repo.ok("check")
    finally:
        watch.close()
    counts["leftover-temp-files"] = leftovers_seen
    return counts


@pytest.fixture(scope="module")
def fleets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Fleet]:
    base = tmp_path_factory.mktemp("fleets")
    return {"ssh": fleet_ssh(base / "ssh"), "mixed": fleet_mixed(base / "mixed"),
            "signed": fleet_signed(base / "signed")}


@pytest.mark.slow
def test_renc_sigkill_soak_never_leaves_a_partial_cache_file(fleets: dict[str, Fleet]
                                                             ) -> None:
    """VAULTPY_RENC_KILLS (default 200) kills over both fleets, soaked side by side;
    VAULTPY_SOAK_SEED replays a run; VAULTPY_RENC_RECOVER_EVERY (default 2): a normal
    renc + check after every n-th kill (the kill in between lands on the leftovers)."""
    total = int(os.environ.get("VAULTPY_RENC_KILLS", "200"))
    seed = int(os.environ.get("VAULTPY_SOAK_SEED", "0")) or int.from_bytes(os.urandom(4),
                                                                          "big")
    t0 = time.monotonic()
    every = int(os.environ.get("VAULTPY_RENC_RECOVER_EVERY", "2"))
    per = -(-total // len(fleets))
    # the fleets are independent repositories: soak them side by side
    with concurrent.futures.ThreadPoolExecutor(len(fleets)) as pool:
        futures = {name: pool.submit(_soak, fleet, per, seed + n, every)
                   for n, (name, fleet) in enumerate(sorted(fleets.items()))}
        report = {name: f.result() for name, f in futures.items()}
    elapsed = time.monotonic() - t0
    kills = sum(sum(c[p] for p in PHASES) for c in report.values())
    lines = [f"renc SIGKILL soak: {kills} kills in {elapsed:.0f} s (seed {seed}; "
             f"VAULTPY_RENC_KILLS={total})"]
    for name, c in report.items():
        lines.append(f"  {name}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
    print("\n" + "\n".join(lines))
    assert kills >= total
    landed = sum(c["encrypting"] + c["renaming"] for c in report.values())
    assert landed >= kills // 10, f"too few kills landed during encryption: {report}"


def press_ctrl_c(proc: subprocess.Popen[bytes], twice: bool, rng: random.Random,
                 where: str) -> bool:
    """Ctrl-C (SIGINT to renc's process group; ``twice``: again a few ms later), then
    wait for renc.  It either finished first (exit 0) or prints "interrupted" and exits
    130: never killed by the signal, even as Python exits (vaultpy ignores SIGINT by
    then).  True when it was interrupted."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
        if twice:
            time.sleep(rng.uniform(0.001, 0.005))
            os.killpg(proc.pid, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        killpg(proc)
        raise AssertionError(f"{where}: renc hangs after Ctrl-C") from None
    if proc.returncode == 0:
        return False
    assert (proc.returncode, err) == (130, b"interrupted\n"), (where, out, err)
    return True


def test_ctrl_c_stops_renc_and_its_workers_cleanly(tmp_path: Path) -> None:
    """A terminal's Ctrl-C is SIGINT to the whole process group: renc and its worker
    processes.  Whenever it lands (a first run's check, encryption, publishing), and
    when it is pressed twice, renc says "interrupted" and exits 130, no worker prints a
    traceback or outlives it (holding the lock), no temp file stays behind and every
    final name is complete.  The next run completes the cache."""
    sizes = {f"s{i:02d}": 40 for i in range(24)} | {f"big{i}": 1 << 20 for i in range(4)}
    needs = {f"h{i}": list(sizes) for i in range(6)}
    fleet = build_fleet(tmp_path / "fleet", "ctrlc", {h: ["ssh"] for h in needs}, sizes,
                        needs)
    seed = int(os.environ.get("VAULTPY_SOAK_SEED", "0")) or int.from_bytes(os.urandom(4),
                                                                          "big")
    rng = random.Random(seed)
    env = env_of(fleet.repo, VAULTPY_NO_MEMO="1")     # the full pipeline, with workers
    # A first run: the time from opening hosts.toml (the interpreter is up: a Ctrl-C
    # during its own start-up is Python's to report) to the end.
    # The same for a run with changed masters, from its first temp file in the cache:
    # a Ctrl-C drawn from the first half of that span (the rest is publishing and the
    # interpreter's exit) lands before the last final name, however fast the machine
    # (a fixed 0-20 ms once missed 6 runs in 8 on a fast moment).
    bigs = sorted(s for s in sizes if s.startswith("big"))

    def change_some() -> None:          # one big master among them: work to land on
        for sid in [rng.choice(bigs), *rng.sample(sorted(set(sizes) - set(bigs)), 3)]:
            fleet.set_master(sid, rng)

    def start(first: bool, **out: Any) -> tuple[subprocess.Popen[bytes], bool]:
        """A renc run: a first one (no cache), or one with changed masters; returned
        once it has opened hosts.toml, or made its first temp file in the cache (False
        where it ended before)."""
        if first:
            shutil.rmtree(fleet.cache)
            watch = Inotify([fleet.repo.root], Inotify.IN_OPEN)
        else:
            change_some()
            watch = Inotify([fleet.cache / h for h in fleet.needs])
        proc = subprocess.Popen(vaultpy_argv("renc", "--jobs", "2"), cwd=fleet.repo.root,
                                env=env, start_new_session=True, **out)
        try:
            seen = (watch.wait(Inotify.IN_OPEN, proc, name="hosts.toml") if first
                    else watch.wait(Inotify.IN_CREATE, proc))
        finally:
            watch.close()
        return proc, seen

    ends: list[float] = []
    encs: list[float] = []
    for _ in range(3):
        for span, first in ((ends, True), (encs, False)):
            proc, seen = start(first, stdout=subprocess.DEVNULL)
            assert seen
            t0 = time.monotonic()
            assert proc.wait() == 0
            span.append(time.monotonic() - t0)
    t_end, t_enc = sorted(ends)[1], sorted(encs)[1]
    landed = {"first-run": 0, "encrypting": 0, "twice": 0}
    for i in range(16):
        where = f"interrupt {i} (seed {seed})"
        first = i % 2 == 0
        twice = i % 4 == 3                             # every other encrypting run
        proc, seen = start(first, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        if first:                                      # no cache, no lock file
            assert seen, where
            time.sleep(rng.uniform(0, 0.8 * t_end))   # (not as it exits)
        elif seen:                                     # encryption under way
            time.sleep(rng.uniform(0, 0.5 * t_enc))
        if press_ctrl_c(proc, twice, rng, where) and fleet.finals() != fleet.planned():
            landed["first-run" if first else "encrypting"] += 1    # it stopped short
            landed["twice"] += twice
        if fleet.cache.exists():
            assert fleet.audit() == [], f"{where}: temp files left behind"
            if (fleet.cache / LOCK).exists():
                assert flock_holders(fleet.cache / LOCK) == (set(), set()), \
                    f"{where}: a process outlived renc, holding its lock"
        fleet.repo.ok("renc", "--jobs", "2")
        assert fleet.audit() == [] and fleet.finals() == fleet.planned(), where
    print(f"\nCtrl-C of renc: {landed} (seed {seed})")
    assert landed["first-run"] >= 3 and landed["encrypting"] >= 3 and landed["twice"], landed
    fleet.repo.ok("check")


def test_ctrl_c_stops_an_incremental_renc_cleanly(tmp_path: Path) -> None:
    """The common run after ``vaultpy edit``: a few masters changed since a clean run,
    re-encrypted without the CLI or a worker pool (vaultpy/_internal/delta.py).  A
    Ctrl-C there, once or twice, ends it as cleanly as the full pipeline: "interrupted"
    and exit 130, no temp file, every final name complete (the old value or the new),
    and the next run completes the cache."""
    sizes = {f"s{i}": 40 for i in range(4)} | {f"big{i}": 1 << 20 for i in range(3)}
    needs = {f"h{i}": list(sizes) for i in range(6)}
    fleet = build_fleet(tmp_path / "fleet", "ctrlc-delta", {h: ["ssh"] for h in needs},
                        sizes, needs)
    seed = int(os.environ.get("VAULTPY_SOAK_SEED", "0")) or int.from_bytes(os.urandom(4),
                                                                          "big")
    rng = random.Random(seed)
    env = env_of(fleet.repo)                            # the memo on
    fleet.repo.ok("renc")
    stopped = {"once": 0, "twice": 0}
    for i in range(12):
        where = f"interrupt {i} (seed {seed})"
        twice = i % 2 == 1
        fleet.repo.ok("renc")               # nothing to do: a clean state recorded
        assert trusted(fleet.repo, "renc"), where
        for sid in ["big0", "big1", "big2", rng.choice(["s0", "s1", "s2", "s3"])]:
            fleet.set_master(sid, rng)      # 24 files: the incremental run takes them
        watch = Inotify([fleet.cache / h for h in fleet.needs])
        proc = subprocess.Popen(vaultpy_argv("renc"), cwd=fleet.repo.root, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
        try:
            if watch.wait(Inotify.IN_CREATE, proc):     # encryption under way
                time.sleep(rng.uniform(0, 0.04))
        finally:
            watch.close()
        if press_ctrl_c(proc, twice, rng, where) and fleet.finals() != fleet.planned():
            stopped["twice" if twice else "once"] += 1
        assert fleet.audit() == [], f"{where}: temp files left behind"
        assert flock_holders(fleet.cache / LOCK) == (set(), set()), where
        fleet.repo.ok("renc")
        assert fleet.audit() == [] and fleet.finals() == fleet.planned(), where
    print(f"\nCtrl-C of an incremental renc: stopped short {stopped} (seed {seed})")
    # Not vacuous: each kind stopped a run short, and a third of the runs in all.  (Each
    # kind at least twice failed once in CI under load: twice 1 of 6, once 5 of 6.)
    assert stopped["once"] >= 1 and stopped["twice"] >= 1, stopped
    assert stopped["once"] + stopped["twice"] >= 4, stopped
    fleet.repo.ok("check")


def test_a_temp_file_left_at_the_top_of_the_cache_is_reported_and_removed(make_repo):
    """The soak above found it: a kill while renc saved its verification index left
    ``..vaultpy-verified.vaultpy-tmp-…`` at the top of the cache, which no later run
    removed and ``check`` did not report."""
    repo = make_repo(hosts=1, secrets={"a": b"alpha"})
    repo.ok("renc")
    left = repo.cache / f".{INDEX}{TMP_MARK}0123456789ab"
    left.write_bytes(b'{"host0/a.0123.age":[1,2,3,4]}')
    proc = repo.run("check")
    assert proc.returncode == 1
    assert f"{left.name}: leftover temporary file" in proc.stdout.decode()
    repo.ok("renc")
    assert not left.exists()
    repo.ok("check")
    assert (repo.cache / LOCK).exists() and (repo.cache / INDEX).exists()


# ======================================================== 2. concurrency and the lock

def _popen(repo: Repo, *args: str, stdin: bytes | None = None, **env: str
           ) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(vaultpy_argv(*args), cwd=repo.root, env=env_of(repo, **env),
                            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    if stdin is not None:
        assert proc.stdin is not None
        proc.stdin.write(stdin)
        proc.stdin.close()
        proc.stdin = None               # so communicate() leaves it alone
    return proc


def _finish(proc: subprocess.Popen[bytes], timeout: float = 60) -> tuple[int, bytes, bytes]:
    out, err = proc.communicate(timeout=timeout)
    assert b"Traceback" not in err, err.decode()
    return proc.returncode, out, err


@contextlib.contextmanager
def holding(lock: Path) -> Iterator[None]:
    """Hold the repository lock as another vaultpy would (flock, never written)."""
    fd = os.open(lock, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _all_waiting(lock: Path, procs: Sequence[subprocess.Popen[bytes]]) -> None:
    pids = {p.pid for p in procs}
    wait_until(lambda: all(map(_alive, procs)) and pids <= flock_holders(lock)[1],
               what=f"{pids} waiting on {lock}")


def _assert_cache_decrypts(repo: Repo, plaintexts: Mapping[str, bytes]) -> None:
    """Every cache file decrypts with its host's key to its secret's plaintext."""
    for host in repo.hosts.values():
        files = sorted((repo.cache / host.name).glob("*.age"))
        assert sorted(f.name.split(".")[0] for f in files) == sorted(plaintexts), host.name
        for f in files:
            proc = subprocess.run([need("age"), "-d", "-i", str(host.key), str(f)],
                                  capture_output=True)
            assert proc.returncode == 0 and proc.stdout == plaintexts[f.name.split(".")[0]], f


def _master_plaintext(repo: Repo, sid: str, identity: Path | None = None) -> bytes:
    proc = subprocess.run([need("age"), "-d", "-i", str(identity or repo.identity),
                           str(repo.root / "secrets" / f"{sid}.age")], capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def test_two_rencs_with_overlapping_work_are_serialised(make_repo) -> None:
    plain = {f"s{i}": token(f"s{i}") for i in range(6)} | {"big": os.urandom(BIG)}
    repo = make_repo(hosts=4, secrets=plain)
    lock = repo.cache / LOCK
    assert lock.exists()                 # made by encrypt; renc has not run yet
    with holding(lock):                  # both start while the lock is taken
        a = _popen(repo, "renc", "--json", "--jobs", "2", "--host", "host0",
                   "--host", "host1")
        b = _popen(repo, "renc", "--json", "--jobs", "2")
        _all_waiting(lock, [a, b])
    (rc_a, out_a, _), (rc_b, out_b, _) = _finish(a), _finish(b)
    assert (rc_a, rc_b) == (0, 0)
    wrote_a = set(json.loads(out_a)["written"])
    wrote_b = set(json.loads(out_b)["written"])
    # one run after the other: the overlap (host0, host1) was written exactly once
    assert not wrote_a & wrote_b
    assert len(wrote_a | wrote_b) == 4 * len(plain)
    assert len(wrote_a) in (0, 2 * len(plain))
    repo.ok("check")
    _assert_cache_decrypts(repo, plain)


def test_renc_and_encrypt_at_once_are_serialised(make_repo) -> None:
    plain = {"a": token("a"), "b": token("b"), "big": os.urandom(BIG)}
    repo = make_repo(hosts=3, secrets=plain)
    repo.ok("renc")
    lock = repo.cache / LOCK
    new_a = token("a-new")
    with holding(lock):
        enc = _popen(repo, "encrypt", "a", stdin=new_a)
        ren = _popen(repo, "renc", "--json")
        _all_waiting(lock, [enc, ren])
    (rc_e, _, err_e), (rc_r, out_r, err_r) = _finish(enc), _finish(ren)
    assert (rc_e, rc_r) == (0, 0), (err_e.decode(), err_r.decode())
    assert _master_plaintext(repo, "a") == new_a
    wrote = json.loads(out_r)["written"]
    if wrote:               # renc ran second: it saw the new master, and only that
        assert len(wrote) == 3 and all("/a." in w for w in wrote)
        repo.ok("check")
    else:                   # renc ran first: the cache is consistent, and one behind
        proc = repo.run("check")
        assert proc.returncode == 1 and b"out of date" in proc.stdout + proc.stderr
        repo.ok("renc")
        repo.ok("check")
    _assert_cache_decrypts(repo, {**plain, "a": new_a})

    # and without the test's help: five of each, as fast as they start
    values = [token(f"b{i}") for i in range(5)]
    procs = []
    for value in values:
        procs.append(_popen(repo, "encrypt", "b", stdin=value))
        procs.append(_popen(repo, "renc"))
    for p in procs:
        rc, _, err = _finish(p)
        # a renc that read a master while it was being replaced would fail with
        # "changed while renc was running": the lock rules that out
        assert rc == 0, err.decode()
    repo.ok("renc")
    repo.ok("check")
    last_b = _master_plaintext(repo, "b")
    assert last_b in values
    _assert_cache_decrypts(repo, {**plain, "a": new_a, "b": last_b})


def _set_recipients(repo: Repo, recipients: Sequence[str]) -> None:
    text = (repo.root / "hosts.toml").read_text()
    head, _, rest = text.partition("\n\n")
    assert head.startswith("[vaultpy]")
    repo.write_hosts("[vaultpy]\nrecipients = [" + ", ".join(map(toml_str, recipients))
                     + "]\n\n" + rest)


def test_two_rekeys_at_once_are_serialised(make_repo) -> None:
    plain = {f"s{i}": token(f"s{i}") for i in range(5)} | {"big": os.urandom(BIG)}
    repo = make_repo(hosts=2, secrets=plain)
    repo.ok("renc")
    backup, backup_pub = age_keygen(repo.root / "keys", "backup.txt")
    _set_recipients(repo, [repo.recipient, backup_pub])
    lock = repo.cache / LOCK
    with holding(lock):
        procs = [_popen(repo, "rekey"), _popen(repo, "rekey")]
        _all_waiting(lock, procs)
    for p in procs:
        rc, _, err = _finish(p)
        assert rc == 0, err.decode()
    for sid, value in plain.items():
        assert _master_plaintext(repo, sid, backup) == value
        assert _master_plaintext(repo, sid) == value
    assert not list((repo.root / "secrets").glob(f".*{TMP_MARK}*"))
    repo.ok("renc")
    repo.ok("check")
    _assert_cache_decrypts(repo, plain)


def test_rekey_never_writes_back_a_master_replaced_while_it_waited(make_repo) -> None:
    """rekey must read, decrypt and replace each master under one hold of the lock:
    a writer that got the lock first (encrypt, edit) must not be overwritten with
    the plaintext rekey had read before it."""
    repo = make_repo(hosts=1, secrets={"a": token("a-old"), "b": token("b")})
    repo.ok("renc")
    backup, backup_pub = age_keygen(repo.root / "keys", "backup.txt")
    _set_recipients(repo, [repo.recipient, backup_pub])
    lock = repo.cache / LOCK
    new_a = token("a-new")
    with holding(lock):
        rekey = _popen(repo, "rekey")
        _all_waiting(lock, [rekey])
        # meanwhile a writer holding the lock (as `vaultpy encrypt` does) replaces a
        master = repo.root / "secrets" / "a.age"
        tmp = master.with_name(f".a.age{TMP_MARK}feedfacecafe")
        age_encrypt_to(tmp, [repo.recipient, backup_pub], new_a)
        os.replace(tmp, master)
    rc, _, err = _finish(rekey)
    assert rc == 0, err.decode()
    assert _master_plaintext(repo, "a") == new_a, "rekey wrote back the old plaintext"
    assert _master_plaintext(repo, "a", backup) == new_a


def _alive(proc: subprocess.Popen[bytes]) -> bool:
    """True while ``proc`` runs; fails at once, with its output, if it ended."""
    if proc.poll() is None:
        return True
    out, err = proc.communicate()
    text = b"".join(x for x in (out, err) if x).decode(errors="replace")
    raise AssertionError(f"{proc.args} exited early with {proc.returncode}: {text}")


def _locked_identity_repo(make_repo, tmp_path: Path) -> tuple[Repo, Path, Path]:
    """A repo whose masters are also encrypted to a passphrase-protected SSH key; the
    key's passphrase is read from a FIFO nobody writes to, so a renc with that key
    blocks -- holding the lock -- until it is killed."""
    repo = make_repo(hosts=3, secrets={"a": token("a"), "b": token("b")}, encrypt=False)
    key, pub = ssh_keygen(tmp_path, "locked_master", passphrase="pw-never-given")
    _set_recipients(repo, [repo.recipient, pub])
    for sid in ("a", "b"):
        repo.ok("encrypt", sid, input=token(sid))
    repo.ok("renc")                             # the lock file exists from now on
    fifo = tmp_path / "passphrase.fifo"
    os.mkfifo(fifo)
    return repo, key, fifo


def test_a_lock_left_by_a_killed_renc_blocks_nobody(make_repo, tmp_path: Path) -> None:
    repo, key, fifo = _locked_identity_repo(make_repo, tmp_path)
    lock = repo.cache / LOCK
    repo.ok("encrypt", "a", input=token("a2"))          # so renc has work to do
    stuck = _popen(repo, "renc", VAULTPY_IDENTITY=str(key), VAULTPY_PASSPHRASE_FILE=str(fifo))
    wait_until(lambda: _alive(stuck) and stuck.pid in flock_holders(lock)[0],
               what="renc holding the lock")
    waiter = _popen(repo, "renc", "--json")          # queues behind it
    _all_waiting(lock, [waiter])
    time.sleep(0.5)
    assert stuck.poll() is None and waiter.poll() is None
    killpg(stuck)
    assert stuck.wait() == -signal.SIGKILL
    t0 = time.monotonic()
    rc, out, err = _finish(waiter, timeout=30)
    assert rc == 0, err.decode()
    assert time.monotonic() - t0 < 5
    assert len(json.loads(out)["written"]) == 3
    # the lock file stays (created once, never removed); it blocks nobody
    assert lock.exists()
    repo.ok("encrypt", "b", input=token("b2"))      # not blocked by the lock file either
    stuck = _popen(repo, "renc", VAULTPY_IDENTITY=str(key), VAULTPY_PASSPHRASE_FILE=str(fifo))
    wait_until(lambda: _alive(stuck) and stuck.pid in flock_holders(lock)[0],
               what="renc holding the lock")
    killpg(stuck)
    stuck.wait()
    t0 = time.monotonic()
    repo.ok("renc")
    assert time.monotonic() - t0 < 5
    repo.ok("check")
    assert flock_holders(lock) == (set(), set())


# ============================================================ 3. plaintext hygiene

STRACE_CALLS = "openat,open,creat,rename,renameat,renameat2,link,linkat,write,pwrite64,writev"
_OPEN = re.compile(r'(?:openat|open|creat)\(.*\) = \d+<(?P<path>[^>]*)>$')
_WRITE = re.compile(r'(?:write|pwrite64|writev)\(\d+<(?P<path>[^>]*)>, ')
_RENAME = re.compile(r'rename\("(?P<src>[^"]*)", "(?P<dst>[^"]*)"\) = 0')
_RENAMEAT = re.compile(r'(?:renameat2?|linkat)\(\w+<(?P<sdir>[^>]*)>, "(?P<src>[^"]*)", '
                       r'\w+<(?P<ddir>[^>]*)>, "(?P<dst>[^"]*)"(?:, \w+)?\) = 0')
_LINK = re.compile(r'link\("(?P<src>[^"]*)", "(?P<dst>[^"]*)"\) = 0')
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")


def strace_prefix(log: Path) -> list[str]:
    return [need("strace"), "-f", "-qq", "-y", "-s", "0", "-e", f"trace={STRACE_CALLS}",
            "-o", str(log)]


def _joined(text: str) -> Iterator[str]:
    """The trace's syscall lines (pid prefix dropped), unfinished/resumed pairs joined."""
    pending: dict[str, str] = {}
    for raw in text.splitlines():
        pid, _, line = raw.partition(" ")
        line = line.strip()
        if line.endswith("<unfinished ...>"):
            pending[pid] = line[: -len("<unfinished ...>")].rstrip()
            continue
        m = re.match(r"<\.\.\. \w+ resumed>(.*)$", line)
        if m:
            line = pending.pop(pid, "") + m.group(1)
        yield line


@dataclass
class TraceAudit:
    files: set[str] = field(default_factory=set)        # written outside RAM, final names
    in_ram: set[str] = field(default_factory=set)
    lost: set[str] = field(default_factory=set)         # written outside RAM, then gone


def audit_trace(log: Path, ram: Sequence[Path], cwd: Path) -> TraceAudit:
    """Every regular file the traced processes opened for writing or wrote to, followed
    through renames and hard links (the lock file is linked into place already
    locked) and renames of a directory holding it; those outside the RAM-backed
    directories ``ram``."""
    written: list[str] = []
    renames: list[tuple[str, str]] = []
    for line in _joined(log.read_text(errors="replace")):
        m = _OPEN.search(line)
        if m and any(f in line.split('"')[-1] for f in WRITE_FLAGS):
            written.append(m.group("path"))
            continue
        m = _WRITE.match(line)
        if m:
            written.append(m.group("path"))
            continue
        m = _RENAME.match(line) or _LINK.match(line)   # a hard link: followed like a rename
        if m:
            renames.append((os.path.join(cwd, m.group("src")),
                            os.path.join(cwd, m.group("dst"))))
            continue
        m = _RENAMEAT.match(line)
        if m:
            renames.append((os.path.join(m.group("sdir"), m.group("src")),
                            os.path.join(m.group("ddir"), m.group("dst"))))
    out = TraceAudit()
    for path in dict.fromkeys(written):
        path = path.removesuffix(" (deleted)")
        if not path.startswith("/") or (path.startswith(("/dev/", "/proc/", "/sys/")) and \
                not path.startswith("/dev/shm/")):
            continue                          # pipes, sockets, ttys, /dev/null
        final = path
        for src, dst in renames:
            src, dst = os.path.normpath(src), os.path.normpath(dst)
            if src == os.path.normpath(final):
                final = dst
            elif final.startswith(src + "/"):   # a directory renamed (renc's new hosts)
                final = dst + final[len(src):]
        if any(_under(final, r) or _under(path, r) for r in ram):
            out.in_ram.add(final)
        elif os.path.isfile(final):
            out.files.add(final)
        else:
            out.lost.add(path)
    return out


def _under(path: str, top: Path) -> bool:
    top_s = str(top).rstrip("/")
    return path == top_s or path.startswith(top_s + "/")


def _holds(path: str, needles: Sequence[bytes]) -> list[bytes]:
    data = read_if_regular(path)
    return [] if data is None else [n for n in needles if n in data]


def scan_since(tops: Sequence[Path], stamp: Path, needles: Sequence[bytes],
               skip: Sequence[Path] = ()) -> list[str]:
    """Regular files under ``tops`` changed since ``stamp`` that hold a needle."""
    proc = subprocess.run(["find", *map(str, tops), "-xdev", "-type", "f", "-cnewer",
                           str(stamp), "-size", "-64M", "-print0"], capture_output=True)
    hits = []
    for raw in proc.stdout.split(b"\0"):
        if raw:
            path = os.fsdecode(raw)
            if not any(_under(path, s) for s in skip):
                hits += [f"{path}: {n[:16]!r}" for n in _holds(path, needles)]
    return hits


def test_the_plaintext_scan_waits_on_no_fifo(tmp_path: Path) -> None:
    """A name listed as a file and a FIFO by the time it is read: skipped at once."""
    import threading

    fifo = tmp_path / "was-a-file"
    os.mkfifo(fifo)
    found: list[list[bytes]] = []
    reader = threading.Thread(target=lambda: found.append(_holds(str(fifo), [b"x"])),
                              daemon=True)
    reader.start()
    reader.join(10)
    waited = reader.is_alive()
    if waited:                              # let it go: open the other end
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(10)
    assert not waited and found == [[]]


def fs_type(path: Path) -> str:
    return subprocess.run(["stat", "-f", "-c", "%T", str(path)], capture_output=True,
                          text=True, check=True).stdout.strip()


@dataclass
class Hygiene:
    """One repository, a host root, RAM dirs, and the plaintexts to look for."""

    repo: Repo
    tmp: Path
    runtime: Path                      # XDG_RUNTIME_DIR, on /dev/shm
    home: Path
    stamp: Path
    needles: list[bytes]
    report: dict[str, tuple[int, int]] = field(default_factory=dict)
    last_log: Path | None = None

    def env(self, **extra: str) -> dict[str, str]:
        return env_of(self.repo, HOME=str(self.home), XDG_RUNTIME_DIR=str(self.runtime),
                      **extra)

    def traced(self, name: str, argv: Sequence[str], *, input: bytes | None = None,
               ram: Sequence[Path] = (), **env: str) -> subprocess.CompletedProcess[bytes]:
        log = self.tmp / f"strace-{name}.log"
        proc = subprocess.run([*strace_prefix(log), *argv], input=input, capture_output=True,
                              cwd=self.repo.root, env=self.env(**env), timeout=120)
        if proc.returncode != 0 and b"ptrace" in proc.stderr:
            pytest.skip("ptrace is not permitted here")
        assert proc.returncode == 0, (name, proc.stderr.decode())
        self.check(name, log, ram)
        self.last_log = log
        return proc

    def check(self, name: str, log: Path, ram: Sequence[Path] = (),
              cwd: Path | None = None) -> TraceAudit:
        ram = [Path("/dev/shm"), self.runtime, *ram]
        audit = audit_trace(log, ram, cwd or self.repo.root)
        assert not audit.lost, f"{name}: written outside RAM, then gone unscanned: " \
                               f"{sorted(audit.lost)}"
        leaks = [f"{p}: {n[:16]!r}" for p in sorted(audit.files)
                 for n in _holds(p, self.needles)]
        assert not leaks, f"{name}: plaintext written outside RAM: {leaks}"
        tops = [Path(tempfile.gettempdir()), self.home, self.repo.root, self.repo.cache]
        hits = scan_since(tops, self.stamp, self.needles, skip=ram)
        assert not hits, f"{name}: plaintext on disk: {hits}"
        self.report[name] = (len(audit.files), len(audit.in_ram))
        return audit


HYGIENE_OPTS = {
    "pw": {"owner": "app", "group": "app", "mode": "0440", "path": "/var/lib/app/pw",
           "restart_units": ["app.service"]},
    "blob": {"mode": "0400"},
    "edited": {"owner": "svc", "mode": "0400"},
}
HYGIENE_TEMPLATES = {"app.env": {"content": "PW={{ secrets.pw }}\nT={{ secrets.tonly }}\n",
                                 "mode": "0400"}}


@as_root
def test_no_plaintext_reaches_persistent_storage(make_repo, tmp_path: Path) -> None:
    """encrypt, edit, renc, decrypt, profile, activate (--no-mount into a temp root,
    and for real onto ramfs in a private mount namespace), each under strace -f."""
    need("strace")
    runtime = Path(tempfile.mkdtemp(prefix="vaultpy-faults-rt-", dir="/dev/shm"))
    try:
        _hygiene(make_repo, tmp_path, runtime)
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


def _hygiene(make_repo, tmp_path: Path, runtime: Path) -> None:
    assert fs_type(runtime) in ("tmpfs", "ramfs")
    plain = {"pw": token("pw"), "tonly": token("tonly"), "edited": token("edited"),
             "blob": os.urandom(BIG)}
    appended = token("appended")
    blob = plain["blob"]
    needles = [plain["pw"], plain["tonly"], plain["edited"], appended,
               blob[:48], blob[BIG // 2: BIG // 2 + 48], blob[-48:]]
    repo = make_repo(hosts=1, secrets={}, encrypt=False)
    write_deploy_hosts(repo, plain, {"host0": (HYGIENE_OPTS, HYGIENE_TEMPLATES)})
    home = tmp_path / "home"
    home.mkdir()
    stamp = tmp_path / "stamp"
    stamp.write_bytes(b"")
    time.sleep(0.01)
    h = Hygiene(repo, tmp_path, runtime, home, stamp, needles)

    # the scanners are not vacuous
    canary = tmp_path / "canary.bin"
    canary.write_bytes(b"x" + blob[-48:] + b"y")
    assert scan_since([tmp_path], stamp, needles)
    canary.unlink()

    for sid, value in plain.items():
        h.traced(f"encrypt-{sid}", vaultpy_argv("encrypt", sid), input=value)

    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nprintf "%s" "$APPEND" >> "$1"\n')
    editor.chmod(0o755)
    h.traced("edit", vaultpy_argv("edit", "edited"), input=b"", EDITOR=str(editor),
             VISUAL="", APPEND=appended.decode())
    assert list(runtime.iterdir()) == [], "edit left its private directory"
    plain["edited"] += appended

    h.traced("renc", vaultpy_argv("renc", "--jobs", "2"))
    for sid in ("pw", "blob", "edited"):
        out = h.traced(f"decrypt-{sid}", vaultpy_argv("decrypt", sid)).stdout
        assert out == plain[sid]

    # activation, --no-mount into a temp root: the store stands in for the ramfs
    host = make_host_root(repo, "host0", tmp_path / "root")
    rec = make_recorder(tmp_path / "bin")
    h.traced("activate-no-mount", activate_cmd(host.profile, host.root, systemctl=rec.script),
             ram=[host.store])
    assert (host.live / "pw").read_bytes() == plain["pw"]
    assert (host.live / "edited").read_bytes() == plain["edited"]
    # the trace audit is not vacuous: without the store counted as RAM it finds the
    # plaintext vaultpy wrote there
    assert h.last_log is not None
    leaky = audit_trace(h.last_log, [Path("/dev/shm"), runtime], repo.root)
    found = {p for p in leaky.files if _holds(p, needles)}
    assert {str(host.store / "1" / n) for n in ("pw", "blob", "edited", "app.env")} <= found
    shutil.rmtree(host.store)

    # activation onto a real ramfs that vaultpy mounts in a private mount namespace
    host2 = make_host_root(repo, "host0", tmp_path / "root2")
    log = tmp_path / "strace-activate-ramfs.log"
    script = ('"$@" || exit 10\n'
              'grep -q " $(realpath "$STORE") .* - ramfs " /proc/self/mountinfo || exit 11\n'
              'cmp -s "$STORE/../vaultpy/pw" "$WANT" 2>/dev/null; exit 0\n')
    cmd = [*strace_prefix(log), *activate_cmd(host2.profile, host2.root, no_mount=False,
                                              systemctl=rec.script)]
    proc = unshare_sh(script, env={"STORE": str(host2.store), "WANT": "/nonexistent",
                                   "HOME": str(home), "XDG_RUNTIME_DIR": str(runtime)},
                      args=cmd)
    assert proc.returncode == 0, (proc.returncode, proc.stderr.decode())
    h.check("activate-ramfs", log, ram=[host2.store], cwd=ROOT)
    assert os.listdir(host2.store) == []          # the ramfs went with the namespace
    print("\nplaintext hygiene: command -> (files written outside RAM, scanned clean; "
          f"files written in RAM): {h.report}")


# ----------------------------------------------------- no core dumps, umask 077

def _loosened() -> None:
    """In the child, before exec: core dumps allowed and a permissive umask, so that
    vaultpy itself must be what restricts them."""
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    os.umask(0)


def core_limit(pid: int) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            soft, hard = line.split()[4:6]
            return soft, hard
    raise AssertionError("no core limit line")


def umask_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Umask:"):
            return int(line.split()[1], 8)
    raise AssertionError("no Umask line")


def _spawn(repo: Repo, *args: str, stdout: int = subprocess.DEVNULL, **env: str
           ) -> subprocess.Popen[bytes]:
    return subprocess.Popen(vaultpy_argv(*args), cwd=repo.root, env=env_of(repo, **env),
                            stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=subprocess.DEVNULL, preexec_fn=_loosened,
                            start_new_session=True)


def test_the_loosened_limits_really_allow_core_dumps() -> None:
    proc = subprocess.run(["sh", "-c", "ulimit -c; umask"], capture_output=True, text=True,
                          preexec_fn=_loosened)
    assert proc.stdout.split() == ["unlimited", "0000"]


def test_decrypt_encrypt_renc_rekey_hold_plaintext_without_core_dumps(make_repo,
                                                               tmp_path: Path) -> None:
    repo, key, fifo = _locked_identity_repo(make_repo, tmp_path)
    big = os.urandom(BIG)
    repo.ok("encrypt", "b", input=big)
    # decrypt: stdout is a pipe nobody reads yet; after its first byte the whole
    # plaintext is in memory and the process is blocked writing the rest
    dec = _spawn(repo, "decrypt", "b", stdout=subprocess.PIPE)
    assert dec.stdout is not None
    first = dec.stdout.read(1)
    assert dec.poll() is None
    checked = {"decrypt": core_limit(dec.pid)}
    rest = dec.stdout.read()
    assert dec.wait() == 0 and first + rest == big
    # encrypt: half the plaintext read from stdin, waiting for the rest
    enc = subprocess.Popen(vaultpy_argv("encrypt", "a"), cwd=repo.root, env=env_of(repo),
                           stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, preexec_fn=_loosened,
                           start_new_session=True)
    assert enc.stdin is not None
    enc.stdin.write(big[: BIG // 2])
    enc.stdin.flush()
    wait_until(lambda: _alive(enc) and "pipe" in Path(f"/proc/{enc.pid}/wchan").read_text(),
               what="encrypt waiting for the rest of stdin")
    checked["encrypt"] = core_limit(enc.pid)
    enc.stdin.write(big[BIG // 2:])
    enc.stdin.close()
    assert enc.wait() == 0
    # renc and rekey: blocked reading the master key's passphrase (renc inside the lock)
    locked = {"VAULTPY_IDENTITY": str(key), "VAULTPY_PASSPHRASE_FILE": str(fifo)}
    for args in (("renc",), ("rekey",)):
        proc = _spawn(repo, *args, **locked)
        try:
            wait_until(lambda p=proc: _alive(p) and _blocked_on_fifo(p.pid),
                       what=f"{args} at the FIFO")
            checked[args[0]] = core_limit(proc.pid)
        finally:
            killpg(proc)
            proc.wait()
    assert checked == dict.fromkeys(checked, ("0", "0")), checked


@pytest.mark.parametrize("args", [["status"], ["decrypt", "s"], ["activate", "--help"]])
def test_no_command_is_dumpable_even_by_a_core_pipe(make_repo, args: list[str]) -> None:
    """RLIMIT_CORE does not bind a core_pattern that pipes to a program (apport): the
    process is made not dumpable too (prctl), which stops every core (found in review).
    Asked of the process itself as it leaves (prctl answers for the caller only)."""
    repo = make_repo(hosts=0, secrets={"s": b"v"})
    code = ("import os, sys\n"
            "from vaultpy._internal import leave, nocore\n"
            "assert nocore.dumpable()\n"
            "def said(code=0):\n"
            "    sys.stdout.flush()\n"
            "    os.write(2, f'@@dumpable={nocore.dumpable()}@@'.encode())\n"
            "    os._exit(0)\n"
            "leave.leave = said\n"
            "from vaultpy.__main__ import main\n"
            f"sys.argv = ['vaultpy', *{args!r}]\n"
            "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=repo.root, env=env_of(repo),
                          capture_output=True, timeout=120)
    assert "@@dumpable=False@@" in proc.stderr.decode(), proc.stderr.decode()[-2000:]


def test_no_ctypes_leaves_the_core_limit_alone_without_failing() -> None:
    """A Python built without ctypes (a minimal one) ran no command at all: the import
    was outside the except (found in review)."""
    code = ("import sys, resource; sys.modules['ctypes'] = None\n"
            "from vaultpy._internal import nocore\n"
            "nocore.forbid()\n"
            "print(resource.getrlimit(resource.RLIMIT_CORE))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=Path(__file__).resolve().parent.parent)
    assert proc.returncode == 0 and proc.stdout.strip() == "(0, 0)", proc.stderr


def _blocked_on_fifo(pid: int) -> bool:
    """The process sleeps in open(2) of a FIFO that has no writer."""
    try:
        return Path(f"/proc/{pid}/wchan").read_text() == "wait_for_partner"
    except OSError:
        return False


def test_edit_runs_the_editor_without_core_dumps_and_with_umask_077(make_repo,
                                                                     tmp_path: Path) -> None:
    repo = make_repo(hosts=0, secrets={"s": token("s")})
    runtime = Path(tempfile.mkdtemp(prefix="vaultpy-faults-rt-", dir="/dev/shm"))
    go = tmp_path / "go"
    info = tmp_path / "info"
    editor = tmp_path / "editor.sh"
    editor.write_text(f'''#!/bin/sh
d=$(dirname "$1")
: > "$d/.swap"                       # a file the editor makes itself (vim's swap file)
echo "$$ $(stat -c %a "$1") $(stat -c %a "$d") $(stat -c %a "$d/.swap") $(umask)" > {info}
while [ ! -e {go} ]; do sleep 0.02; done
rm -f "$d/.swap"
echo changed >> "$1"
''')
    editor.chmod(0o755)
    try:
        proc = _spawn(repo, "edit", "s", EDITOR=str(editor), VISUAL="",
                      XDG_RUNTIME_DIR=str(runtime))
        wait_until(lambda: _alive(proc) and info.exists()
                   and info.read_text().endswith("\n"), what="the editor")
        editor_pid, file_mode, dir_mode, swap_mode, editor_umask = info.read_text().split()
        assert core_limit(proc.pid) == ("0", "0")
        assert core_limit(int(editor_pid)) == ("0", "0")       # inherited by the editor
        assert umask_of(proc.pid) == 0o077
        assert (file_mode, dir_mode, swap_mode, editor_umask) == ("600", "700", "600",
                                                                  "0077")
        go.write_bytes(b"")
        assert proc.wait(timeout=30) == 0
        assert list(runtime.iterdir()) == []
    finally:
        shutil.rmtree(runtime, ignore_errors=True)


@as_root
def test_activate_holds_plaintext_without_core_dumps_and_with_umask_077(make_repo,
                                                                        tmp_path: Path
                                                                        ) -> None:
    repo = make_repo(hosts=1, secrets={"pw": token("pw"), "other": token("other")},
                     encrypt=True)
    write_deploy_hosts(repo, ["pw", "other"], {"host0": (
        {"pw": {"owner": "app", "mode": "0440", "path": "/srv/app/pw",
                "restart_units": ["app.service"]}, "other": {}},
        {"t.env": {"content": "X={{ secrets.other }}\n", "group": "svc", "mode": "0640"}})})
    repo.ok("renc")
    host = make_host_root(repo, "host0", tmp_path / "root")
    existed = set(host.root.rglob("*"))
    go = tmp_path / "go"
    seen = tmp_path / "seen"
    systemctl = tmp_path / "systemctl"
    systemctl.write_text(f"#!/bin/sh\necho $PPID > {seen}\n"
                         f"while [ ! -e {go} ]; do sleep 0.02; done\n")
    systemctl.chmod(0o755)
    proc = subprocess.Popen(activate_cmd(host.profile, host.root, systemctl=systemctl),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env=vaultpy_env(), cwd=ROOT,
                            preexec_fn=_loosened, start_new_session=True)
    try:
        wait_until(lambda: _alive(proc) and seen.exists()
                   and seen.read_text().strip().isdigit(), what="activation calling systemctl")
        assert int(seen.read_text()) == proc.pid
        assert core_limit(proc.pid) == ("0", "0")
        assert umask_of(proc.pid) == 0o077
    finally:
        go.write_bytes(b"")
    assert proc.wait(timeout=30) == 0
    # everything activation created under the root: exact modes, nothing group- or
    # world-writable, nothing readable by others but what the profile allows
    modes = {str(p.relative_to(host.root)): stat.S_IMODE(p.lstat().st_mode)
             for p in set(host.root.rglob("*")) - existed if not p.is_symlink()}
    gen = "run/vaultpy.d/1"
    assert modes[gen] == 0o751 and modes["run/vaultpy.d"] == 0o751
    assert modes[f"{gen}/pw"] == 0o440 and modes[f"{gen}/other"] == 0o400
    assert modes[f"{gen}/t.env"] == 0o640
    assert modes[f"{gen}/.vaultpy-manifest.json"] == 0o400
    assert modes[f"{gen}/.vaultpy-notified"] == 0o400
    assert modes["run/vaultpy.d.lock"] == 0o600
    assert not {k: oct(v) for k, v in modes.items() if v & 0o022}, modes
    assert not {k: oct(v) for k, v in modes.items()
                if stat.S_ISREG(os.lstat(host.root / k).st_mode) and v & 0o004}, modes


# ------------------------------------------- error messages never echo secret content

BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
Run = tuple[tuple[str, ...], dict[str, str], bytes | None]     # argv, env, stdin


def _id_file(tmp: Path, data: bytes) -> Path:
    path = tmp / "identity"
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def _b64_lines(data: bytes) -> bytes:
    import base64

    text = base64.b64encode(data)
    return b"\n".join(text[i:i + 64] for i in range(0, len(text), 64))


def _case_identity(content: Callable[[bytes], bytes]) -> Callable[..., list[Run]]:
    def build(repo: Repo, tmp: Path, marker: bytes) -> list[Run]:
        path = _id_file(tmp, content(marker))
        repo.ok("encrypt", "s", input=token("s2"))         # so renc needs the key
        return [(("decrypt", "s", "-i", str(path)), {}, None),
                (("renc", "-i", str(path)), {}, None)]
    return build


def _case_passphrase(kind: str) -> Callable[..., list[Run]]:
    def build(repo: Repo, tmp: Path, marker: bytes) -> list[Run]:
        if kind == "age":
            import pyrage

            ident, _ = age_keygen(tmp, "inner.txt")
            path = _id_file(tmp, bytes(pyrage.passphrase.encrypt(ident.read_bytes(),
                                                                 "the right one")))
            ident.unlink()
        else:
            path, _ = ssh_keygen(tmp, "locked", passphrase="the right one")
        pw = tmp / "passphrase"
        pw.write_bytes(marker + b"\n")
        env = {"VAULTPY_PASSPHRASE_FILE": str(pw)}
        return [(("decrypt", "s", "-i", str(path)), env, None),
                (("rekey", "-i", str(path)), env, None)]
    return build


def _case_master(content: Callable[[bytes], bytes]) -> Callable[..., list[Run]]:
    def build(repo: Repo, tmp: Path, marker: bytes) -> list[Run]:
        (repo.root / "secrets" / "s.age").write_bytes(content(marker))
        return [(("decrypt", "s"), {}, None), (("renc",), {}, None), (("check",), {}, None),
                (("edit", "s"), {"EDITOR": "true", "VISUAL": ""}, None),
                (("rekey",), {}, None)]
    return build


def _case_stdin(repo: Repo, tmp: Path, marker: bytes) -> list[Run]:
    broken = tmp / "broken-repo"
    broken.mkdir()
    (broken / "hosts.toml").write_text('[vaultpy]\nrecipients = ["age1nope"]\n[secrets.s]\n')
    return [(("encrypt", "no-such-id"), {}, marker),
            (("encrypt", "s", "--repo", str(broken)), {}, marker),
            (("encrypt", "../s"), {}, marker)]


def _case_editor(repo: Repo, tmp: Path, marker: bytes) -> list[Run]:
    editor = tmp / "failing-editor.sh"
    editor.write_text('#!/bin/sh\nprintf "%s" "$MARK" >> "$1"\necho "$MARK" >&2\n'
                      'exit 3\n')
    editor.chmod(0o755)
    gone = tmp / "deleting-editor.sh"
    gone.write_text('#!/bin/sh\nprintf "%s" "$MARK" >> "$1"\nrm -f "$1"\n')
    gone.chmod(0o755)
    env = {"VISUAL": "", "MARK": "(the editor's own stderr is not vaultpy's)"}
    return [(("edit", "s"), {**env, "EDITOR": str(editor)}, None),
            (("edit", "s"), {**env, "EDITOR": str(gone)}, None)]


ECHO_CASES: dict[str, Callable[..., list[Run]]] = {
    "identity-is-plain-text": _case_identity(lambda m: m + b"\n"),
    "identity-bad-checksum": _case_identity(
        lambda m: b"AGE-SECRET-KEY-1" + m.upper() + b"\n"),
    "identity-binary": _case_identity(lambda m: b"\xff\xfe\x00" + m + b"\x80\n"),
    "identity-openssh-garbage": _case_identity(
        lambda m: b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + _b64_lines(m * 4)
        + b"\n-----END OPENSSH PRIVATE KEY-----\n"),
    "identity-armor-garbage": _case_identity(
        lambda m: b"-----BEGIN AGE ENCRYPTED FILE-----\n" + m
        + b"\n-----END AGE ENCRYPTED FILE-----\n"),
    "identity-age-header-garbage": _case_identity(
        lambda m: b"age-encryption.org/v1\n-> scrypt " + m + b" 10\n" + m + b"\n--- "
        + m + b"\n"),
    "age-identity-wrong-passphrase": _case_passphrase("age"),
    "ssh-identity-wrong-passphrase": _case_passphrase("ssh"),
    "master-is-plaintext": _case_master(lambda m: m + b"\n"),
    "master-armored-plaintext": _case_master(
        lambda m: b"-----BEGIN AGE ENCRYPTED FILE-----\n" + _b64_lines(m)
        + b"\n-----END AGE ENCRYPTED FILE-----\n"),
    "master-unknown-stanza": _case_master(
        lambda m: b"age-encryption.org/v1\n-> " + m + b"\n\n--- "
        + b"A" * 43 + b"\n" + m),
    "master-truncated-after-header": _case_master(
        lambda m: b"age-encryption.org/v1\n-> X25519 " + m),
    "plaintext-on-stdin": _case_stdin,
    "editor-fails": _case_editor,
}


def _echoes(output: bytes, marker: bytes, width: int = 12) -> list[bytes]:
    hay = output.lower()
    return [marker[i:i + width] for i in range(len(marker) - width + 1)
            if marker[i:i + width].lower() in hay]


@pytest.mark.parametrize("case", sorted(ECHO_CASES))
def test_error_messages_never_echo_secret_content(make_repo, tmp_path: Path,
                                                  case: str) -> None:
    marker = "".join(random.choice(BECH32) for _ in range(58)).encode()
    assert _echoes(b"x" + marker[20:33].upper() + b"y", marker)      # the detector works
    repo = make_repo(hosts=1, secrets={"s": token("s")})
    repo.ok("renc")
    runs = ECHO_CASES[case](repo, tmp_path, marker)
    for args, env, stdin in runs:
        proc = subprocess.run(vaultpy_argv(*args), cwd=repo.root, input=stdin,
                              stdin=None if stdin is not None else subprocess.DEVNULL,
                              capture_output=True, env=env_of(repo, **env), timeout=60,
                              start_new_session=True)
        out = proc.stdout + proc.stderr
        assert proc.returncode not in (0, 70), (args, proc.returncode, out.decode())
        assert b"Traceback" not in out and b"internal error" not in out, out.decode()
        assert _echoes(out, marker) == [], (case, args, out.decode(errors="replace"))


@as_root
def test_activation_errors_never_echo_secret_content(make_repo, tmp_path: Path) -> None:
    marker = token("cache-plaintext")
    repo = make_repo(hosts=1, secrets={"s": token("s")})
    repo.ok("renc")
    host = make_host_root(repo, "host0", tmp_path / "root")
    (cache_file,) = (repo.cache / "host0").glob("s.*.age")
    for content in (marker, b"age-encryption.org/v1\n-> " + marker + b"\n\n--- " + b"A" * 43
                    + b"\n" + marker):
        cache_file.write_bytes(content)
        proc = subprocess.run(activate_cmd(host.profile, host.root, systemctl="true"),
                              capture_output=True, env=vaultpy_env(), cwd=ROOT, timeout=60)
        out = proc.stdout + proc.stderr
        assert proc.returncode not in (0, 70) and b"Traceback" not in out, out.decode()
        assert _echoes(out, marker) == [], out.decode(errors="replace")


# ==================================== 4. activation hardening not covered elsewhere
# (test_activate.py covers: a removed secret leaves the live dir, old generations are
# pruned, a tmpfs store is refused; test_activate_faults.py: planted symlinks, 0751
# generations, owner and mode before content, a store not owned by root with --no-mount)

STORE_SETUPS = {
    # a directory of the disk bind-mounted over the store: a mountpoint, but not ramfs
    "disk-bind-mount": 'mkdir -p "$DISK" && mount --bind "$DISK" "$STORE"',
    # ramfs, but anyone may create entries in it (a generation planted by a user)
    "ramfs-world-writable": 'mount -t ramfs -o mode=0777 ramfs "$STORE"',
    # ramfs, but owned by another user, who could rename generations under us
    "ramfs-owned-by-nobody": 'mount -t ramfs -o mode=0751 ramfs "$STORE" && '
                             'chown 65534:65534 "$STORE"',
}


@as_root
@pytest.mark.parametrize("setup", sorted(STORE_SETUPS))
def test_store_mount_that_is_not_a_private_ramfs_is_refused(make_repo, tmp_path: Path,
                                                            setup: str) -> None:
    repo = make_repo(hosts=1, secrets={"s": token("s")})
    repo.ok("renc")
    host = make_host_root(repo, "host0", tmp_path / "root")
    host.store.mkdir(parents=True)
    os.chmod(host.store, 0o751)
    disk = tmp_path / "disk"
    cmd = activate_cmd(host.profile, host.root, no_mount=False, systemctl="true")
    script = (STORE_SETUPS[setup] + ' || exit 99\n"$@"\nrc=$?\necho "@@ls"\n'
              'ls -A "$STORE"\nexit $rc\n')
    proc = unshare_sh(script, env={"STORE": str(host.store), "DISK": str(disk)}, args=cmd)
    assert proc.returncode != 99, proc.stderr.decode()
    if setup == "disk-bind-mount":
        line = assert_one_clean_error(proc, str(host.store), "not ramfs")
        assert "tmpfs" not in line.split("not ramfs")[0]        # names the real type
        assert os.listdir(disk) == []          # nothing reached the disk behind it
    else:
        assert_one_clean_error(proc, str(host.store), "not owned by root or is writable")
    assert proc.stdout.decode().split("@@ls\n")[1].strip() == ""     # no generation
    assert not os.path.lexists(host.live)


def test_master_temp_file_left_by_a_killed_encrypt_is_reported_and_removed(make_repo):
    """A SIGKILLed encrypt can leave secrets/.<id>.age.vaultpy-tmp-*: check reports
    it and the next full renc removes it (it is under the repository lock)."""
    repo = make_repo(hosts=1, secrets={"alpha": b"a"})
    repo.ok("renc")
    leftover = repo.root / "secrets" / ".alpha.age.vaultpy-tmp-0123456789ab"
    leftover.write_bytes(b"age-encryption.org/v1\n")
    proc = repo.run("check")
    assert proc.returncode == 1
    assert ".alpha.age.vaultpy-tmp-0123456789ab" in proc.stdout.decode()
    assert "leftover temporary file" in proc.stdout.decode()
    repo.ok("renc")
    assert not leftover.exists()
    repo.ok("check")
