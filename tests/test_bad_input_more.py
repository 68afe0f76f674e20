"""Bad input found by a review with the real CLI: each case gets one clean line naming
the file, the field and a fix that works, never a hang, a traceback or an internal
error.  (The corpus, tests/corpus/, holds the cases that need no special file: FIFOs,
symlink loops and directories in a file's place are made here.)"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pyrage
import pytest
from conftest import (
    Repo,
    age_decrypt,
    assert_one_clean_error,
    capped_run,
    fifo_writer,
    vaultpy_argv,
)

from vaultpy import age
from vaultpy.errors import VaultpyError

SECRETS = {"alpha": b"alpha-1\n", "beta": b"beta-1\n"}
NO_MEMO = {"VAULTPY_NO_MEMO": "1"}


@pytest.fixture
def repo(make_repo) -> Repo:
    r: Repo = make_repo(hosts=1, secrets=SECRETS)
    r.ok("renc")
    return r


def check_line(proc: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    """`check` prints its findings on stdout: exit 1 and one line holding every needle."""
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in out + err, (out, err)
    lines = [ln for ln in out.splitlines() if all(n in ln for n in needles)]
    assert lines, f"no line with {needles!r} in:\n{out}"
    return lines[0]


def _cache_file(repo: Repo, sid: str) -> Path:
    (path,) = (repo.cache / "host0").glob(f"{sid}.*.age")
    return path


# --------------------------------------------------------------- special files in the cache

def test_a_fifo_in_the_cache_is_removed_never_opened(repo: Repo) -> None:
    """Stale, it is unlinked (opening it would wait for a writer forever, with the
    lock held); under a planned name, it is reported by check and replaced by renc."""
    planned = _cache_file(repo, "alpha")
    stale = repo.cache / "host0" / f"alpha.{'0' * 32}.age"      # named as renc names files
    os.mkfifo(stale)
    planned.unlink()
    os.mkfifo(planned)
    proc = repo.run("check", env=NO_MEMO, timeout=30)
    check_line(proc, planned.name, "not a regular file", "run vaultpy renc")
    repo.ok("renc", env=NO_MEMO, timeout=30)
    assert not os.path.lexists(stale)
    assert age_decrypt(planned, repo.hosts["host0"].key) == SECRETS["alpha"]
    repo.ok("check", env=NO_MEMO, timeout=30)


def test_a_fifo_as_master_is_a_clean_error(repo: Repo) -> None:
    master = repo.root / "secrets" / "beta.age"
    master.unlink()
    os.mkfifo(master)
    proc = repo.run("renc", env=NO_MEMO, timeout=30)
    assert_one_clean_error(proc, "secrets/beta.age", "not a regular file")


@pytest.mark.parametrize("where", ["found", "-C dir", "-C file"])
@pytest.mark.parametrize("command", ["renc", "check"])
def test_a_fifo_as_hosts_toml_is_a_clean_error(repo: Repo, command: str, where: str) -> None:
    """Found by the search upwards, it was passed over ("no hosts.toml here"), and
    named with -C it was opened and waited on forever."""
    config = repo.root / "hosts.toml"
    config.unlink()
    os.mkfifo(config)
    args = {"found": (), "-C dir": ("-C", str(repo.root)), "-C file": ("-C", str(config))}
    proc = repo.run(*args[where], command, timeout=30)
    assert_one_clean_error(proc, "hosts.toml", "not a regular file", "replace it with your")


@pytest.mark.parametrize("name", [".vaultpy-memo", ".vaultpy-verified"])
def test_a_fifo_as_a_bookkeeping_file_is_passed_over(repo: Repo, name: str) -> None:
    """The memo and the verification index are derived state: a FIFO in their place
    is not waited on but ignored, as a damaged one is, and a run that saves its own
    replaces it."""
    path = repo.cache / name
    if os.path.lexists(path):
        path.unlink()
    os.mkfifo(path)
    repo.ok("check", timeout=30)
    repo.ok("renc", timeout=30)
    repo.ok("check", timeout=30)
    assert path.is_file()           # (docs/contracts.md says so of both)


@pytest.mark.parametrize("where", ["beside hosts.toml", "in cache_dir"])
@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_fifo_as_the_write_journal_is_a_clean_error(repo: Repo, where: str,
                                                      kind: str) -> None:
    """vaultpy writes its journal as a regular file, so a FIFO there holds no write to
    finish.  renc said to replace it with a regular file, and the empty file that
    advice gave was then "damaged … delete it"; check called it an interrupted write
    and said to run renc.  Both now say what it is and to delete it, which works."""
    journal = (repo.root if where == "beside hosts.toml" else repo.cache) / ".vaultpy-writes"
    if kind == "fifo":
        os.mkfifo(journal)
    else:
        journal.mkdir()
    needles = (".vaultpy-writes", "not a regular file" if kind == "fifo" else "a directory",
               "no interrupted write", "delete it")
    renc = assert_one_clean_error(repo.run("renc", timeout=30), *needles)
    check = check_line(repo.run("check", timeout=30), *needles)
    assert "interrupted before" not in check
    assert renc.split("; ", 1)[1] == check.split("; ", 1)[1]       # the same fix
    journal.unlink() if kind == "fifo" else journal.rmdir()
    repo.ok("renc", timeout=30)
    repo.ok("check", timeout=30)


@pytest.mark.parametrize("final", ["outside", "elsewhere in the repository"])
def test_a_journal_committed_to_the_repository_moves_no_file_out_of_it(
        repo: Repo, tmp_path: Path, final: str) -> None:
    """The journal of an interrupted write is a file in the repository, so a clone can
    bring one.  One listing a temp file of the repository's and, as its final name, a
    file elsewhere (~/.ssh/authorized_keys) had the next renc move the repository's
    file there.  A rename is taken only from a temp name beside its final name, as
    every writer makes them; anything else is a damaged journal, which moves nothing."""
    victim = (tmp_path / "home" / ".ssh" / "authorized_keys" if final == "outside"
              else repo.root / "secrets" / "alpha.age")
    victim.parent.mkdir(parents=True, exist_ok=True)
    if final == "outside":
        victim.write_text("ssh-ed25519 AAAA the owner's key\n")
    before = victim.read_bytes()
    planted = repo.root / "secrets" / ".authorized_keys.vaultpy-tmp-0123456789ab"
    planted.write_text("ssh-ed25519 AAAA an attacker's key\n")
    (repo.root / ".vaultpy-writes").write_text(json.dumps({
        "format": 1, "root": str(repo.root),
        "renames": [[os.path.relpath(planted, repo.root), str(victim), False]]}))
    for command in ("renc", "check"):
        proc = repo.run(command, timeout=30)
        assert proc.returncode == 1, proc.stderr.decode()
        out = (proc.stdout + proc.stderr).decode()
        assert ".vaultpy-writes" in out and "damaged" in out, out
    assert victim.read_bytes() == before and planted.exists()


def test_a_journal_moves_nothing_over_a_file_of_a_shared_directory(repo: Repo,
                                                                   tmp_path: Path) -> None:
    """A temp name beside its final name is not proof enough: in a directory every user
    may write to (/tmp), anyone can make .foo.vaultpy-tmp-… beside root's foo, and a
    journal a clone brought had renc, run as root, rename it over foo.  Only the files
    multi-file writes make (hosts.toml, masters, .pub, the state files) are renamed."""
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    victim = shared / "foo"
    victim.write_text("root's own\n")
    planted = shared / ".foo.vaultpy-tmp-0123456789ab"
    planted.write_text("someone else's\n")
    for root_field, entry in ((str(shared), [".foo.vaultpy-tmp-0123456789ab", "foo", False]),
                              (str(repo.root), [os.path.relpath(planted, repo.root),
                                                os.path.relpath(victim, repo.root), False])):
        (repo.root / ".vaultpy-writes").write_text(json.dumps({
            "format": 1, "root": root_field, "renames": [entry]}))
        for command in ("renc", "check"):
            proc = repo.run(command, timeout=30)
            out = (proc.stdout + proc.stderr).decode()
            assert proc.returncode == 1 and "damaged" in out, out
        assert victim.read_text() == "root's own\n" and planted.exists()


def test_a_dangling_symlink_as_the_journal_is_no_journal_for_check_either(repo: Repo) -> None:
    """renc reads a symlink to nothing as no journal (and replaces it with its next
    one); check called it an interrupted write and said to run renc, which left it."""
    journal = repo.root / ".vaultpy-writes"
    journal.symlink_to(repo.root / "nowhere")
    repo.ok("renc", timeout=30)
    repo.ok("check", timeout=30)


@pytest.mark.parametrize("command", [("check",), ("rotate", "--mark", "alpha"),
                                     ("rotate", "--due")], ids=" ".join)
def test_a_fifo_as_the_rotation_state_is_a_clean_error(repo: Repo,
                                                       command: tuple[str, ...]) -> None:
    """secrets/rotation.toml, read by check (once a secret has rotate_days), rotate and
    generate, was opened as it was and waited on forever."""
    hosts = repo.root / "hosts.toml"
    hosts.write_text(hosts.read_text().replace("[secrets.alpha]\n",
                                               "[secrets.alpha]\nrotate_days = 30\n"))
    os.mkfifo(repo.root / "secrets" / "rotation.toml")
    proc = repo.run(*command, timeout=30)
    if command == ("check",):       # a damaged state file is a warning there
        assert proc.returncode == 0, proc.stderr.decode()
        assert "secrets/rotation.toml: cannot read: not a regular file" in proc.stderr.decode()
    else:
        assert_one_clean_error(proc, "secrets/rotation.toml", "not a regular file")


@pytest.mark.parametrize("command", ["check --recipient-coverage",
                                     "check --backup-identity",
                                     "rekey --rotate-master"])
def test_a_fifo_as_master_is_a_clean_error_for_recovery(repo: Repo, command: str) -> None:
    """check --recipient-coverage / --backup-identity reported a FIFO master as a
    problem, then read it again to try the keys, and rekey --rotate-master read every
    master to decrypt it: both opened it as it was and waited forever."""
    master = repo.root / "secrets" / "beta.age"
    master.unlink()
    os.mkfifo(master)
    args = {"check --recipient-coverage": ["check", "--recipient-coverage"],
            "check --backup-identity": ["check", "--backup-identity", str(repo.identity)],
            "rekey --rotate-master": ["rekey", "--new-identity",
                                      str(repo.root / "keys" / "new.txt")]}[command]
    proc = repo.run(*args, timeout=30)
    if command.startswith("check"):
        check_line(proc, "secrets/beta.age", "not a regular file")
    else:
        assert_one_clean_error(proc, "secrets/beta.age", "not a regular file")
        assert not (repo.root / ".vaultpy-rotation.jsonl").exists()


def test_a_fifo_as_the_rotation_journal_is_a_clean_error(repo: Repo) -> None:
    """check says to finish an unfinished rotation with rekey --rotate-master, which
    opened the journal as it was and waited forever."""
    os.mkfifo(repo.root / ".vaultpy-rotation.jsonl")
    proc = repo.run("rekey", "--rotate-master", timeout=30)
    assert_one_clean_error(proc, ".vaultpy-rotation.jsonl", "cannot read the rotation "
                           "journal: not a regular file")


def test_a_fifo_as_the_default_identity_is_a_clean_error(repo: Repo, tmp_path: Path) -> None:
    """~/.config/vaultpy/master.txt is found, not named: a FIFO there hung every command
    that decrypts, and doctor.  A file named with -i is read as given, so a pipe there
    (-i <(pass show age-key)) still works."""
    home = tmp_path / "home"
    (home / ".config" / "vaultpy").mkdir(parents=True)
    os.mkfifo(home / ".config" / "vaultpy" / "master.txt")
    env = {"HOME": str(home), "VAULTPY_IDENTITY": ""}
    proc = repo.run("decrypt", "alpha", env=env, timeout=30)
    assert_one_clean_error(proc, "master.txt", "cannot read identity", "not a regular file")
    proc = repo.run("doctor", env=env, timeout=30)
    assert proc.returncode == 1 and "master.txt: cannot read identity: not a regular " \
        "file" in proc.stdout.decode(), proc.stdout.decode()
    proc = repo.ok("decrypt", "-i", "/dev/stdin", "alpha", env=env, timeout=30,
                   input=repo.identity.read_bytes())
    assert proc.stdout == SECRETS["alpha"]
    # hosts.toml's identity: a clone brings it, nobody typed it; a FIFO there hung renc
    os.mkfifo(repo.root / "keys" / "fifo")
    text = (repo.root / "hosts.toml").read_text()
    repo.write_hosts(text.replace("[vaultpy]\n", '[vaultpy]\nidentity = "keys/fifo"\n', 1))
    proc = repo.run("decrypt", "alpha", env=env, timeout=30)
    assert_one_clean_error(proc, "keys/fifo", "cannot read identity", "not a regular file")


def test_encrypt_from_a_stream_without_end_stops_with_one_line(repo: Repo) -> None:
    """`encrypt --file /dev/zero` (or an endless pipe) used to read until memory ran
    out; it stops past the limit, writes nothing, and says what to do instead."""
    from vaultpy.masters import MAX_PLAINTEXT

    master = repo.root / "secrets" / "alpha.age"
    before = master.read_bytes()
    proc = repo.run("encrypt", "alpha", "--file", "/dev/zero", timeout=60)
    assert_one_clean_error(proc, "/dev/zero", f"more than {MAX_PLAINTEXT >> 20} MiB")
    proc = repo.run("encrypt", "alpha", input=bytes(MAX_PLAINTEXT + 1), timeout=60)
    assert_one_clean_error(proc, "-: more than", "encrypt a big file with age")
    assert master.read_bytes() == before
    # the limit itself is accepted, from a pipe as from a file
    big = repo.root / "big"
    big.write_bytes(b"x" * MAX_PLAINTEXT)
    repo.ok("encrypt", "alpha", "--file", str(big), timeout=60)
    assert age_decrypt(master, repo.identity) == big.read_bytes()


def test_empty_input_never_replaces_a_value(repo: Repo) -> None:
    """`vaultpy encrypt alpha </dev/null` (an unset variable piped in, an empty file)
    replaced alpha's value with an empty one, exit 0, and warned only once it was gone.
    Empty input over a value is refused before anything is written; --allow-empty says
    an empty value is meant.  Nothing is lost storing a new secret, or an empty one,
    empty: that goes through, with the warning."""
    (repo.root / "blank.txt").write_bytes(b"")
    repo.ok("encrypt", "beta", "--armor", input=SECRETS["beta"])
    snap = repo.snapshot()
    for sid in ("alpha", "beta"):                       # binary and armored masters
        for how in ({"input": b""}, {"stdin": subprocess.DEVNULL}):
            proc = capped_run(vaultpy_argv("encrypt", sid), repo.env, repo.root, **how)
            assert_one_clean_error(proc, f"secrets/{sid}.age: secrets.{sid}: stdin is empty",
                                   f"would replace the value of {sid} with an empty one",
                                   "nothing was written", "add --allow-empty")
        proc = repo.run("encrypt", sid, "--file", "blank.txt")
        assert_one_clean_error(proc, f"secrets/{sid}.age: secrets.{sid}: blank.txt is empty",
                               "nothing was written", "add --allow-empty")
    # a lone line break, as `echo "$UNSET" | vaultpy encrypt alpha` gives: refused the same
    for blank in (b"\n", b"\r\n"):
        proc = repo.run("encrypt", "alpha", input=blank)
        assert_one_clean_error(proc, "secrets.alpha: stdin holds only a line break",
                               "would replace the value of alpha with that",
                               "to store it, add --allow-empty")
    assert repo.snapshot() == snap
    # a master that is no age file (damaged, hand-edited) may hold anything: refused too
    (repo.root / "secrets" / "alpha.age").write_bytes(b"not an age file\n")
    assert_one_clean_error(repo.run("encrypt", "alpha", input=b""), "secrets.alpha",
                           "add --allow-empty")
    # asked for: stored, and said
    repo.ok("encrypt", "alpha", "--allow-empty", input=b"\n")
    assert repo.ok("decrypt", "alpha").stdout == b"\n"
    err = repo.ok("encrypt", "alpha", "--allow-empty", input=b"").stderr.decode()
    assert "warning: alpha is now empty" in err
    assert repo.ok("decrypt", "alpha").stdout == b""
    # an empty value again: nothing to lose (told without a key: none is needed)
    err = repo.ok("encrypt", "alpha", input=b"", env={"VAULTPY_IDENTITY": "/nonexistent"}
                  ).stderr.decode()
    assert "warning: alpha is now empty" in err
    # a new secret may start empty
    repo.write_hosts((repo.root / "hosts.toml").read_text() + "[secrets.gamma]\n")
    assert "gamma is now empty" in repo.ok("encrypt", "gamma", input=b"").stderr.decode()
    assert age_decrypt(repo.root / "secrets" / "gamma.age", repo.identity) == b""


# ------------------------------------------------ files named on the command line: capped

@pytest.mark.parametrize("how", ["-i", "VAULTPY_IDENTITY"])
def test_a_device_named_as_the_identity_is_one_clean_line(repo: Repo, how: str) -> None:
    """`-i /dev/zero` was read until memory ran out (a MemoryError, exit 70); an
    identity file is now read up to 16 MiB (docs/contracts.md)."""
    args = ("-i", "/dev/zero") if how == "-i" else ()
    proc = capped_run(vaultpy_argv("decrypt", *args, "alpha"),
                      {**repo.env, "VAULTPY_IDENTITY": "/dev/zero"}, repo.root)
    assert_one_clean_error(proc, "/dev/zero: more than 16 MiB, too much for an identity "
                           "file", "pass -i FILE")


@pytest.mark.parametrize("args", [
    ("identity", "combine", "/dev/zero"),
    ("host", "add", "web9", "--pubkey-file", "/dev/zero", "--no-renc"),
    ("import", "vaultix", "/dev/zero"),
], ids=["share-file", "pubkey-file", "vaultix-profile"])
def test_other_devices_named_on_the_command_line_are_one_clean_line(
        repo: Repo, args: tuple[str, ...]) -> None:
    """A share file, a host's public key file and a vaultix profile were read whole: a
    share file's size check took a device's st_size (0) at its word."""
    proc = capped_run(vaultpy_argv(*args), repo.env, repo.root)
    assert_one_clean_error(proc, "/dev/zero", "too ")


def test_a_named_identity_may_still_be_a_pipe(repo: Repo) -> None:
    """The cap keeps what a named path may be: /dev/stdin, and a FIFO being written."""
    key = repo.identity.read_bytes()
    proc = capped_run(vaultpy_argv("decrypt", "-i", "/dev/stdin", "alpha"), repo.env,
                      repo.root, input=key)
    assert proc.returncode == 0 and proc.stdout == SECRETS["alpha"], proc.stderr.decode()
    fifo = repo.root / "key.fifo"
    with fifo_writer(fifo, key):
        proc = capped_run(vaultpy_argv("decrypt", "-i", str(fifo), "alpha"), repo.env,
                          repo.root, timeout=30)
    assert proc.returncode == 0 and proc.stdout == SECRETS["alpha"], proc.stderr.decode()


def test_decrypt_file_takes_a_pipe_and_stops_at_a_device(repo: Repo) -> None:
    """decrypt --file <(…) was refused as "not a regular file", while encrypt --file
    and -i take a pipe (a review).  It takes one now, and /dev/zero still ends in one
    line, past the cap, not a MemoryError."""
    master = (repo.root / "secrets" / "alpha.age").read_bytes()
    proc = capped_run(vaultpy_argv("decrypt", "--file", "/dev/stdin"), repo.env, repo.root,
                      input=master)
    assert proc.returncode == 0 and proc.stdout == SECRETS["alpha"], proc.stderr.decode()
    fifo = repo.root / "master.fifo"
    with fifo_writer(fifo, master):
        proc = capped_run(vaultpy_argv("decrypt", "--file", str(fifo)), repo.env, repo.root,
                          timeout=30)
    assert proc.returncode == 0 and proc.stdout == SECRETS["alpha"], proc.stderr.decode()
    proc = capped_run(vaultpy_argv("decrypt", "--file", "/dev/zero"), repo.env, repo.root)
    assert_one_clean_error(proc, "/dev/zero: is more than", "MiB", "give the age file itself")


def test_a_device_as_the_passphrase_source_is_one_clean_line(repo: Repo) -> None:
    """VAULTPY_PASSPHRASE_FILE=/dev/zero was read (readline) until memory ran out;
    --passphrase-fd on /dev/zero read one byte at a time, for ever.  Both stop past
    1 MiB without a line break (docs/contracts.md).  A FIFO whose writer keeps it open after
    the line, and a file with more lines, still give their first line."""
    locked = repo.root / "keys" / "locked.age"
    locked.write_bytes(pyrage.passphrase.encrypt(repo.identity.read_bytes(), "pw"))
    argv = vaultpy_argv("decrypt", "-i", str(locked), "alpha")
    cap = "more than 1 MiB without a line break"
    proc = capped_run(argv, {**repo.env, "VAULTPY_PASSPHRASE_FILE": "/dev/zero"}, repo.root)
    assert_one_clean_error(proc, "/dev/zero: VAULTPY_PASSPHRASE_FILE: " + cap,
                           "first line is the passphrase")
    # A file that is not there: the line said why, and no fix (a review).
    proc = capped_run(argv, {**repo.env, "VAULTPY_PASSPHRASE_FILE": "nosuch.txt"}, repo.root)
    assert_one_clean_error(proc, "nosuch.txt: VAULTPY_PASSPHRASE_FILE: cannot read passphrase "
                           "file: No such file or directory; point VAULTPY_PASSPHRASE_FILE "
                           "at a file whose first line is the passphrase, or unset it")
    with open("/dev/zero", "rb") as zero:
        proc = capped_run(vaultpy_argv("--passphrase-fd", "0", *argv[3:]), repo.env,
                          repo.root, stdin=zero.fileno())
    assert_one_clean_error(proc, "--passphrase-fd: " + cap, "a line break")
    # The runs that decrypt get room for scrypt: rage sizes its work factor by this
    # machine's speed when it encrypts (on a fast one, N = 2^20: 1 GiB for the decrypt).
    room = 4 << 30
    fifo = repo.root / "pw.fifo"
    with fifo_writer(fifo, b"pw\n", hold=True):
        proc = capped_run(argv, {**repo.env, "VAULTPY_PASSPHRASE_FILE": str(fifo)},
                          repo.root, timeout=30, limit=room)
    assert proc.returncode == 0 and proc.stdout == SECRETS["alpha"], proc.stderr.decode()
    for text in (b"pw\r\nnot it\n", b"pw\rnot it", b"pw"):
        (repo.root / "pw.txt").write_bytes(text)
        proc = capped_run(argv, {**repo.env, "VAULTPY_PASSPHRASE_FILE": "pw.txt"}, repo.root,
                          limit=room)
        assert proc.returncode == 0 and proc.stdout == SECRETS["alpha"], proc.stderr.decode()


def test_a_directory_in_a_cache_files_place_is_named_and_kept(repo: Repo) -> None:
    """renc never removes a directory it did not create: it says what is in the way,
    where, and a fix that works (check says the same), and repairs nothing else."""
    planned = _cache_file(repo, "alpha")
    planned.unlink()
    planned.mkdir()
    (planned / "someone's file").write_text("keep me")
    for cmd, find in (("check", check_line), ("renc", assert_one_clean_error)):
        proc = repo.run(cmd, env=NO_MEMO)
        line = find(proc, planned.name, "a directory is in its place",
                    "move it away, then run vaultpy renc")
        assert "host0.secrets.alpha" in line
    assert (planned / "someone's file").read_text() == "keep me"
    report = json.loads(repo.run("renc", "--json", env=NO_MEMO).stdout)
    assert report["repaired"] == [] and report["written"] == []     # not counted twice
    assert [p["field"] for p in report["failed"]] == ["hosts.host0.secrets.alpha"]
    (planned / "someone's file").unlink()
    planned.rmdir()
    repo.ok("renc", env=NO_MEMO)
    repo.ok("check", env=NO_MEMO)


def test_a_file_in_a_host_directorys_place(repo: Repo) -> None:
    host_dir = repo.cache / "host0"
    for f in host_dir.iterdir():
        f.unlink()
    host_dir.rmdir()
    host_dir.write_text("not a directory")
    proc = repo.run("renc", env=NO_MEMO)
    assert_one_clean_error(proc, "host0 is not a directory", "move it away")
    assert host_dir.read_text() == "not a directory"


def test_cache_dir_that_is_a_file(repo: Repo) -> None:
    (repo.root / "cfile").write_text("")
    text = (repo.root / "hosts.toml").read_text().replace(
        "[vaultpy]\n", '[vaultpy]\ncache_dir = "cfile"\n', 1)
    repo.write_hosts(text)
    for cmd in ("renc", "check"):       # a hosts.toml problem: stderr for both
        assert_one_clean_error(repo.run(cmd, env=NO_MEMO), "hosts.toml",
                               "vaultpy.cache_dir", "cfile is not a directory")


@pytest.mark.parametrize("field", ["file", "cache_dir", "secrets_dir"])
def test_a_symlink_loop_in_a_configured_path(repo: Repo, field: str) -> None:
    (repo.root / "l2").symlink_to("l1")
    (repo.root / "l1").symlink_to("l2")
    text = (repo.root / "hosts.toml").read_text()
    if field == "file":
        text = text.replace("[secrets.alpha]\n", '[secrets.alpha]\nfile = "l1"\n', 1)
    else:
        text = text.replace("[vaultpy]\n", f'[vaultpy]\n{field} = "l1"\n', 1)
    repo.write_hosts(text)
    proc = repo.run("check", env=NO_MEMO)
    assert_one_clean_error(proc, "hosts.toml", "a symlink loop", "fix or remove the symlinks")


# --------------------------------------------------------------------------- hosts.toml

@pytest.mark.parametrize("addr", ["http://[::1", "http://vault:port", "http://vault:99999"])
def test_a_vault_address_python_cannot_split(repo: Repo, addr: str) -> None:
    text = (repo.root / "hosts.toml").read_text() + f'\n[vaultpy.vault]\naddr = "{addr}"\n'
    (repo.root / "hosts.toml").write_text(text)
    assert_one_clean_error(repo.run("check", env=NO_MEMO), "hosts.toml",
                           "vaultpy.vault.addr", "invalid address", "use a URL like")


@pytest.mark.parametrize("sid", ["../x", "a b", "x" * 300])
def test_an_impossible_id_gets_a_possible_fix(repo: Repo, sid: str) -> None:
    line = assert_one_clean_error(repo.run("decrypt", sid), "unknown secret id",
                                  "ids are letters, digits", "known: alpha, beta")
    assert "declare [secrets." not in line and len(line) < 400


def test_vaultpy_identity_naming_no_file(repo: Repo) -> None:
    assert_one_clean_error(repo.run("decrypt", "alpha", env={"VAULTPY_IDENTITY": ":"}),
                           "VAULTPY_IDENTITY", "names no file")


def test_init_refuses_a_recipient_given_twice(tmp_path: Path) -> None:
    key = "age1lkw9q5tsu7e5rkchdwhqyprkclvg4ege422qmz86pa90rt8jg55qaz6zqc"
    proc = subprocess.run([sys.executable, "-m", "vaultpy", "init", str(tmp_path / "j"),
                           "-r", key, "-r", key], capture_output=True,
                          env={**os.environ, "NO_COLOR": "1"})
    assert_one_clean_error(proc, "--recipient", "given twice")
    assert not (tmp_path / "j" / "hosts.toml").exists()


# ----------------------------------------------------------------------------- passphrases

def test_passphrase_fd_beyond_a_c_int_is_a_clean_error() -> None:
    with pytest.raises(VaultpyError, match="cannot read passphrase: no such descriptor"):
        age._read_line_from_fd(99999999999)


def test_passphrase_that_is_not_utf8(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    r, w = os.pipe()
    os.write(w, b"\xff\xfe\n")
    os.close(w)
    try:
        with pytest.raises(VaultpyError, match="not UTF-8"):
            age._read_line_from_fd(r)
    finally:
        os.close(r)
    pw = tmp_path / "pw"
    pw.write_bytes(b"\xff\n")
    monkeypatch.setenv("VAULTPY_PASSPHRASE_FILE", str(pw))
    with pytest.raises(VaultpyError, match="passphrase file is not UTF-8"):
        age.passphrase_from_env_or_tty("passphrase: ")


def test_no_terminal_and_no_stdin_is_one_line_without_python_warnings(make_repo,
                                                                      tmp_path: Path) -> None:
    """A passphrase-protected identity, no terminal (setsid: no controlling tty),
    stdin empty: one line, not getpass's warning lines before it."""
    repo: Repo = make_repo(hosts=0, secrets={"s": b"x"})
    protected = tmp_path / "protected.age"
    protected.write_bytes(pyrage.passphrase.encrypt(repo.identity.read_bytes(), "pw"))
    proc = subprocess.run(["setsid", sys.executable, "-m", "vaultpy", "-i", str(protected),
                           "decrypt", "s"], cwd=repo.root, stdin=subprocess.DEVNULL,
                          capture_output=True, env={**os.environ, "NO_COLOR": "1",
                                                    **repo.env})
    err = proc.stderr.decode()
    assert proc.returncode == 1, err
    assert "Warning" not in err and "getpass" not in err, err
    line = assert_one_clean_error(proc, "no terminal to ask on", "VAULTPY_PASSPHRASE_FILE",
                                  "--passphrase-fd")
    # named by the key that needs it (it was named by the variable, as if a file)
    assert line.startswith(f"{protected}: a passphrase is needed"), line
    # and that line alone: the prompt, written to a log, came before it (a review)
    assert err.splitlines() == [line], err


# ------------------------------------------------------------------ one problem, one line

def test_recipients_that_are_not_strings_are_one_problem(repo: Repo) -> None:
    text = (repo.root / "hosts.toml").read_text()
    start = text.index("recipients = ")
    end = text.index("]", start) + 1
    repo.write_hosts(text[:start] + "recipients = [1, 2]" + text[end:])
    proc = repo.run("check", env=NO_MEMO)
    lines = [ln for ln in proc.stderr.decode().splitlines() if "vaultpy.recipients" in ln]
    # each item named by its index, as in identities and secrets; no "no recipients" too
    assert len(lines) == 2, lines
    for i, line in enumerate(lines):
        assert f"vaultpy.recipients[{i}]: expected a string, got an integer" in line, lines


@pytest.mark.parametrize("change, field", [
    (lambda d: d["settings"].pop("identities"), "settings.identities"),
    (lambda d: d["templates"][0].pop("name"), "templates[0].name"),
    (lambda d: d["secrets"][1].update(name=5), "secrets[1].name"),
])
def test_a_profile_field_missing_or_mistyped_is_one_problem(change, field: str) -> None:
    from test_fuzz import VALID_PROFILE

    from vaultpy import profile

    data = copy.deepcopy(VALID_PROFILE)
    change(data)
    with pytest.raises(VaultpyError) as exc:
        profile.parse(data, "profile.json", Path("/x"))
    assert [p.field for p in exc.value.problems] == [field], exc.value.problems


@pytest.mark.parametrize("change, field", [
    (lambda d: d["secrets"][0].update(onwer="app"), "secrets[0].onwer"),
    (lambda d: d["templates"][0].update({"restart-units": ["a.service"]}),
     'templates[0]["restart-units"]'),
    (lambda d: d["settings"].update(kep=5), "settings.kep"),
    (lambda d: d.update(rotate=True), "rotate"),
])
def test_a_profile_field_vaultpy_does_not_know_is_refused(change, field: str) -> None:
    """A typo ("onwer") was skipped: the file was installed as root's, the owner the
    profile meant never told.  A newer vaultpy's field would be left undone the same way."""
    from test_fuzz import VALID_PROFILE

    from vaultpy import profile

    data = copy.deepcopy(VALID_PROFILE)
    change(data)
    with pytest.raises(VaultpyError) as exc:
        profile.parse(data, "profile.json", Path("/x"))
    assert [(p.field, p.message) for p in exc.value.problems] == [(field, "unknown field")]
    assert "upgrade vaultpy on this host" in exc.value.problems[0].hint


def test_a_profile_name_longer_than_hosts_toml_allows_is_refused() -> None:
    """A name of 300 characters was taken, and activation failed mid-build with "File
    name too long"; hosts.toml allows 128 (model.ID_MAX), as the profile now does."""
    from test_fuzz import VALID_PROFILE

    from vaultpy import model, profile

    assert profile._NAME_MAX == model.ID_MAX
    data = copy.deepcopy(VALID_PROFILE)
    data["secrets"][0]["name"] = "a" * 300
    with pytest.raises(VaultpyError) as exc:
        profile.parse(data, "profile.json", Path("/x"))
    assert [p.field for p in exc.value.problems] == ["secrets[0].name"]


def test_a_profile_of_another_version_is_named_for_its_version_alone() -> None:
    """Its other fields are that version's: naming each as unknown would bury the line
    that says what to do."""
    from test_fuzz import VALID_PROFILE

    from vaultpy import profile

    data = copy.deepcopy(VALID_PROFILE) | {"version": 2, "rotate": True}
    with pytest.raises(VaultpyError) as exc:
        profile.parse(data, "profile.json", Path("/x"))
    assert [(p.field, p.message) for p in exc.value.problems] == [
        ("version", "unsupported profile version 2")]


def test_an_early_item_with_a_named_owner_is_refused(repo: Repo) -> None:
    """Early items are installed before users and groups exist (a first boot, a user
    added in the same switch): a name there could not be looked up, and the whole early
    run, root's password hash with it, would fail.  Refused up front, as sops-nix
    refuses neededForUsers secrets not owned by root."""
    sid = sorted(SECRETS)[0]
    text = (repo.root / "hosts.toml").read_text()
    listed = 'secrets = ["alpha", "beta"]\n'
    assert listed in text
    base = (text.replace(listed, "") + "\n[hosts.host0.secrets.beta]\n"
            f"[hosts.host0.secrets.{sid}]\nearly = true\n")
    for extra, refused in (('owner = "nobody"\n', True), ('group = "daemon"\n', True),
                           ('owner = "65534"\ngroup = "0"\n', False), ("", False)):
        repo.write_hosts(base + extra)
        proc = repo.run("check", env=NO_MEMO)
        if refused:
            assert_one_clean_error(proc, "hosts.toml", f"hosts.host0.secrets.{sid}.early",
                                   "installed before users and groups exist",
                                   "root or numeric ids", "drop early")
        else:
            assert "early" not in proc.stderr.decode(), proc.stderr.decode()


@pytest.mark.parametrize("owner, group", [("app", "root"), ("root", "app")])
def test_a_profile_early_item_with_a_named_owner_is_one_problem(owner: str, group: str
                                                                ) -> None:
    from test_fuzz import VALID_PROFILE

    from vaultpy import profile

    data = copy.deepcopy(VALID_PROFILE)
    data["secrets"][1].update(owner=owner, group=group)       # (early: True)
    assert data["secrets"][1]["early"] is True
    with pytest.raises(VaultpyError) as exc:
        profile.parse(data, "profile.json", Path("/x"))
    assert [p.field for p in exc.value.problems] == ["secrets[1].early"], exc.value.problems
    assert "root or numeric ids" in exc.value.problems[0].message
