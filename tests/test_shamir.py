"""Shamir (SLIP-39) split of the master identity: real age-keygen keys, the real CLI.

split 3-of-5 then any 3 shares rebuild the byte-identical key line; any 2 fail
cleanly; shares of two splits, damaged shares and non-X25519 identities are clean
errors; the key rebuilt from shares is only written with --output (0600).
"""

from __future__ import annotations

import itertools
import os
import re
import stat
import subprocess
import sys
import time

import pytest
from conftest import age_keygen, assert_one_clean_error, need, ssh_keygen

from vaultpy import shamir
from vaultpy.errors import VaultpyError


def key_line(path) -> str:
    (line,) = [ln for ln in path.read_text().splitlines() if ln.startswith("AGE-SECRET-KEY-1")]
    return line


def run(*args, cwd, input=None, env=None):
    full = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})}
    full.pop("VAULTPY_IDENTITY", None)
    return subprocess.run([sys.executable, "-m", "vaultpy", *args], cwd=cwd, input=input,
                          capture_output=True, env=full, timeout=120)


# --------------------------------------------------------------------------- bech32

def test_bech32_round_trip_matches_age_keygen(tmp_path):
    for i in range(5):
        ident, public = age_keygen(tmp_path, f"k{i}.txt")
        line = key_line(ident)
        secret = shamir.secret_from_identity(line)
        assert len(secret) == 32
        assert shamir.identity_from_secret(secret) == line
        assert shamir.public_key(line) == public
        # the public key decodes too (same bech32, other HRP)
        hrp, data = shamir.bech32_decode(public)
        assert hrp == "age" and len(data) == 32


@pytest.mark.parametrize("bad", ["AGE-SECRET-KEY-1QQQQ", "age1qqqq", "", "AGE-SECRET-KEY-1",
                                 "AGE-secret-KEY-1QPZRY9X8GF2TVDW0S3JN54KHCE6MUA7L"])
def test_bech32_rejects_garbage(bad):
    with pytest.raises(ValueError):
        shamir.secret_from_identity(bad)


def test_bech32_detects_a_changed_character(tmp_path):
    line = key_line(age_keygen(tmp_path, "k.txt")[0])
    pos = 30
    swapped = line[:pos] + ("Q" if line[pos] != "Q" else "P") + line[pos + 1 :]
    with pytest.raises(ValueError, match="checksum"):
        shamir.bech32_decode(swapped)


# --------------------------------------------------------------------------- library

def test_any_three_of_five_rebuild_and_any_two_fail(tmp_path):
    line = key_line(age_keygen(tmp_path, "m.txt")[0])
    shares = shamir.split(line, 3, 5)
    assert [s.index for s in shares] == [1, 2, 3, 4, 5]
    assert {s.identifier for s in shares} == {shares[0].identifier}
    assert all(len(s.mnemonic.split()) == 33 for s in shares)
    for combo in itertools.combinations(shares, 3):
        assert shamir.combine([s.mnemonic for s in combo]) == line
    for combo in itertools.combinations(shares, 2):
        with pytest.raises(VaultpyError, match="2 distinct share"):
            shamir.combine([s.mnemonic for s in combo])
    assert shamir.combine([s.mnemonic for s in shares]) == line     # more than needed: fine


def test_two_splits_never_mix(tmp_path):
    line = key_line(age_keygen(tmp_path, "m.txt")[0])
    a, b = shamir.split(line, 2, 3), shamir.split(line, 2, 3)
    with pytest.raises(VaultpyError, match="another share set"):
        shamir.combine([a[0].mnemonic, b[1].mnemonic])


def test_a_mistyped_word_is_caught_by_the_checksum(tmp_path):
    line = key_line(age_keygen(tmp_path, "m.txt")[0])
    shares = shamir.split(line, 2, 3)
    words = shares[0].mnemonic.split()
    words[10] = "academic" if words[10] != "academic" else "acid"
    with pytest.raises(VaultpyError, match="checksum") as err:
        shamir.combine([" ".join(words), shares[1].mnemonic])
    # No share words in the message: no two of them in a row (one random word alone
    # can be in it by chance: "check" is inside "checksum", "valid" is a share word).
    said = " ".join(re.findall(r"[a-z]+", str(err.value)))
    assert not [i for i in range(len(words) - 1)
                if f" {words[i]} {words[i + 1]} " in f" {said} "], (words, said)
    with pytest.raises(VaultpyError, match="word list"):
        shamir.combine(["notaword " * 33, shares[1].mnemonic])


def test_a_duplicate_does_not_count_twice(tmp_path):
    line = key_line(age_keygen(tmp_path, "m.txt")[0])
    shares = shamir.split(line, 3, 5)
    with pytest.raises(VaultpyError, match="1 duplicate"):
        shamir.combine([shares[0].mnemonic, shares[0].mnemonic, shares[1].mnemonic])


def test_a_share_of_a_different_secret_with_forged_set_id_fails_the_digest(tmp_path):
    """SLIP-39's digest catches a share that claims the right set but carries other data."""
    import shamir_mnemonic
    from shamir_mnemonic.share import Share as RawShare

    line = key_line(age_keygen(tmp_path, "m.txt")[0])
    shares = shamir.split(line, 2, 3)
    real = RawShare.from_mnemonic(shares[1].mnemonic)
    other = shamir_mnemonic.split_ems(1, [(2, 3)], shamir_mnemonic.EncryptedMasterSecret(
        real.identifier, real.extendable, real.iteration_exponent, bytes(32)))[0][1]
    with pytest.raises(VaultpyError, match="do not fit together"):
        shamir.combine([shares[0].mnemonic, other.mnemonic()])


def test_prompt_asks_until_the_set_is_complete_and_retries_a_typo(tmp_path):
    line = key_line(age_keygen(tmp_path, "m.txt")[0])
    shares = shamir.split(line, 3, 5)
    answers = iter([shares[4].mnemonic, "not a share at all", shares[4].mnemonic,
                    shares[0].mnemonic.upper(), "  " + shares[2].mnemonic + "  "])
    prompts, said = [], []

    def ask(prompt):
        prompts.append(prompt)
        return next(answers)

    assert shamir.combine_from_prompt(ask, said.append) == line
    assert len(prompts) == 5
    assert any("not a valid share" in s for s in said)
    assert any("already given" in s for s in said)
    assert all(shares[0].mnemonic not in s for s in said)


def test_prompt_a_share_of_an_old_split_first_does_not_turn_away_the_right_ones(tmp_path):
    """The first share fixed the set: one from an older split typed first made every
    right share after it "belong to another share set", with no way to drop it."""
    line = key_line(age_keygen(tmp_path, "m.txt")[0])
    old_line = key_line(age_keygen(tmp_path, "old.txt")[0])
    old, shares = shamir.split(old_line, 2, 3), shamir.split(line, 3, 5)
    answers = iter([old[0].mnemonic, shares[1].mnemonic, shares[3].mnemonic,
                    shares[0].mnemonic])
    said: list[str] = []
    assert shamir.combine_from_prompt(lambda _p: next(answers), said.append) == line
    assert any("belongs to another split" in m and "kept apart" in m for m in said), said
    assert not any("belongs to another share set" in m for m in said), said


def test_prompt_stops_on_an_empty_answer_with_a_clean_error(tmp_path):
    line = key_line(age_keygen(tmp_path, "m.txt")[0])
    shares = shamir.split(line, 3, 5)
    answers = iter([shares[0].mnemonic, shares[1].mnemonic, ""])
    with pytest.raises(VaultpyError, match="needs 3"):
        shamir.combine_from_prompt(lambda _p: next(answers), lambda _m: None)


# --------------------------------------------------------------------------- CLI

def test_cli_split_to_files_then_combine_every_three(tmp_path):
    ident, public = age_keygen(tmp_path, "master.txt")
    out = tmp_path / "shares"
    proc = run("identity", "split", "--threshold", "3", "--shares", "5", "-o", str(out),
               "-i", str(ident), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    files = sorted(out.iterdir())
    assert len(files) == 5
    assert stat.S_IMODE(out.stat().st_mode) == 0o700
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o600
        assert public in f.read_text()                    # the holder can tell which key
    assert key_line(ident) not in proc.stdout.decode() + proc.stderr.decode()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp files left
    original = key_line(ident)
    for n, combo in enumerate(itertools.combinations(files, 3)):
        dest = tmp_path / f"rebuilt{n}.txt"
        proc = run("identity", "combine", *map(str, combo), "--output", str(dest),
                   cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr.decode()
        assert proc.stdout.decode().strip() == public
        assert key_line(dest) == original                 # byte-identical key line
        assert stat.S_IMODE(dest.stat().st_mode) == 0o600
        # the real age-keygen agrees it is the same key
        assert subprocess.run([need("age-keygen"), "-y", str(dest)], capture_output=True,
                              text=True, check=True).stdout.strip() == public
    for combo in itertools.combinations(files, 2):
        proc = run("identity", "combine", *map(str, combo), cwd=tmp_path)
        assert_one_clean_error(proc, "2 distinct share(s)", "needs 3")


def test_cli_combine_without_output_never_shows_the_secret(tmp_path):
    ident, public = age_keygen(tmp_path, "master.txt")
    out = tmp_path / "s"
    assert run("identity", "split", "-t", "2", "-n", "3", "-o", str(out), "-i", str(ident),
               cwd=tmp_path).returncode == 0
    proc = run("identity", "combine", str(out), cwd=tmp_path)
    assert proc.returncode == 0
    both = proc.stdout.decode() + proc.stderr.decode()
    assert public in both and "AGE-SECRET-KEY" not in both
    assert sorted(p.name for p in tmp_path.iterdir()) == ["master.txt", "s"]


def test_one_share_is_said_to_be_the_key_in_words(tmp_path):
    """1 of 1 is allowed (a paper copy of the key as words), but it is no split: said so,
    not "1 shares ...; any 1 rebuild it" (found in review)."""
    ident, public = age_keygen(tmp_path, "master.txt")
    out = tmp_path / "one"
    proc = run("identity", "split", "-t", "1", "-n", "1", "-o", str(out), "-i", str(ident),
               cwd=tmp_path)
    assert proc.returncode == 0
    err = proc.stderr.decode()
    assert f"1 share of {public}: it alone rebuilds the key" in err
    assert "keep it as you would the key" in err and "1 shares" not in err
    combined = run("identity", "combine", str(out), cwd=tmp_path)
    assert combined.returncode == 0 and public in combined.stdout.decode() + \
        combined.stderr.decode()


def test_cli_split_prints_shares_when_no_dir(tmp_path):
    ident, _ = age_keygen(tmp_path, "master.txt")
    proc = run("identity", "split", "-t", "2", "-n", "3", "-i", str(ident), cwd=tmp_path)
    assert proc.returncode == 0
    mnemonics = [ln for ln in proc.stdout.decode().splitlines()
                 if ln and not ln.startswith("#")]
    assert len(mnemonics) == 3
    assert shamir.combine(mnemonics[1:]) == key_line(ident)


def test_cli_split_never_overwrites_nor_mixes_sets(tmp_path):
    ident, _ = age_keygen(tmp_path, "master.txt")
    out = tmp_path / "s"
    assert run("identity", "split", "-t", "2", "-n", "3", "-o", str(out), "-i", str(ident),
               cwd=tmp_path).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = run("identity", "split", "-t", "2", "-n", "3", "-o", str(out), "-i", str(ident),
               cwd=tmp_path)
    assert_one_clean_error(proc, "a share file is already there", "empty -o DIR")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_cli_mixed_sets_in_one_dir_are_a_clean_error(tmp_path):
    ident, _ = age_keygen(tmp_path, "master.txt")
    for d in ("a", "b"):
        assert run("identity", "split", "-t", "2", "-n", "3", "-o", str(tmp_path / d), "-i",
                   str(ident), cwd=tmp_path).returncode == 0
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    a_file = sorted((tmp_path / "a").iterdir())[0]
    b_file = sorted((tmp_path / "b").iterdir())[1]
    for f in (a_file, b_file):
        (mixed / f.name).write_bytes(f.read_bytes())
    proc = run("identity", "combine", str(mixed), cwd=tmp_path)
    assert_one_clean_error(proc, "belongs to another share set")


def test_cli_only_x25519_identities_split(tmp_path):
    key, _ = ssh_keygen(tmp_path, "id_ed25519")
    proc = run("identity", "split", "-t", "2", "-n", "3", "-i", str(key), cwd=tmp_path)
    assert_one_clean_error(proc, "not an X25519 identity", "cannot be split")
    two = tmp_path / "two.txt"
    a, _ = age_keygen(tmp_path, "a.txt")
    b, _ = age_keygen(tmp_path, "b.txt")
    two.write_text(a.read_text() + b.read_text())
    proc = run("identity", "split", "-t", "2", "-n", "3", "-i", str(two), cwd=tmp_path)
    assert_one_clean_error(proc, "holds 2 identities")


@pytest.mark.parametrize("args,needle", [(["-t", "4", "-n", "3"], "cannot split 4 of 3"),
                                         (["-t", "1", "-n", "3"], "plain copy"),
                                         (["-t", "2", "-n", "17"], "cannot split 2 of 17")])
def test_cli_bad_thresholds(tmp_path, args, needle):
    ident, _ = age_keygen(tmp_path, "master.txt")
    proc = run("identity", "split", *args, "-i", str(ident), cwd=tmp_path)
    assert_one_clean_error(proc, needle)
    assert proc.returncode == 2                     # a usage error, as the README says


def test_cli_combine_output_never_overwrites(tmp_path):
    ident, _ = age_keygen(tmp_path, "master.txt")
    out = tmp_path / "s"
    assert run("identity", "split", "-t", "2", "-n", "2", "-o", str(out), "-i", str(ident),
               cwd=tmp_path).returncode == 0
    taken = tmp_path / "taken.txt"
    taken.write_text("keep me")
    proc = run("identity", "combine", str(out), "--output", str(taken), cwd=tmp_path)
    assert_one_clean_error(proc, "already exists")
    assert taken.read_text() == "keep me"


def test_cli_combine_reads_shares_typed_on_stdin(tmp_path):
    ident, public = age_keygen(tmp_path, "master.txt")
    shares = shamir.split(key_line(ident), 2, 3)
    typed = (shares[2].mnemonic + "\n" + shares[0].mnemonic + "\n").encode()
    proc = run("identity", "combine", "prompt", cwd=tmp_path, input=typed)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().strip() == public
    # piped shares: getpass printed "Warning: Password input may be echoed." before each
    assert "Warning" not in proc.stderr.decode(), proc.stderr.decode()
    proc = run("identity", "combine", cwd=tmp_path, input=(shares[0].mnemonic + "\n").encode())
    assert_one_clean_error(proc, "1 distinct share(s)", "needs 2")


def _split_under_strace(tmp_path, ident, out, sig: str):
    """`identity split -n 5` with ``sig`` delivered as it links its third share."""
    need("strace")
    log = tmp_path / f"strace-{sig}.log"
    argv = [sys.executable, "-m", "vaultpy", "identity", "split", "-t", "2", "-n", "5",
            "-o", str(out), "-i", str(ident)]
    proc = subprocess.run(["strace", "-f", "-qq", "-o", str(log), "-e", "trace=link,linkat",
                           "-e", f"inject=link,linkat:signal={sig}:when=3", *argv],
                          cwd=tmp_path, capture_output=True,
                          env={**os.environ, "NO_COLOR": "1"})
    if proc.returncode != 0 and b"ptrace" in proc.stderr:
        pytest.skip("ptrace not permitted here")
    return proc


def test_an_interrupted_split_leaves_no_share(tmp_path):
    """Ctrl-C while the shares were written left those written so far: a partial set,
    any k of which rebuilt the master key.  All shares or none, now."""
    ident, _ = age_keygen(tmp_path, "master.txt")
    out = tmp_path / "s"
    proc = _split_under_strace(tmp_path, ident, out, "SIGINT")
    assert proc.returncode == 130, proc.stderr.decode()
    assert "Traceback" not in proc.stderr.decode()
    assert sorted(p.name for p in out.iterdir()) == [], list(out.iterdir())
    assert run("identity", "split", "-t", "2", "-n", "3", "-o", str(out), "-i", str(ident),
               cwd=tmp_path).returncode == 0                    # the rerun needs nothing
    assert len(list(out.iterdir())) == 3


def test_a_killed_splits_leftovers_are_named_with_what_to_do(tmp_path):
    """A SIGKILL mid-split leaves the shares written so far and a temp file holding a
    whole share, which nothing named: the rerun said only "use an empty -o DIR"."""
    ident, _ = age_keygen(tmp_path, "master.txt")
    out = tmp_path / "s"
    proc = _split_under_strace(tmp_path, ident, out, "SIGKILL")
    assert proc.returncode == -9 or proc.returncode == 137, proc.returncode
    shares = sorted(p.name for p in out.glob("share-*"))
    temps = sorted(p.name for p in out.iterdir() if p.name.startswith("."))
    assert len(shares) == 2 and len(temps) == 1, sorted(os.listdir(out))
    proc = run("identity", "split", "-t", "2", "-n", "3", "-o", str(out), "-i", str(ident),
               cwd=tmp_path)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err, err
    for name in shares:
        assert f"{name}: a share file is already there" in err, err
    assert f"{temps[0]}: a share a killed split left half placed (it holds a whole share); " \
           "delete it (shred -u)" in err, err
    assert "interrupted split left can still rebuild the key" in err, err


def test_a_combine_killed_after_its_link_leaves_no_copy_of_the_key(tmp_path):
    """A real SIGKILL as combine linked the rebuilt key into place (before it unlinked
    the temp name) left .rebuilt.txt.vaultpy-tmp-…, the master key, which nothing
    removed: the next write of that file removes it."""
    need("strace")
    ident, _public = age_keygen(tmp_path, "master.txt")
    out = tmp_path / "s"
    assert run("identity", "split", "-t", "2", "-n", "3", "-o", str(out), "-i", str(ident),
               cwd=tmp_path).returncode == 0
    dest = tmp_path / "keys" / "rebuilt.txt"
    dest.parent.mkdir()
    killed = subprocess.run(
        ["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=link,linkat",
         "-e", "inject=link,linkat:signal=KILL:when=1", sys.executable, "-m", "vaultpy",
         "identity", "combine", str(out), "--output", str(dest)],
        cwd=tmp_path, capture_output=True, env={**os.environ, "NO_COLOR": "1"}, timeout=120)
    if killed.returncode != 0 and b"ptrace" in killed.stderr:
        pytest.skip("ptrace not permitted here")
    assert killed.returncode == -9, killed.stderr.decode()
    [left] = [p for p in dest.parent.iterdir() if ".vaultpy-tmp-" in p.name]
    past = time.time() - 120            # (a recent one may be another writer's, at work)
    os.utime(left, (past, past), follow_symlinks=False)
    proc = run("identity", "combine", str(out), "--output", str(dest), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr.decode()
    assert sorted(p.name for p in dest.parent.iterdir()) == ["rebuilt.txt"]
    assert key_line(dest) == key_line(ident)


def test_a_split_whose_directory_sync_fails_leaves_no_share(tmp_path):
    """All shares or none: an error after a share's link (the directory's fsync, here a
    real EIO injected by strace) left that share on disk, and the rerun refused ("a share
    file is already there"); with a threshold of 1 that share is the whole key."""
    need("strace")
    ident, _public = age_keygen(tmp_path, "master.txt")
    out = tmp_path / "s"
    proc = subprocess.run(
        ["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=fsync",
         "-e", "inject=fsync:error=EIO:when=2", sys.executable, "-m", "vaultpy",
         "identity", "split", "-t", "2", "-n", "3", "-o", str(out), "-i", str(ident)],
        cwd=tmp_path, capture_output=True, env={**os.environ, "NO_COLOR": "1"}, timeout=120)
    if proc.returncode != 0 and b"ptrace" in proc.stderr:
        pytest.skip("ptrace not permitted here")
    assert proc.returncode == 1, proc.stderr.decode()
    assert not out.exists() or list(out.iterdir()) == []
    again = run("identity", "split", "-t", "2", "-n", "3", "-o", str(out), "-i", str(ident),
                cwd=tmp_path)
    assert again.returncode == 0, again.stderr.decode()
