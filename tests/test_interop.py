"""Interop with the real age CLI, both ways.

* master files written by ``age`` (X25519 and ssh-ed25519 recipients, binary and
  armored) are read by ``vaultpy decrypt`` and ``vaultpy renc``;
* every cache file ``vaultpy renc`` writes is opened by ``age -d`` with the host's key
  (ssh-ed25519 host keys, age1 host keys, hosts with two keys);
* a ssh-ed25519 backup key among the master recipients opens master files with ``age``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import Repo, age_decrypt, age_keygen, need, ssh_keygen, toml_str

# --------------------------------------------------------------------------- helpers

def toml_value(value: str | list[str]) -> str:
    if isinstance(value, str):
        return toml_str(value)
    return "[" + ", ".join(map(toml_str, value)) + "]"


def write_config(repo: Repo, recipients: list[str], secrets: list[str],
                 hosts: dict[str, tuple[str | list[str], list[str]]]) -> None:
    """hosts.toml where a host's pubkey may be a single key or a list of keys."""
    lines = ["[vaultpy]", f"recipients = {toml_value(recipients)}", ""]
    lines += [f"[secrets.{s}]" for s in secrets]
    for name, (pubkey, ids) in hosts.items():
        lines += ["", f"[hosts.{name}]", f"pubkey = {toml_value(pubkey)}",
                  f"secrets = {toml_value(ids)}"]
    repo.write_hosts("\n".join(lines) + "\n")


def age_encrypt_cli(plaintext: bytes, out: Path, *, recipient: str | None = None,
                    recipients_file: Path | None = None, armor: bool = False) -> None:
    """Encrypt with the real age CLI (never with vaultpy)."""
    cmd = [need("age"), "-e"]
    if armor:
        cmd.append("-a")
    if recipient is not None:
        cmd += ["-r", recipient]
    if recipients_file is not None:
        cmd += ["-R", str(recipients_file)]
    cmd += ["-o", str(out)]
    proc = subprocess.run(cmd, input=plaintext, capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()


def age_decrypt_fails(path: Path, identity: Path) -> bool:
    proc = subprocess.run([need("age"), "-d", "-i", str(identity), str(path)],
                          capture_output=True)
    return proc.returncode != 0


def cache_of(repo: Repo, host: str) -> dict[str, Path]:
    """secret id -> the single cache file of ``host`` for it."""
    out: dict[str, Path] = {}
    for f in sorted((repo.cache / host).iterdir()):
        sid = f.name.split(".")[0]
        assert f.name.endswith(".age"), f"unexpected file in the cache: {f}"
        assert sid not in out, f"two cache files for {sid} of {host}"
        out[sid] = f
    return out


# --------------------------------------------------------------------------- 1. age → vaultpy

MASTER_PLAINTEXTS = {
    "alpha": b"alpha from the age CLI\n",
    "beta": bytes(range(256)) * 9 + b"\x00\r\n",   # binary, NUL bytes, CR
    "gamma": b"",
}


@pytest.mark.parametrize("armor", [False, True], ids=["binary", "armored"])
@pytest.mark.parametrize("master_kind", ["age1", "ssh-ed25519"])
def test_vaultpy_reads_master_files_written_by_age_cli(make_repo, master_kind, armor):
    repo = make_repo(hosts=2, secrets=MASTER_PLAINTEXTS, encrypt=False)
    env: dict[str, str] = {}
    if master_kind == "age1":
        identity, recipient = repo.identity, repo.recipient
        encrypt_kw: dict[str, object] = {"recipient": recipient}
    else:
        # The master identity is an OpenSSH key; age encrypts to its .pub file.
        identity, recipient = ssh_keygen(repo.root / "keys", "master_ssh",
                                         comment="operator@laptop")
        encrypt_kw = {"recipients_file": identity.with_name("master_ssh.pub")}
        env["VAULTPY_IDENTITY"] = str(identity)
    write_config(repo, [recipient], list(MASTER_PLAINTEXTS),
                 {h.name: (h.pubkey, list(MASTER_PLAINTEXTS)) for h in repo.hosts.values()})
    for sid, plaintext in MASTER_PLAINTEXTS.items():
        out = repo.root / "secrets" / f"{sid}.age"
        age_encrypt_cli(plaintext, out, armor=armor, **encrypt_kw)  # type: ignore[arg-type]
        head = out.read_bytes()[:40]
        assert head.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----" if armor
                               else b"age-encryption.org/v1\n")

    for sid, plaintext in MASTER_PLAINTEXTS.items():
        # -i on the command line (an ssh master key must work there too) …
        proc = repo.ok("decrypt", sid, "-i", str(identity))
        assert proc.stdout == plaintext
        # … and through VAULTPY_IDENTITY.
        if env:
            assert repo.ok("decrypt", sid, env=env).stdout == plaintext
    if master_kind == "ssh-ed25519":
        # Genuinely needs the ssh key: the repo's age master identity cannot open these.
        proc = repo.run("decrypt", "alpha")
        assert proc.returncode == 1 and proc.stdout == b""

    result = json.loads(repo.ok("renc", "--json", "-i", str(identity)).stdout)
    assert result["ok"] is True and result["failed"] == []
    assert len(result["written"]) == len(repo.hosts) * len(MASTER_PLAINTEXTS)
    for host in repo.hosts.values():
        files = cache_of(repo, host.name)
        assert set(files) == set(MASTER_PLAINTEXTS)
        for sid, plaintext in MASTER_PLAINTEXTS.items():
            assert age_decrypt(files[sid], host.key) == plaintext
    repo.ok("check")


# --------------------------------------------------------------------------- 2. vaultpy → age

def test_age_cli_decrypts_every_cache_file(make_repo):
    secrets = {
        "empty": b"",
        "short": b"x",
        "text": b"postgres://app:s3cr3t@db/app\n",
        "chunk": os.urandom(64 * 1024),          # exactly one full STREAM chunk
        "big": os.urandom(1 << 20),               # 1 MiB of random binary
    }
    repo = make_repo(hosts=3, secrets=secrets)
    ids = list(secrets)
    keys = repo.root / "keys"
    age_host_identity, age_host_recipient = age_keygen(keys, "agehost.txt")
    dual_ssh_key, dual_ssh_pub = ssh_keygen(keys, "dual_ssh", comment="root@dual")
    dual_age_identity, dual_age_recipient = age_keygen(keys, "dual_age.txt")
    hosts: dict[str, tuple[str | list[str], list[str]]] = {
        h.name: (h.pubkey, ids) for h in repo.hosts.values()}
    hosts["agehost"] = (age_host_recipient, ids)
    hosts["dual"] = ([dual_ssh_pub, dual_age_recipient], ids)
    write_config(repo, [repo.recipient], ids, hosts)

    result = json.loads(repo.ok("renc", "--json").stdout)
    assert result["ok"] is True
    assert len(result["written"]) == len(hosts) * len(ids) == 25

    decryptors: dict[str, list[Path]] = {h.name: [h.key] for h in repo.hosts.values()}
    decryptors["agehost"] = [age_host_identity]
    decryptors["dual"] = [dual_ssh_key, dual_age_identity]   # each key alone must work
    for host, idents in decryptors.items():
        files = cache_of(repo, host)
        assert set(files) == set(ids), host
        for sid, plaintext in secrets.items():
            for ident in idents:
                assert age_decrypt(files[sid], ident) == plaintext, (host, sid, ident)

    # Each host's files are for that host only: another host's key cannot open them.
    assert age_decrypt_fails(cache_of(repo, "host0")["text"], repo.hosts["host1"].key)
    assert age_decrypt_fails(cache_of(repo, "agehost")["text"], dual_age_identity)
    assert age_decrypt_fails(cache_of(repo, "dual")["text"], repo.hosts["host0"].key)
    # … nor the master identity (the cache is not encrypted to the master recipients).
    assert age_decrypt_fails(cache_of(repo, "host2")["text"], repo.identity)


# --------------------------------------------------------------------------- 3. backup key

@pytest.mark.parametrize("armor", [False, True], ids=["binary", "armored"])
def test_ssh_backup_master_recipient_opens_master_files_with_age(make_repo, armor):
    repo = make_repo(hosts=1, secrets={"x": b""}, encrypt=False)
    keys = repo.root / "keys"
    backup_key, backup_pub = ssh_keygen(keys, "backup", comment="backup key in a safe")
    stranger_key, _ = ssh_keygen(keys, "stranger")
    host = repo.hosts["host0"]
    write_config(repo, [repo.recipient, backup_pub], ["x", "y"],
                 {host.name: (host.pubkey, ["x", "y"])})
    plaintexts = {"x": b"the x secret\n", "y": os.urandom(5000)}
    for sid, plaintext in plaintexts.items():
        args = ["encrypt", sid] + (["--armor"] if armor else [])
        repo.ok(*args, input=plaintext)

    for sid, plaintext in plaintexts.items():
        master = repo.root / "secrets" / f"{sid}.age"
        assert master.read_bytes().startswith(
            b"-----BEGIN AGE ENCRYPTED FILE-----" if armor else b"age-encryption.org/v1\n")
        assert age_decrypt(master, backup_key) == plaintext       # the backup key
        assert age_decrypt(master, repo.identity) == plaintext    # the primary key
        assert age_decrypt_fails(master, stranger_key)            # not just anyone
        # vaultpy itself accepts the backup ssh key as master identity.
        assert repo.ok("decrypt", sid, "-i", str(backup_key)).stdout == plaintext

    # renc with only the backup key as identity still serves the host.
    repo.ok("renc", env={"VAULTPY_IDENTITY": str(backup_key)})
    files = cache_of(repo, host.name)
    assert {sid: age_decrypt(f, host.key) for sid, f in files.items()} == plaintexts
