"""Disaster recovery with real keys and the real CLI:

* ``--from-shares DIR`` / ``--from-shares-prompt`` run any command with the master key
  rebuilt in memory (never written to disk);
* ``check --recipient-coverage --backup-identity F`` proves each backup opens every
  master and that master headers match [vaultpy] recipients;
* ``rekey --rotate-master --new-identity F`` rotates the master key, and finishes
  after a SIGKILL at any point when run again.
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pyrage
import pytest
from conftest import (
    age_decrypt,
    age_keygen,
    assert_one_clean_error,
    need,
    ssh_keygen,
    toml_str,
)

from vaultpy import recovery, shamir

JOURNAL = ".vaultpy-rotation.jsonl"


def key_line(path: Path) -> str:
    (line,) = [ln for ln in path.read_text().splitlines() if ln.startswith("AGE-SECRET-KEY-1")]
    return line


def split_to(repo, directory: Path, threshold: int = 3, count: int = 5) -> list[Path]:
    repo.ok("identity", "split", "-t", str(threshold), "-n", str(count), "-o", str(directory))
    return sorted(directory.iterdir())


def files_holding(root: Path, needle: str) -> list[Path]:
    out = []
    for p in root.rglob("*"):
        if p.is_file():
            try:
                if needle.encode() in p.read_bytes():
                    out.append(p)
            except OSError:
                pass
    return out


def set_recipients(repo, recipients: list[str]) -> None:
    text = (repo.root / "hosts.toml").read_text()
    head, _, rest = text.partition("\n\n")
    assert head.startswith("[vaultpy]")
    repo.write_hosts("[vaultpy]\nrecipients = [" + ", ".join(map(toml_str, recipients))
                     + "]\n\n" + rest)


def fails_with(path: Path, identity: Path) -> bool:
    proc = subprocess.run([need("age"), "-d", "-i", str(identity), str(path)],
                          capture_output=True)
    return proc.returncode != 0


# --------------------------------------------------------------------------- --from-shares

def test_from_shares_decrypts_and_rencs_without_writing_the_key(make_repo, tmp_path):
    repo = make_repo(hosts=2, secrets={"a": b"alpha", "b": b"beta\n"})
    shares = split_to(repo, tmp_path / "shares")
    keep = tmp_path / "three"
    keep.mkdir()
    for f in shares[1:4]:
        (keep / f.name).write_bytes(f.read_bytes())
    secret = key_line(repo.identity)
    hidden = repo.identity.with_name("hidden.txt")
    repo.identity.rename(hidden)                       # the master file is "lost"
    env = {"VAULTPY_IDENTITY": str(repo.identity)}     # points at nothing now
    assert repo.run("decrypt", "a", env=env).returncode == 1
    before = repo.snapshot()

    proc = repo.ok("--from-shares", str(keep), "decrypt", "a", env=env)
    assert proc.stdout == b"alpha"
    assert repo.snapshot() == before                   # nothing written
    repo.ok("--from-shares", str(keep), "renc", env=env)
    repo.ok("check")
    for host in repo.hosts.values():
        for f in (repo.cache / host.name).glob("*.age"):
            assert age_decrypt(f, host.key) in (b"alpha", b"beta\n")
    # The key is on disk only where the test put it (the renamed original).
    assert files_holding(tmp_path, secret) == [hidden]
    # With -i as well, the -i key was used and the shares silently not: which one?
    for args in (("-i", str(hidden), "--from-shares", str(keep), "decrypt", "a"),
                 ("--from-shares", str(keep), "decrypt", "-i", str(hidden), "a")):
        proc = repo.run(*args, env=env)
        assert proc.returncode == 2 and proc.stdout == b""
        assert_one_clean_error(proc, "--from-shares rebuilds the master identity to use",
                               "give one of them")
    # Both ways of giving the shares: the prompt was ignored without a word (a review).
    proc = repo.run("--from-shares", str(keep), "--from-shares-prompt", "decrypt", "a",
                    env=env)
    assert proc.returncode == 2 and proc.stdout == b""
    assert_one_clean_error(proc, "--from-shares reads the shares from DIR, and "
                           "--from-shares-prompt asks for them", "give one of them")


def test_from_shares_with_two_of_three_is_a_clean_error(make_repo, tmp_path):
    repo = make_repo(hosts=1, secrets={"a": b"alpha"})
    shares = split_to(repo, tmp_path / "shares")
    two = tmp_path / "two"
    two.mkdir()
    for f in shares[:2]:
        (two / f.name).write_bytes(f.read_bytes())
    proc = repo.run("--from-shares", str(two), "decrypt", "a")
    assert_one_clean_error(proc, "2 distinct share(s)", "needs 3")
    assert proc.stdout == b""
    proc = repo.run("--from-shares", str(tmp_path / "nowhere"), "decrypt", "a")
    assert_one_clean_error(proc, "no such file or directory")


def test_from_shares_wrong_key_set_says_it_cannot_decrypt(make_repo, tmp_path):
    repo = make_repo(hosts=1, secrets={"a": b"alpha"})
    other, _ = age_keygen(tmp_path, "other.txt")
    out = tmp_path / "other-shares"
    repo.ok("identity", "split", "-t", "2", "-n", "2", "-o", str(out), "-i", str(other))
    proc = repo.run("--from-shares", str(out), "decrypt", "a")
    assert_one_clean_error(proc, "secrets/a.age", "none of the identities")


def _pty_run(args: list[str], cwd: Path, env: dict[str, str], answers: list[str],
             timeout: float = 60) -> tuple[int, bytes, bytes, bytes]:
    """Run with a pty as controlling terminal (getpass reads /dev/tty); type ``answers``
    at each "Share" prompt.  Returns (rc, stdout, stderr, what the terminal showed)."""
    master, slave = os.openpty()

    def become_tty_owner() -> None:
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen(args, cwd=cwd, env=env, stdin=slave, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, preexec_fn=become_tty_owner)
    os.close(slave)
    screen = b""
    pending = list(answers)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            screen += chunk
            while pending and screen.count(b"Share ") > len(answers) - len(pending):
                os.write(master, pending.pop(0).encode() + b"\n")
        elif proc.poll() is not None:
            break
    out, err = proc.communicate(timeout=timeout)
    os.close(master)
    return proc.returncode, out, err, screen


def test_from_shares_prompt_on_a_real_terminal(make_repo, tmp_path):
    repo = make_repo(hosts=1, secrets={"a": b"alpha"})
    shares = shamir.split(key_line(repo.identity), 3, 5)
    env = {**os.environ, "NO_COLOR": "1", "VAULTPY_IDENTITY": str(tmp_path / "none.txt")}
    typed = [shares[4].mnemonic, shares[0].mnemonic, shares[2].mnemonic]
    rc, out, err, screen = _pty_run([sys.executable, "-m", "vaultpy", "--from-shares-prompt",
                                     "decrypt", "a"], repo.root, env, typed)
    assert rc == 0, (err.decode(), screen.decode())
    assert out == b"alpha"
    assert screen.count(b"Share ") == 3                 # one prompt per share, no more
    for m in typed:                                     # input is hidden (no echo)
        assert m.split()[5].encode() not in screen
    # Two shares then an empty answer: a clean error.
    rc, out, err, screen = _pty_run([sys.executable, "-m", "vaultpy", "--from-shares-prompt",
                                     "decrypt", "a"], repo.root, env, [*typed[:2], ""])
    assert rc == 1 and out == b""
    assert "needs 3" in err.decode() and "Traceback" not in err.decode()


# --------------------------------------------------------------------------- coverage

def test_recipient_coverage_with_backup_identities(make_repo, tmp_path):
    repo = make_repo(hosts=1, secrets={"a": b"alpha", "b": b"beta"})
    backup, backup_pub = age_keygen(tmp_path, "backup.txt")
    ssh_backup, ssh_pub = ssh_keygen(tmp_path, "backup_ssh", comment="ops@safe")
    set_recipients(repo, [repo.recipient, backup_pub, ssh_pub])
    repo.ok("rekey")
    repo.ok("renc")
    proc = repo.ok("check", "--recipient-coverage", "--backup-identity", str(backup),
                   "--backup-identity", str(ssh_backup))
    assert proc.stdout == b""

    # A new backup key listed but not yet rekeyed: one line per master and identity.
    late, late_pub = age_keygen(tmp_path, "late.txt")
    late_ssh, late_ssh_pub = ssh_keygen(tmp_path, "late_ssh")
    set_recipients(repo, [repo.recipient, backup_pub, ssh_pub, late_pub, late_ssh_pub])
    proc = repo.run("check", "--backup-identity", str(late), "--backup-identity",
                    str(late_ssh), "--backup-identity", str(backup))
    assert proc.returncode == 1
    lines = proc.stdout.decode().splitlines()
    for sid in ("a", "b"):
        for ident in ("late.txt", "late_ssh"):
            hits = [ln for ln in lines if ln.startswith(f"secrets/{sid}.age:")
                    and "cannot be decrypted by backup identity" in ln and ident in ln]
            assert len(hits) == 1, (sid, ident, lines)
        hits = [ln for ln in lines if ln.startswith(f"secrets/{sid}.age:")]
        # named as ssh-keygen -l names it: the start of the base64 is every ed25519 key's
        late_name = subprocess.run(["ssh-keygen", "-lf", f"{late_ssh}.pub"], check=True,
                                   capture_output=True, text=True).stdout.split()[1]
        assert any(f"not encrypted to [vaultpy] recipient ssh-ed25519 {late_name}" in ln
                   for ln in hits), hits
        assert not any("AAAAC3NzaC1l" in ln for ln in hits)
        assert any("has 2 X25519 stanza(s) but [vaultpy] recipients list 3" in ln
                   for ln in hits)
    assert not [ln for ln in lines if "backup.txt" in ln]   # the good backup passes
    assert all("vaultpy rekey" in ln for ln in lines)
    repo.ok("rekey")
    repo.ok("renc")
    repo.ok("check", "--backup-identity", str(late), "--backup-identity", str(late_ssh),
            "--backup-identity", str(backup))
    # A backup identity that cannot be read: the fix is --backup-identity's, not -i's,
    # VAULTPY_IDENTITY's or [vaultpy] identity's, which it never reads (a review).
    proc = repo.run("check", "--backup-identity", str(tmp_path / "nosuch.key"))
    assert proc.returncode == 1, proc.stderr.decode()
    assert proc.stdout.decode().splitlines() == [
        f"{tmp_path}/nosuch.key: --backup-identity: cannot read identity: No such file or "
        "directory; give the backup identity's file with --backup-identity FILE"]


def test_recipient_coverage_flags_a_master_still_open_to_a_removed_key(make_repo, tmp_path):
    repo = make_repo(hosts=1, secrets={"a": b"alpha", "b": b"beta"})
    _old, old_pub = age_keygen(tmp_path, "old.txt")
    set_recipients(repo, [repo.recipient, old_pub])
    repo.ok("encrypt", "b", input=b"beta")              # b is open to `old` too
    set_recipients(repo, [repo.recipient])              # ... which is then removed
    repo.ok("renc")
    # The cache is fine, but the master is not: every check says so, not only with
    # --recipient-coverage (a new-user review: a backup key added without `vaultpy
    # rekey`, or a removed one, passed the CI check).
    for flags in ((), ("--recipient-coverage",)):
        proc = repo.run("check", *flags, "--json")
        data = json.loads(proc.stdout)
        assert proc.returncode == 1 and not data["ok"]
        (problem,) = data["problems"]
        assert problem["file"] == "secrets/b.age" and problem["field"] == "secrets.b"
        assert "a key not listed" in problem["message"]
    _late, late_pub = age_keygen(tmp_path, "late.txt")
    set_recipients(repo, [repo.recipient, late_pub])    # added, rekey forgotten
    lines = repo.run("check").stdout.decode().splitlines()
    assert [ln for ln in lines if "secrets/a.age" in ln and "1 X25519 stanza(s) but "
            "[vaultpy] recipients list 2" in ln and "vaultpy rekey" in ln], lines
    repo.ok("rekey")
    repo.ok("renc")
    repo.ok("check")


def test_unreadable_backup_identity_is_a_problem_line(make_repo, tmp_path):
    repo = make_repo(hosts=1, secrets={"a": b"alpha"})
    repo.ok("renc")
    proc = repo.run("check", "--backup-identity", str(tmp_path / "missing.txt"))
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    lines = [ln for ln in proc.stdout.decode().splitlines() if "missing.txt" in ln]
    assert len(lines) == 1 and "cannot read identity" in lines[0], proc.stdout


# --------------------------------------------------------------------------- rotation

def many_secret_repo(make_repo, n: int, hosts: int = 2, extra: list[str] = ()):
    secrets = {f"s{i:03d}": f"value {i}\n".encode() * 20 for i in range(n)}
    repo = make_repo(hosts=hosts, secrets=secrets, encrypt=False)
    recipients = [repo.recipient, *extra]
    text = (repo.root / "hosts.toml").read_text()
    _head, _, rest = text.partition("\n\n")
    repo.write_hosts("# the operator's repository\n[vaultpy]\n# master first, then backups\n"
                     "recipients = [" + ", ".join(map(toml_str, recipients)) + "]  # keep\n"
                     'identity = "keys/master.txt"\n\n' + rest)
    rs = [pyrage.x25519.Recipient.from_str(r) if r.startswith("age1")
          else pyrage.ssh.Recipient.from_str(r) for r in recipients]
    for sid, plain in secrets.items():
        (repo.root / "secrets" / f"{sid}.age").write_bytes(pyrage.encrypt(plain, rs))
    repo.env.pop("VAULTPY_IDENTITY")          # hosts.toml's identity is used
    return repo, secrets


def test_rotate_master_end_to_end(make_repo, tmp_path):
    backup, backup_pub = age_keygen(tmp_path, "backup.txt")
    repo, secrets = many_secret_repo(make_repo, 4, extra=[backup_pub])
    repo.ok("renc")
    before_cache = repo.cache_files()
    new = repo.root / "keys" / "new.txt"
    proc = repo.ok("rekey", "--rotate-master", "--new-identity", str(new))
    assert "rotated 4 master file(s)" in proc.stderr.decode()
    assert (new.stat().st_mode & 0o777) == 0o600
    new_pub = shamir.public_key(key_line(new))
    text = (repo.root / "hosts.toml").read_text()
    assert "# the operator's repository" in text and "# master first, then backups" in text
    assert f'recipients = ["{new_pub}", "{backup_pub}"]  # keep' in text
    assert 'identity = "keys/new.txt"' in text
    for sid, plain in secrets.items():
        master = repo.root / "secrets" / f"{sid}.age"
        assert age_decrypt(master, new) == plain
        assert age_decrypt(master, backup) == plain
        assert fails_with(master, repo.identity)
    assert not (repo.root / JOURNAL).exists()
    assert set(repo.cache_files()).isdisjoint(before_cache)     # renc rewrote the cache
    repo.ok("check", "--backup-identity", str(backup), "--backup-identity", str(new))
    assert repo.ok("decrypt", "s001").stdout == secrets["s001"]  # via hosts.toml identity


def test_rotation_keeps_the_comments_of_a_multi_line_recipients_array(make_repo, tmp_path):
    """The array `vaultpy init` writes, one recipient per line with a comment: the
    retired line goes, the new key comes first, every other line stays as it was."""
    _backup, backup_pub = age_keygen(tmp_path, "backup.txt")
    repo, secrets = many_secret_repo(make_repo, 2, extra=[backup_pub])
    text = (repo.root / "hosts.toml").read_text()
    one_line = text[text.index("recipients = ["):text.index("  # keep\n")]
    multi = (f'recipients = [\n    "{repo.recipient}",    # laptop, retire in May\n'
             f'    "{backup_pub}",  # YubiKey in the safe\n    # "age1old…",  # gone\n]')
    repo.write_hosts(text.replace(one_line + "  # keep", multi))
    new = tmp_path / "new.txt"
    repo.ok("rekey", "--rotate-master", "--new-identity", str(new))
    new_pub = shamir.public_key(key_line(new))
    after = (repo.root / "hosts.toml").read_text()
    assert (f'recipients = [\n    "{new_pub}",\n    "{backup_pub}",  # YubiKey in the safe\n'
            '    # "age1old…",  # gone\n]') in after, after
    assert "laptop" not in after and repo.recipient not in after
    for sid, plain in secrets.items():
        assert age_decrypt(repo.root / "secrets" / f"{sid}.age", new) == plain


def test_a_master_written_while_the_rotation_decrypts_is_not_rolled_back(
        make_repo, tmp_path, monkeypatch):
    """The rotation decrypts every master before it takes the lock; a value written in
    that window (by encrypt, rotate, pull…) must be the one it rotates, not the older
    plaintext it had read."""
    from vaultpy import masters, model

    repo, secrets = many_secret_repo(make_repo, 3)
    monkeypatch.chdir(repo.root)
    cfg = model.load(repo.root)
    real = recovery.Journal.write_header
    wrote: list[bool] = []

    def write_header(self: recovery.Journal) -> None:
        if not wrote:                       # once, between the decryption and the lock
            masters.write_master(cfg, "s001", b"written meanwhile")
            wrote.append(True)
        real(self)

    monkeypatch.setattr(recovery.Journal, "write_header", write_header)
    new = tmp_path / "new.txt"
    recovery.rotate_master(cfg, new, identity_files=[repo.identity])
    assert wrote
    assert age_decrypt(repo.root / "secrets" / "s001.age", new) == b"written meanwhile"
    assert age_decrypt(repo.root / "secrets" / "s002.age", new) == secrets["s002"]


def test_the_rotation_updates_hosts_toml_under_the_lock(make_repo, tmp_path, monkeypatch):
    """hosts.toml is read, changed and written back: without the repository's lock, a
    `vaultpy host add` (which takes it) could write in between and be lost."""
    from vaultpy import model

    repo, _secrets = many_secret_repo(make_repo, 2)
    monkeypatch.chdir(repo.root)
    cfg = model.load(repo.root)
    real = recovery._update_hosts_toml
    held: list[bool] = []

    def update(cfg: model.Config, journal: recovery.Journal) -> bool:
        fd = os.open(cfg.lock_path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held.append(False)
        except BlockingIOError:
            held.append(True)
        finally:
            os.close(fd)
        return real(cfg, journal)

    monkeypatch.setattr(recovery, "_update_hosts_toml", update)
    new = tmp_path / "new.txt"
    recovery.rotate_master(cfg, new, identity_files=[repo.identity])
    assert held == [True]


def test_a_new_identity_a_killed_run_left_half_written_is_removed(make_repo, tmp_path):
    """A SIGKILL while the new identity was written leaves its temp file: a secret key
    (never used: the journal's is the one written whole), on disk until removed."""
    repo, _ = many_secret_repo(make_repo, 2)
    new = tmp_path / "keys" / "new.txt"
    new.parent.mkdir()
    leftover = new.with_name(".new.txt.vaultpy-tmp-0123456789ab")
    leftover.write_text("AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ\n")
    other = new.with_name("unrelated.txt")
    other.write_text("kept")
    repo.ok("rekey", "--rotate-master", "--new-identity", str(new))
    assert sorted(p.name for p in new.parent.iterdir()) == ["new.txt", "unrelated.txt"]


def test_retire_without_a_rotation_is_a_usage_error(make_repo):
    """`rekey --retire KEY` re-encrypted every master to every recipient, KEY too, and
    said nothing: the key the user meant to drop was not dropped."""
    repo, _ = many_secret_repo(make_repo, 2)
    before = repo.snapshot()
    proc = repo.run("rekey", "--retire", repo.recipient)
    assert proc.returncode == 2
    assert_one_clean_error(proc, "--retire drops a recipient in a master key rotation",
                           "add --rotate-master")
    assert repo.snapshot() == before


def test_rotate_master_that_cannot_decrypt_writes_nothing(make_repo, tmp_path):
    repo, _ = many_secret_repo(make_repo, 3)
    stranger, _ = age_keygen(tmp_path, "stranger.txt")
    before = repo.snapshot()
    proc = repo.run("rekey", "--rotate-master", "--new-identity", str(tmp_path / "n.txt"),
                    "-i", str(stranger), "--retire", repo.recipient)
    assert_one_clean_error(proc, "none of the identities")
    assert repo.snapshot() == before
    assert not (tmp_path / "n.txt").exists()
    proc = repo.run("rekey", "--rotate-master")
    assert_one_clean_error(proc, "--new-identity", "missing")
    proc = repo.run("rekey", "--new-identity", str(repo.identity))
    assert_one_clean_error(proc, "already exists")
    assert repo.snapshot() == before


def test_rotate_master_sigkill_then_rerun_finishes(make_repo, tmp_path):
    backup, backup_pub = age_keygen(tmp_path, "backup.txt")
    repo, secrets = many_secret_repo(make_repo, 240, hosts=2, extra=[backup_pub])
    new = tmp_path / "new-master.txt"
    env = {**os.environ, "NO_COLOR": "1", **repo.env}
    env.pop("VAULTPY_IDENTITY", None)
    journal = repo.root / JOURNAL
    proc = subprocess.Popen([sys.executable, "-m", "vaultpy", "rekey", "--rotate-master",
                             "--new-identity", str(new)], cwd=repo.root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            done = journal.read_text().count('"done"')
        except FileNotFoundError:
            done = 0
        if done >= 20:                       # mid-way through the masters
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.001)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()
    killed_at = journal.read_text().count('"done"')
    assert 20 <= killed_at < 240, killed_at

    # The interrupted state: some masters rotated, others not; check says so.
    masters = sorted((repo.root / "secrets").glob("s*.age"))
    rotated = [m for m in masters if fails_with(m, repo.identity)]
    assert killed_at <= len(rotated) < len(masters)
    proc = repo.run("check")
    assert proc.returncode == 1 and b"rotation is unfinished" in proc.stdout
    proc = repo.run("rekey")
    assert_one_clean_error(proc, "rotation is unfinished", "--rotate-master")
    proc = repo.run("rekey", "--new-identity", str(tmp_path / "other.txt"))
    assert_one_clean_error(proc, "unfinished rotation")
    # Nothing else writes a master meanwhile: it would be for the old key only, and
    # the rotation, once resumed, would take a journalled one as done.
    first = masters[0].read_bytes()
    for args in (("encrypt", masters[0].stem), ("edit", masters[0].stem)):
        proc = repo.run(*args, input=b"written mid-rotation", env={"EDITOR": "true"})
        assert_one_clean_error(proc, "rotation is unfinished", "--rotate-master")
    assert masters[0].read_bytes() == first

    # --retire is read when a rotation starts: another set on resume was ignored.
    proc = repo.run("rekey", "--rotate-master", "--retire", backup_pub)
    assert_one_clean_error(proc, "an unfinished rotation retires", "--retire is read when "
                           "a rotation starts", "rerun without --retire")
    proc = repo.ok("rekey", "--rotate-master")            # resume: same command, no path
    assert "resuming" in proc.stderr.decode()
    # the rotation's count, not this run's share (it said "rotated 0" after a kill late)
    assert "rotated 240 master file(s)" in proc.stderr.decode(), proc.stderr.decode()
    new_pub = shamir.public_key(key_line(new))
    cfg_text = (repo.root / "hosts.toml").read_text()
    assert f'recipients = ["{new_pub}", "{backup_pub}"]' in cfg_text
    for m in masters:
        plain = secrets[m.name[:-4]]
        assert age_decrypt(m, new) == plain
        assert age_decrypt(m, backup) == plain
        assert fails_with(m, repo.identity)               # the old key is gone
    assert not journal.exists()
    repo.ok("check", "--recipient-coverage", "--backup-identity", str(backup),
            "--backup-identity", str(new))
    for host in repo.hosts.values():                      # renc done: hosts decrypt
        files = sorted((repo.cache / host.name).glob("*.age"))
        assert len(files) == 240
        assert age_decrypt(files[7], host.key) == secrets[files[7].name.split(".")[0]]


def test_rotation_resumes_when_the_new_key_was_lost_before_use(make_repo, tmp_path,
                                                              monkeypatch):
    """A crash between the journal's first line and the identity file: the rerun makes a
    new key (nothing was encrypted to the lost one)."""
    from vaultpy import model

    repo, secrets = many_secret_repo(make_repo, 3)
    new = tmp_path / "new.txt"
    cfg = model.load(repo.root)

    def crash(*_a, **_k):
        raise KeyboardInterrupt

    monkeypatch.setattr(recovery, "_write_identity", crash)
    with pytest.raises(KeyboardInterrupt):
        recovery.rotate_master(cfg, new, [repo.identity])
    monkeypatch.undo()
    assert (repo.root / JOURNAL).exists() and not new.exists()
    lost = json.loads((repo.root / JOURNAL).read_text().splitlines()[0])["new_recipient"]
    repo.ok("rekey", "--rotate-master", "-i", str(repo.identity))
    assert shamir.public_key(key_line(new)) != lost
    for sid, plain in secrets.items():
        assert age_decrypt(repo.root / "secrets" / f"{sid}.age", new) == plain
    repo.ok("check")


@pytest.mark.parametrize(("where", "needles"), [
    ("afile/sub", ("afile is a file, not a directory",)),
    ("afile/deeper/sub", ("afile is a file, not a directory",)),
    ("dangling/new.txt", ("dangling is a symbolic link to nothing",)),
    ("k" * 300, ("File name too long", "shorten the path")),
])
def test_a_new_identity_that_cannot_be_written_leaves_no_rotation_behind(
        make_repo, where, needles):
    """The journal was written before the new identity and kept when the identity could
    not be written: check, rekey and encrypt then all said to finish the rotation,
    which failed on the same path again, refused another --new-identity, and so on
    until the journal was deleted by hand.  "File exists" was also said for a part
    of the path that is a file.  Nothing was rotated: nothing may be left behind, and
    the fix the line gives must work."""
    repo, secrets = many_secret_repo(make_repo, 3)
    repo.ok("renc")
    (repo.root / "afile").write_text("x\n")
    (repo.root / "dangling").symlink_to(repo.root / "nowhere")
    masters = {p: p.read_bytes() for p in (repo.root / "secrets").glob("*.age")}
    hosts = (repo.root / "hosts.toml").read_bytes()
    proc = repo.run("rekey", "--rotate-master", "--new-identity", where)
    assert proc.returncode == 1
    assert not (repo.root / JOURNAL).exists()
    line = assert_one_clean_error(proc, "--new-identity: cannot write the new identity",
                                  *needles, "(nothing was rotated)")
    assert "File exists" not in line and "unfinished" not in proc.stderr.decode()
    assert {p: p.read_bytes() for p in masters} == masters
    assert (repo.root / "hosts.toml").read_bytes() == hosts
    assert files_holding(repo.root, "AGE-SECRET-KEY-1") == [repo.identity]   # no new key
    repo.ok("check")
    repo.ok("rekey")
    # The fix: another path.  The rotation starts as if the failed one never ran.
    new = repo.root / "keys" / "new.txt"
    repo.ok("rekey", "--rotate-master", "--new-identity", str(new))
    for sid, plain in secrets.items():
        master = repo.root / "secrets" / f"{sid}.age"
        assert age_decrypt(master, new) == plain
        assert fails_with(master, repo.identity)
    repo.ok("check")


@pytest.mark.parametrize("failure", ["link", "directory fsync"])
def test_a_failed_write_of_the_new_identity_takes_its_journal_back(
        make_repo, tmp_path, monkeypatch, failure):
    """Whatever errno the identity's write fails with, once the journal is on disk (a
    vanished directory: ENOENT; an I/O error on the directory's fsync, after the key
    was linked into place): no journal, and no key file, is left."""
    import errno

    from vaultpy import model
    from vaultpy._internal import fsutil

    repo, _ = many_secret_repo(make_repo, 2)
    monkeypatch.chdir(repo.root)
    cfg = model.load(repo.root)
    new = tmp_path / "keys" / "new.txt"
    real_link, real_fsync = os.link, fsutil.fsync_path

    def link(src, dst, *a, **k):
        if Path(dst) == new and failure == "link":
            assert (repo.root / JOURNAL).exists()          # the journal is written first
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(dst))
        return real_link(src, dst, *a, **k)

    def fsync_path(path, directory=False):
        if directory and Path(path) == new.parent and new.exists() and failure != "link":
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_fsync(path, directory)

    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(fsutil, "fsync_path", fsync_path)
    before = {p: p.read_bytes() for p in (repo.root / "secrets").glob("*.age")}
    with pytest.raises(recovery.VaultpyError) as info:
        recovery.rotate_master(cfg, new, [repo.identity])
    assert not (repo.root / JOURNAL).exists()
    assert not new.exists() and list(new.parent.iterdir()) == []
    (problem,) = info.value.problems
    assert problem.field == "--new-identity" and "(nothing was rotated)" in problem.hint
    assert ("No such file" if failure == "link" else "Input/output error") in problem.message
    assert {p: p.read_bytes() for p in before} == before
    assert recovery.rotation_problems(cfg) == []


def test_a_journal_whose_new_identity_was_never_written_starts_over(make_repo, tmp_path):
    """An older vaultpy kept the journal of a failed identity write; a SIGKILL between
    the journal and the key leaves the same.  Nothing is encrypted to that key:
    check says so, a rerun that cannot write it drops the journal, and another
    --new-identity is taken (it was refused: "an unfinished rotation writes the new
    identity to …"), with the --retire the rotation was started with."""
    _backup, backup_pub = age_keygen(tmp_path, "backup.txt")
    _old, old_pub = age_keygen(tmp_path, "old-backup.txt")
    repo, secrets = many_secret_repo(make_repo, 3, extra=[backup_pub, old_pub])
    repo.ok("renc")
    (repo.root / "afile").write_text("x\n")
    lost = str(pyrage.x25519.Identity.generate().to_public())
    journal = repo.root / JOURNAL
    stuck = _journal_head(new_identity=str(repo.root / "afile" / "sub"), new_recipient=lost,
                          recipients=[lost, backup_pub], retired=[repo.recipient, old_pub],
                          masters=sorted(secrets))

    journal.write_bytes(stuck)
    for args in (("check",), ("rekey",)):
        proc = repo.run(*args)
        assert proc.returncode == 1
        out = proc.stdout.decode() + proc.stderr.decode()
        assert "nothing was rotated yet: run vaultpy rekey --rotate-master to start it " \
               "again (with --new-identity FILE" in out, out
    proc = repo.run("rekey", "--rotate-master")           # the same path: fails again
    assert_one_clean_error(proc, "afile/sub", "afile is a file, not a directory",
                           "(nothing was rotated)")
    assert not journal.exists()
    repo.ok("check")

    # Killed while that key was written: its temp file, a secret key, is removed too.
    lost_path = repo.root / "keys" / "lost.txt"
    leftover = lost_path.with_name(".lost.txt.vaultpy-tmp-0123456789ab")
    leftover.write_text("AGE-SECRET-KEY-1QQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQQ\n")
    journal.write_bytes(stuck.replace(str(repo.root / "afile" / "sub").encode(),
                                      str(lost_path).encode()))
    new = repo.root / "keys" / "k2.txt"
    proc = repo.ok("rekey", "--rotate-master", "--new-identity", str(new))
    assert "starting it again" in proc.stderr.decode()
    assert not leftover.exists() and not lost_path.exists()
    new_pub = shamir.public_key(key_line(new))
    assert new_pub != lost
    text = (repo.root / "hosts.toml").read_text()
    assert f'recipients = ["{new_pub}", "{backup_pub}"]' in text      # old_pub retired
    for sid, plain in secrets.items():
        master = repo.root / "secrets" / f"{sid}.age"
        assert age_decrypt(master, new) == plain
        assert fails_with(master, repo.identity) and fails_with(master, tmp_path /
                                                                 "old-backup.txt")
    assert not journal.exists()
    repo.ok("check")


def _journal_head(**changes: object) -> bytes:
    """A well-formed first line of a rotation journal, with ``changes`` (None: left out)."""
    new_pub = str(pyrage.x25519.Identity.generate().to_public())
    head = {"version": 1, "new_identity": "/nonexistent/new.txt", "new_recipient": new_pub,
            "recipients": [new_pub], "retired": [], "masters": []}
    head.update(changes)
    return (json.dumps({k: v for k, v in head.items() if v is not None}) + "\n").encode()


@pytest.mark.parametrize(("content", "needles"), [
    (b'{"bad": 1}\n', ("version: damaged rotation journal (first line",)),
    (b"\xff\n", ("damaged rotation journal (not UTF-8 text)",)),
    (b"", ("damaged rotation journal (first line: not JSON)",)),
    (b"[1]\n", ("damaged rotation journal (first line: not a JSON object)",)),
    (b"[" * 100_000 + b"\n", ("damaged rotation journal (first line: not JSON)",)),
    (_journal_head(new_identity=None), ("new_identity: damaged rotation journal",)),
    (_journal_head(new_identity="keys/new.txt"), ("new_identity:", "not an absolute path")),
    (_journal_head(new_identity="/x\0y"), ("new_identity: damaged rotation journal",)),
    (_journal_head(masters="s000"), ("masters:", "not a list of strings")),
    (_journal_head(recipients=["not a key"]), ("recipients:", "not a recipient")),
    (_journal_head(recipients=[]), ("recipients:", "does not start with new_recipient")),
    (_journal_head(new_recipient=7), ("new_recipient: damaged rotation journal",)),
    (_journal_head(version=2), ("version: a rotation journal of another vaultpy (version 2)",
                                "finish it with the vaultpy that started it")),
])
def test_a_damaged_rotation_journal_is_the_same_one_line_for_every_command(
        make_repo, content, needles):
    """check said "a master key rotation is unfinished; run vaultpy rekey --rotate-master
    to finish it", and that command then said the journal was damaged (or showed
    Python's codec text for a journal that is not UTF-8): every command must name the
    file, the field and the fix alike, and write nothing."""
    repo, _ = many_secret_repo(make_repo, 2)
    repo.ok("renc")
    journal = repo.root / JOURNAL
    journal.write_bytes(content)
    masters = {p: p.read_bytes() for p in (repo.root / "secrets").glob("*.age")}
    said = set()
    for args in (("check",), ("check", "--json"), ("rekey", "--rotate-master"), ("rekey",),
                 ("encrypt", "s000")):
        proc = repo.run(*args, input=b"new value")
        out = proc.stdout.decode() + proc.stderr.decode()
        assert proc.returncode == 1, (args, out)
        assert "Traceback" not in out and "codec" not in out and "unfinished" not in out, out
        if "--json" in args:
            (problem,) = [p for p in json.loads(proc.stdout)["problems"]
                          if p["file"] == JOURNAL]
            line = (f"{problem['file']}: {problem['field']}: " if problem["field"] else
                    f"{problem['file']}: ") + f"{problem['message']}; {problem['hint']}"
        else:
            (line,) = [ln for ln in out.splitlines() if ln.startswith(JOURNAL)]
        assert all(n in line for n in needles), (args, line)
        assert line.endswith("remove it and check every master by hand"), line
        said.add(line)
    assert len(said) == 1, said
    assert journal.read_bytes() == content
    assert {p: p.read_bytes() for p in masters} == masters


def test_rotation_with_an_ssh_master_needs_retire(make_repo, tmp_path):
    ssh_key, ssh_pub = ssh_keygen(tmp_path, "ops_ed25519")
    repo, secrets = many_secret_repo(make_repo, 2, extra=[ssh_pub])
    proc = repo.run("rekey", "--new-identity", str(tmp_path / "n.txt"), "-i", str(ssh_key))
    assert_one_clean_error(proc, "--retire RECIPIENT")
    proc = repo.run("rekey", "--new-identity", str(tmp_path / "n.txt"), "-i", str(ssh_key),
                    "--retire", "age1notakey")
    assert_one_clean_error(proc, "--retire")
    repo.ok("rekey", "--new-identity", str(tmp_path / "n.txt"), "-i", str(ssh_key),
            "--retire", ssh_pub)
    for sid, plain in secrets.items():
        master = repo.root / "secrets" / f"{sid}.age"
        assert age_decrypt(master, tmp_path / "n.txt") == plain
        assert age_decrypt(master, repo.identity) == plain   # kept: not retired
        assert fails_with(master, ssh_key)


# --------------------------------------------------------------------------- hosts.toml edit

@pytest.mark.parametrize("text", [
    '[vaultpy]\nrecipients = ["a", "b"]\n',
    '# c\n[vaultpy] # t\nidentity = "x" # i\nrecipients = [\n  "a", # one\n  "b]",\n]\n'
    '[secrets.x]\n',
    '[hosts.h]\nrecipients = "no"\n[vaultpy]\nrecipients = [\'a\', """b\n"""]\n',
])
def test_set_vaultpy_value_replaces_only_the_value(text):
    out = recovery.set_vaultpy_value(text, "recipients", '["new"]')
    assert out is not None
    import tomllib

    doc = tomllib.loads(out)
    assert doc["vaultpy"]["recipients"] == ["new"]
    before = tomllib.loads(text)
    before["vaultpy"]["recipients"] = ["new"]
    assert doc == before
    start = text.index("recipients = ", text.index("[vaultpy]")) + len("recipients = ")
    assert out.startswith(text[:start] + '["new"]')      # everything before: untouched
    assert out.endswith('["new"]\n[secrets.x]\n' if "[secrets.x]" in text else '["new"]\n')
    assert recovery.set_vaultpy_value(text, "cache_dir", '"x"') is None
