"""Shared by the memo tests (tests/test_memo.py, tests/test_delta.py): a small
repository, and ways to tell whether a run was answered without the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import Host, Repo, age_keygen, hosts_toml, ssh_keygen

from vaultpy._internal import memo

MEMO = memo.FILENAME


def from_memo(repo: Repo, *args: str, cwd: Path | None = None,
              env: dict[str, str] | None = None, prefix: tuple[str, ...] = ()) -> bool:
    """Whether ``vaultpy ARGS`` was answered without importing the CLI."""
    full_env = {**os.environ, "NO_COLOR": "1", **repo.env, **(env or {})}
    proc = subprocess.run([*prefix, sys.executable, "-X", "importtime", "-m", "vaultpy", *args],
                          capture_output=True, cwd=cwd or repo.root, env=full_env, timeout=120)
    imported = proc.stderr.decode()
    assert "import time:" in imported
    return "vaultpy.cli" not in imported


def outputs(proc: subprocess.CompletedProcess[bytes]) -> tuple[int, str, str]:
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def full(repo: Repo, *args: str) -> tuple[int, str, str]:
    return outputs(repo.run(*args, env={"VAULTPY_NO_MEMO": "1"}))


def settled(repo: Repo) -> None:
    """renc and check have each run once on the current state: both are memoised."""
    repo.ok("renc")          # nothing to do (the cache is complete): recorded
    repo.ok("check")         # passed: recorded
    assert trusted(repo, "renc") and trusted(repo, "check")


def trusted(repo: Repo, command: str) -> bool:
    """In-process: would the memo answer ``command`` now?"""
    return memo.lookup(command, os.path.realpath(repo.root / "hosts.toml")) is not None


def make_template(root: Path) -> Repo:
    """Three hosts, three secrets, the cache complete (by a renc that wrote: no memo)."""
    (root / "keys").mkdir(parents=True)
    identity, recipient = age_keygen(root / "keys", "master.txt")
    repo = Repo(root, identity, recipient, env={"VAULTPY_IDENTITY": str(identity)})
    for i in range(3):
        key, pub = ssh_keygen(root / "keys", f"host{i}", comment=f"root@host{i}")
        repo.hosts[f"host{i}"] = Host(f"host{i}", key, pub)
    secrets = {"alpha": b"alpha\n", "beta": b"beta", "gamma": b"g"}
    repo.write_hosts(hosts_toml([recipient], list(secrets),
                                {h.name: (h.pubkey, list(secrets)) for h in repo.hosts.values()}))
    (root / "secrets").mkdir()
    for sid, plaintext in secrets.items():
        repo.ok("encrypt", sid, input=plaintext)
    repo.ok("renc")
    return repo


def copy_repo(template: Repo, root: Path) -> Repo:
    """A copy of the template (its own paths and inodes: the template's memo is void)."""
    shutil.copytree(template.root, root, symlinks=True)
    assert not (root / "secrets" / "cache" / MEMO).exists()    # renc wrote: no memo
    identity = root / "keys" / "master.txt"
    return Repo(root, identity, template.recipient,
                {n: Host(n, root / "keys" / n, h.pubkey) for n, h in template.hosts.items()},
                env={"VAULTPY_IDENTITY": str(identity)})
