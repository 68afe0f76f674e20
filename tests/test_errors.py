"""Every way a user can get it wrong ends in one clean line and an unchanged repository.

Each error case asserts: exit 1 (2 for usage errors), no traceback, one line naming
the file and the field or fix, and — with :meth:`Repo.snapshot` before and after —
that no byte, mtime, lock file or temp file changed.  Damage is real: corrupted
files on disk, real keys from age-keygen/ssh-keygen, and an unprivileged user
(setpriv) for unreadable files.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Repo, age_decrypt, age_keygen, assert_one_clean_error, need, toml_str

from vaultpy import cache


def dirs(repo: Repo) -> set[str]:
    return {str(p.relative_to(repo.root)) for p in repo.root.rglob("*") if p.is_dir()}


def state(repo: Repo) -> tuple[dict[str, tuple[bytes, int]], set[str]]:
    """Bytes and mtimes of every file, and every directory (no new empty dirs either)."""
    return repo.snapshot(), dirs(repo)


def fails(proc: subprocess.CompletedProcess[bytes], *needles: str, code: int = 1) -> str:
    """Exit ``code``, no traceback anywhere, and a stderr line holding every needle."""
    assert proc.returncode == code, (proc.returncode, proc.stderr.decode())
    return assert_one_clean_error(proc, *needles)


def output_line(proc: subprocess.CompletedProcess[bytes], *needles: str) -> str:
    """Like :func:`fails` for ``check``, which prints its findings on stdout."""
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, out, err)
    assert "Traceback" not in out + err
    lines = [ln for ln in (out + err).splitlines() if all(n in ln for n in needles)]
    assert lines, f"no line with {needles!r} in:\n{out}{err}"
    return lines[0]


def normalized(pubkey: str) -> str:
    return " ".join(pubkey.split()[:2])


def expected_cache(repo: Repo, sid: str) -> dict[str, str]:
    """host -> the cache path (relative to the repo) that DESIGN §3 names for ``sid``."""
    sha = hashlib.sha256((repo.root / "secrets" / f"{sid}.age").read_bytes()).hexdigest()
    return {h.name: f"secrets/cache/{h.name}/"
            + cache.cache_name(sid, sha, (normalized(h.pubkey),))
            for h in repo.hosts.values()}


# --------------------------------------------------------------------------- corrupt master

def flip_payload(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 0x01])


def truncate(data: bytes) -> bytes:
    return data[: len(data) // 2]


def garbage(data: bytes) -> bytes:
    return b"\x00not age at all\xff\n" * 16


def break_armor(data: bytes) -> bytes:
    assert data.startswith(b"-----BEGIN AGE ENCRYPTED FILE-----")
    return data.rstrip(b"\n").rsplit(b"\n", 1)[0] + b"\n"      # END line gone


@pytest.mark.parametrize("corrupt", [flip_payload, truncate, garbage, break_armor],
                         ids=lambda f: f.__name__)
def test_corrupt_master(make_repo, corrupt) -> None:
    repo = make_repo(hosts=2, secrets={"alpha": b"alpha-secret\n"}, encrypt=False)
    armor = ["--armor"] if corrupt is break_armor else []
    repo.ok("encrypt", "alpha", *armor, input=b"alpha-secret\n")
    repo.ok("renc")
    old = expected_cache(repo, "alpha")
    cached = repo.cache_files()
    assert len(cached) == 2
    master = repo.root / "secrets" / "alpha.age"
    master.write_bytes(corrupt(master.read_bytes()))

    before = state(repo)
    line = fails(repo.run("renc"), "secrets/alpha.age")
    assert "restore it from git" in line, line
    assert "vaultpy encrypt alpha < FILE" in line, line     # its id, not a literal "ID"
    assert "Traceback" not in line
    assert state(repo) == before
    assert repo.cache_files() == cached              # the hosts keep their last good copy

    # check tells the truth about what is on disk for the changed master
    proc = repo.run("check", "--json")
    assert proc.returncode == 1, proc.stderr.decode()
    problems = json.loads(proc.stdout)["problems"]
    new = expected_cache(repo, "alpha")
    # A master check can see is damaged (no key needed): the copies renc keeps are named
    # as such.  One that parses but does not decrypt: check cannot know, and reports the
    # hosts' copies out of date (renc will say the master is damaged).
    seen_damaged = corrupt is not flip_payload
    outdated = "cache file is out of date: its master or the host's key changed since renc"
    kept_as = "the host's last good copy, kept while its master file is damaged"
    for p in problems:
        path = repo.root / p["file"]
        if p["message"] == outdated:
            assert not path.exists() and p["file"] in new.values() and not seen_damaged, p
        elif p["message"] == kept_as:
            assert path.is_file() and p["file"] in old.values() and seen_damaged, p
        else:
            assert p["file"] == "secrets/alpha.age" and seen_damaged, p
    named = {p["file"] for p in problems if p["message"] in (outdated, kept_as)}
    assert named == set((old if seen_damaged else new).values())
    assert set(old.values()) == set(f"secrets/cache/{f}" for f in cached)
    # decrypt and rekey name its id in the fix too
    for command in (("decrypt", "alpha"), ("rekey",)):
        line = fails(repo.run(*command), "secrets/alpha.age")
        assert "vaultpy encrypt alpha < FILE" in line, (command, line)
    if corrupt is not flip_payload:         # structurally broken: check sees it without a key
        assert [p for p in problems if p["file"] == "secrets/alpha.age"], problems


# --------------------------------------------------------------------------- wrong identity

def test_wrong_identity(make_repo, tmp_path: Path) -> None:
    repo = make_repo(hosts=2)
    other, _ = age_keygen(tmp_path, "other.txt")
    before = state(repo)
    proc = repo.run("renc", env={"VAULTPY_IDENTITY": str(other)})
    assert proc.returncode == 1, proc.stderr.decode()
    lines = [ln for ln in proc.stderr.decode().splitlines() if "can decrypt it" in ln]
    assert len(lines) == 2, proc.stderr.decode()          # one per master, not per host
    for sid in ("alpha", "beta"):
        line = assert_one_clean_error(proc, f"secrets/{sid}.age", "-i")
        assert str(other) in line or "other.txt" in line
    assert repo.cache_files() == {}
    assert repo.snapshot() == before[0]

    proc = repo.run("-i", str(other), "decrypt", "alpha")
    fails(proc, "secrets/alpha.age", "-i")
    assert proc.stdout == b""
    assert repo.snapshot() == before[0]

    # With --json, any failure is one JSON document, as every --json is: the keys
    # opened nothing (failed items), or none could be read (a problem, raised).
    proc = repo.run("renc", "--json", env={"VAULTPY_IDENTITY": str(other)})
    doc = json.loads(proc.stdout)
    assert proc.returncode == 1 and doc["ok"] is False and len(doc["failed"]) == 2
    proc = repo.run("renc", "--json", env={"VAULTPY_IDENTITY": str(tmp_path / "nothing")})
    assert proc.returncode == 1, proc.stderr.decode()
    doc = json.loads(proc.stdout)
    assert doc["ok"] is False and doc["written"] == [] and doc["failed"] == []
    [problem] = doc["problems"]
    assert problem["file"].endswith("nothing") and "cannot read identity" in problem["message"]
    assert repo.cache_files() == {}


# --------------------------------------------------------------------------- unreadable files

@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory an unprivileged user can traverse (pytest's tmp root is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="vaultpy-test-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


NOBODY = 65534


def as_nobody(root: Path, identity: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    """The real CLI as an unprivileged user, so that file permissions apply to it."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        prefix = [need("setpriv"), f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "HOME": str(root),
           "VAULTPY_IDENTITY": str(identity)}
    env.pop("VAULTPY_DEBUG", None)
    return subprocess.run([*prefix, sys.executable, "-m", "vaultpy", *args], cwd=root,
                          env=env, capture_output=True, timeout=120)


def test_unreadable_master_and_identity(make_repo, shared_dir: Path) -> None:
    built = make_repo(hosts=2)
    built.ok("renc")
    root = shared_dir / "repo"
    shutil.copytree(built.root, root, symlinks=True)
    repo = Repo(root, root / "keys" / "master.txt", built.recipient, built.hosts)
    identity = repo.identity
    identity.chmod(0o644)                 # readable for the unprivileged user ...
    if os.geteuid() == 0:                 # ... and a cache it could write to
        for p in [repo.cache, *repo.cache.rglob("*")]:
            os.chown(p, NOBODY, NOBODY)
    probe = as_nobody(root, identity, "decrypt", "beta")
    if probe.returncode != 0 and b"setpriv" in probe.stderr:
        pytest.skip(f"setpriv cannot switch user here: {probe.stderr.decode()}")
    assert probe.stdout == b"beta-secret", probe.stderr.decode()
    cached = repo.cache_files()

    master = root / "secrets" / "alpha.age"
    master.chmod(0o000)
    before = state(repo)
    for args in (("renc",), ("decrypt", "alpha")):
        proc = as_nobody(root, identity, *args)
        fails(proc, "secrets/alpha.age", "Permission denied", "permissions")
        assert proc.stdout == b""
        assert state(repo) == before, args
    proc = as_nobody(root, identity, "check")
    output_line(proc, "secrets/alpha.age", "Permission denied")
    stale_lines = [ln for ln in proc.stdout.decode().splitlines() if "stale" in ln]
    assert state(repo) == before

    master.chmod(0o644)
    (root / "secrets" / "cache" / "host0" / next(
        n for n in os.listdir(root / "secrets" / "cache" / "host0") if n.startswith("beta."))
     ).unlink()                                           # renc has work to do
    identity.chmod(0o000)
    before = state(repo)
    for args in (("renc",), ("decrypt", "alpha")):
        proc = as_nobody(root, identity, *args)
        fails(proc, "keys/master.txt", "cannot read identity", "Permission denied")
        assert proc.stdout == b""
        assert state(repo) == before, args
    assert len(repo.cache_files()) == len(cached) - 1
    # check must be truthful: the unreadable master's cache files are its hosts' last
    # good copy, exactly as for a missing master (renc refuses to run and keeps them),
    # so they are not "stale ... run vaultpy renc to remove it".
    assert stale_lines == [], stale_lines


# --------------------------------------------------------------------------- missing master

def test_missing_master_fails_renc_and_check(make_repo) -> None:
    repo = make_repo(hosts=2)
    repo.ok("renc")
    cached = repo.cache_files()
    (repo.root / "secrets" / "alpha.age").unlink()
    before = state(repo)
    fails(repo.run("renc"), "secrets/alpha.age", "secrets.alpha", "master file is missing",
          "vaultpy edit alpha")
    assert state(repo) == before
    proc = repo.run("check")
    output_line(proc, "secrets/alpha.age", "master file is missing", "vaultpy edit alpha")
    assert "stale" not in proc.stdout.decode()       # old copies are kept, not stale
    assert state(repo) == before
    assert repo.cache_files() == cached


def test_a_missing_master_with_a_vault_source_is_pulled(make_repo) -> None:
    """A secret whose value lives in Vault (vault = …) and has no master yet: check said
    "create it with vaultpy edit" and never vaultpy pull, the way its value comes in (a
    review)."""
    repo = make_repo(hosts=1)
    text = (repo.root / "hosts.toml").read_text()
    repo.write_hosts(text.replace("[secrets.alpha]", '[secrets.alpha]\nvault = '
                                  '"secret/app/db#password"', 1))
    (repo.root / "secrets" / "alpha.age").unlink()
    output_line(repo.run("check"), "secrets/alpha.age", "master file is missing",
                "fetch it from Vault with vaultpy pull alpha (its vault = source)")


def test_decrypt_missing_master_hints_edit(make_repo) -> None:
    repo = make_repo(hosts=1, secrets={"alpha": b"x"}, encrypt=False)
    before = state(repo)
    proc = repo.run("decrypt", "alpha")
    fails(proc, "secrets/alpha.age", "vaultpy edit alpha")
    assert proc.stdout == b""
    assert state(repo) == before


def test_encrypt_and_edit_create_a_missing_master(make_repo, tmp_path: Path) -> None:
    repo = make_repo(hosts=1, encrypt=False)          # alpha and beta declared, no files
    repo.ok("encrypt", "alpha", input=b"from stdin")
    editor = tmp_path / "editor.sh"
    editor.write_text('#!/bin/sh\nprintf "from the editor" > "$1"\n')
    editor.chmod(0o755)
    proc = repo.ok("edit", "--allow-disk", "beta", env={"EDITOR": str(editor), "VISUAL": ""})
    assert b"created" in proc.stderr
    assert age_decrypt(repo.root / "secrets" / "alpha.age", repo.identity) == b"from stdin"
    assert age_decrypt(repo.root / "secrets" / "beta.age", repo.identity) == b"from the editor"
    repo.ok("renc")
    repo.ok("check")


# --------------------------------------------------------------------------- bad hosts.toml

def _rsa_pub(directory: Path) -> str:
    path = directory / "rsa"
    subprocess.run([need("ssh-keygen"), "-q", "-t", "rsa", "-b", "2048", "-N", "", "-C",
                    "root@old", "-f", str(path)], check=True, capture_output=True)
    return (directory / "rsa.pub").read_text().strip()


def _short_ed25519() -> str:
    """Well-formed base64 and wire format, but a 31-byte key."""
    blob = b"".join(struct.pack(">I", len(f)) + f for f in (b"ssh-ed25519", b"\x01" * 31))
    return "ssh-ed25519 " + base64.b64encode(blob).decode()


def _bad_checksum(recipient: str) -> str:
    i = 20
    alt = "q" if recipient[i] != "q" else "p"
    return recipient[:i] + alt + recipient[i + 1:]


WEB = "[hosts.web]\npubkey = {h0}\n"
ALPHA = WEB + "[hosts.web.secrets.alpha]\n"

# id: (hosts.toml text after [vaultpy] recipients and [secrets.alpha]/[secrets.beta],
#      needles that must share one stderr line besides "hosts.toml")
BAD: dict[str, tuple[str, tuple[str, ...]]] = {
    "toml_syntax": ("[hosts.web\npubkey = 1\n", ("not valid TOML", "line")),
    "unknown_key_did_you_mean": (ALPHA + 'onwer = "app"\n',
                                 ("hosts.web.secrets.alpha.onwer", "unknown key",
                                  "did you mean 'owner'?")),
    "unknown_top_level_key": ("[host.web]\npubkey = {h0}\n",
                              ("host", "unknown key", "did you mean 'hosts'?")),
    "type_early": (ALPHA + 'early = "yes"\n', ("hosts.web.secrets.alpha.early",
                                                "expected true or false")),
    "type_units": (ALPHA + 'restart_units = "nginx.service"\n',
                   ("hosts.web.secrets.alpha.restart_units", "expected a list of strings")),
    "type_host": ("[hosts]\nweb = 5\n", ("hosts.web", "expected a table, got an integer")),
    "type_secrets_list": (WEB + "secrets = [1]\n", ("hosts.web.secrets[0]",
                                                   "expected a string")),
    "type_owner": (ALPHA + "owner = true\n", ("hosts.web.secrets.alpha.owner",
                                              "a numeric id, got a boolean")),
    "owner_date": (ALPHA + "owner = 1979-05-27\n", ("hosts.web.secrets.alpha.owner",
                                                   "a numeric id, got a date")),
    "owner_unicode_digit": (ALPHA + 'owner = "²"\n', ("hosts.web.secrets.alpha.owner",
                                                       "invalid user or group")),
    "id_dotdot": ('[secrets."../x"]\n', ('secrets."../x"', "invalid secret id '../x'")),
    "id_slash": ('[secrets."a/b"]\n', ('secrets."a/b"', "invalid secret id 'a/b'")),
    "id_long": (f'[secrets.{"s" * 200}]\n', ("invalid secret id", "at most 128")),
    "host_dotdot": ('[hosts."../x"]\npubkey = {h0}\n', ('hosts."../x"',
                                                         "invalid host name '../x'")),
    "host_slash": ('[hosts."a/b"]\npubkey = {h0}\n', ('hosts."a/b"', "invalid host name")),
    "host_long": (f'[hosts.{"h" * 129}]\npubkey = {{h0}}\n', ("invalid host name",
                                                              "at most 128")),
    "mode_0999": (ALPHA + 'mode = "0999"\n', ("hosts.web.secrets.alpha.mode",
                                               "invalid mode '0999'")),
    "mode_setuid": (ALPHA + 'mode = "4755"\n', ("hosts.web.secrets.alpha.mode",
                                                 "invalid mode '4755'", "setuid")),
    "mode_setuid_int": (ALPHA + "mode = 0o4755\n", ("hosts.web.secrets.alpha.mode",
                                                     "invalid mode")),
    "mode_float": (ALPHA + "mode = 12.5\n", ("hosts.web.secrets.alpha.mode",
                                              "an integer, got a float")),
    "ssh_rsa": ("[hosts.web]\npubkey = {rsa}\n",
                ("hosts.web.pubkey", "not an ssh-ed25519 or age1 public key")),
    "ed25519_bad_base64": ("[hosts.web]\npubkey = {bad_b64}\n",
                           ("hosts.web.pubkey", "damaged ssh-ed25519 key")),
    "ed25519_short_key": ("[hosts.web]\npubkey = {short}\n",
                          ("hosts.web.pubkey", "damaged ssh-ed25519 key", "length")),
    "age1_bad_checksum": ("[hosts.web]\npubkey = {bad_age}\n",
                          ("hosts.web.pubkey", "bad checksum")),
    "unknown_secret": (WEB + 'secrets = ["alpha", "nosuch"]\n',
                       ("hosts.web.secrets.nosuch", "unknown secret id 'nosuch'",
                        "[secrets.nosuch]")),
    "unknown_placeholder": (WEB + '[hosts.web.templates."app.env"]\n'
                            'content = "A={{{{ secrets.alpha }}}}\\nB={{{{ secrets.nosuch }}}}"\n',
                            ('hosts.web.templates."app.env".content',
                             "line 2 column 3: unknown secret id 'nosuch' in placeholder")),
    "broken_placeholder": (WEB + '[hosts.web.templates."app.env"]\n'
                           'content = "ok {{{{ .x }}}} A={{{{ secrets.alpha"\n',
                           ('hosts.web.templates."app.env".content', "broken placeholder",
                            "column 15")),
    "duplicate_names": (WEB + '[hosts.web.secrets.alpha]\nname = "x"\n'
                        '[hosts.web.secrets.beta]\nname = "x"\n',
                        ("hosts.web", "both install as 'x'")),
    "duplicate_name_template": (WEB + '[hosts.web.secrets.alpha]\n'
                                '[hosts.web.templates.alpha]\ncontent = "x"\n',
                                ("hosts.web", "both install as 'alpha'")),
    "duplicate_paths": (WEB + '[hosts.web.secrets.alpha]\npath = "/etc/app/key"\n'
                        '[hosts.web.secrets.beta]\npath = "/etc/app/key"\n',
                        ("hosts.web", "both use path '/etc/app/key'")),
    "nested_paths": (WEB + '[hosts.web.secrets.alpha]\npath = "/etc/app"\n'
                     '[hosts.web.templates.t]\ncontent = "x"\npath = "/etc/app/t/conf"\n',
                     ("hosts.web", "template 't': path '/etc/app/t/conf' lies inside "
                      "'/etc/app', secret 'alpha''s path", "give one of them another path")),
    "tmp_name_path": (WEB + '[hosts.web.secrets.alpha]\npath = "/etc/.key.vaultpy-tmp-x"\n',
                      ("hosts.web.secrets.alpha.path", "'*.vaultpy-tmp-*'",
                       "temporary names")),
    "master_in_cache": ('[secrets.gamma]\nfile = "secrets/cache/gamma.age"\n',
                        ("secrets.gamma.file", "inside the cache directory")),
    # (found by a review: each was taken, exit 0)
    "file_hosts_toml": ('[secrets.gamma]\nfile = "hosts.toml"\n',
                        ("secrets.gamma.file", "is also this hosts.toml")),
    "unit_option": (ALPHA + 'restart_units = ["--now"]\n',
                    ("hosts.web.secrets.alpha.restart_units", "invalid unit name '--now'")),
    "pubkey_two_lines": ('[hosts.web]\npubkey = "ssh-ed25519 AAAA\\nssh-ed25519 BBBB"\n',
                         ("hosts.web.pubkey", "a line break or NUL is in it")),
    "file_empty": ('[secrets.gamma]\nfile = ""\n', ("secrets.gamma.file", "an empty path")),
    "path_double_slash": (ALPHA + 'path = "//etc/app/key"\n',
                          ("hosts.web.secrets.alpha.path", "not an absolute, normalised")),
    "path_line_break": (ALPHA + 'path = "/etc/app\\nkey"\n',
                        ("hosts.web.secrets.alpha.path", "a control character")),
    "path_long_name": (ALPHA + f'path = "/etc/{"k" * 256}"\n',
                       ("hosts.web.secrets.alpha.path", "too long for Linux")),
    "path_var_run": (ALPHA + 'path = "/var/run/vaultpy/x"\n',
                     ("hosts.web.secrets.alpha.path", "overlaps '/run/vaultpy'")),
}


@pytest.fixture(scope="module")
def rsa_pub(tmp_path_factory: pytest.TempPathFactory) -> str:
    return _rsa_pub(tmp_path_factory.mktemp("rsa"))


def bad_hosts(repo: Repo, body: str, rsa: str) -> str:
    h0 = repo.hosts["host0"].pubkey
    kind, b64, comment = h0.split(" ", 2)
    values = {"h0": h0, "rsa": rsa, "bad_b64": f"{kind} {b64[:30]}!{b64[31:]} {comment}",
              "short": _short_ed25519(), "bad_age": _bad_checksum(repo.recipient)}
    return (f"[vaultpy]\nrecipients = [{toml_str(repo.recipient)}]\n\n"
            "[secrets.alpha]\n[secrets.beta]\n\n"
            + body.format(**{k: toml_str(v) for k, v in values.items()}))


@pytest.mark.parametrize("case", list(BAD))
def test_bad_hosts_toml(make_repo, rsa_pub: str, case: str) -> None:
    body, needles = BAD[case]
    repo = make_repo(hosts=1, encrypt=False)
    repo.write_hosts(bad_hosts(repo, body, rsa_pub))
    before = state(repo)
    proc = repo.run("renc")
    fails(proc, "hosts.toml", *needles)
    problems = [ln for ln in proc.stderr.decode().splitlines() if ln.startswith("hosts.toml")]
    assert len(problems) == 1, proc.stderr.decode()        # nothing reported twice
    assert state(repo) == before
    assert not repo.cache.exists()                           # not even the lock file


def test_several_problems_all_reported_in_one_run(make_repo, rsa_pub: str) -> None:
    repo = make_repo(hosts=1, secrets={"alpha": b"a"})
    body = (
        '[secrets."a/b"]\n'
        "[hosts.web]\npubkey = {rsa}\nsecrets = [\"alpha\", \"nosuch\"]\n"
        "[hosts.db]\npubkey = {bad_age}\n"
        '[hosts.db.secrets.alpha]\nmode = "0999"\nonwer = "x"\n'
        '[hosts.db.templates."t"]\ncontent = "{{{{ secrets.zzz }}}}"\n'
    )
    repo.write_hosts(bad_hosts(repo, body, rsa_pub))
    expected = [
        ('secrets."a/b"', "invalid secret id"),
        ("hosts.web.pubkey", "not an ssh-ed25519 or age1 public key"),
        ("hosts.web.secrets.nosuch", "unknown secret id"),
        ("hosts.db.pubkey", "bad checksum"),
        ("hosts.db.secrets.alpha.mode", "invalid mode"),
        ("hosts.db.secrets.alpha.onwer", "did you mean 'owner'?"),
        ("hosts.db.templates.t.content", "unknown secret id 'zzz'"),
    ]
    before = state(repo)
    for args in (("renc",), ("check",), ("encrypt", "alpha")):
        proc = repo.run(*args, input=b"new plaintext")
        assert proc.returncode == 1, (args, proc.stderr.decode())
        lines = [ln for ln in proc.stderr.decode().splitlines() if ln.startswith("hosts.toml: ")]
        assert len(lines) == len(expected), (args, lines)
        for field, fragment in expected:
            fails(proc, f"hosts.toml: {field}: ", fragment)
        assert state(repo) == before, args


# --------------------------------------------------------------------------- where and how

def test_unknown_host_for_renc(make_repo) -> None:
    repo = make_repo(hosts=2, secrets={"alpha": b"a"})
    before = state(repo)
    fails(repo.run("renc", "--host", "nosuch"), "hosts.toml", "unknown host 'nosuch'",
          "host0, host1")
    assert state(repo) == before


def test_repo_option_and_no_hosts_toml(make_repo, tmp_path: Path) -> None:
    repo = make_repo(hosts=1, secrets={"alpha": b"a"}, encrypt=False)
    before = state(repo)
    for args in (("-C", "/nonexistent", "renc"), ("-C", "/nonexistent", "check"),
                 ("renc", "-C", "/nonexistent/hosts.toml")):
        fails(repo.run(*args), "/nonexistent")
    empty = tmp_path / "empty" / "sub"
    empty.mkdir(parents=True)
    if any((d / "hosts.toml").exists() for d in empty.parents):
        pytest.skip("a hosts.toml exists above the test directory")
    for command in ("renc", "check", "status"):
        fails(repo.run(command, cwd=empty), "no hosts.toml", "vaultpy init")
    assert state(repo) == before
    assert list(empty.iterdir()) == []


def test_the_search_for_hosts_toml_stops_at_the_top_of_a_git_repository(
        make_repo, tmp_path: Path) -> None:
    """The nearest hosts.toml upwards was searched past the git repository the command
    ran in: `vaultpy check` there passed on another repository's, and `vaultpy import`
    added its tables to it.  Like git, the search ends at the repository's top."""
    repo = make_repo(hosts=1, secrets={"alpha": b"a"})
    repo.ok("renc")
    inner = repo.root / "vendor" / "other"
    (inner / "sub").mkdir(parents=True)
    assert repo.ok("check", cwd=inner / "sub").returncode == 0     # no .git: found above
    subprocess.run(["git", "init", "-q", str(inner)], check=True)
    text = (repo.root / "hosts.toml").read_text()
    for command in ("renc", "check", "status"):
        proc = repo.run(command, cwd=inner / "sub")
        fails(proc, "no hosts.toml in this git repository", f"its top: {inner}",
              "vaultpy init")
    (inner / ".git").rename(inner / "gitdir")          # a worktree's .git is a file
    (inner / ".git").write_text(f"gitdir: {inner / 'gitdir'}\n")
    fails(repo.run("check", cwd=inner / "sub"), "no hosts.toml in this git repository")
    assert (repo.root / "hosts.toml").read_text() == text


@pytest.mark.parametrize("args", [("renc", "--bogus"), ("--bogus", "check"), ("nosuchcmd",),
                                  ("renc", "--jobs", "0"), ("decrypt",)],
                         ids=["unknown_option", "unknown_global", "unknown_command",
                              "bad_value", "missing_argument"])
def test_usage_errors_exit_2(make_repo, args: tuple[str, ...]) -> None:
    repo = make_repo(hosts=1, secrets={"alpha": b"a"}, encrypt=False)
    before = state(repo)
    proc = repo.run(*args)
    assert proc.returncode == 2, (proc.returncode, proc.stderr.decode())
    assert proc.stdout == b""
    [line] = proc.stderr.decode().splitlines()          # one line, like any other error
    assert line.startswith("vaultpy") and line.endswith(" --help"), line
    assert "Traceback" not in line and "╭" not in line
    assert state(repo) == before


def test_a_template_s_problems_are_all_named_and_a_mistyped_placeholder_warned_of(
        make_repo, rsa_pub: str) -> None:
    """An unknown id on line 2 and a broken placeholder on line 3: only line 3 was
    named, line 2 after it was fixed.  `{{ secret.alpha }}` (and `{{\tsecrets.…`) went
    to the host as text, with exit 0 everywhere: a tab is a space now, and the typo a
    warning (`check --strict`: a problem)."""
    repo = make_repo(hosts=1, secrets={"alpha": b"a", "beta": b"b"})
    body = (WEB + '[hosts.web.templates."app.env"]\n'
            'content = "A={{{{ secrets.alpha }}}}\\nB={{{{ secrets.nosuch }}}}\\n'
            'C={{{{ secrets.beta"\n')
    repo.write_hosts(bad_hosts(repo, body, rsa_pub))
    proc = repo.run("check")
    where = 'hosts.toml: hosts.web.templates."app.env".content: '
    fails(proc, where + "line 2 column 3: unknown secret id 'nosuch'")
    fails(proc, where + "line 3 column 3: broken placeholder")
    body = (WEB + '[hosts.web.templates."app.env"]\n'
            'content = "A={{{{ secret.alpha }}}}\\nB={{{{\\tsecrets.beta }}}}\\n"\n')
    repo.write_hosts(bad_hosts(repo, body, rsa_pub))
    repo.ok("renc")
    proc = repo.ok("check")
    [line] = [ln for ln in proc.stderr.decode().splitlines() if ln.startswith("warning:")]
    assert line == ("warning: " + where + "line 1 column 3: '{{ secret.alpha }}' is kept as "
                    "text, not a placeholder; did you mean {{ secrets.alpha }}? (to keep it, "
                    "write {{{{ for its {{)"), line
    assert repo.run("check", "--strict").returncode == 1
    profile = json.loads(repo.ok("profile", "--host", "web").stdout)
    assert {s["id"] for s in profile["secrets"]} == {"beta"}   # {{\tsecrets.beta }}: used
    # Jinja's {{ secret.password }}, no secret of that name: another tool's, no warning
    body = (WEB + '[hosts.web.templates."app.env"]\n'
            'content = "A={{{{ secret.password }}}} B={{{{ secrets.alpha }}}}\\n"\n')
    repo.write_hosts(bad_hosts(repo, body, rsa_pub))
    repo.ok("renc")
    assert "warning" not in repo.ok("check", "--strict").stderr.decode()


def test_an_option_of_one_value_given_twice_is_refused(make_repo, tmp_path: Path) -> None:
    """click keeps the last value of a repeated option without a word: `host add
    --pubkey-file a --pubkey-file b` dropped a's key (found in review).  Options that
    take several (-H, -i) and flags are not counted."""
    repo = make_repo(hosts=1, secrets={"alpha": b"a"})
    pubs = [tmp_path / "one.pub", tmp_path / "other.pub"]
    for pub in pubs:
        pub.write_text(repo.hosts["host0"].pubkey + "\n")
    before = (repo.root / "hosts.toml").read_text()
    for args, flag, values, where in (
            (("host", "add", "web", "--pubkey-file", str(pubs[0]), f"--pubkey-file={pubs[1]}"),
             "--pubkey-file", (str(pubs[0]), str(pubs[1])), "vaultpy host add"),
            (("-C", str(repo.root), "-C", str(tmp_path), "check"), "-C",
             (str(repo.root), str(tmp_path)), "vaultpy"),
            (("renc", "--jobs", "1", "-j2"), "-j", ("1", "2"), "vaultpy renc")):
        proc = repo.run(*args)
        assert proc.returncode == 2, (args, proc.stderr.decode())
        [line] = proc.stderr.decode().splitlines()
        assert line == (f"{where}: {flag} given twice ({values[0]}, then {values[1]}): it "
                        f"takes one value, and the last would win unseen; give {flag} once"), line
    assert (repo.root / "hosts.toml").read_text() == before
    repo.ok("renc", "-H", "host0", "-H", "host0", "--json", "--json")   # many, flags: fine
    # the same option before and after the command is given twice too
    proc = repo.run("-C", str(repo.root), "check", "-C", str(tmp_path))
    assert proc.returncode == 2 and "-C given twice" in proc.stderr.decode()
    # help wins; completion offers what it can (a value may be half typed)
    assert repo.ok("renc", "--jobs", "1", "--jobs", "2", "--help").stdout
    env = {"_VAULTPY_COMPLETE": "complete_bash", "COMP_WORDS": f"vaultpy -C {repo.root} "
           f"-C {repo.root} re", "COMP_CWORD": "5"}
    proc = repo.run(env=env)
    assert proc.returncode == 0 and "renc" in proc.stdout.decode(), proc.stderr.decode()


def test_identities_before_and_after_the_command_are_all_used(make_repo,
                                                             tmp_path: Path) -> None:
    """`vaultpy -i a decrypt -i b ID` used b alone (found in review)."""
    repo = make_repo(hosts=0, secrets={"alpha": b"a"})
    other, _ = age_keygen(tmp_path, "other.txt")
    proc = repo.run("-i", str(repo.identity), "decrypt", "-i", str(other), "alpha",
                    env={"VAULTPY_IDENTITY": ""})
    assert proc.returncode == 0 and proc.stdout == b"a", proc.stderr.decode()


@pytest.mark.parametrize(("args", "said"), [
    (("decrypt", "alpha", "--from-shares", "shares"), "vaultpy --from-shares DIR decrypt"),
    (("check", "--from-shares-prompt"), "vaultpy --from-shares-prompt check"),
    (("renc", "--passphrase-fd", "3"), "vaultpy --passphrase-fd N renc")])
def test_a_global_option_after_the_command_says_where_it_goes(make_repo, args, said) -> None:  # type: ignore[no-untyped-def]
    """Found in review: `vaultpy decrypt ID --from-shares DIR` was told only "No such
    option: --from-shares" (the README puts it before the command)."""
    repo = make_repo(hosts=1, secrets={"alpha": b"a"})
    proc = repo.run(*args)
    assert proc.returncode == 2
    [line] = proc.stderr.decode().splitlines()
    option = next(a for a in args if a.startswith("--"))
    assert line.startswith(f"vaultpy {args[0]}: No such option: {option} "), line
    assert f"(it goes before the command: {said} ...)" in line, line


def test_identity_after_a_command_that_needs_none_says_where_it_goes(make_repo) -> None:
    """README: -i goes before the command, or after one that decrypts.  A script that
    put it after `check` was told only "No such option: -i"."""
    repo = make_repo(hosts=1, secrets={"alpha": b"a"})
    key = str(repo.identity)
    proc = repo.run("check", "-i", key)
    assert proc.returncode == 2
    [line] = proc.stderr.decode().splitlines()
    assert line == ("vaultpy check: No such option: -i (vaultpy check needs no master "
                    "identity); before the command, every command takes -i; see vaultpy "
                    "check --help"), line
    assert repo.run("renc", "-i", key).returncode == 0
    assert repo.run("-i", key, "check").returncode == 0


def _commands(group: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, cmd in group.commands.items():
        yield f"{prefix}{name}", cmd
        if hasattr(cmd, "commands"):
            yield from _commands(cmd, f"{prefix}{name} ")


def test_every_help_text_reads_whole_in_the_command_list() -> None:
    """A command's one-line description is its docstring's first paragraph: a line
    break in it showed in `vaultpy --help` mid-sentence ("rotate the / master key"), and
    a [bracketed] word in any help text is read as rich markup and vanished ("(
    generate = …" for "([secrets.ID] generate = …")."""
    import typer

    from vaultpy.cli import app

    root = typer.main.get_command(app)
    seen = 0
    for name, cmd in _commands(root):
        first = (cmd.help or "").split("\n\n")[0]
        assert "\n" not in first.strip(), (name, first)
        texts = [cmd.help or "", *(getattr(p, "help", None) or "" for p in cmd.params)]
        for text in texts:
            for m in re.finditer(r"(?<!\\)\[[a-z][^\]]*\]", text):
                raise AssertionError(f"{name}: rich would eat {m.group()!r} in {text!r}")
        seen += 1
    assert seen > 20


def test_display_path_from_a_removed_working_directory_and_from_the_root(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A message names its file however odd the working directory: one that was
    removed (getcwd fails) names paths as given, not with a traceback; / (a unit's,
    at boot) names them absolute."""
    from vaultpy.errors import display_path

    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()
    assert display_path("secrets/alpha.age") == "secrets/alpha.age"
    assert display_path("..") == ".."
    monkeypatch.chdir("/")
    assert display_path("etc/vaultpy/profile.json") == "/etc/vaultpy/profile.json"
    assert display_path("etc/x/../profile.json") == "/etc/profile.json"


@pytest.mark.parametrize(("err", "action", "needle"), [
    (errno.EACCES, "read master file", "run as a user who can read it"),
    (errno.EPERM, "write cache file", "or run as a user who can write there"),
    (errno.EROFS, "write cache file", "the file system is read-only"),
    (errno.ENAMETOOLONG, "create the directory", "a name is at most 255 bytes"),
    (errno.ENOTDIR, "read master file", "a part of the path is a file, not a directory"),
    (errno.ENXIO, "read master file", "a socket or a device, not a file"),
])
def test_os_problem_hints_fit_the_failure(err: int, action: str, needle: str) -> None:
    """A write refused (chattr +i) was told to "run as a user who can read it"; a path
    too long, a file where a directory belongs, a socket: no fix at all."""
    from vaultpy.errors import os_problem

    problem = os_problem("x", OSError(err, os.strerror(err)), action)
    assert needle in problem.hint, problem


def test_a_broken_hosts_toml_symlink_and_a_wrong_c_file_are_named_for_what_they_are(
        make_repo, tmp_path: Path) -> None:
    """hosts.toml as a symlink to nothing: "no hosts.toml in this directory; run vaultpy
    init there" (there is one), or, found upwards, passed over for a parent's.  -C at a
    master file: "not UTF-8 text; save it as UTF-8"."""
    repo = make_repo(hosts=1, secrets={"alpha": b"a"})
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "hosts.toml").symlink_to("nowhere")
    for args, cwd in ((("-C", str(broken), "check"), repo.root), (("check",), broken)):
        proc = repo.run(*args, cwd=cwd)
        assert_one_clean_error(proc, "hosts.toml: a symlink that leads nowhere",
                               "point it at your hosts.toml, or remove it")
    master = next((repo.root / "secrets").glob("alpha.age"))
    proc = repo.run("-C", str(master), "check")
    assert_one_clean_error(proc, "not UTF-8 text", "-C/--repo takes the repository's "
                           "directory or its hosts.toml")


def test_an_output_that_cannot_be_written_is_no_internal_error(make_repo) -> None:
    """renc > /dev/full exited 70, "internal error … please report it", though the
    cache was complete; rotate 2>/dev/full exited 1 though the secret was rotated.
    A failure to write stdout is one line (on stderr, if it can be written) and exit
    74; what the command did stands."""
    repo: Repo = make_repo(hosts=2, secrets={"a": b"x", "b": b"y"})
    env = {**os.environ, **repo.env, "NO_COLOR": "1", "VAULTPY_NO_MEMO": "1"}
    env.pop("VAULTPY_DEBUG", None)
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, "-m", "vaultpy", "renc"], stdout=full,
                              stderr=subprocess.PIPE, cwd=repo.root, env=env, timeout=120)
    err = proc.stderr.decode()
    assert proc.returncode == 74, err
    assert "internal error" not in err and "Traceback" not in err, err
    assert "cannot write the output (No space left on device)" in err, err
    repo.ok("check")                            # the cache is complete


def test_a_write_error_of_vaultpys_own_is_not_called_an_output_error(make_repo) -> None:
    """Only a failed write of stdout or stderr is "cannot write the output": an ENOSPC
    (injected by strace) on renc's first write, one of its own, was reported as one
    (exit 74, "what the command did is not undone") while the cache was incomplete."""
    need("strace")
    repo: Repo = make_repo(hosts=2, secrets={"a": b"x", "b": b"y"})
    env = {**os.environ, **repo.env, "NO_COLOR": "1"}
    env.pop("VAULTPY_DEBUG", None)
    proc = subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "-e", "trace=write",
                           "-e", "inject=write:error=ENOSPC:when=1",
                           sys.executable, "-m", "vaultpy", "renc"],
                          cwd=repo.root, capture_output=True, env=env, timeout=120)
    if proc.returncode != 0 and b"ptrace" in proc.stderr:
        pytest.skip("ptrace not permitted here")
    assert "cannot write the output" not in proc.stderr.decode(), proc.stderr.decode()
