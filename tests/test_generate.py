"""Generated secrets and rotation: ``vaultpy generate``, ``vaultpy rotate``, and the
overdue warnings of ``vaultpy check``.

Every generated master file is decrypted with the real ``age -d -i master``; key pairs
are checked with the real ``ssh-keygen -y -f`` and ``age-keygen -y``; a failing
generator must leave the repository byte-for-byte (and mtime) unchanged.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import os
import re
import string
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    Repo,
    age_decrypt,
    assert_one_clean_error,
    hosts_toml,
    need,
    toml_key,
    toml_str,
)

from vaultpy import generate
from vaultpy.model import GenerateSpec

SPECS = {
    "pw": 'generate = "alnum:32"',
    "token": 'generate = "hex:16"',
    "blob": 'generate = "base64:32"',
    "words": 'generate = "passphrase:6"',
    "deploy": 'generate = "ssh-ed25519"',
    "ident": 'generate = "x25519"',
    "cmd": 'generate = "command:printf \'%s-made\' \\"$VAULTPY_SECRET_ID\\""',
    "manual": "",
}


def spec_repo(make_repo, specs: dict[str, str] | None = None, host_secrets: tuple[str, ...]
              = ("pw",)) -> Repo:
    """A repository whose secrets are declared with the given table bodies."""
    specs = SPECS if specs is None else specs
    repo = make_repo(hosts=1, secrets={}, encrypt=False)
    host = repo.hosts["host0"]
    text = hosts_toml([repo.recipient], [], {"host0": (host.pubkey, list(host_secrets))})
    head, _, tail = text.partition("\n[hosts.")
    tables = "".join(f"[secrets.{toml_key(sid)}]\n{body}\n" for sid, body in specs.items())
    repo.write_hosts(head + "\n" + tables + "\n[hosts." + tail)
    return repo


def master(repo: Repo, sid: str) -> bytes:
    return age_decrypt(repo.root / "secrets" / f"{sid}.age", repo.identity)


def rotation(repo: Repo) -> dict:
    return tomllib.loads((repo.root / "secrets" / "rotation.toml").read_text())


def test_every_generator_makes_what_it_declares(make_repo, tmp_path: Path) -> None:
    repo = spec_repo(make_repo)
    # Before: a missing generated master is created by generate, which check names (it
    # said "create it with vaultpy edit pw", as for one typed by hand).
    lines = repo.run("check").stdout.decode().splitlines()
    assert ("secrets/pw.age: secrets.pw: master file is missing; create it with vaultpy "
            "generate pw (its generate = rule)") in lines, lines
    proc = repo.ok("generate")
    err = proc.stderr.decode()
    assert "7 secret(s) generated; run vaultpy renc" in err, err
    assert "manual" not in err

    pw = master(repo, "pw").decode()
    assert len(pw) == 32 and set(pw) <= set(string.ascii_letters + string.digits)
    token = master(repo, "token").decode()
    assert re.fullmatch(r"[0-9a-f]{32}", token)
    blob = master(repo, "blob")
    assert len(blob) == 44 and len(base64.b64decode(blob, validate=True)) == 32
    words = master(repo, "words").decode().split(" ")
    assert len(words) == 6 and set(words) <= set(generate.wordlist())
    assert master(repo, "cmd") == b"cmd-made"

    private = tmp_path / "deploy"
    private.write_bytes(master(repo, "deploy"))
    private.chmod(0o600)
    derived = subprocess.run([need("ssh-keygen"), "-y", "-f", str(private)], check=True,
                             capture_output=True, text=True).stdout.split()
    pub = (repo.root / "secrets" / "deploy.pub").read_text().split()
    assert derived[:2] == pub[:2] and pub[0] == "ssh-ed25519" and pub[2] == "deploy"
    info = subprocess.run([need("ssh-keygen"), "-l", "-f", str(private)], check=True,
                          capture_output=True, text=True).stdout
    assert info.rstrip().endswith("(ED25519)"), info

    ident = tmp_path / "ident.txt"
    ident.write_bytes(master(repo, "ident"))
    recipient = subprocess.run([need("age-keygen"), "-y", str(ident)], check=True,
                               capture_output=True, text=True).stdout.strip()
    assert (repo.root / "secrets" / "ident.pub").read_text() == recipient + "\n"
    sealed = subprocess.run([need("age"), "-r", recipient], input=b"to the new key",
                            check=True, capture_output=True).stdout
    opened = subprocess.run([need("age"), "-d", "-i", str(ident)], input=sealed, check=True,
                            capture_output=True).stdout
    assert opened == b"to the new key"

    state = rotation(repo)
    assert state["version"] == 1
    assert set(state["rotated"]) == {"pw", "token", "blob", "words", "deploy", "ident", "cmd"}
    for when in state["rotated"].values():
        assert isinstance(when, dt.datetime) and when.tzinfo is not None
    repo.ok("renc")
    # "manual" has no generator and no host yet: check still names its missing master.
    proc = repo.run("check")
    assert proc.returncode == 1 and proc.stdout.decode().splitlines() == [
        "secrets/manual.age: secrets.manual: master file is missing; create it with vaultpy "
        "edit manual (or vaultpy encrypt manual)"], proc.stdout.decode()
    repo.ok("encrypt", "manual", input=b"by hand")
    repo.ok("check")


def test_generate_creates_only_missing_ones(make_repo) -> None:
    repo = spec_repo(make_repo, {"a": 'generate = "alnum:20"', "b": 'generate = "hex:8"'},
                     ("a", "b"))
    repo.ok("encrypt", "a", input=b"hand-made")
    out = json.loads(repo.ok("generate", "--json").stdout)
    assert out["generated"] == ["b"]
    assert out["skipped"] == [{"id": "a", "reason": "exists (vaultpy rotate replaces it)"}]
    assert master(repo, "a") == b"hand-made"
    before = repo.snapshot()
    out = json.loads(repo.ok("generate", "--json").stdout)
    assert out["generated"] == [] and repo.snapshot() == before


def test_a_failing_generator_writes_nothing(make_repo) -> None:
    repo = spec_repo(make_repo, {"good": 'generate = "alnum:16"',
                                 "bad": 'generate = "command:false"',
                                 "silent": 'generate = "command:true"'}, ("good",))
    before = repo.snapshot()
    proc = repo.run("generate")
    assert_one_clean_error(proc, "secrets.bad.generate", "'false' failed (exit 1)",
                           "nothing was written")
    assert repo.snapshot() == before
    assert not (repo.root / "secrets" / "cache").exists()
    proc = repo.run("generate", "good", "silent")
    assert_one_clean_error(proc, "secrets.silent.generate", "printed nothing")
    assert repo.snapshot() == before
    repo.ok("generate", "good")
    assert set(rotation(repo)["rotated"]) == {"good"}


def test_refused_requests(make_repo) -> None:
    repo = spec_repo(make_repo, {"g": 'generate = "hex:4"', "manual": ""}, ("g",))
    before = repo.snapshot()
    assert_one_clean_error(repo.run("generate", "manual"), "secrets.manual",
                           "has no generate")
    assert_one_clean_error(repo.run("generate", "nope"), "unknown secret id 'nope'")
    proc = repo.run("rotate")
    assert_one_clean_error(proc, "nothing to rotate", "--due")
    assert proc.returncode == 2                     # a usage error (README: exit codes)
    assert_one_clean_error(repo.run("rotate", "manual"), "has no generate",
                           "vaultpy edit manual")
    proc = repo.run("rotate", "--due", "--mark")
    assert_one_clean_error(proc, "do not go together")
    assert proc.returncode == 2
    assert repo.snapshot() == before


@pytest.mark.parametrize("body, needles", [
    ('generate = "alnm:32"', ("secrets.x.generate", "did you mean 'alnum'")),
    ('generate = "alnum"', ("secrets.x.generate", "needs a size")),
    ('generate = "hex:0"', ("secrets.x.generate", "invalid size '0'")),
    ('generate = "passphrase:65"', ("secrets.x.generate", "1 to 64 words")),
    ('generate = "x25519:32"', ("secrets.x.generate", "takes no size")),
    ('generate = "command:  "', ("secrets.x.generate", "needs a shell command")),
    ("generate = 32", ("secrets.x.generate", "expected a string")),
    ("rotate_days = 0", ("secrets.x.rotate_days", "whole number from 1")),
    ('rotate_days = "30"', ("secrets.x.rotate_days", "expected a number of days")),
    ("rotate_days = true", ("secrets.x.rotate_days", "expected a number of days")),
    ("rotate_dayz = 3", ("secrets.x.rotate_dayz", "did you mean 'rotate_days'")),
])
def test_bad_declarations(make_repo, body: str, needles: tuple[str, ...]) -> None:
    repo = spec_repo(make_repo, {"x": body}, ())
    before = repo.snapshot()
    for command in ("check", "generate"):
        assert_one_clean_error(repo.run(command), "hosts.toml", *needles)
    assert repo.snapshot() == before


def test_rotate_replaces_values_and_records_the_time(make_repo, tmp_path: Path) -> None:
    repo = spec_repo(make_repo, {"pw": 'generate = "alnum:32"', "deploy":
                                 'generate = "ssh-ed25519"'}, ("pw",))
    repo.ok("generate")
    repo.ok("renc")
    old_pw, old_pub = master(repo, "pw"), (repo.root / "secrets" / "deploy.pub").read_text()
    old_state = rotation(repo)["rotated"]
    out = json.loads(repo.ok("rotate", "pw", "deploy", "--json").stdout)
    assert out["generated"] == ["pw", "deploy"]
    assert master(repo, "pw") != old_pw and len(master(repo, "pw")) == 32
    assert (repo.root / "secrets" / "deploy.pub").read_text() != old_pub
    new_state = rotation(repo)["rotated"]
    assert new_state["pw"] >= old_state["pw"]
    assert repo.run("check").returncode == 1           # the host's copy is now stale
    repo.ok("renc")
    repo.ok("check")


def _set_rotated(repo: Repo, **ages_days: int) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    lines = ["version = 1", "", "[rotated]"]
    lines += [f"{sid} = {(now - dt.timedelta(days=d)).isoformat()}"
              for sid, d in ages_days.items()]
    (repo.root / "secrets" / "rotation.toml").write_text("\n".join(lines) + "\n")


def test_overdue_warnings_and_rotate_due(make_repo) -> None:
    repo = spec_repo(make_repo, {
        "fresh": 'generate = "alnum:12"\nrotate_days = 30',
        "stale": 'generate = "hex:8"\nrotate_days = 30',
        "handmade": "rotate_days = 7",
        "forever": 'generate = "alnum:12"',
    }, ("fresh", "stale"))
    repo.ok("generate")
    repo.ok("encrypt", "handmade", input=b"typed in")
    repo.ok("renc")
    _set_rotated(repo, fresh=3, stale=45, forever=4000)

    proc = repo.ok("check")
    err = proc.stderr.decode()
    warnings = [ln for ln in err.splitlines() if ln.startswith("warning:")]
    assert len(warnings) == 2, err
    assert any("secrets.stale" in w and "45 days ago" in w and "vaultpy rotate stale" in w
               for w in warnings), warnings
    assert any("secrets.handmade" in w and "no rotation is recorded" in w and
               "vaultpy rotate --mark handmade" in w for w in warnings), warnings
    data = json.loads(repo.ok("check", "--json").stdout)
    assert data["ok"] and data["problems"] == []
    assert sorted(w["field"] for w in data["warnings"]) == ["secrets.handmade", "secrets.stale"]
    strict = repo.run("check", "--strict")
    assert strict.returncode == 1
    assert "secrets.stale" in strict.stdout.decode()
    data = json.loads(repo.run("check", "--strict", "--json").stdout)
    assert not data["ok"] and len(data["problems"]) == 2 and data["warnings"] == []

    old_fresh, old_stale = master(repo, "fresh"), master(repo, "stale")
    proc = repo.run("rotate", "--due", "--json")
    assert proc.returncode == 1                     # handmade is due and cannot be made
    out = json.loads(proc.stdout)
    assert out["generated"] == ["stale"]
    assert [p["field"] for p in out["problems"]] == ["secrets.handmade"]
    assert master(repo, "fresh") == old_fresh and master(repo, "stale") != old_stale
    repo.ok("rotate", "--mark", "handmade")
    repo.ok("renc")
    proc = repo.ok("check", "--strict")
    assert "warning" not in proc.stderr.decode()
    out = json.loads(repo.ok("rotate", "--due", "--json").stdout)
    assert out["generated"] == [] and out["problems"] == []


def test_damaged_rotation_state(make_repo) -> None:
    repo = spec_repo(make_repo, {"pw": 'generate = "alnum:12"\nrotate_days = 1'}, ("pw",))
    repo.ok("generate")
    repo.ok("renc")
    (repo.root / "secrets" / "rotation.toml").write_text("[rotated]\npw = 'yesterday'\n")
    before = repo.snapshot()
    proc = repo.ok("check")             # a warning, like every rotation finding
    assert "warning: secrets/rotation.toml: rotated.pw: expected a date-time" in \
        proc.stderr.decode()
    proc = repo.run("check", "--strict")
    assert proc.returncode == 1
    assert "rotation.toml: rotated.pw: expected a date-time" in proc.stdout.decode()
    assert_one_clean_error(repo.run("rotate", "pw"), "rotation.toml", "rotated.pw")
    assert repo.snapshot() == before


def test_a_rotation_date_in_the_future_is_reported(make_repo) -> None:
    """9999-12-31 would silence the secret's rotation warnings for ever."""
    repo = spec_repo(make_repo, {"pw": 'generate = "alnum:12"\nrotate_days = 1'}, ("pw",))
    repo.ok("generate")
    repo.ok("renc")
    (repo.root / "secrets" / "rotation.toml").write_text(
        "version = 1\n[rotated]\npw = 9999-12-31T00:00:00Z\n")
    proc = repo.run("check", "--strict")
    assert proc.returncode == 1
    assert "rotation.toml: secrets.pw: rotation recorded in the future (9999-12-31); " \
        "run vaultpy rotate pw" in proc.stdout.decode()
    repo.ok("rotate", "pw")         # the fix it names works
    repo.ok("renc")
    repo.ok("check", "--strict")


def test_a_failed_rotation_of_a_key_pair_writes_nothing(make_repo) -> None:
    """The private key, its .pub and rotation.toml are renamed one after the other: an
    I/O error at the second rename must not leave a new key beside the old .pub."""
    need("strace")
    repo = spec_repo(make_repo, {"sshk": 'generate = "ssh-ed25519"'}, ("sshk",))
    repo.ok("generate")
    secrets_dir = repo.root / "secrets"
    before = {p.name: p.read_bytes() for p in secrets_dir.iterdir() if p.is_file()}
    assert {"sshk.age", "sshk.pub"} <= set(before)
    proc = subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "-e",
                           "inject=rename:error=EIO:when=2", sys.executable, "-m", "vaultpy",
                           "rotate", "sshk"], cwd=repo.root, capture_output=True,
                          env={**os.environ, "NO_COLOR": "1", **repo.env})
    if proc.returncode != 0 and b"ptrace" in proc.stderr:
        pytest.skip("ptrace not permitted here")
    assert_one_clean_error(proc, "Input/output error")
    assert {p.name: p.read_bytes() for p in secrets_dir.iterdir() if p.is_file()} == before
    repo.ok("rotate", "sshk")                       # and without the fault, it rotates
    assert (secrets_dir / "sshk.pub").read_bytes() != before["sshk.pub"]


def test_values_are_random_and_cover_their_alphabet() -> None:
    alnum = generate.make_value(GenerateSpec("alnum", 4096), "x").secret.decode()
    assert set(alnum) == set(string.ascii_letters + string.digits)
    assert len({generate.make_value(GenerateSpec("hex", 16), "x").secret
                for _ in range(50)}) == 50
    words = generate.make_value(GenerateSpec("passphrase", 64), "x").secret.decode()
    assert len(words.split(" ")) == 64


def test_wordlist_is_shipped_whole() -> None:
    words = generate.wordlist()
    assert len(words) == 7776 == len(set(words))
    assert all(re.fullmatch(r"[a-z]+(-[a-z]+)?", w) for w in words)
    assert words[0] == "abacus" and words[-1] == "zoom"
    text = generate.WORDLIST.read_text()
    assert "Electronic Frontier Foundation" in text and "CC BY 3.0" in text


def test_rotation_file_is_tomli_w_output(make_repo) -> None:
    repo = spec_repo(make_repo, {"a.b": 'generate = "hex:4"'}, ())
    repo.ok("generate")
    text = (repo.root / "secrets" / "rotation.toml").read_text()
    assert text.startswith("version = 1\n\n[rotated]\n")
    assert toml_str("a.b") in text


def test_a_command_loses_one_trailing_line_ending(make_repo) -> None:
    """`echo value` prints value and a newline: the secret is the value (the docs say
    values have no trailing newline); only that one line ending goes."""
    repo = spec_repo(make_repo, {
        "echoed": 'generate = "command:echo value-1"',
        "crlf": "generate = \"command:printf 'value-2\\\\r\\\\n'\"",
        "blank": "generate = \"command:printf 'value-3\\\\n\\\\n'\"",
        "bare": "generate = \"command:printf value-4\"",
        "newline": "generate = \"command:echo\""}, ())
    repo.ok("generate", "echoed", "crlf", "blank", "bare")
    assert master(repo, "echoed") == b"value-1"
    assert master(repo, "crlf") == b"value-2"
    assert master(repo, "blank") == b"value-3\n"
    assert master(repo, "bare") == b"value-4"
    assert_one_clean_error(repo.run("generate", "newline"), "secrets.newline.generate",
                           "printed nothing but a line ending")


def test_a_damaged_rotation_state_stops_generate_before_any_command(make_repo) -> None:
    repo = spec_repo(make_repo, {"a": 'generate = "command:touch ran; echo v"'}, ())
    (repo.root / "secrets" / "rotation.toml").write_text("garbage[\n")
    before = repo.snapshot()
    assert_one_clean_error(repo.run("generate"), "rotation.toml", "not valid TOML")
    assert not (repo.root / "ran").exists()          # the command was never started
    assert repo.snapshot() == before


@pytest.mark.parametrize("specs, field, needle", [
    ({"a": 'generate = "alnum:10"\nfile = "secrets/k.pub"', "k": 'generate = "ssh-ed25519"'},
     "secrets.a.file", "secrets/k.pub is also the public key file of secret 'k'"),
    ({"k": 'generate = "x25519"\nfile = "secrets/k.pub"'},
     "secrets.k.file", "secrets/k.pub is also its own public key file"),
    ({"a": 'generate = "alnum:10"\nfile = "secrets/rotation.toml"'},
     "secrets.a.file", "secrets/rotation.toml is also the rotation state file"),
    ({"a": 'generate = "alnum:10"\nfile = "secrets/vault-versions.toml"'},
     "secrets.a.file", "secrets/vault-versions.toml is also the Vault versions file"),
    ({"a": 'generate = "alnum:10"\nfile = "secrets/k.age"', "k": 'generate = "hex:4"'},
     "secrets.a.file", "secrets/k.age is also the master file of secret 'k'"),
    ({"a": 'generate = "alnum:10"\nfile = "shared.age"',
      "b": 'generate = "hex:4"\nfile = "./x/../shared.age"'},
     "secrets.b.file", "shared.age is also the master file of secret 'a'"),
])
def test_a_file_written_for_two_values_is_refused(make_repo, specs: dict[str, str],
                                                  field: str, needle: str) -> None:
    """One generate run would write both values to the same file, the second silently
    replacing the first (a plaintext .pub over a master, or the reverse)."""
    repo = spec_repo(make_repo, specs, ())
    before = repo.snapshot()
    for command in ("check", "generate"):
        assert_one_clean_error(repo.run(command), "hosts.toml", field, needle,
                               "a file of its own")
    assert repo.snapshot() == before


def test_write_all_refuses_two_files_for_one_path(make_repo) -> None:
    from vaultpy import masters, model

    repo = spec_repo(make_repo, {"a": ""}, ())
    cfg = model.load(repo.root)
    before = repo.snapshot()
    target = repo.root / "secrets" / "a.age"
    with pytest.raises(generate.VaultpyError, match="nothing was written"):
        masters.write_all(cfg, [(target, b"one", 0o644),
                                (target.parent / "x" / ".." / "a.age", b"two", 0o644)])
    assert repo.snapshot() == before


def test_a_master_created_while_generate_runs_is_never_replaced(make_repo) -> None:
    """generate looks for missing masters, makes their values, then writes: a master
    the operator wrote in between (here: from inside the generator) is kept, and the
    run writes nothing."""
    encrypt = f"printf operator-chosen | {sys.executable} -m vaultpy encrypt api"
    repo = spec_repo(make_repo, {"api": f'generate = "command:{encrypt}; echo made"',
                                 "other": 'generate = "alnum:8"'}, ())
    proc = repo.run("generate")
    assert_one_clean_error(proc, "secrets/api.age", "secrets.api", "created by another "
                           "writer", "nothing was written", "vaultpy rotate api")
    assert master(repo, "api") == b"operator-chosen"
    assert sorted(p.name for p in (repo.root / "secrets").iterdir()
                  if p.is_file()) == ["api.age"]
    out = json.loads(repo.ok("generate", "--json").stdout)     # the fix it names
    assert out["generated"] == ["other"]
    assert master(repo, "api") == b"operator-chosen"


def test_write_all_never_replaces_a_new_file_that_appears_before_its_rename(
        make_repo, monkeypatch: pytest.MonkeyPatch) -> None:
    """The check under the lock misses a writer that does not take the lock: the rename
    itself (renameat2 RENAME_NOREPLACE) must not replace what it wrote."""
    from vaultpy import masters, model
    from vaultpy._internal import fsutil

    repo = spec_repo(make_repo, {"a": "", "b": ""}, ())
    cfg = model.load(repo.root)
    a, b = cfg.secrets["a"].file, cfg.secrets["b"].file
    sync = fsutil.fsync_path

    def sneaky(path: Path | str, directory: bool = False) -> None:
        if not a.exists():
            a.write_bytes(b"written meanwhile")
        sync(path, directory)

    monkeypatch.setattr(fsutil, "fsync_path", sneaky)
    with pytest.raises(masters.Appeared):
        masters.write_all(cfg, [(b, b"b-value", 0o644), (a, b"a-value", 0o644)], new=[a, b])
    assert a.read_bytes() == b"written meanwhile"
    assert sorted(p.name for p in a.parent.iterdir() if p.is_file()) == ["a.age"]


@pytest.mark.parametrize("noreplace", [True, False])
def test_rename_new_refuses_an_existing_target(tmp_path: Path, noreplace: bool,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from vaultpy._internal import fsutil

    if not noreplace:       # a file system without RENAME_NOREPLACE: the fallback
        def einval(*_: object) -> None:
            raise OSError(22, "Invalid argument")
        monkeypatch.setattr(fsutil, "_libc_call", einval)
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.write_bytes(b"new")
    dst.write_bytes(b"old")
    with pytest.raises(FileExistsError):
        fsutil.rename_new(src, dst)
    assert (src.read_bytes(), dst.read_bytes()) == (b"new", b"old")
    dst.unlink()
    fsutil.rename_new(src, dst)
    assert dst.read_bytes() == b"new" and not src.exists()


@pytest.mark.parametrize("syscall, when", [("rename", 1), ("rename", 2), ("renameat2", 1)])
def test_generate_killed_between_its_renames_is_finished_by_the_next_run(
        make_repo, tmp_path: Path, syscall: str, when: int) -> None:
    """The .pub and rotation.toml are renamed before the master (the "done" marker that
    makes the next run skip the secret): a kill at any rename leaves no master, or a
    whole key pair, and the next generate leaves a key pair whose halves match."""
    need("strace")
    repo = spec_repo(make_repo, {"deploy": 'generate = "ssh-ed25519"'}, ("deploy",))
    proc = subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "-e",
                           f"inject={syscall}:signal=KILL:when={when}", sys.executable, "-m",
                           "vaultpy", "generate"], cwd=repo.root, capture_output=True,
                          env={**os.environ, "NO_COLOR": "1", **repo.env})
    if b"ptrace" in proc.stderr:
        pytest.skip("ptrace not permitted here")
    assert proc.returncode != 0                     # it was killed
    assert not (repo.root / "secrets" / "deploy.age").exists()
    repo.ok("generate")
    private = tmp_path / "deploy"
    private.write_bytes(master(repo, "deploy"))
    private.chmod(0o600)
    derived = subprocess.run([need("ssh-keygen"), "-y", "-f", str(private)], check=True,
                             capture_output=True, text=True).stdout.split()
    assert (repo.root / "secrets" / "deploy.pub").read_text().split()[:2] == derived[:2]
    assert set(rotation(repo)["rotated"]) == {"deploy"}
    repo.ok("renc")
    repo.ok("check")


def _killed_at(repo: Repo, syscall: str, when: int, *args: str) -> None:
    """Run vaultpy ``args`` with a SIGKILL delivered as it enters its ``when``-th
    ``syscall`` (strace's fault injection: the call itself never happens)."""
    proc = subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "-e",
                           f"inject={syscall}:signal=KILL:when={when}", sys.executable, "-m",
                           "vaultpy", *args], cwd=repo.root, capture_output=True,
                          env={**os.environ, "NO_COLOR": "1", **repo.env})
    if b"ptrace" in proc.stderr:
        pytest.skip("ptrace not permitted here")
    assert proc.returncode == -9 or proc.returncode == 128 + 9, proc.stderr.decode()


def _pair_matches(repo: Repo, sid: str, tmp_path: Path) -> bytes:
    """The .pub beside ``sid``'s master is the public half of that very master."""
    private = tmp_path / sid
    private.write_bytes(master(repo, sid))
    private.chmod(0o600)
    derived = subprocess.run([need("ssh-keygen"), "-y", "-f", str(private)], check=True,
                             capture_output=True, text=True).stdout.split()
    pub = (repo.root / "secrets" / f"{sid}.pub").read_bytes()
    assert pub.split()[:2] == [w.encode() for w in derived[:2]]
    return pub


def _generated_pair(make_repo, tmp_path: Path) -> tuple[Repo, bytes, Any]:
    """A repository whose key pair "deploy" is generated and renc'ed: the repository,
    its public key, and when rotation.toml says it was made."""
    repo = spec_repo(make_repo, {"deploy": 'generate = "ssh-ed25519"'}, ("deploy",))
    repo.ok("generate")
    repo.ok("renc")
    return repo, _pair_matches(repo, "deploy", tmp_path), rotation(repo)["rotated"]["deploy"]


@pytest.mark.parametrize("when", [1, 2, 3, 4])
def test_rotate_killed_between_its_renames_leaves_a_whole_pair(
        make_repo, tmp_path: Path, when: int) -> None:
    """rotate replaces a key pair's master, its .pub and rotation.toml: three renames,
    after the one that puts the journal of the write in place.  Killed at any of them,
    the pair is never mixed: before the journal, the old pair stays (its temp files
    are leftovers renc removes); after it, the next command that takes the lock
    finishes the rotation, and check says so meanwhile."""
    need("strace")
    repo, old_pub, made = _generated_pair(make_repo, tmp_path)
    journal = repo.root / ".vaultpy-writes"
    time.sleep(1.1)                     # rotation.toml records whole seconds

    _killed_at(repo, "rename", when, "rotate", "deploy")
    assert journal.exists() == (when > 1)
    proc = repo.run("check")
    out = proc.stdout.decode()
    assert proc.returncode == 1 and "Traceback" not in out + proc.stderr.decode()
    if when > 1:
        assert out.startswith(".vaultpy-writes: a write of several files was "
                              "interrupted before all of them were replaced; run vaultpy "
                              "renc: any command that takes the lock finishes it first\n")
        assert "leftover temporary file" not in out
    else:
        assert "secrets/.deploy.pub.vaultpy-tmp-" in out
        assert out.count("leftover temporary file") == 4, out   # 3 and the journal's own
    err = repo.ok("renc").stderr.decode()
    assert not journal.exists()
    assert not [p for p in (repo.root / "secrets").iterdir() if "vaultpy-tmp" in p.name], err
    new_pub = _pair_matches(repo, "deploy", tmp_path)
    assert (new_pub != old_pub) == (when > 1)
    assert (rotation(repo)["rotated"]["deploy"] > made) == (when > 1)   # recorded with it
    repo.ok("check")


def test_a_write_killed_then_cache_dir_changed_is_still_finished(
        make_repo, tmp_path: Path) -> None:
    """rotate SIGKILLed between its renames (after its journal), then hosts.toml given
    another cache_dir: the next commands still find the journal (it lives beside
    hosts.toml, not in the cache), so check says the write was interrupted (not that
    its temp files are leftovers for renc to delete) and renc finishes it whole."""
    need("strace")
    repo, old_pub, made = _generated_pair(make_repo, tmp_path)
    time.sleep(1.1)                     # rotation.toml records whole seconds

    _killed_at(repo, "rename", 2, "rotate", "deploy")      # the .pub renamed, not the rest
    waiting = [p.name for p in (repo.root / "secrets").iterdir() if "vaultpy-tmp" in p.name]
    assert waiting
    text = (repo.root / "hosts.toml").read_text()
    repo.write_hosts(text.replace("[vaultpy]\n", '[vaultpy]\ncache_dir = "build/cache"\n', 1))

    proc = repo.run("check")
    out = proc.stdout.decode()
    assert proc.returncode == 1 and "Traceback" not in out + proc.stderr.decode()
    assert "a write of several files was interrupted" in out, out
    assert "leftover temporary file" not in out, out
    repo.ok("renc")
    assert not (repo.root / ".vaultpy-writes").exists()
    assert not [p for p in (repo.root / "secrets").iterdir() if "vaultpy-tmp" in p.name]
    assert _pair_matches(repo, "deploy", tmp_path) != old_pub      # the new pair, whole
    assert rotation(repo)["rotated"]["deploy"] > made
    assert (repo.root / "build" / "cache" / ".vaultpy.lock").exists()
    repo.ok("check")


def test_generate_derives_a_missing_public_key_again(make_repo, tmp_path: Path) -> None:
    """A key-pair master without its .pub (left by a run killed between its renames,
    before masters were renamed last): the next generate derives the .pub from the
    master, and records the rotation if that was lost too."""
    repo = spec_repo(make_repo, {"deploy": 'generate = "ssh-ed25519"',
                                 "ident": 'generate = "x25519"'}, ())
    repo.ok("generate")
    secrets_dir = repo.root / "secrets"
    pubs = {sid: (secrets_dir / f"{sid}.pub").read_bytes() for sid in ("deploy", "ident")}
    made = rotation(repo)["rotated"]["deploy"]
    for sid in pubs:
        (secrets_dir / f"{sid}.pub").unlink()
    (secrets_dir / "rotation.toml").unlink()
    ages = {sid: (secrets_dir / f"{sid}.age").read_bytes() for sid in pubs}

    no_identity = {"VAULTPY_IDENTITY": "", "HOME": str(tmp_path)}
    proc = repo.run("generate", "deploy", env=no_identity)
    assert_one_clean_error(proc, "secrets/deploy.pub", "secrets.deploy",
                           "missing beside secrets/deploy.age", "-i FILE",
                           "vaultpy rotate deploy")
    assert not (secrets_dir / "deploy.pub").exists()

    proc = repo.ok("generate")
    err = proc.stderr.decode()
    assert "deploy: secrets/deploy.pub was missing; derived it again" in err, err
    assert {sid: (secrets_dir / f"{sid}.pub").read_bytes() for sid in pubs} == pubs
    assert {sid: (secrets_dir / f"{sid}.age").read_bytes() for sid in pubs} == ages
    state = rotation(repo)["rotated"]
    assert set(state) == {"deploy", "ident"} and abs(state["deploy"] - made).seconds < 60
    out = json.loads(repo.ok("generate", "--json").stdout)     # whole again: nothing to do
    assert out["repaired"] == [] and out["generated"] == [] and len(out["skipped"]) == 2


def test_a_key_pair_master_that_holds_no_key_is_reported(make_repo) -> None:
    repo = spec_repo(make_repo, {"deploy": 'generate = "ssh-ed25519"'}, ())
    repo.ok("encrypt", "deploy", input=b"not a key")
    before = repo.snapshot()
    assert_one_clean_error(repo.run("generate"), "secrets/deploy.pub", "secrets.deploy",
                           "not an unencrypted OpenSSH private key",
                           "vaultpy rotate deploy")
    assert repo.snapshot() == before


def _openssl_wg_pubkey(private_b64: bytes) -> bytes:
    """The public key of a WireGuard private key as OpenSSL derives it (X25519 in PKCS#8:
    a fixed 16-byte prefix, then the raw key; its public DER ends in the raw public)."""
    der = bytes.fromhex("302e020100300506032b656e04220420") + base64.b64decode(private_b64)
    public = subprocess.run(["openssl", "pkey", "-inform", "DER", "-pubout", "-outform",
                             "DER"], input=der, check=True, capture_output=True).stdout
    return base64.b64encode(public[-32:]) + b"\n"


def test_wireguard_keys_are_what_wg_genkey_and_wg_pubkey_make(make_repo) -> None:
    """generate = "wireguard": the master is a private key as `wg genkey` prints it
    (base64 of 32 clamped bytes and a newline), <id>.pub its public key as `wg pubkey`
    prints it: derived again here by OpenSSL, and checked against RFC 7748's vector."""
    need("openssl")
    repo = spec_repo(make_repo, {"wg": 'generate = "wireguard"', "wg2": 'generate = "wireguard"'},
                     ("wg",))
    repo.ok("generate")
    private = master(repo, "wg")
    assert re.fullmatch(rb"[A-Za-z0-9+/]{43}=\n", private), private
    raw = base64.b64decode(private)
    assert raw[0] & 7 == 0 and raw[31] & 0xC0 == 0x40          # clamped as wg genkey does
    for _ in range(64):     # one key passes unclamped 1 time in 32: 64 of them, never
        made = base64.b64decode(generate.make_value(GenerateSpec("wireguard"), "k").secret)
        assert made[0] & 7 == 0 and made[31] & 0xC0 == 0x40, made.hex()
    pub = (repo.root / "secrets" / "wg.pub").read_bytes()
    assert pub == _openssl_wg_pubkey(private.strip())
    assert master(repo, "wg2") != private
    assert (repo.root / "secrets" / "wg2.pub").read_bytes() != pub
    repo.ok("renc")
    assert age_decrypt(repo.cache / "host0" / next(
        p.name for p in (repo.cache / "host0").iterdir() if p.name.startswith("wg")),
        repo.hosts["host0"].key) == private

    # RFC 7748 §6.1: Alice's private key and public key (a known answer, not ours).
    alice = base64.b64encode(bytes.fromhex(
        "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"))
    spec = GenerateSpec("wireguard")
    assert generate.public_half(spec, "wg", alice + b"\n") == base64.b64encode(bytes.fromhex(
        "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")) + b"\n"
    assert _openssl_wg_pubkey(alice) == generate.public_half(spec, "wg", alice)

    # A lost .pub is derived again; a master that holds no key is named.
    (repo.root / "secrets" / "wg.pub").unlink()
    assert "wg: secrets/wg.pub was missing; derived it again" in \
        repo.ok("generate").stderr.decode()
    assert (repo.root / "secrets" / "wg.pub").read_bytes() == pub
    repo.ok("encrypt", "wg2", input=b"c2hvcnQ=\n")
    (repo.root / "secrets" / "wg2.pub").unlink()
    assert_one_clean_error(repo.run("generate"), "secrets/wg2.pub", "secrets.wg2",
                           "not a WireGuard private key (5 bytes, not 32)",
                           "vaultpy rotate wg2")


def test_concurrent_runs_keep_each_others_rotation_records(make_repo) -> None:
    """rotation.toml is read, updated and written back: a record another run wrote
    between the read and the write (here: from inside a generator) must stay."""
    nested = f"{sys.executable} -m vaultpy generate b >/dev/null 2>&1"
    repo = spec_repo(make_repo, {"a": f'generate = "command:{nested}; echo a"',
                                 "b": 'generate = "alnum:8"'}, ())
    repo.ok("generate", "a")
    assert set(rotation(repo)["rotated"]) == {"a", "b"}
    repo.ok("rotate", "--mark", "b")
    assert set(rotation(repo)["rotated"]) == {"a", "b"}


def _three_files(make_repo) -> tuple[Repo, Any, list[Path]]:
    from vaultpy import model

    repo = spec_repo(make_repo, {"a": "", "b": "", "c": ""}, ())
    files = [repo.root / "secrets" / f"{sid}.age" for sid in "abc"]
    for i, f in enumerate(files):
        f.write_bytes(b"old %d" % i)
        f.chmod(0o640)
    repo.cache.mkdir(parents=True, exist_ok=True)
    (repo.cache / ".vaultpy.lock").touch()
    return repo, model.load(repo.root), files


def _failing_rename(monkeypatch: pytest.MonkeyPatch, at: Path) -> None:
    real = os.rename

    def rename(src: Any, dst: Any) -> None:
        if str(dst) == str(at) and ".vaultpy-tmp-" in str(src):
            raise OSError(5, "Input/output error")
        real(src, dst)

    monkeypatch.setattr(os, "rename", rename)


def test_write_all_undoes_its_renames_when_one_fails(make_repo, monkeypatch) -> None:
    """The third rename fails: the first two are undone (bytes, mode and times as they
    were), and no journal or temp file stays."""
    from vaultpy import masters

    repo, cfg, files = _three_files(make_repo)
    before = repo.snapshot()
    _failing_rename(monkeypatch, files[2])
    with pytest.raises(generate.VaultpyError, match="Input/output error"):
        masters.write_all(cfg, [(f, b"new %d" % i, 0o644) for i, f in enumerate(files)])
    assert repo.snapshot() == before
    assert [f.stat().st_mode & 0o777 for f in files] == [0o640] * 3
    assert not (repo.root / ".vaultpy-writes").exists()


def test_a_write_that_cannot_be_undone_is_finished_by_the_next_command(
        make_repo, monkeypatch) -> None:
    """The third rename fails, and so does putting back what the first replaced: the
    journal stays, with every temp file it lists, and the next command that takes the
    lock (here renc) finishes the write: all three new, never a mix."""
    from vaultpy import masters
    from vaultpy._internal import fsutil

    repo, cfg, files = _three_files(make_repo)
    _failing_rename(monkeypatch, files[2])
    real_write = fsutil.atomic_write

    def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
        if path == files[0]:
            raise OSError(28, "No space left on device")
        real_write(path, data, mode)

    monkeypatch.setattr(fsutil, "atomic_write", atomic_write)
    with pytest.raises(generate.VaultpyError, match="Input/output error"):
        masters.write_all(cfg, [(f, b"new %d" % i, 0o644) for i, f in enumerate(files)])
    assert (repo.root / ".vaultpy-writes").exists()
    assert files[1].read_bytes() == b"old 1"            # put back before the failure
    monkeypatch.undo()
    proc = repo.run("renc")
    assert "Traceback" not in proc.stderr.decode()
    assert [f.read_bytes() for f in files] == [b"new 0", b"new 1", b"new 2"]
    assert not (repo.root / ".vaultpy-writes").exists()
    assert not [p for p in files[0].parent.iterdir() if ".vaultpy-tmp-" in p.name]


@pytest.mark.parametrize("where", [".vaultpy-writes",
                                   "secrets/cache/.vaultpy-writes"])  # an older vaultpy's
def test_a_damaged_journal_is_one_line_naming_it(make_repo, where: str) -> None:
    repo, _cfg, _files = _three_files(make_repo)
    (repo.root / where).write_text('{"format": 1, "renames": [["../x", "y"]]}')
    for command in ("renc", "generate", "rotate a"):
        assert_one_clean_error(repo.run(*command.split()), f"{where}: ",
                               "the journal of an interrupted write is damaged",
                               "move the ones you want into place by hand, then delete it")


def _outside_pair(secrets: Path, identity: Path, tmp_path: Path) -> bytes:
    """As _pair_matches, for a ``deploy`` key pair in ``secrets``."""
    private = tmp_path / "deploy-private"
    private.unlink(missing_ok=True)
    private.write_bytes(age_decrypt(secrets / "deploy.age", identity))
    private.chmod(0o600)
    derived = subprocess.run([need("ssh-keygen"), "-y", "-f", str(private)], check=True,
                             capture_output=True, text=True).stdout.split()
    pub = (secrets / "deploy.pub").read_bytes()
    assert pub.split()[:2] == [w.encode() for w in derived[:2]]
    return pub


@pytest.mark.parametrize("how", ["absolute, repo moved", "relative, both moved",
                                 "relative, through a symlink"])
def test_a_journal_of_files_outside_the_repository_is_finished(
        make_repo, tmp_path: Path, how: str) -> None:
    """secrets_dir outside the repository: the journal of a rotate killed after its
    first rename is finished whole, whether the repository was moved since (alone, with
    an absolute secrets_dir; or together with it, with a relative one), or is reached
    through a symlink (``..`` then means the symlink's parent, as in hosts.toml)."""
    need("strace")
    made = spec_repo(make_repo, {"deploy": 'generate = "ssh-ed25519"'}, ("deploy",))
    top = tmp_path / "top"
    (top / "deep").mkdir(parents=True)
    made.root.rename(top / "deep" / "repo")
    repo = Repo(top / "deep" / "repo", top / "deep" / "repo" / "keys" / "master.txt",
                made.recipient, made.hosts)
    shared = top / "shared"
    setting = str(shared) if how.startswith("absolute") else "../../shared"
    text = (repo.root / "hosts.toml").read_text()
    repo.write_hosts(text.replace("[vaultpy]\n", "[vaultpy]\nsecrets_dir = "
                                  f"{toml_str(setting)}\n", 1))
    if how.endswith("symlink"):         # the repository is only known by its link
        (tmp_path / "elsewhere").mkdir()
        link = tmp_path / "elsewhere" / "link"
        link.symlink_to(repo.root)
        shared = tmp_path / "shared"    # ../../shared of the link, as written
        repo = Repo(link, repo.root / "keys" / "master.txt", repo.recipient, repo.hosts)
    repo.env = {"VAULTPY_IDENTITY": str(repo.root / "keys" / "master.txt")}
    repo.ok("-C", str(repo.root), "generate")
    old_pub = _outside_pair(shared, repo.identity, tmp_path)

    _killed_at(repo, "rename", 2, "-C", str(repo.root), "rotate", "deploy")
    assert (repo.root / ".vaultpy-writes").exists()
    if how.startswith("absolute"):
        new_top = tmp_path / "a" / "b" / "c" / "repo"
        new_top.parent.mkdir(parents=True)
        repo.root.rename(new_top)
        repo = Repo(new_top, new_top / "keys" / "master.txt", repo.recipient, repo.hosts)
    elif how.startswith("relative, both"):
        new_top = tmp_path / "a" / "b" / "c"
        new_top.parent.mkdir(parents=True)
        top.rename(new_top)
        shared = new_top / "shared"
        repo = Repo(new_top / "deep" / "repo", new_top / "deep" / "repo" / "keys" /
                    "master.txt", repo.recipient, repo.hosts)
    repo.env = {"VAULTPY_IDENTITY": str(repo.identity)}
    out = repo.run("-C", str(repo.root), "check").stdout.decode()
    assert "a write of several files was interrupted" in out
    assert "leftover temporary file" not in out, out
    repo.ok("-C", str(repo.root), "renc")
    assert not (repo.root / ".vaultpy-writes").exists()
    assert not [p for p in shared.iterdir() if "vaultpy-tmp" in p.name]
    assert _outside_pair(shared, repo.identity, tmp_path) != old_pub
    repo.ok("-C", str(repo.root), "check")


def _generate_killed_before_its_master(make_repo) -> tuple[Repo, Path]:
    """A repository with a hand-written master, and a generate of ``pw`` killed after
    its journal, before its master's rename (masters go last)."""
    need("strace")
    repo = spec_repo(make_repo, {"pw": 'generate = "alnum:32"', "manual": ""}, ("pw",))
    repo.ok("encrypt", "manual", input=b"typed by hand")
    _killed_at(repo, "rename", 2, "generate")      # rotation.toml; pw.age: renameat2
    pw = repo.root / "secrets" / "pw.age"
    assert (repo.root / ".vaultpy-writes").exists() and not pw.exists()
    return repo, pw


def test_rotate_master_rotates_the_master_an_interrupted_generate_was_making(
        make_repo, tmp_path: Path) -> None:
    """generate killed after its journal, before its master's rename (masters go last):
    the master key rotation finishes that write before it lists the masters to rotate,
    so the new master is encrypted to the new key too, not left to the retired one."""
    repo, pw = _generate_killed_before_its_master(make_repo)
    new = tmp_path / "new.txt"
    repo.ok("rekey", "--rotate-master", "--new-identity", str(new))
    assert not (repo.root / ".vaultpy-writes").exists()
    assert len(age_decrypt(pw, new)) == 32
    assert age_decrypt(repo.root / "secrets" / "manual.age", new) == b"typed by hand"
    repo.ok("check")


def test_rekey_reencrypts_the_master_an_interrupted_generate_was_making(
        make_repo, tmp_path: Path) -> None:
    """As above, for rekey after a recipient is added: the master the killed generate
    was making is finished first, then re-encrypted with the others."""
    from conftest import age_keygen

    repo, pw = _generate_killed_before_its_master(make_repo)
    backup, backup_pub = age_keygen(tmp_path, "backup.txt")
    text = (repo.root / "hosts.toml").read_text()
    repo.write_hosts(text.replace(f"recipients = [{toml_str(repo.recipient)}]",
                                  f"recipients = [{toml_str(repo.recipient)}, "
                                  f"{toml_str(backup_pub)}]", 1))
    assert "re-encrypted 2 master file(s)" in repo.ok("rekey").stderr.decode()
    assert len(age_decrypt(pw, backup)) == 32
    assert age_decrypt(repo.root / "secrets" / "manual.age", backup) == b"typed by hand"


def test_a_journal_that_cannot_be_finished_for_the_lock_is_one_clean_line(
        make_repo) -> None:
    """An interrupted write waits, and the lock cannot be taken (here a directory in
    its place; a read-only checkout alike): the commands that finish the write before
    they decide anything say so in one line, never as an internal error."""
    repo, _cfg, _files = _three_files(make_repo)
    (repo.cache / ".vaultpy.lock").unlink()
    (repo.cache / ".vaultpy.lock").mkdir()
    (repo.root / ".vaultpy-writes").write_text('{"format": 1, "renames": []}')
    for command in ("generate", "rotate a", "rekey", "edit a"):
        # (an editor that needs no terminal: the default vi is refused without one)
        assert_one_clean_error(repo.run(*command.split(), env={"EDITOR": "true"}),
                               "secrets/cache/.vaultpy.lock")


@pytest.mark.parametrize("new", [False, True])
def test_an_interrupt_just_after_a_rename_is_undone_with_the_others(
        make_repo, monkeypatch, new: bool) -> None:
    """A Ctrl-C (KeyboardInterrupt) that lands as the second rename returns, before the
    writer noted it: that rename is undone with the first, never left new beside old."""
    from vaultpy import masters
    from vaultpy._internal import fsutil

    repo, cfg, files = _three_files(make_repo)
    if new:
        files[1].unlink()
    before = repo.snapshot()
    real_rename, real_new = os.rename, fsutil.rename_new
    hit = []

    def interrupted(real: Any) -> Any:
        def call(src: Any, dst: Any) -> None:
            real(src, dst)
            if str(dst) == str(files[1]) and ".vaultpy-tmp-" in str(src) and not hit:
                hit.append(dst)
                raise KeyboardInterrupt
        return call

    monkeypatch.setattr(os, "rename", interrupted(real_rename))
    monkeypatch.setattr(fsutil, "rename_new", interrupted(real_new))
    with pytest.raises(KeyboardInterrupt):
        masters.write_all(cfg, [(f, b"new %d" % i, 0o644) for i, f in enumerate(files)],
                          new={files[1]} if new else ())
    assert hit
    assert repo.snapshot() == before
    assert not (repo.root / ".vaultpy-writes").exists()


def test_an_interrupt_as_a_temp_file_is_written_leaves_no_temp_file(
        make_repo, monkeypatch) -> None:
    """A Ctrl-C that lands as the second temp file's write returns, before the writer
    listed it: that temp file goes with the first, nothing else changed."""
    from vaultpy import masters
    from vaultpy._internal import fsutil

    repo, cfg, files = _three_files(make_repo)
    before = repo.snapshot()
    real = fsutil.write_new
    calls = []

    def write_new(path: Any, *args: Any, **kwargs: Any) -> Any:
        st = real(path, *args, **kwargs)
        calls.append(path)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return st

    monkeypatch.setattr(fsutil, "write_new", write_new)
    with pytest.raises(KeyboardInterrupt):
        masters.write_all(cfg, [(f, b"new %d" % i, 0o644) for i, f in enumerate(files)])
    assert len(calls) == 2
    assert repo.snapshot() == before


def test_a_master_made_elsewhere_since_a_killed_generate_keeps_its_own_pub(
        make_repo, tmp_path: Path) -> None:
    """generate of a key pair killed after its journal, before any of its renames; the
    same secret then arrives from elsewhere (a git pull of a teammate's generate): the
    master (new: never replaced) and its .pub. The killed write cannot be whole any
    more: it is dropped, and the teammate's .pub is not replaced with the public half
    of a key that was never put in place."""
    need("strace")
    import shutil

    repo = spec_repo(make_repo, {"deploy": 'generate = "ssh-ed25519"'}, ("deploy",))
    twin = tmp_path / "twin"
    shutil.copytree(repo.root, twin, symlinks=True)
    repo.ok("generate", cwd=twin)                       # the teammate's
    _killed_at(repo, "rename", 2, "generate")           # before the .pub's rename
    assert (repo.root / ".vaultpy-writes").exists()
    assert not (repo.root / "secrets" / "deploy.age").exists()
    for name in ("deploy.age", "deploy.pub", "rotation.toml"):      # git pull
        shutil.copy2(twin / "secrets" / name, repo.root / "secrets" / name)
    repo.ok("renc")
    assert not (repo.root / ".vaultpy-writes").exists()
    assert not [p for p in (repo.root / "secrets").iterdir() if "vaultpy-tmp" in p.name]
    assert _pair_matches(repo, "deploy", tmp_path) == (twin / "secrets" / "deploy.pub"
                                                       ).read_bytes()
    assert (repo.root / "secrets" / "rotation.toml").read_bytes() == (
        twin / "secrets" / "rotation.toml").read_bytes()
    repo.ok("check")


def test_a_journal_whose_folder_is_gone_is_dropped(make_repo) -> None:
    """The journal lists a folder removed since (a branch switch): nothing of the write
    is left there to finish, so the next command drops the journal, not fails on it."""
    repo, _cfg, _files = _three_files(make_repo)
    journal = repo.root / ".vaultpy-writes"
    journal.write_text(json.dumps({"format": 1, "root": str(repo.root), "renames": [
        ["gone/.x.age.vaultpy-tmp-0123456789ab", "gone/x.age", False]]}))
    repo.ok("renc")
    assert not journal.exists() and not (repo.root / "gone").exists()


def test_a_command_that_prints_without_end_is_stopped_at_the_limit(make_repo) -> None:
    """`generate = "command:yes"` read the command's output whole: the memory filled
    until the OOM killer came.  It is read up to the limit of a master (64 MiB, as
    encrypt's), and the command is then stopped."""
    repo = spec_repo(make_repo, {"pw": 'generate = "command:yes"',
                                 "big": 'generate = "command:head -c 67108866 /dev/zero"'},
                     host_secrets=("pw", "big"))
    for sid in ("pw", "big"):
        proc = repo.run("generate", sid)
        assert proc.returncode == 1, proc.stderr.decode()
        assert "printed more than 64 MiB" in proc.stderr.decode(), proc.stderr.decode()
        assert not (repo.root / "secrets" / f"{sid}.age").exists()

