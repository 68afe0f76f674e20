"""Migration from agenix and vaultix, with real tools end to end.

The agenix fixture is a secrets.nix written here (Nix ``let`` bindings, a list
concatenation, a sub-directory, an armored secret), evaluated by the real
``nix-instantiate``; its secrets are encrypted by the real ``age -R`` (as agenix
does), to keys made by ``ssh-keygen`` and ``age-keygen``.  After the import,
``vaultpy renc`` and ``vaultpy check`` pass and each host decrypts exactly its
secrets with the real ``age -d``.  The vaultix fixture is a JSON profile in the
shape vaultix's renc app writes (documented in docs/migration.md).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import age_decrypt, age_keygen, assert_one_clean_error, need, ssh_keygen

from vaultpy import migrate, model, templates


@pytest.fixture
def nix_env(tmp_path_factory) -> dict[str, str]:
    if shutil.which("nix-instantiate") is None:
        if os.environ.get("CI"):
            pytest.fail("nix-instantiate is required in CI")
        pytest.skip("nix-instantiate not installed")
    state = tmp_path_factory.mktemp("nix-state")
    return {"NIX_STATE_DIR": str(state), "XDG_CACHE_HOME": str(state / "cache"),
            "NIX_PATH": ""}


def run(*args: str, cwd: Path, env: dict[str, str] | None = None,
        input: bytes | None = None, timeout: float = 180) -> subprocess.CompletedProcess[bytes]:
    full = {k: v for k, v in os.environ.items() if k not in ("VAULTPY_IDENTITY",
                                                              "VAULTPY_DEBUG")}
    full.update({"NO_COLOR": "1", "COLUMNS": "200", **(env or {})})
    return subprocess.run([sys.executable, "-m", "vaultpy", *args], cwd=cwd, input=input,
                          capture_output=True, env=full, timeout=timeout)


def ok(*args: str, **kw) -> subprocess.CompletedProcess[bytes]:
    proc = run(*args, **kw)
    assert proc.returncode == 0, (args, proc.stdout.decode(), proc.stderr.decode())
    return proc


def age_encrypt(plaintext: bytes, recipients: list[str], out: Path, armor: bool) -> None:
    """Encrypt like agenix: the real age with a recipients file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    rfile = out.with_name(out.name + ".recipients")
    rfile.write_text("\n".join(recipients) + "\n")
    subprocess.run([need("age"), *(["-a"] if armor else []), "-R", str(rfile), "-o", str(out)],
                   input=plaintext, check=True, capture_output=True)
    rfile.unlink()


@dataclass
class Agenix:
    dir: Path                        # where secrets.nix lives (the agenix repo)
    secrets_nix: Path
    operator: Path                   # the operator's SSH key agenix decrypted with
    operator_pub: str
    hosts: dict[str, tuple[Path, str]]
    plain: dict[str, bytes]          # vaultpy id -> plaintext
    expected: dict[str, set[str]]    # host -> vaultpy ids


@pytest.fixture
def agenix(tmp_path) -> Agenix:
    d = tmp_path / "agenix"
    keys = tmp_path / "keys"
    d.mkdir()
    keys.mkdir()
    operator, operator_pub = ssh_keygen(keys, "alice", comment="alice@laptop")
    _ci_ident, ci_pub = age_keygen(keys, "ci.txt")
    hosts = {}
    for name in ("web1", "db1"):
        hosts[name] = ssh_keygen(keys, name, comment=f"root@{name}")
    web1, db1 = hosts["web1"][1], hosts["db1"][1]
    text = f'''# agenix rules (written for vaultpy's tests)
let
  alice = "{operator_pub}";
  ci = "{ci_pub}";
  web1 = "{web1}";
  db1 = "{db1}";
  users = [ alice ci ];
  systems = [ web1 db1 ];
in
{{
  "db_password.age".publicKeys = users ++ systems;
  "api-token.age".publicKeys = [ alice web1 ];
  "hosts/db1/backup key.age" = {{ publicKeys = [ alice db1 ]; armor = true; }};
  "only-ops.age".publicKeys = users;
}}
'''
    secrets_nix = d / "secrets.nix"
    secrets_nix.write_text(text)
    rules = {"db_password.age": ([operator_pub, ci_pub, web1, db1], False),
             "api-token.age": ([operator_pub, web1], False),
             "hosts/db1/backup key.age": ([operator_pub, db1], True),
             "only-ops.age": ([operator_pub, ci_pub], False)}
    plain = {"db_password": b"hunter2\n", "api-token": b"tok-" + bytes(range(256)),
             "hosts-db1-backup_key": b"-----BEGIN KEY-----\nabc\n", "only-ops": b""}
    for (name, (recips, armor)), sid in zip(rules.items(), plain, strict=True):
        age_encrypt(plain[sid], recips, d / name, armor)
    expected = {"web1": {"db_password", "api-token"},
                "db1": {"db_password", "hosts-db1-backup_key"}}
    return Agenix(d, secrets_nix, operator, operator_pub, hosts, plain, expected)


def hosts_nix(agenix: Agenix) -> Path:
    path = agenix.dir.parent / "hosts.nix"
    path.write_text("{\n" + "".join(f'  {n} = "{pub}";\n' for n, (_, pub)
                                     in agenix.hosts.items()) + "}\n")
    return path


def assert_imported(agenix: Agenix, repo: Path, recipients: list[str],
                    identity: Path | None = None) -> model.Config:
    """The imported repository is equivalent to the agenix one, renc/check pass, and
    each host decrypts exactly its secrets with the real age."""
    cfg = model.load(repo)
    assert list(cfg.recipients) == [model.normalize_recipient(r, allow_rsa=True)
                                    for r in recipients]
    assert set(cfg.secrets) == set(agenix.plain)
    assert set(cfg.hosts) == set(agenix.expected)
    for name, host in cfg.hosts.items():
        assert host.recipients == (model.normalize_recipient(agenix.hosts[name][1]),)
        assert {d.id for d in host.deployments} == agenix.expected[name]
        assert all(d.out == model.Output() and d.name == d.id for d in host.deployments)
    backup = repo / "secrets" / "hosts-db1-backup_key.age"
    assert backup.read_bytes().startswith(b"-----BEGIN AGE ENCRYPTED FILE-----")  # armor kept
    ok("renc", "-i", str(identity or agenix.operator), cwd=repo)
    ok("check", cwd=repo)
    for name, (key, _) in agenix.hosts.items():
        files = sorted((repo / "secrets" / "cache" / name).glob("*.age"))
        assert {f.name.split(".")[0] for f in files} == agenix.expected[name]
        for f in files:
            assert age_decrypt(f, key) == agenix.plain[f.name.split(".")[0]]
    return cfg


# --------------------------------------------------------------------------- agenix

def test_import_agenix_with_hosts_from_a_nix_file(agenix, nix_env, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = ok("import", "agenix", str(agenix.secrets_nix), "--hosts-from",
              str(hosts_nix(agenix)), "-i", str(agenix.operator), cwd=repo, env=nix_env)
    assert "imported 4 secret(s) for 2 host(s)" in proc.stderr.decode()
    text = (repo / "hosts.toml").read_text()
    assert "Master recipients: the keys of secrets.nix that are not host keys" in text
    # ci could open 2 of the 4 secrets: as a master recipient it would read all 4.
    cfg = assert_imported(agenix, repo, [agenix.operator_pub])
    line = next(ln for ln in proc.stderr.decode().splitlines() if "(ci" not in ln
                and "could open 2 of 4 secrets" in ln)
    assert "db_password, only-ops" in line and "not a master recipient" in line, line
    assert "--recipient" in line
    ci = agenix.dir.parent / "keys" / "ci.txt"
    with pytest.raises(AssertionError, match="no identity matched"):
        age_decrypt(cfg.secrets["api-token"].file, ci)
    # The operator's SSH key (a master recipient now) opens every master.
    for sid, plain in agenix.plain.items():
        assert age_decrypt(cfg.secrets[sid].file, agenix.operator) == plain
    proc = ok("decrypt", "api-token", "-i", str(agenix.operator), cwd=repo)
    assert proc.stdout == agenix.plain["api-token"]


def test_import_in_the_agenix_repository_itself(agenix, nix_env, tmp_path):
    """The usual agenix layout is ./secrets/secrets.nix beside ./secrets/<name>.age,
    where vaultpy's masters go by default: the import used to stop at "already
    exists; remove it or pass --force", and --force replaced agenix's own files.
    They are never replaced; --masters-dir keeps vaultpy's masters apart."""
    infra = tmp_path / "infra"
    shutil.copytree(agenix.dir, infra / "secrets")
    before = {p: p.read_bytes() for p in (infra / "secrets").rglob("*") if p.is_file()}
    args = ("import", "agenix", "./secrets/secrets.nix", "--hosts-from",
            str(hosts_nix(agenix)), "-i", str(agenix.operator))
    for force in ((), ("--force",)):
        proc = run(*args, *force, cwd=infra, env=nix_env)
        line = assert_one_clean_error(proc, "secrets/db_password.age",
                                      "is a file this import reads (import agenix)",
                                      "--masters-dir vaultpy-secrets")
        assert "--force" not in line
        assert {p: p.read_bytes() for p in (infra / "secrets").rglob("*")
                if p.is_file()} == before and not (infra / "hosts.toml").exists()
    for outside in ("../vp", "a/../../vp", str(tmp_path / "vp"), "~/vp"):
        # It is hosts.toml's secrets_dir: "../vp" put masters and cache outside the
        # repository, silently.
        proc = run(*args, "--masters-dir", outside, cwd=infra, env=nix_env)
        assert_one_clean_error(proc, "--masters-dir", "is not a folder inside the "
                               "repository", "relative to hosts.toml's folder")
        assert not (infra / "hosts.toml").exists() and not (tmp_path / "vp").exists()
    ok(*args, "--masters-dir", "vaultpy-secrets", cwd=infra, env=nix_env)
    assert {p: p.read_bytes() for p in before} == before        # agenix's files as they were
    cfg = model.load(infra)
    masters = infra / "vaultpy-secrets"
    assert cfg.secrets_dir == masters and cfg.cache_dir == masters / "cache"
    ok("renc", "-i", str(agenix.operator), cwd=infra)
    ok("check", cwd=infra)
    for sid, plain in agenix.plain.items():
        assert age_decrypt(masters / f"{sid}.age", agenix.operator) == plain
    # Committed as `vaultpy init` sets a repository up: the cache, not vaultpy's
    # local state (the lock, the index, the memo), which the import left to git.
    subprocess.run(["git", "init", "-q"], cwd=infra, check=True)
    added = subprocess.run(["git", "add", "-n", "."], cwd=infra, capture_output=True,
                           text=True, check=True).stdout
    assert "vaultpy-secrets/cache/web1/" in added and ".vaultpy-" not in added, added
    proc = run(*args, "--masters-dir", "elsewhere", cwd=infra, env=nix_env)
    assert_one_clean_error(proc, "--masters-dir", "hosts.toml exists")


def _ci_pub(agenix: Agenix) -> str:
    return (agenix.dir.parent / "keys" / "ci.txt").read_text().split("public key: ")[1].split()[0]


def test_hosts_from_a_keys_file_of_lists_is_refused(agenix, nix_env, tmp_path):
    """agenix's README keeps { users = [ … ]; systems = [ web1 db1 ]; }: given as
    --hosts-from, "systems" became one host with every machine's key (each could read
    the others' secrets) and "users" a host too."""
    keys = tmp_path / "keys.nix"
    web1, db1 = agenix.hosts["web1"][1], agenix.hosts["db1"][1]
    keys.write_text(f'{{ users = [ "{agenix.operator_pub}" "{_ci_pub(agenix)}" ];\n'
                    f'  systems = [ "{web1}" "{db1}" ]; }}\n')
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = run("import", "agenix", str(agenix.secrets_nix), "--hosts-from", str(keys),
               "-r", agenix.operator_pub, "-i", str(agenix.operator), cwd=repo, env=nix_env)
    assert_one_clean_error(proc, "keys.nix: systems: 2 keys (root@db1, root@web1) for one "
                           "host", "give one entry per host")
    assert_one_clean_error(proc, "keys.nix: users: 2 keys", "for one host")
    assert list(repo.iterdir()) == []
    # One host with two keys of its own (the same comment) is still one host.
    _key, other_pub = ssh_keygen(tmp_path, "web1-new", comment="root@web1")
    keys.write_text(f'{{ web1 = [ "{web1}" "{other_pub}" ]; db1 = "{db1}"; }}\n')
    ok("import", "agenix", str(agenix.secrets_nix), "--hosts-from", str(keys),
       "-r", agenix.operator_pub, "-i", str(agenix.operator), "--dry-run", cwd=repo,
       env=nix_env)


def test_no_host_named_is_said_as_it_is(agenix, nix_env, tmp_path):
    """With no host named, the import warned "every key became a master recipient"
    while it had just named the keys it left out (a review): it says what is true."""
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = run("import", "agenix", str(agenix.secrets_nix), "-r", agenix.operator_pub,
               "-i", str(agenix.operator), "--dry-run", cwd=repo, env=nix_env)
    err = proc.stderr.decode()
    assert ("warning: no host key recognised: no host is added, and no secret goes to "
            "any host; name hosts with --hosts-from FILE, --host-key NAME=KEY or "
            "--hosts-by-comment") in err, err
    assert "every key became" not in err


def test_import_agenix_with_host_key_options_and_own_recipient(agenix, nix_env, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    master, master_pub = age_keygen(tmp_path, "master.txt")
    args = [f"--host-key={n}={pub}" for n, (_, pub) in agenix.hosts.items()]
    ok("import", "agenix", str(agenix.secrets_nix), *args, "--recipient", master_pub,
       "-i", str(agenix.operator), cwd=repo, env=nix_env)
    cfg = assert_imported(agenix, repo, [master_pub], master)
    for sid, plain in agenix.plain.items():
        assert age_decrypt(cfg.secrets[sid].file, master) == plain


def test_import_agenix_hosts_by_comment(agenix, nix_env, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    ok("import", "agenix", str(agenix.secrets_nix), "--hosts-by-comment",
       "-i", str(agenix.operator), cwd=repo, env=nix_env)
    assert_imported(agenix, repo, [agenix.operator_pub])


def test_no_key_that_could_open_every_secret_is_no_master_recipient(agenix, nix_env,
                                                                     tmp_path):
    """Every key agenix lists that was no host's became a master recipient, able to
    decrypt every secret: one given some secrets (bob) gained the rest, silently."""
    text = agenix.secrets_nix.read_text()
    agenix.secrets_nix.write_text(text.replace('"api-token.age".publicKeys = [ alice web1 ];',
                                               '"api-token.age".publicKeys = [ ci web1 ];'))
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = run("import", "agenix", str(agenix.secrets_nix), "--hosts-by-comment",
               "-i", str(agenix.operator), cwd=repo, env=nix_env)
    assert_one_clean_error(proc, "--recipient", "no master recipient",
                           "no key in", "could open every secret")
    assert list(repo.iterdir()) == []


def test_import_agenix_into_an_existing_repository(agenix, nix_env, make_repo):
    repo = make_repo(hosts=1, secrets={"old": b"kept"})
    text_before = (repo.root / "hosts.toml").read_text()
    proc = ok("import", "agenix", str(agenix.secrets_nix), "--hosts-from",
              str(hosts_nix(agenix)), "-i", str(agenix.operator), cwd=repo.root, env=nix_env)
    text = (repo.root / "hosts.toml").read_text()
    assert text.startswith(text_before)                 # appended, nothing rewritten
    cfg = model.load(repo.root)
    assert list(cfg.recipients) == [repo.recipient]     # existing master recipients
    assert set(cfg.hosts) == {"host0", "web1", "db1"}
    for sid, plain in agenix.plain.items():
        assert age_decrypt(cfg.secrets[sid].file, repo.identity) == plain
    ok("renc", cwd=repo.root, env=repo.env)
    ok("check", cwd=repo.root)
    # A second import collides: clean errors, one per id and host, nothing written.
    before = repo.snapshot()
    proc = run("import", "agenix", str(agenix.secrets_nix), "--hosts-from",
               str(hosts_nix(agenix)), "-i", str(agenix.operator), cwd=repo.root, env=nix_env)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err
    assert err.count("is already declared") == 6, err
    assert repo.snapshot() == before


def test_import_agenix_problems_write_nothing(agenix, nix_env, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    stranger, _ = ssh_keygen(tmp_path, "stranger")
    proc = run("import", "agenix", str(agenix.secrets_nix), "--hosts-by-comment", "-i",
               str(stranger), cwd=repo, env=nix_env)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err
    assert err.count("none of the identities") == 4, err      # every file named
    assert list(repo.iterdir()) == []

    (agenix.dir / "api-token.age").unlink()
    proc = run("import", "agenix", str(agenix.secrets_nix), "--hosts-by-comment", "-i",
               str(agenix.operator), cwd=repo, env=nix_env)
    assert_one_clean_error(proc, "api-token.age", "cannot read the secret", "agenix first")
    assert list(repo.iterdir()) == []

    broken = agenix.dir / "broken.nix"
    broken.write_text('{ "a.age".publicKeys = [ "x" ; }\n')
    proc = run("import", "agenix", str(broken), "-i", str(agenix.operator), cwd=repo,
               env=nix_env)
    assert_one_clean_error(proc, "broken.nix", "nix-instantiate failed")

    bad_key = agenix.dir / "badkey.nix"
    bad_key.write_text('{ "a.age".publicKeys = [ "ssh-ed25519 AAAAnotbase64!" ]; }\n')
    proc = run("import", "agenix", str(bad_key), "-i", str(agenix.operator), cwd=repo,
               env=nix_env)
    assert_one_clean_error(proc, "badkey.nix", '"a.age"', "damaged ssh-ed25519 key")
    assert list(repo.iterdir()) == []


def test_import_hints_name_the_old_tools_key_and_files(agenix, nix_env, tmp_path):
    """The hints of an import speak of the tool migrated from: VAULTPY_IDENTITY and
    `vaultpy edit` cannot help with an agenix file; a missing --hosts-from file is a
    line of its own, not Python's errno text or Nix's."""
    repo = tmp_path / "repo"
    repo.mkdir()
    stranger, _ = ssh_keygen(tmp_path, "stranger")
    base = ("import", "agenix", str(agenix.secrets_nix), "--hosts-by-comment")
    proc = run(*base, "-i", str(stranger), cwd=repo, env=nix_env)
    line = assert_one_clean_error(proc, "db_password.age", "none of the identities",
                                  "pass the key agenix decrypted it with: -i FILE")
    assert "VAULTPY_IDENTITY" not in proc.stderr.decode(), line
    proc = run(*base, "-i", str(tmp_path / "nokey"), cwd=repo, env=nix_env)
    line = assert_one_clean_error(proc, "nokey", "cannot read identity",
                                  "pass the key agenix decrypted with: -i FILE")
    assert "VAULTPY_IDENTITY" not in line
    damaged = agenix.dir / "db_password.age"
    damaged.write_bytes(damaged.read_bytes()[:60])
    proc = run(*base, "-i", str(agenix.operator), cwd=repo, env=nix_env)
    line = assert_one_clean_error(proc, "db_password.age", "not a valid age file",
                                  "recreate it with agenix")
    assert "vaultpy edit" not in line
    for missing in ("hosts.nix", "hosts.json", "hosts.toml"):
        proc = run("import", "agenix", str(agenix.secrets_nix), "--hosts-from",
                   str(tmp_path / missing), cwd=repo, env=nix_env)
        line = assert_one_clean_error(proc, missing, "cannot read it: No such file",
                                      "check the path")
        assert "Errno" not in line and "nix-instantiate" not in line
    (tmp_path / "latin1.json").write_bytes(b'{"web1": "\xe9"}')
    proc = run("import", "agenix", str(agenix.secrets_nix), "--hosts-from",
               str(tmp_path / "latin1.json"), cwd=repo, env=nix_env)
    assert_one_clean_error(proc, "latin1.json", "not UTF-8 text")
    assert list(repo.iterdir()) == []


def test_import_agenix_dry_run_prints_hosts_toml(agenix, nix_env, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = ok("import", "agenix", str(agenix.secrets_nix), "--hosts-by-comment", "--dry-run",
              "-i", str(agenix.operator), cwd=repo, env=nix_env)
    assert list(repo.iterdir()) == []
    cfg = model.parse(proc.stdout.decode(), repo / "hosts.toml")
    assert {h: {d.id for d in host.deployments} for h, host in cfg.hosts.items()} == \
        agenix.expected


def test_a_fifo_as_an_agenix_secret_file_is_a_clean_error(agenix, nix_env, tmp_path):
    """The files secrets.nix names were read with read_bytes: a FIFO among them hung
    the import (--dry-run too) before anything was checked.  (vaultix's are looked
    up with is_file(): a FIFO there is 'not found'.)"""
    repo = tmp_path / "repo"
    repo.mkdir()
    fifo = agenix.dir / "api-token.age"
    fifo.unlink()
    os.mkfifo(fifo)
    for dry in ([], ["--dry-run"]):
        proc = run("import", "agenix", str(agenix.secrets_nix), "--hosts-from",
                   str(hosts_nix(agenix)), "-i", str(agenix.operator), *dry, cwd=repo,
                   env=nix_env, timeout=60)
        assert_one_clean_error(proc, "api-token.age", "not a regular file")
        assert list(repo.iterdir()) == []


def test_agenix_ids():
    assert migrate.agenix_id("a.age") == "a"
    assert migrate.agenix_id("./hosts/web/db.age") == "hosts-web-db"
    assert migrate.agenix_id("we ird$.age") == "we_ird_"
    # What an id cannot start with: dropped (renaming meant editing agenix's config).
    assert migrate.agenix_id("-dash.age") == "dash"
    assert migrate.agenix_id("ünï.age") == "n_"
    assert migrate.agenix_id("_private/key.age") == "private-key"


# --------------------------------------------------------------------------- vaultix

def store_path(name: str) -> str:
    return "/nix/store/" + hashlib.sha256(name.encode()).hexdigest()[:32].translate(
        str.maketrans("abcdef", "ghijkl")) + "-" + name


def vaultix_profile(host: str, pubkey: str, secrets: dict, templates_: dict,
                    before: list[str]) -> dict:
    """A profile as vaultix's renc app writes it (builtins.toJSON of config.vaultix's
    beforeUserborn, placeholder, secrets, settings and templates)."""
    return {
        "beforeUserborn": before,
        "placeholder": {sid: "{{ " + hashlib.sha256(sid.encode()).hexdigest() + " }}"
                        for sid in secrets},
        "secrets": secrets,
        "settings": {"cacheInStore": store_path("vaultix-cache"),
                     "decryptedDir": "/run/vaultix",
                     "decryptedDirForUser": "/run/vaultix-for-user",
                     "decryptedMountPoint": "/run/vaultix.d", "hostIdentifier": host,
                     "hostKeys": [{"path": "/etc/ssh/ssh_host_ed25519_key",
                                   "type": "ed25519"}],
                     "hostPubkey": pubkey},
        "templates": templates_,
    }


def vsecret(sid: str, **over) -> dict:
    name = over.pop("name", sid)
    base = {"id": sid, "file": store_path(f"{sid}.age"), "group": "root", "mode": "0400",
            "name": name, "owner": "root", "path": f"/run/vaultix/{name}", "insert": {},
            "cleanPlaceholder": False}
    return {**base, **over}


def placeholder(sid: str) -> str:
    return "{{ " + hashlib.sha256(sid.encode()).hexdigest() + " }}"


@pytest.fixture
def vaultix(tmp_path):
    keys = tmp_path / "keys"
    keys.mkdir()
    master, master_pub = age_keygen(keys, "vaultix-master.txt")
    hosts = {n: ssh_keygen(keys, n) for n in ("alpha", "beta")}
    sdir = tmp_path / "flake" / "secrets"
    plain = {"db": b"pw\n", "wg": b"wg-private-key", "user-pw": b"$6$hash"}
    for sid, value in plain.items():
        age_encrypt(value, [master_pub], sdir / f"{sid}.age", armor=sid == "wg")
    content = (f"url=postgres://app:{placeholder('db')}@db/app\n"
               "literal {{{{ stays\njinja {{ var }} and {{ secrets.x }}\n")
    alpha = vaultix_profile("alpha", hosts["alpha"][1], {
        "db": vsecret("db", owner="postgres", group="postgres", mode="640"),
        "user-pw": vsecret("user-pw", path="/run/vaultix-for-user/user-pw"),
    }, {"app-env": {"name": "app.env", "content": content, "trim": True, "owner": "app",
                    "group": "root", "mode": "0440", "path": "/run/vaultix/app.env"}},
        ["user-pw"])
    beta = vaultix_profile("beta", hosts["beta"][1], {
        "db": vsecret("db"),
        "wg": vsecret("wg", name="wg0.key", owner="systemd-network",
                      path="/etc/wireguard/wg0.key"),
    }, {}, [])
    profiles = []
    for prof in (alpha, beta):
        p = tmp_path / f"{prof['settings']['hostIdentifier']}.json"
        p.write_text(json.dumps(prof, indent=2))
        profiles.append(p)
    return {"master": master, "master_pub": master_pub, "hosts": hosts, "sdir": sdir,
            "plain": plain, "profiles": profiles, "content": content}


def test_import_vaultix_profiles(vaultix, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    ok("import", "vaultix", *map(str, vaultix["profiles"]), "--secrets-dir",
       str(vaultix["sdir"]), "-i", str(vaultix["master"]), cwd=repo)
    cfg = model.load(repo)
    assert list(cfg.recipients) == [vaultix["master_pub"]]    # from the -i identity
    alpha, beta = cfg.hosts["alpha"], cfg.hosts["beta"]
    a = {d.id: d for d in alpha.deployments}
    assert a["db"].out == model.Output(owner="postgres", group="postgres", mode="0640")
    assert a["user-pw"].out == model.Output(early=True)
    (tmpl,) = alpha.templates
    assert tmpl.name == "app.env" and tmpl.trim and tmpl.refs == ("db",)
    assert tmpl.out == model.Output(owner="app", mode="0440")
    rendered = templates.render(tmpl.content, {"db": b"PW"})
    assert rendered == vaultix["content"].replace(placeholder("db"), "PW").encode()
    b = {d.id: d for d in beta.deployments}
    assert b["wg"].name == "wg0.key"
    assert b["wg"].out == model.Output(owner="systemd-network", path="/etc/wireguard/wg0.key")
    assert (repo / "secrets" / "wg.age").read_bytes().startswith(b"-----BEGIN AGE")
    ok("renc", cwd=repo, env={"VAULTPY_IDENTITY": str(vaultix["master"])})
    ok("check", cwd=repo)
    for name, (key, _) in vaultix["hosts"].items():
        for f in (repo / "secrets" / "cache" / name).glob("*.age"):
            assert age_decrypt(f, key) == vaultix["plain"][f.name.split(".")[0]]


def test_vaultix_extra_recipients_are_named_not_dropped_silently(vaultix, tmp_path):
    """vaultix encrypts its sources to the master identity and its extraRecipients
    (backup keys): the masters went to the -i identity's key alone, without a word."""
    backup, backup_pub = age_keygen(tmp_path / "keys", "backup.txt")
    for sid, value in vaultix["plain"].items():
        (vaultix["sdir"] / f"{sid}.age").unlink()
        age_encrypt(value, [vaultix["master_pub"], backup_pub], vaultix["sdir"] / f"{sid}.age",
                    armor=sid == "wg")
    repo = tmp_path / "repo"
    repo.mkdir()
    args = ["import", "vaultix", *map(str, vaultix["profiles"]), "--secrets-dir",
            str(vaultix["sdir"]), "-i", str(vaultix["master"])]
    proc = ok(*args, cwd=repo)
    line = next(ln for ln in proc.stderr.decode().splitlines() if "extraRecipients" in ln)
    assert "encrypted to 2 recipients, the new masters to 1" in line, line
    assert "--recipient" in line
    # With both given: no warning, and the backup key opens the masters.
    repo2 = tmp_path / "repo2"
    repo2.mkdir()
    proc = ok(*args, "--recipient", vaultix["master_pub"], "--recipient", backup_pub,
              cwd=repo2)
    assert "extraRecipients" not in proc.stderr.decode()
    assert age_decrypt(repo2 / "secrets" / "db.age", backup) == vaultix["plain"]["db"]


def test_a_vaultix_host_key_given_as_a_path_is_read(vaultix, tmp_path):
    """vaultix takes hostPubkey as the path of a .pub file (a store path, exported):
    the import said "not an ssh-ed25519 or age1 public key"."""
    alpha = vaultix["profiles"][0]
    data = json.loads(alpha.read_text())
    pub = tmp_path / "alpha.pub"
    pub.write_text(data["settings"]["hostPubkey"] + "\n")
    data["settings"]["hostPubkey"] = str(pub)
    alpha.write_text(json.dumps(data))
    repo = tmp_path / "repo"
    repo.mkdir()
    args = ["import", "vaultix", *map(str, vaultix["profiles"]), "--secrets-dir",
            str(vaultix["sdir"]), "-i", str(vaultix["master"])]
    ok(*args, cwd=repo)
    assert model.load(repo).hosts["alpha"].recipients == (
        model.normalize_recipient(pub.read_text()),)
    # A path that is not there: one line, naming it and what to do.
    data["settings"]["hostPubkey"] = str(tmp_path / "gone.pub")
    alpha.write_text(json.dumps(data))
    other = tmp_path / "other"
    other.mkdir()
    proc = run(*args, cwd=other)
    assert_one_clean_error(proc, "settings.hostPubkey", "gone.pub: cannot read the host key",
                           "export the key's text")


def test_every_bad_vaultix_profile_is_named_in_one_run(vaultix, tmp_path):
    """The first unreadable profile stopped the import (the others unread), with
    Python's words: "[Errno 2] No such file or directory: 'nope.json'"."""
    (tmp_path / "a.json").write_text("not json")
    (tmp_path / "b.json").write_bytes(b"\xff\xfe")
    (tmp_path / "c.json").write_text('{"x": 1}')
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = run("import", "vaultix", *(str(tmp_path / n) for n in
                                      ("a.json", "b.json", "c.json", "nope.json")),
               *map(str, vaultix["profiles"]), "--secrets-dir", str(vaultix["sdir"]),
               "-i", str(vaultix["master"]), cwd=repo)
    assert_one_clean_error(proc, "a.json: not a vaultix profile: not JSON (line 1")
    assert_one_clean_error(proc, "b.json: not a vaultix profile: not UTF-8 text")
    assert_one_clean_error(proc, "c.json: not a vaultix profile (no settings)")
    line = assert_one_clean_error(proc, "nope.json: cannot read the vaultix profile: No such "
                                  "file or directory")
    assert "Errno" not in proc.stderr.decode() and "'" not in line, line
    assert list(repo.iterdir()) == []


def test_import_vaultix_unsupported_and_missing_are_clean_errors(vaultix, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = run("import", "vaultix", str(vaultix["profiles"][0]), "-i",
               str(vaultix["master"]), cwd=repo)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err
    assert "--secrets-dir" in err and err.count("not found") == 2, err
    prof = json.loads(vaultix["profiles"][1].read_text())
    prof["secrets"]["db"]["insert"] = {"a" * 64: {"order": 0, "content": "x"}}
    prof["secrets"]["wg"]["mode"] = "u=r"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(prof))
    proc = run("import", "vaultix", str(bad), "--secrets-dir", str(vaultix["sdir"]),
               "-i", str(vaultix["master"]), cwd=repo)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "insert/cleanPlaceholder" in err
    assert "'u=r' is not an octal mode" in err
    assert list(repo.iterdir()) == []


def test_convert_template_escapes_only_what_vaultpy_would_misread():
    ph = {hashlib.sha256(b"a").hexdigest(): "a"}
    cases = ["plain", "{{ var }}", "{{{{", "{{ secrets.x }}", "{{" + placeholder("a"),
             "x{" + placeholder("a") + "}y", "{{{ " + placeholder("a")]
    for text in cases:
        out = migrate.convert_template(text, ph)
        got = templates.render(out, {"a": b"V"}).decode()
        assert got == text.replace(placeholder("a"), "V"), (text, out)
    assert migrate.convert_template("{{ var }}", ph) == "{{ var }}"
    with pytest.raises(ValueError, match="names no secret"):
        migrate.convert_template(placeholder("zzz"), ph)


def _bad_profile(vaultix, tmp_path: Path, change) -> Path:
    prof = json.loads(vaultix["profiles"][0].read_text())
    change(prof)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(prof))
    return path


@pytest.mark.parametrize("change, field, words", [
    (lambda p: p.update(secrets=["db"]), "secrets", "expected an object"),
    (lambda p: p.update(placeholder=["x"]), "placeholder", "expected an object"),
    (lambda p: p.update(beforeUserborn=[{"a": 1}]), "beforeUserborn", "a list of names"),
    (lambda p: p["secrets"]["db"].update(name=None), None, "imported"),
    (lambda p: p["secrets"]["db"].update(name=5), "secrets.db.name", "not valid"),
    (lambda p: p["secrets"]["db"].update(owner=None), "secrets.db.owner", "not a user"),
    (lambda p: p["templates"]["app-env"].update(content=None), "templates.app-env.content",
     "missing"),
    (lambda p: p["templates"]["app-env"].pop("content"), "templates.app-env.content",
     "missing"),
    (lambda p: p["templates"]["app-env"].update(trim="false"), "templates.app-env.trim",
     "expected true or false"),
])
def test_a_malformed_vaultix_profile_is_one_line_per_problem(vaultix, tmp_path, change,
                                                            field, words):
    """Wrong JSON types were internal errors or were imported silently as something
    else (content null -> the text "None", trim "false" -> true)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    bad = _bad_profile(vaultix, tmp_path, change)
    proc = run("import", "vaultix", str(bad), "--secrets-dir", str(vaultix["sdir"]),
               "-i", str(vaultix["master"]), cwd=repo)
    if field is None:           # name null: vaultix's default, the id
        assert proc.returncode == 0, proc.stderr.decode()
        return
    line = assert_one_clean_error(proc, "bad.json", field, words)
    assert "internal error" not in line
    assert list(repo.iterdir()) == []


def test_a_bad_mode_is_blamed_on_its_own_profile(vaultix, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    bad = _bad_profile(vaultix, tmp_path, lambda p: p["secrets"]["db"].update(mode="rw"))
    ok_profile = vaultix["profiles"][1]
    proc = run("import", "vaultix", str(ok_profile), str(bad), "--secrets-dir",
               str(vaultix["sdir"]), "-i", str(vaultix["master"]), cwd=repo)
    line = assert_one_clean_error(proc, "bad.json", "'rw' is not an octal mode")
    assert ok_profile.name not in line


def test_a_bad_recipient_into_an_existing_repository(agenix, nix_env, make_repo):
    repo = make_repo(hosts=1, secrets={"old": b"kept"})
    proc = run("import", "agenix", str(agenix.secrets_nix), "-i", str(agenix.operator),
               "--recipient", "garbage", cwd=repo.root, env=nix_env)
    assert_one_clean_error(proc, "--recipient", "age-keygen -y")


def _import_with_legacy(agenix, nix_env, tmp_path: Path, old: str, new: str) -> str:
    """Import agenix (--hosts-by-comment) after putting a new ssh-rsa key commented
    root@legacy into secrets.nix, as ``new`` (``{}``: the key) in place of ``old``;
    the import's stderr."""
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-C",
                    "root@legacy", "-f", str(tmp_path / "legacy")], check=True)
    rsa_pub = (tmp_path / "legacy.pub").read_text().strip()
    text = agenix.secrets_nix.read_text()
    agenix.secrets_nix.write_text(text.replace(old, new.replace("{}", rsa_pub)))
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = ok("import", "agenix", str(agenix.secrets_nix), "--hosts-by-comment",
              "-i", str(agenix.operator), cwd=repo, env=nix_env)
    return proc.stderr.decode()


def test_a_host_key_that_becomes_a_master_recipient_is_named(agenix, nix_env, tmp_path):
    """--hosts-by-comment names ssh-ed25519 keys only: an RSA host key, or a key
    whose comment says root@host, would silently read every master secret."""
    # (on every secret: a key on some only is no master recipient at all)
    err = _import_with_legacy(agenix, nix_env, tmp_path, "publicKeys = ",
                              'publicKeys = [ "{}" ] ++ ')
    assert "root@legacy) looks like a host key but becomes a master recipient" in err, err


def test_an_rsa_host_key_on_some_secrets_is_named_not_dropped_silently(agenix, nix_env,
                                                                       tmp_path):
    """An ssh-rsa key whose comment names a host, on one secret, was left out of the
    master recipients without a word (no vaultpy host takes it either)."""
    err = _import_with_legacy(agenix, nix_env, tmp_path, '"api-token.age".publicKeys = [',
                              '"api-token.age".publicKeys = [ "{}"')
    line = next(ln for ln in err.splitlines() if "root@legacy" in ln)
    assert "could open 1 of 4 secrets (api-token)" in line, line
    # The fix it gives can be followed: --host-key and --hosts-by-comment take no RSA
    # key, so it says to add the host with its ssh-ed25519 key (a review).
    assert ("if it is a host's key, add the host with its ssh-ed25519 key (vaultpy hosts "
            "take no RSA key: --host-key NAME=KEY) and give it these secrets") in line, line
    assert "--hosts-by-comment" not in line, line


def test_host_keys_left_unnamed_are_refused_as_master_recipients(agenix, nix_env,
                                                                  tmp_path):
    """Keys agenix lists that no host option names become the master recipients.  An
    ssh-ed25519 key whose comment names a host (root@web1) is a host's: as a master
    recipient, that host could read every master.  The import only warned, and wrote
    it so; it now stops, naming the key and both ways on, and writes nothing."""
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = run("import", "agenix", str(agenix.secrets_nix), "-i", str(agenix.operator),
               cwd=repo, env=nix_env)
    assert_one_clean_error(proc, "secrets.nix: publicKeys: ssh-ed25519 SHA256:",
                           "(root@", "and 1 more look like host keys", "--hosts-by-comment",
                           "--recipient KEY")
    assert list(repo.iterdir()) == []
    # Either way on works: the hosts named by their comments, or the recipients chosen.
    ok("import", "agenix", str(agenix.secrets_nix), "-i", str(agenix.operator),
       "--hosts-by-comment", "--dry-run", cwd=repo, env=nix_env)
    ok("import", "agenix", str(agenix.secrets_nix), "-i", str(agenix.operator),
       "--recipient", agenix.operator_pub, "--dry-run", cwd=repo, env=nix_env)


def test_with_recipient_keys_left_out_are_still_named(agenix, nix_env, tmp_path):
    """With --recipient, the import dropped every other key of secrets.nix without a
    word: the hosts their comments named (root@web1, root@db1) and ci, a user given two
    secrets.  Secrets only those hosts had then went to no host, and check passed (a
    review).  Each key left out is named, with the secrets it had and how to keep it;
    the keys --recipient names are masters, not left out."""
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = ok("import", "agenix", str(agenix.secrets_nix), "-i", str(agenix.operator),
              "--recipient", agenix.operator_pub, cwd=repo, env=nix_env)
    warnings = [ln for ln in proc.stderr.decode().splitlines() if ln.startswith("warning:")]
    for host, ids in (("web1", "api-token, db_password"),
                      ("db1", "db_password, hosts-db1-backup_key")):
        (line,) = [ln for ln in warnings if f"(root@{host})" in ln]
        assert (f"looks like a host key that no host option names, on 2 of 4 secrets "
                f"({ids}): no host gets them; name its host with --hosts-by-comment") \
            in line, line
    (ci,) = [ln for ln in warnings if "could open 2 of 4 secrets (db_password, only-ops)"
             in ln]
    assert ci.startswith(f"warning: {_ci_pub(agenix)[:20]}"), ci
    assert "name it with --recipient, with every other master recipient" in ci, ci
    # Not the operator's key: the master's.
    assert len([ln for ln in warnings if "of 4 secrets" in ln]) == 3, warnings
    # Named as a master recipient, a key is no longer left out.
    again = tmp_path / "again"
    again.mkdir()
    proc = ok("import", "agenix", str(agenix.secrets_nix), "-i", str(agenix.operator),
              "--recipient", agenix.operator_pub, "--recipient", _ci_pub(agenix),
              "--dry-run", cwd=again, env=nix_env)
    assert "could open" not in proc.stderr.decode(), proc.stderr.decode()


def test_unnamed_host_keys_on_some_secrets_are_refused_for_what_they_would_lose(
        agenix, nix_env, tmp_path):
    """The refusal said such keys would be master recipients, able to decrypt every
    secret, of host keys that could open two secrets of four: they never would.  It
    says what would happen: their hosts would be left out."""
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = run("import", "agenix", str(agenix.secrets_nix), "-i", str(agenix.operator),
               cwd=repo, env=nix_env)
    assert_one_clean_error(proc, "and 1 more look like host keys that no host option "
                           "names: their hosts would be left out", "--hosts-by-comment")
    assert "a master recipient can decrypt every secret" not in proc.stderr.decode()


def test_an_rsa_user_key_is_named_once_and_not_called_a_host_key(agenix, nix_env,
                                                                  tmp_path):
    """An ssh-rsa key stays a master recipient (vaultpy hosts take no RSA key), and the
    import says so; the warning printed the key's comment twice ("(bob@old) (bob@old)")
    and called a user's key a host key.  Each warning names the key once."""
    text = agenix.secrets_nix.read_text()
    pubs = {}
    for name, comment in (("bob", "bob@old"), ("legacy", "root@legacy")):
        subprocess.run([need("ssh-keygen"), "-q", "-t", "rsa", "-b", "2048", "-N", "",
                        "-C", comment, "-f", str(tmp_path / name)], check=True)
        pubs[comment] = (tmp_path / f"{name}.pub").read_text().strip()
    keys = " ".join(f'"{k}"' for k in pubs.values())
    agenix.secrets_nix.write_text(text.replace("publicKeys = ", f"publicKeys = [ {keys} ] ++ "))
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = ok("import", "agenix", str(agenix.secrets_nix), "--hosts-from",
              str(hosts_nix(agenix)), "-i", str(agenix.operator), cwd=repo, env=nix_env)
    warnings = [ln for ln in proc.stderr.decode().splitlines() if ln.startswith("warning:")]
    for comment in pubs:
        (line,) = [ln for ln in warnings if comment in ln]
        assert line.count(comment) == 1, line
        fpr = subprocess.run([need("ssh-keygen"), "-l", "-f", "-"], input=pubs[comment],
                             capture_output=True, text=True, check=True).stdout.split()[1]
        assert line.startswith(f"warning: ssh-rsa {fpr} ({comment}) ") and "becomes a " \
            "master recipient, able to decrypt every secret" in line, line
        assert "ssh-ed25519" in line and "drop it from [vaultpy] recipients" in line, line
    user = next(ln for ln in warnings if "bob@old" in ln)
    assert "looks like a host key" not in user, user
    assert "(root@legacy) looks like a host key but becomes" in \
        next(ln for ln in warnings if "root@legacy" in ln)


def test_an_import_the_disk_cannot_take_writes_nothing(agenix, nix_env, tmp_path):
    """ENOSPC at the last rename (the last master's; hosts.toml goes first): what the
    renames did is put back and the temp files go, so a rerun works, without --force."""
    need("strace")
    repo = tmp_path / "repo"
    repo.mkdir()
    argv = [sys.executable, "-m", "vaultpy", "import", "agenix", str(agenix.secrets_nix),
            "--hosts-from", str(hosts_nix(agenix)), "-i", str(agenix.operator)]
    n_masters = len(agenix.plain)
    log = tmp_path / "strace.log"
    proc = subprocess.run(["strace", "-f", "-qq", "-o", str(log), "-e",
                           "trace=flock,close,unlink,unlinkat,rename,renameat2", "-e",
                           f"inject=renameat2:error=ENOSPC:when={n_masters + 1}", *argv],
                          cwd=repo, env={**os.environ, "NO_COLOR": "1", **nix_env},
                          capture_output=True)
    if proc.returncode != 0 and b"ptrace" in proc.stderr:
        pytest.skip("ptrace not permitted here")
    assert_one_clean_error(proc, "secrets/", ".age: cannot write: No space left on device")
    # Put back while the lock is still held: a master another command writes once it
    # is released is never taken back.
    calls = log.read_text().splitlines()
    locked = next(i for i, c in enumerate(calls) if "flock(" in c and "LOCK_EX" in c)
    lock_fd = calls[locked].split("flock(")[1].split(",")[0]
    released = next(i for i, c in enumerate(calls[locked:], locked)
                    if f"close({lock_fd})" in c)
    renamed = [i for i, c in enumerate(calls) if "renameat2(" in c and "= 0" in c]
    undone = [i for i, c in enumerate(calls) if c.split("(")[0].endswith("rename")
              and "vaultpy-tmp" in c.split(",")[1]]
    assert len(renamed) == n_masters and len(undone) == n_masters, calls
    assert all(locked < i < released for i in undone), calls
    left = [p for p in repo.rglob("*") if p.is_file() and p.name != ".vaultpy.lock"]
    assert left == [], left
    ok(*argv[3:], cwd=repo, env=nix_env)            # and the rerun needs no --force


def test_a_fifo_as_an_agenix_default_identity_is_a_clean_error(agenix, nix_env, tmp_path):
    """~/.ssh/id_ed25519, found without -i, was read as it was: a FIFO there hung the
    import."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    os.mkfifo(home / ".ssh" / "id_ed25519")
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = run("import", "agenix", str(agenix.secrets_nix), "--hosts-from",
               str(hosts_nix(agenix)), "--dry-run", cwd=repo,
               env={**nix_env, "HOME": str(home)}, timeout=60)
    assert_one_clean_error(proc, "id_ed25519", "cannot read identity", "not a regular file")


def test_agenix_default_identities_take_a_pem_rsa_key(agenix, nix_env, tmp_path):
    """agenix decrypts with ~/.ssh/id_ed25519 and ~/.ssh/id_rsa, and age reads an RSA key
    in the PEM format ssh-keygen wrote before OpenSSH 7.8 ("BEGIN RSA PRIVATE KEY", with
    or without a passphrase).  The import read such a file as an age identity file and
    stopped at "line 1: not an age identity", even when ~/.ssh/id_ed25519 opened every
    secret."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    shutil.copy(agenix.operator, home / ".ssh" / "id_ed25519")
    for name, passphrase in (("id_rsa", ""), ("legacy_rsa", "old pass phrase")):
        subprocess.run([need("ssh-keygen"), "-q", "-t", "rsa", "-b", "2048", "-m", "PEM",
                        "-N", passphrase, "-C", "bob@old", "-f", str(home / ".ssh" / name)],
                       check=True, capture_output=True)
        assert (home / ".ssh" / name).read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY")
    repo = tmp_path / "repo"
    repo.mkdir()
    ok("import", "agenix", str(agenix.secrets_nix), "--hosts-from", str(hosts_nix(agenix)),
       "--dry-run", cwd=repo, env={**nix_env, "HOME": str(home)})
    # The PEM keys decrypt what the real age encrypted to them.
    pwfile = tmp_path / "pw"
    pwfile.write_text("old pass phrase\n")
    only_rsa = tmp_path / "only-rsa"
    only_rsa.mkdir()
    for name in ("id_rsa", "legacy_rsa"):
        pub = (home / ".ssh" / f"{name}.pub").read_text().strip()
        age_encrypt(b"rsa-" + name.encode(), [pub], only_rsa / "r.age", armor=False)
        (only_rsa / "secrets.nix").write_text(f'{{ "r.age".publicKeys = [ "{pub}" ]; }}\n')
        out = tmp_path / f"repo-{name}"
        out.mkdir()
        ok("import", "agenix", str(only_rsa / "secrets.nix"), "-i",
           str(home / ".ssh" / name), cwd=out,
           env={**nix_env, "VAULTPY_PASSPHRASE_FILE": str(pwfile)})
        proc = ok("decrypt", "r", "-i", str(home / ".ssh" / name), cwd=out,
                  env={"VAULTPY_PASSPHRASE_FILE": str(pwfile)})
        assert proc.stdout == b"rsa-" + name.encode()


def test_force_never_replaces_an_imported_file_of_another_secret(agenix, nix_env, tmp_path):
    """secrets.nix at the top of the repository, with "a.age" there and "secrets/a.age"
    below: the master of id a (secrets/a.age) is where agenix keeps the other secret.
    The import said "already exists ... pass --force (an interrupted import)", and
    --force then wrote the master over that agenix file."""
    infra = tmp_path / "infra"
    (infra / "secrets").mkdir(parents=True)
    pub = agenix.operator_pub
    (infra / "secrets.nix").write_text(
        f'{{ "a.age".publicKeys = [ "{pub}" ]; "secrets/a.age".publicKeys = [ "{pub}" ]; }}\n')
    age_encrypt(b"top", [pub], infra / "a.age", armor=False)
    age_encrypt(b"below", [pub], infra / "secrets" / "a.age", armor=False)
    before = {p: p.read_bytes() for p in infra.rglob("*") if p.is_file()}
    args = ("import", "agenix", "./secrets.nix", "-i", str(agenix.operator))
    for force in ((), ("--force",)):
        proc = run(*args, *force, cwd=infra, env=nix_env)
        line = assert_one_clean_error(proc, "secrets/a.age", "is a file this import reads "
                                      "(import agenix)", "--masters-dir vaultpy-secrets")
        assert "--force" not in line
        assert {p: p.read_bytes() for p in infra.rglob("*") if p.is_file()} == before
    ok(*args, "--masters-dir", "vaultpy-secrets", cwd=infra, env=nix_env)
    assert {p: p.read_bytes() for p in before} == before
    assert age_decrypt(infra / "vaultpy-secrets" / "a.age", agenix.operator) == b"top"
    assert age_decrypt(infra / "vaultpy-secrets" / "secrets-a.age", agenix.operator) == b"below"


def test_one_run_lists_the_input_and_the_decryption_problems(agenix, nix_env, tmp_path):
    """docs/migration.md: the first problem does not stop the check, so one run lists
    every problem.  A problem in the input (an RSA host key, a bad --recipient) used
    to stop the import before any secret was decrypted: the files the key given
    cannot open were only named by the next run."""
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run([need("ssh-keygen"), "-q", "-t", "rsa", "-b", "2048", "-N", "", "-C",
                    "root@legacy", "-f", str(tmp_path / "legacy")], check=True)
    rsa_pub = (tmp_path / "legacy.pub").read_text().strip()
    stranger, _ = ssh_keygen(tmp_path, "stranger")
    hosts = hosts_nix(agenix)
    hosts.write_text(hosts.read_text().replace("}", f'  legacy = "{rsa_pub}";\n}}'))
    proc = run("import", "agenix", str(agenix.secrets_nix), "--hosts-from", str(hosts),
               "--recipient", "age1garbage", "-i", str(stranger), cwd=repo, env=nix_env)
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert_one_clean_error(proc, "host legacy", "not an ssh-ed25519 or age1 public key")
    assert_one_clean_error(proc, "--recipient")
    assert err.count("none of the identities") == len(agenix.plain), err
    assert list(repo.iterdir()) == []



def test_a_secret_bigger_than_vaultpy_keeps_is_refused(agenix, nix_env, tmp_path):
    """encrypt, edit, generate and import sops refuse more than 64 MiB of plaintext;
    import agenix took it (its every renc then held it in RAM, ~400 MB)."""
    big = os.urandom(1 << 20) * 64 + b"!"
    (agenix.dir / "only-ops.age").unlink()
    age_encrypt(big, [agenix.operator_pub, _ci_pub(agenix)], agenix.dir / "only-ops.age",
                armor=False)
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = run("import", "agenix", str(agenix.secrets_nix), "--hosts-from",
               str(hosts_nix(agenix)), "-i", str(agenix.operator), cwd=repo, env=nix_env)
    assert_one_clean_error(proc, "only-ops.age", "more than 64 MiB of plaintext")
    assert list(repo.iterdir()) == []


def _next_step(proc: subprocess.CompletedProcess[bytes]) -> list[list[str]]:
    """The commands after "next: " of an import's last line, as argv lists."""
    import shlex

    line = proc.stderr.decode().split("; next: ", 1)[1].strip()
    return [shlex.split(part)[1:] for part in line.split(" && ")]


def _run_next_step(proc: subprocess.CompletedProcess[bytes], repo: Path, home: Path) -> None:
    steps = _next_step(proc)
    assert [s[0] for s in steps] == ["renc", "check"] and "-i" in steps[0], steps
    for step in steps:
        ok(*step, cwd=repo, env={"HOME": str(home)})


def test_the_next_step_printed_works_as_printed(agenix, nix_env, tmp_path):
    """The import ends with what to run next.  By default the masters are encrypted to
    the operator's keys of secrets.nix, which are not vaultpy's default master
    identity: the printed "vaultpy renc" stopped at "no master identity to decrypt
    with".  The line names the -i that opens them."""
    args = ("import", "agenix", str(agenix.secrets_nix), "--hosts-from",
            str(hosts_nix(agenix)), "-i", str(agenix.operator))
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = ok(*args, cwd=repo, env=nix_env)
    _run_next_step(proc, repo, tmp_path)
    # Every later command needs that -i too: the import says how to set it once, and
    # what it says works (a review: no step said so).
    line = next(ln for ln in proc.stderr.decode().splitlines()
                if ln.startswith("the masters open with"))
    assert f'set identity = "{agenix.operator}" under [vaultpy] in hosts.toml' in line, line
    text = (repo / "hosts.toml").read_text()
    (repo / "hosts.toml").write_text(text.replace("[vaultpy]\n", "[vaultpy]\nidentity = "
                                                  f'"{agenix.operator}"\n', 1))
    got = ok("decrypt", "api-token", cwd=repo, env={"HOME": str(tmp_path)}).stdout
    assert got == agenix.plain["api-token"]
    # A dedicated master key given with --recipient is not one the import holds.
    _, master_pub = age_keygen(tmp_path, "master.txt")
    other = tmp_path / "repo-recipient"
    other.mkdir()
    # Nor is there one renc finds by itself (no [vaultpy] identity, no default one):
    # a bare "vaultpy renc" failed with "no master identity to decrypt with".
    proc = ok(*args, "--recipient", master_pub, cwd=other, env=nix_env)
    assert "next: vaultpy renc -i <your master identity> && vaultpy check" in \
        proc.stderr.decode()
    home = tmp_path / "home"
    (home / ".config/vaultpy").mkdir(parents=True)
    (home / ".config/vaultpy/master.txt").write_bytes((tmp_path / "master.txt").read_bytes())
    again = tmp_path / "repo-default-identity"
    again.mkdir()
    proc = ok(*args, "--recipient", master_pub, cwd=again, env={**nix_env, "HOME": str(home)})
    assert _next_step(proc) == [["renc"], ["check"]]


def test_the_next_step_printed_after_an_import_with_c_works_from_here(vaultix, tmp_path):
    """import … -C newrepo printed "next: vaultpy renc …", which, run from the same
    directory, found no hosts.toml (a review): the commands carry -C now."""
    (tmp_path / "new repo").mkdir()
    proc = ok("import", "vaultix", *map(str, vaultix["profiles"]), "--secrets-dir",
              str(vaultix["sdir"]), "-i", str(vaultix["master"]), "-C", "new repo",
              cwd=tmp_path)
    steps = _next_step(proc)
    assert [s[:3] for s in steps] == [["-C", "new repo", "renc"], ["-C", "new repo", "check"]]
    for step in steps:
        ok(*step, cwd=tmp_path, env={"HOME": str(tmp_path)})


def test_the_next_step_printed_after_a_vaultix_import_works(vaultix, tmp_path):
    """vaultix's master identity (-i) stays the master key: renc needs it too."""
    repo = tmp_path / "repo"
    repo.mkdir()
    proc = ok("import", "vaultix", *map(str, vaultix["profiles"]), "--secrets-dir",
              str(vaultix["sdir"]), "-i", str(vaultix["master"]), cwd=repo)
    _run_next_step(proc, repo, tmp_path)


def test_the_line_of_nix_output_that_says_what_is_wrong(agenix, nix_env, tmp_path) -> None:
    """Debian's Nix prints the error first; Nix 2.13 and later open with a bare
    "error:" and a trace, and end with the innermost error: either way the one line
    shown says what is wrong, not just "error:"."""
    from vaultpy import migrate

    broken = tmp_path / "undefined.nix"
    broken.write_text("{ a = missing_thing; }\n")
    proc = run("import", "agenix", str(broken), "-i", str(agenix.operator), cwd=tmp_path,
               env=nix_env)
    assert_one_clean_error(proc, "undefined.nix", "nix-instantiate failed: error:",
                           "undefined variable 'missing_thing'")
    newer = ("error:\n       … while evaluating the attribute 'a'\n\n"
             "         at /x/undefined.nix:1:3:\n\n            1| { a = missing_thing; }\n"
             "             |   ^\n\n       error: undefined variable 'missing_thing'\n\n"
             "       at /x/undefined.nix:1:7:\n")
    assert migrate.nix_error(newer) == "error: undefined variable 'missing_thing'"
    assert migrate.nix_error("") == "(no output)"


def _plugin_recipient(tmp_path: Path) -> str:
    """A recipient of tests/plugins/age-plugin-vptest, made by the plugin itself."""
    source = Path(__file__).parent / "plugins" / "age-plugin-vptest"
    out = subprocess.run([sys.executable, str(source), "--generate", "--pin", "1"],
                         capture_output=True, text=True, check=True).stdout
    return out.split("# recipient: ")[1].split()[0]


def test_a_plugin_not_installed_fails_the_import_before_anything_is_made(vaultix, tmp_path):
    """A master recipient whose plugin is not on PATH failed the import only once it
    held the lock: an empty secrets/cache directory and its lock file stayed behind in
    an empty directory.  It is one line naming the plugin and the fix, and nothing is
    made, in a new repository or an existing one."""
    recipient = _plugin_recipient(tmp_path)
    no_plugin = {"PATH": os.path.dirname(sys.executable) + os.pathsep + "/usr/bin:/bin"}
    repo = tmp_path / "repo"
    repo.mkdir()
    args = ("import", "vaultix", *map(str, vaultix["profiles"]), "--secrets-dir",
            str(vaultix["sdir"]), "-i", str(vaultix["master"]))
    proc = run(*args, "--recipient", recipient, cwd=repo, env=no_plugin)
    line = assert_one_clean_error(proc, "age-plugin-vptest", "cannot encrypt",
                                  "install age-plugin-vptest on PATH")
    assert len(proc.stderr.decode().strip().splitlines()) == 1, proc.stderr.decode()
    assert "--recipient" in line, line
    assert list(repo.iterdir()) == []
    # Into a repository whose recipients name the plugin: hosts.toml and everything
    # beside it as they were.
    (repo / "hosts.toml").write_text(f'[vaultpy]\nrecipients = ["{recipient}"]\n')
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    proc = run(*args, cwd=repo, env=no_plugin)
    assert_one_clean_error(proc, "age-plugin-vptest", "cannot encrypt", "install")
    assert sorted(repo.rglob("*")) == sorted(before)
    assert {p: p.read_bytes() for p in before} == before


@pytest.mark.parametrize("syscall, when", [("rename", 1), ("renameat2", 1), ("renameat2", 3)])
def test_an_import_killed_while_it_writes_leaves_nothing_behind(vaultix, tmp_path, syscall,
                                                                 when):
    """SIGKILL as the import writes: at the rename of its journal (every temp file
    written, nothing decided), at hosts.toml's rename (decided, nothing in place yet),
    at the second master's (hosts.toml and one master in place).  The import wrote
    each master with its own temp + rename, and a kill left a .<id>.age.vaultpy-tmp-*
    file that the rerun did not remove.  Now the masters and hosts.toml are one
    journaled write: before the journal, the rerun removes the temp files; after it,
    the next command that takes the lock finishes it (and check says so meanwhile)."""
    need("strace")
    from types import SimpleNamespace

    from test_generate import _killed_at

    from vaultpy._internal import fsutil

    repo = tmp_path / "repo"
    repo.mkdir()
    args = ("import", "vaultix", *map(str, vaultix["profiles"]), "--secrets-dir",
            str(vaultix["sdir"]), "-i", str(vaultix["master"]))
    _killed_at(SimpleNamespace(root=repo, env={}), syscall, when, *args)  # type: ignore[arg-type]

    def temps() -> list[Path]:
        return [p for p in repo.rglob("*") if fsutil.is_tmp(p.name)]

    journal = repo / ".vaultpy-writes"
    hosts = repo / "hosts.toml"
    if syscall == "rename":             # the journal's: every temp file, nothing decided
        assert not journal.exists() and not hosts.exists()
        assert any(p.name.startswith(".db.age.vaultpy-tmp-") for p in temps()), temps()
        ok(*args, cwd=repo)             # the rerun removes them, and imports
        assert temps() == []
    elif when == 1:                     # hosts.toml's: decided, nothing in place yet
        assert journal.exists() and not hosts.exists()
        for cmd in ("check", "renc"):   # nothing to find but the journal: it says what to do
            assert_one_clean_error(run(cmd, cwd=repo), ".vaultpy-writes: a killed import's "
                                   "write waits here to create hosts.toml",
                                   "run the same vaultpy import again")
        proc = run(*args, cwd=repo)     # only this rerun can find the journal: it finishes it
        assert_one_clean_error(proc, "hosts.toml", "an interrupted write (a killed import's) "
                               "was finished first", "run vaultpy check")
        assert temps() == [] and not journal.exists()
        # The new repository's .gitignore lines, which the killed run never reached, are
        # written then too (they were missing for good: a review).
        assert "/.vaultpy-writes" in (repo / ".gitignore").read_text()
        cache = model.load(hosts).cache_dir
        assert ".vaultpy.lock" in (cache / ".gitignore").read_text()
    else:                               # a master's: hosts.toml there, check names the fix
        assert journal.exists() and hosts.exists()
        proc = run("check", cwd=repo)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr.decode()
        assert proc.stdout.decode().startswith(
            ".vaultpy-writes: a write of several files was interrupted before "
            "all of them were replaced; run vaultpy renc"), proc.stdout.decode()
    ok("renc", cwd=repo, env={"VAULTPY_IDENTITY": str(vaultix["master"])})
    ok("check", cwd=repo)
    assert temps() == [] and not journal.exists()
    cfg = model.load(repo)
    assert set(cfg.hosts) == {"alpha", "beta"}
    for sid, plain in vaultix["plain"].items():
        assert age_decrypt(repo / "secrets" / f"{sid}.age", vaultix["master"]) == plain


def test_force_replaces_an_undeclared_master_in_the_same_write(vaultix, tmp_path):
    """A master file that is not declared stops the import; --force replaces it, as
    part of the one journaled write of the import."""
    repo = tmp_path / "repo"
    (repo / "secrets").mkdir(parents=True)
    stray = repo / "secrets" / "db.age"
    stray.write_bytes(b"not the import's")
    args = ("import", "vaultix", *map(str, vaultix["profiles"]), "--secrets-dir",
            str(vaultix["sdir"]), "-i", str(vaultix["master"]))
    proc = run(*args, cwd=repo)
    line = assert_one_clean_error(proc, "secrets/db.age", "already exists", "--force")
    assert "interrupted import)" in line and stray.read_bytes() == b"not the import's"
    ok(*args, "--force", cwd=repo)
    assert age_decrypt(stray, vaultix["master"]) == vaultix["plain"]["db"]
    assert not (repo / ".vaultpy-writes").exists()
    ok("renc", cwd=repo, env={"VAULTPY_IDENTITY": str(vaultix["master"])})
    ok("check", cwd=repo)


def test_the_rules_file_and_its_names_are_read_as_agenix_reads_them(agenix, nix_env,
                                                                    tmp_path):
    """agenix takes its rules file from RULES (default ./secrets.nix) and reads the names
    in it relative to the directory it runs in: `RULES=secrets/secrets.nix agenix -r`
    from the top of a repository has names like "secrets/a.age".  The import ignored
    RULES (SECRETS_NIX was required) and read every name relative to secrets.nix, so
    such a repository stopped at "secrets/secrets/a.age: cannot read the secret ...;
    create it with agenix first"."""
    infra = tmp_path / "infra"
    (infra / "secrets").mkdir(parents=True)
    pub = agenix.operator_pub
    (infra / "secrets" / "secrets.nix").write_text(
        f'{{ "secrets/a.age".publicKeys = [ "{pub}" ];\n'
        f'   "secrets/sub/b.age".publicKeys = [ "{pub}" ]; }}\n')
    age_encrypt(b"A", [pub], infra / "secrets" / "a.age", armor=False)
    age_encrypt(b"B", [pub], infra / "secrets" / "sub" / "b.age", armor=False)
    opts = ("-i", str(agenix.operator), "--masters-dir", "vaultpy-secrets")
    rules = {**nix_env, "RULES": "secrets/secrets.nix"}

    def imported(repo: Path) -> None:
        assert age_decrypt(repo / "vaultpy-secrets" / "secrets-a.age", agenix.operator) == b"A"
        assert age_decrypt(repo / "vaultpy-secrets" / "secrets-sub-b.age",
                           agenix.operator) == b"B"

    # Given as the argument, without RULES: agenix would have run beside it.  One line
    # for the whole file, naming where the names were looked for and the fix.
    proc = run("import", "agenix", "secrets/secrets.nix", *opts, cwd=infra, env=nix_env)
    line = assert_one_clean_error(proc, 'secrets/secrets.nix: "secrets/a.age": found from '
                                  "the current directory, not from this file's (and 1 more)",
                                  "RULES=secrets/secrets.nix vaultpy import agenix")
    assert proc.stderr.decode().strip() == line
    assert sorted(p.name for p in infra.iterdir()) == ["secrets"]
    # RULES alone, as agenix ran: the names are relative to the current directory.
    ok("import", "agenix", *opts, cwd=infra, env=rules)
    imported(infra)
    assert "# Imported from agenix (secrets/secrets.nix)" in (infra / "hosts.toml").read_text()
    # RULES and the same file as the argument: the same.
    other = tmp_path / "other"
    other.mkdir()
    ok("import", "agenix", "secrets/secrets.nix", "-C", str(other), *opts, cwd=infra,
       env=rules)
    assert age_decrypt(other / "vaultpy-secrets" / "secrets-a.age", agenix.operator) == b"A"
    # Neither the argument nor RULES, and no ./secrets.nix: one line, the fix.
    proc = run("import", "agenix", *opts, cwd=other, env=nix_env)
    assert_one_clean_error(proc, "secrets.nix", "no such file", "RULES")
    # RULES set, but agenix ran beside the file (the usual cd secrets/): one line, too.
    proc = run("import", "agenix", *opts, "--hosts-by-comment", cwd=agenix.dir.parent,
               env={**nix_env, "RULES": "agenix/secrets.nix"})
    line = assert_one_clean_error(proc, 'agenix/secrets.nix: "api-token.age": found from '
                                  "this file's directory, not from the current one (and 3 "
                                  "more)", "agenix ran in agenix: run the import there")
    assert proc.stderr.decode().strip() == line


def _with_files(vaultix, tmp_path: Path, files: dict[str, str]) -> list[Path]:
    """The fixture's profiles with each secret's ``file`` replaced."""
    out = []
    for prof_path in vaultix["profiles"]:
        prof = json.loads(prof_path.read_text())
        for sid, entry in prof["secrets"].items():
            entry["file"] = files[sid]
        path = tmp_path / "profiles" / prof_path.name
        path.parent.mkdir(exist_ok=True)
        path.write_text(json.dumps(prof))
        out.append(path)
    return out


def test_a_file_inside_a_flake_source_in_the_store_maps_below_secrets_dir(vaultix,
                                                                         tmp_path):
    """`file = ./secrets/db.age;` in a flake is /nix/store/<hash>-source/secrets/db.age:
    --secrets-dir looked for DIR/source/secrets/db.age, so neither the flake's secrets
    directory nor its root worked, and the error still said "pass --secrets-dir DIR".
    The path below <hash>-source is looked for under DIR, then each shorter tail of it
    (DIR the flake's root, its secrets directory, or below); two store paths that
    would map to one file, and a file not found, are one line each saying what to pass."""
    flake = vaultix["sdir"].parent
    (flake / "secrets" / "hosts").mkdir()
    (flake / "secrets" / "wg.age").rename(flake / "secrets" / "hosts" / "wg.age")
    source = store_path("source")
    files = {"db": f"{source}/secrets/db.age", "user-pw": f"{source}/secrets/user-pw.age",
             "wg": f"{source}/secrets/hosts/wg.age"}
    profiles = _with_files(vaultix, tmp_path, files)
    for n, secrets_dir in enumerate((flake, flake / "secrets", flake / "secrets" / "hosts")):
        repo = tmp_path / f"repo{n}"
        repo.mkdir()
        args = ("import", "vaultix", *map(str, profiles), "--secrets-dir", str(secrets_dir),
                "-i", str(vaultix["master"]))
        if n == 2:          # below the secrets: hosts/wg.age only
            proc = run(*args, cwd=repo)
            line = assert_one_clean_error(proc, "secrets.db.file", f"{source}/secrets/db.age",
                                          "not found", "--secrets-dir")
            assert "secrets/hosts/secrets/db.age" in line, line   # where it was looked for
            # The hint names the directory given as the wrong one, not "pass --secrets-dir"
            # as if none had been.
            assert line.endswith(f"give --secrets-dir the DIR holding secrets/db.age (or "
                                 f"db.age), not {secrets_dir}"), line
            assert sorted(repo.iterdir()) == []
            continue
        ok(*args, cwd=repo)
        for sid, plain in vaultix["plain"].items():
            assert age_decrypt(repo / "secrets" / f"{sid}.age", vaultix["master"]) == plain
    # Two secrets of the same file name in two directories, and a --secrets-dir that
    # has only one of them: not both imported from it.
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(flake / "secrets" / "db.age", flat / "key.age")
    files = {"db": f"{source}/secrets/a/key.age", "user-pw": f"{source}/secrets/b/key.age",
             "wg": f"{source}/secrets/hosts/wg.age"}
    (flat / "hosts").mkdir()
    shutil.copy(flake / "secrets" / "hosts" / "wg.age", flat / "hosts" / "wg.age")
    repo = tmp_path / "repo-flat"
    repo.mkdir()
    proc = run("import", "vaultix", *map(str, _with_files(vaultix, tmp_path, files)),
               "--secrets-dir", str(flat), "-i", str(vaultix["master"]), cwd=repo)
    line = assert_one_clean_error(proc, "secrets/a/key.age", "secrets/b/key.age",
                                  "flat/key.age", "--secrets-dir")
    assert sorted(repo.iterdir()) == []


@pytest.mark.parametrize("change", ["edited", "removed"])
def test_hosts_toml_changed_while_the_import_asks_writes_nothing(make_repo, vaultix,
                                                                 tmp_path, change):
    """hosts.toml is read before the passphrase prompt and checked again under the lock:
    edited meanwhile, or removed (which was an internal error), the import stops with
    one line and writes nothing."""
    from test_faults import _blocked_on_fifo, wait_until

    key, pub = ssh_keygen(tmp_path, "locked", passphrase="pw")
    sdir = tmp_path / "locked-secrets"
    for sid, value in vaultix["plain"].items():
        age_encrypt(value, [pub], sdir / f"{sid}.age", armor=False)
    repo = make_repo(hosts=1, secrets={"old": b"kept"})
    fifo = tmp_path / "passphrase.fifo"
    os.mkfifo(fifo)
    env = {k: v for k, v in os.environ.items() if k != "VAULTPY_IDENTITY"}
    proc = subprocess.Popen([sys.executable, "-m", "vaultpy", "import", "vaultix",
                             *map(str, vaultix["profiles"]), "--secrets-dir", str(sdir),
                             "-i", str(key)], cwd=repo.root, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE,
                            env={**env, "NO_COLOR": "1", "VAULTPY_PASSPHRASE_FILE": str(fifo)})
    wait_until(lambda: _blocked_on_fifo(proc.pid), what="the import at its prompt")
    hosts = repo.root / "hosts.toml"
    if change == "edited":
        hosts.write_text(hosts.read_text() + "# edited meanwhile\n")
    else:
        hosts.unlink()
    before = repo.snapshot()
    fifo.write_text("pw\n")
    out, err = proc.communicate(timeout=120)
    done = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert_one_clean_error(done, "hosts.toml: changed while the import was running; nothing "
                           "was written", "run the import again")
    after = repo.snapshot()
    assert {k: v for k, v in after.items() if not k.startswith("secrets/cache/")} == \
        {k: v for k, v in before.items() if not k.startswith("secrets/cache/")}
    assert not [k for k in after if "vaultpy-tmp" in k or k.endswith(".vaultpy-writes")]


def test_an_import_killed_in_a_repository_leaves_what_check_reports(make_repo, vaultix):
    """Into an existing repository, killed before its journal: the temp files of the
    masters and of hosts.toml are left.  check names every one of them, hosts.toml's
    too (it looked beside the masters only), and renc removes them."""
    need("strace")
    from test_generate import _killed_at

    repo = make_repo(hosts=1, secrets={"old": b"kept"})
    args = ("import", "vaultix", *map(str, vaultix["profiles"]), "--secrets-dir",
            str(vaultix["sdir"]), "-i", str(vaultix["master"]))
    _killed_at(repo, "rename", 1, *args)            # the journal's rename
    left = sorted(str(p.relative_to(repo.root)) for p in repo.root.rglob("*")
                  if ".vaultpy-tmp-" in p.name)
    assert len(left) == 5 and any(p.startswith(".hosts.toml.") for p in left), left
    proc = repo.run("check")
    out = proc.stdout.decode()
    assert proc.returncode == 1 and "Traceback" not in out + proc.stderr.decode()
    for path in left:
        assert f"{path}: leftover temporary file; run vaultpy renc to remove it" in out, out
    repo.ok("renc")
    repo.ok("check")
    assert not [p for p in repo.root.rglob("*") if ".vaultpy-tmp-" in p.name]
    assert "alpha" not in model.load(repo.root).hosts      # the import did not happen


def test_an_import_killed_as_it_puts_hosts_toml_back_leaves_it_findable(
        make_repo, vaultix, monkeypatch):
    """A master's rename fails after hosts.toml's: the write is put back, hosts.toml
    last.  The put-back moved hosts.toml to its temp name, then wrote the old text in
    its place: killed in between, hosts.toml was gone, and with it the only way any
    command finds the journal (check and renc: "no hosts.toml here").  Now hosts.toml
    is there at every point: killed, check names the journal and renc finishes it."""
    import errno

    from vaultpy._internal import fsutil

    class Killed(BaseException):
        pass

    repo = make_repo(hosts=1, secrets={"old": b"kept"})
    hosts = repo.root / "hosts.toml"
    old_text = hosts.read_text()

    def rename_new(src, dst):
        raise OSError(errno.EIO, "Input/output error", str(dst))

    real_write = fsutil.atomic_write

    def atomic_write(path, *args, **kw):
        if Path(path) == hosts:
            raise Killed            # SIGKILL as the old hosts.toml is written back
        return real_write(path, *args, **kw)

    monkeypatch.setattr(fsutil, "rename_new", rename_new)
    monkeypatch.setattr(fsutil, "atomic_write", atomic_write)
    with pytest.raises(Killed):
        migrate.import_vaultix(vaultix["profiles"], repo.root,
                               secrets_dir=vaultix["sdir"],
                               identity_files=[vaultix["master"]])
    monkeypatch.undo()
    assert hosts.is_file() and (repo.root / ".vaultpy-writes").exists()
    proc = repo.run("check")
    out = proc.stdout.decode()
    assert proc.returncode == 1 and "Traceback" not in out + proc.stderr.decode()
    assert ".vaultpy-writes: a write of several files was interrupted" in out, out
    repo.ok("renc")
    repo.ok("check")
    assert not [p for p in repo.root.rglob("*") if fsutil.is_tmp(p.name)]
    assert not (repo.root / ".vaultpy-writes").exists()
    text = hosts.read_text()
    assert text.startswith(old_text) and text != old_text     # the import, whole
    for sid, plain in vaultix["plain"].items():     # to the repository's recipients
        assert age_decrypt(repo.root / "secrets" / f"{sid}.age", repo.identity) == plain
