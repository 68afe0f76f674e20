"""rekey: master files follow [vaultpy] recipients; the lock serialises writers."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import age_decrypt, age_keygen, assert_one_clean_error, toml_str


def set_recipients(repo, recipients: list[str]) -> None:
    text = (repo.root / "hosts.toml").read_text()
    head, _, rest = text.partition("\n\n")
    assert head.startswith("[vaultpy]")
    repo.write_hosts("[vaultpy]\nrecipients = [" + ", ".join(map(toml_str, recipients))
                     + "]\n\n" + rest)


def test_added_backup_recipient_opens_every_master_after_rekey(make_repo):
    repo = make_repo(hosts=2, secrets={"a": b"one", "b": b"", "c": b"\x00\xff" * 500})
    repo.ok("encrypt", "c", "--armor", input=b"armored")
    repo.ok("renc")
    backup, backup_pub = age_keygen(repo.root / "keys", "backup.txt")
    set_recipients(repo, [repo.recipient, backup_pub])
    before = {p.name: p.read_bytes() for p in (repo.root / "secrets").glob("*.age")}

    repo.ok("rekey")

    plain = {"a": b"one", "b": b"", "c": b"armored"}
    for sid, expected in plain.items():
        master = repo.root / "secrets" / f"{sid}.age"
        assert master.read_bytes() != before[master.name]
        assert age_decrypt(master, backup) == expected          # the new recipient
        assert age_decrypt(master, repo.identity) == expected   # the old one still
    assert (repo.root / "secrets" / "c.age").read_bytes().startswith(b"-----BEGIN AGE")
    # New master bytes -> new cache names: renc rewrites every file, prunes the old.
    out = json.loads(repo.ok("renc", "--json").stdout)
    assert len(out["written"]) == 6 and len(out["pruned"]) == 6
    repo.ok("check")


def test_rotating_the_master_key_locks_out_the_old_one(make_repo):
    repo = make_repo(hosts=1, secrets={"a": b"alpha"})
    new, new_pub = age_keygen(repo.root / "keys", "new.txt")
    set_recipients(repo, [new_pub])
    repo.ok("rekey")                                   # decrypts with the old identity
    master = repo.root / "secrets" / "a.age"
    assert age_decrypt(master, new) == b"alpha"
    old = subprocess.run(["age", "-d", "-i", str(repo.identity), str(master)],
                         capture_output=True)
    assert old.returncode != 0
    assert repo.ok("decrypt", "a", env={"VAULTPY_IDENTITY": str(new)}).stdout == b"alpha"


def test_rekey_that_cannot_decrypt_writes_nothing(make_repo):
    repo = make_repo(hosts=1, secrets={"a": b"alpha", "b": b"beta"})
    stranger, _ = age_keygen(repo.root / "keys", "stranger.txt")
    before = repo.snapshot()
    proc = repo.run("rekey", env={"VAULTPY_IDENTITY": str(stranger)})
    assert_one_clean_error(proc, "secrets/a.age", "none of the identities")
    assert repo.snapshot() == before


def test_concurrent_renc_runs_are_serialised_and_both_succeed(make_repo):
    secrets = {f"s{i}": bytes([i]) * (1000 + i) for i in range(12)}
    repo = make_repo(hosts=4, secrets=secrets)
    env = {**repo.env, "NO_COLOR": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "vaultpy", "renc", "--json"],
                              cwd=repo.root, env={**os.environ, **env},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for _ in range(2)]
    outs = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    # Exactly one run did the work; the other found it done (no double write).
    assert sorted(len(o["written"]) for o in outs) == [0, 48]
    repo.ok("check")
    for host in repo.hosts.values():
        for f in (repo.cache / host.name).glob("*.age"):
            assert age_decrypt(f, host.key) == secrets[f.name.split(".")[0]]
