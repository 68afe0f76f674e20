"""hosts.toml → the typed, immutable model (DESIGN §2), and ``vaultpy init``.

The library tests call :func:`vaultpy.model.parse` directly with keys made by the
real ``age-keygen`` and ``ssh-keygen``; the ``init`` tests run the real CLI.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import (
    LOCAL_STATE,
    Repo,
    age_decrypt,
    age_keygen,
    assert_one_clean_error,
    need,
    ssh_keygen,
    toml_str,
)

from vaultpy import model
from vaultpy.errors import VaultpyError
from vaultpy.model import Deployment, Output


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("keys")
    _, master = age_keygen(d, "master.txt")
    _, web = ssh_keygen(d, "web", comment="root@web.example")
    _, db = ssh_keygen(d, "db", comment="root@db")
    _, age_host = age_keygen(d, "agehost.txt")
    return {"master": master, "web": web, "db": db, "age_host": age_host}


def parse(text: str, root: Path) -> model.Config:
    return model.parse(text, root / "hosts.toml")


def head(keys: dict[str, str], extra: str = "") -> str:
    return f"[vaultpy]\nrecipients = [{toml_str(keys['master'])}]\n{extra}\n"


def one_setting(keys: dict[str, str], sid: str, key: str, value: str) -> str:
    """hosts.toml: secret ``sid`` on host web, with ``key = value`` for it there."""
    return head(keys) + f"""
[secrets.{sid}]
[hosts.web]
pubkey = {toml_str(keys['web'])}
[hosts.web.secrets.{sid}]
{key} = {toml_str(value)}
"""


# --------------------------------------------------------------------------- defaults

def test_defaults(keys: dict[str, str], tmp_path: Path) -> None:
    cfg = parse(head(keys) + f"""
[secrets.db_password]

[hosts.web]
pubkey = {toml_str(keys['web'])}

[hosts.web.secrets.db_password]
""", tmp_path)
    assert cfg.path == tmp_path / "hosts.toml"
    assert cfg.root == tmp_path
    assert cfg.identity is None
    assert cfg.secrets_dir == tmp_path / "secrets"
    assert cfg.cache_dir == tmp_path / "secrets" / "cache"
    assert cfg.secrets["db_password"].file == tmp_path / "secrets" / "db_password.age"
    (dep,) = cfg.hosts["web"].deployments
    assert dep == Deployment("db_password", "db_password", Output())
    out = dep.out
    assert (out.owner, out.group, out.mode, out.path) == ("root", "root", "0400", None)
    assert (out.restart_units, out.reload_units, out.early) == ((), (), False)
    assert cfg.hosts["web"].templates == ()


def test_template_defaults_match_secret_defaults(keys: dict[str, str], tmp_path: Path) -> None:
    cfg = parse(head(keys) + f"""
[secrets.a]
[hosts.web]
pubkey = {toml_str(keys['web'])}
[hosts.web.templates."app.env"]
content = "A={{{{ secrets.a }}}}\\n"
""", tmp_path)
    (t,) = cfg.hosts["web"].templates
    assert t.name == "app.env"
    assert t.out == Output()
    assert t.out.mode == "0400" and t.trim is False


@pytest.mark.parametrize(("toml_value", "expected"), [
    ("0o440", "0440"), ('"440"', "0440"), ('"0640"', "0640"), ("0o600", "0600"),
    ('"0000"', "0000"), ("0o777", "0777"),
])
def test_mode_normalisation(keys: dict[str, str], tmp_path: Path, toml_value: str,
                            expected: str) -> None:
    cfg = parse(head(keys) + f"""
[secrets.a]
[hosts.web]
pubkey = {toml_str(keys['web'])}
[hosts.web.secrets.a]
mode = {toml_value}
""", tmp_path)
    assert cfg.hosts["web"].deployments[0].out.mode == expected


def test_numeric_owner_and_group(keys: dict[str, str], tmp_path: Path) -> None:
    cfg = parse(head(keys) + f"""
[secrets.a]
[secrets.b]
[hosts.web]
pubkey = {toml_str(keys['web'])}
[hosts.web.secrets.a]
owner = 1000
group = 0
[hosts.web.secrets.b]
owner = "postgres"
group = "1001"
""", tmp_path)
    a, b = cfg.hosts["web"].deployments
    assert (a.out.owner, a.out.group) == ("1000", "0")
    assert isinstance(a.out.owner, str)
    assert (b.out.owner, b.out.group) == ("postgres", "1001")


def test_unicode_digit_owner_is_a_clean_error(keys: dict[str, str], tmp_path: Path) -> None:
    """"²" and "١٢٣" satisfy str.isdigit() but are not user ids: a problem, not a crash
    and not a non-ASCII "numeric" owner passed to the host."""
    for owner in ("²", "١٢٣"):
        text = one_setting(keys, "a", "owner", owner)
        with pytest.raises(VaultpyError) as info:
            parse(text, tmp_path)
        (problem,) = info.value.problems
        assert problem.field == "hosts.web.secrets.a.owner", problem


def test_shorthand_list_equals_tables_with_defaults(keys: dict[str, str],
                                                     tmp_path: Path) -> None:
    decl = "[secrets.a]\n[secrets.b]\n"
    short = parse(head(keys) + decl + f"""
[hosts.web]
pubkey = {toml_str(keys['web'])}
secrets = ["a", "b"]
""", tmp_path)
    long = parse(head(keys) + decl + f"""
[hosts.web]
pubkey = {toml_str(keys['web'])}
[hosts.web.secrets.a]
[hosts.web.secrets.b]
""", tmp_path)
    assert short.hosts["web"] == long.hosts["web"]
    assert [d.id for d in short.hosts["web"].deployments] == ["a", "b"]
    assert all(d.out == Output() for d in short.hosts["web"].deployments)


def test_template_refs_are_collected_into_needed(keys: dict[str, str], tmp_path: Path) -> None:
    cfg = parse(head(keys) + f"""
[secrets.installed]
[secrets.zeta]
[secrets.alpha]
[secrets.unused]

[hosts.web]
pubkey = {toml_str(keys['web'])}
secrets = ["installed"]

[hosts.web.templates."app.env"]
content = \"\"\"Z={{{{secrets.zeta}}}} A={{{{ secrets.alpha }}}} again={{{{  secrets.zeta  }}}}
literal={{{{{{{{ secrets.unused }}}} other={{{{ .Values.x }}}}
\"\"\"
trim = true

[hosts.db]
pubkey = {toml_str(keys['db'])}
""", tmp_path)
    web = cfg.hosts["web"]
    (t,) = web.templates
    assert t.refs == ("zeta", "alpha")           # order of first use, no duplicates
    assert t.trim is True
    assert web.needed == ("alpha", "installed", "zeta")   # sorted; not "unused"
    assert [d.id for d in web.deployments] == ["installed"]   # templates install nothing
    assert cfg.hosts["db"].needed == ()


def test_recipients_are_normalised(keys: dict[str, str], tmp_path: Path) -> None:
    web_type, web_b64, _comment = keys["web"].split(" ", 2)
    db_type, db_b64, _ = keys["db"].split(" ", 2)
    cfg = parse(f"""
[vaultpy]
recipients = [{toml_str("  " + keys['master'] + "  ")}, {toml_str(keys['db'] + " extra words")}]

[hosts.web]
pubkey = {toml_str(keys['web'])}

[hosts.agehost]
pubkey = {toml_str(keys['age_host'])}
""", tmp_path)
    assert "@" not in web_b64 and _comment == "root@web.example"
    assert cfg.recipients == (keys["master"], f"{db_type} {db_b64}")
    assert cfg.hosts["web"].recipients == (f"{web_type} {web_b64}",)
    assert cfg.hosts["agehost"].recipients == (keys["age_host"],)


def test_config_is_immutable(keys: dict[str, str], tmp_path: Path) -> None:
    cfg = parse(head(keys) + f"""
[secrets.a]
[hosts.web]
pubkey = {toml_str(keys['web'])}
secrets = ["a"]
""", tmp_path)
    with pytest.raises(AttributeError):     # frozen (a record: vaultpy/_internal/record.py)
        cfg.cache_dir = tmp_path  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.hosts["evil"] = cfg.hosts["web"]  # type: ignore[index]
    with pytest.raises(TypeError):
        del cfg.secrets["a"]  # type: ignore[attr-defined]
    host = cfg.hosts["web"]
    with pytest.raises(AttributeError):     # frozen (a record: vaultpy/_internal/record.py)
        host.recipients = ()  # type: ignore[misc]
    with pytest.raises(AttributeError):     # a record (vaultpy/_internal/record.py)
        host.deployments[0].out.mode = "0777"  # type: ignore[misc]
    with pytest.raises(AttributeError):     # frozen (a record: vaultpy/_internal/record.py)
        cfg.secrets["a"].file = Path("/etc/shadow")  # type: ignore[misc]
    assert isinstance(host.deployments, tuple) and isinstance(host.recipients, tuple)
    assert isinstance(cfg.recipients, tuple)


def test_relative_paths_resolve_against_the_hosts_toml_directory(
        keys: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = tmp_path / "deep" / "repo"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)            # not the cwd: the file's own directory
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = model.parse(f"""
[vaultpy]
recipients = [{toml_str(keys['master'])}]
identity = "keys/master.txt"
secrets_dir = "enc"
cache_dir = "build/./cache/"

[secrets.a]
[secrets.b]
file = "other/../other/b.age"
[secrets.c]
file = "/abs/c.age"
[secrets.d]
file = "~/d.age"
""", repo / "hosts.toml")
    assert cfg.identity == repo / "keys" / "master.txt"
    assert cfg.secrets_dir == repo / "enc"
    assert cfg.cache_dir == repo / "build" / "cache"
    assert cfg.lock_path == repo / "build" / "cache" / ".vaultpy.lock"
    assert cfg.secrets["a"].file == repo / "enc" / "a.age"
    assert cfg.secrets["b"].file == repo / "other" / "b.age"
    assert cfg.secrets["c"].file == Path("/abs/c.age")
    assert cfg.secrets["d"].file == tmp_path / "home" / "d.age"


@pytest.mark.parametrize("given, made, field, needle", [
    # the same file spelled another way (lexically): caught already, kept
    ('file = "./secrets/../secrets/a.age"', {}, "secrets.b.file",
     "secrets/a.age is also the master file of secret 'a'; give secret 'b'"),
    # a symlink to secret a's master
    ('file = "alias.age"', {"alias.age": "secrets/a.age"}, "secrets.b.file",
     "alias.age is also the master file of secret 'a', through a symlink (it is "
     "secrets/a.age); give secret 'b' a file of its own"),
    # a folder reached through a symlink
    ('file = "linked/a.age"', {"linked": "secrets"}, "secrets.b.file",
     "is also the master file of secret 'a', through a symlink; give secret 'b'"),
    # b's default file is a symlink to a's
    ("", {"secrets/b.age": "a.age"}, "secrets.b",
     "secrets/b.age is also the master file of secret 'a', through a symlink (it is "
     "secrets/a.age); remove that symlink, or give secret 'b' a file of its own"),
    # a symlink to a key pair's .pub, not written yet
    ('file = "pub.age"', {"pub.age": "secrets/k.pub"}, "secrets.b.file",
     "pub.age is also the public key file of secret 'k' (generate = \"ssh-ed25519\"), "
     "through a symlink (it is secrets/k.pub)"),
    # a symlink to the rotation state
    ('file = "rot.age"', {"rot.age": "secrets/rotation.toml"}, "secrets.b.file",
     "rot.age is also the rotation state file"),
])
def test_one_master_file_reached_two_ways_is_refused_at_load(
        keys: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, given: str,
        made: dict[str, str], field: str, needle: str) -> None:
    """Two secrets whose files are one file, as the file system sees it (however
    hosts.toml spells them), are refused by load, with the usual one line: not later by
    masters.write_all, once a command has decided what to write."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "a.age").write_bytes(b"x")
    for link, target in made.items():
        (tmp_path / link).symlink_to(target)
    monkeypatch.chdir(tmp_path)
    text = head(keys) + f"""
[secrets.a]
[secrets.k]
generate = "ssh-ed25519"
[secrets.b]
{given}
"""
    (tmp_path / "hosts.toml").write_text(text)
    with pytest.raises(VaultpyError) as info:
        model.load(tmp_path)
    assert [(p.file, p.field) for p in info.value.problems] == [("hosts.toml", field)], \
        info.value.problems
    assert needle in str(info.value.problems[0])
    # without the symlinks, the same file is fine (a, k and b: three files)
    for link in made:
        (tmp_path / link).unlink()
    if made:
        model.load(tmp_path)


@pytest.mark.parametrize("settings, says", [
    ('cache_dir = "secrets"', "secrets_dir (secrets), with 3 master file(s)"),
    ('cache_dir = "secrets"\nsecrets_dir = "secrets/enc"',
     "secrets_dir (secrets/enc), with 3 master file(s)"),
    ('cache_dir = "."', "hosts.toml, with 4 master file(s)"),
])
def test_a_cache_dir_holding_secrets_dir_is_one_line_on_cache_dir(
        keys: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        settings: str, says: str) -> None:
    """cache_dir = "secrets" put every master file inside the cache: a line per secret
    ("secrets.X.file: ... move it out of cache_dir"), none naming cache_dir, the one
    setting to fix.  A master of its own (file =) inside the cache is still its line."""
    monkeypatch.chdir(tmp_path)
    text = head(keys, settings) + """
[secrets.a]
[secrets.b]
[secrets.c]
[secrets.d]
file = "elsewhere/d.age"
"""
    with pytest.raises(VaultpyError) as info:
        parse(text, tmp_path)
    assert [(p.field, p.message, p.hint) for p in info.value.problems] == [
        ("vaultpy.cache_dir", f"the cache would contain {says} renc must never prune",
         'use a directory of its own, like "secrets/cache"')], info.value.problems
    with pytest.raises(VaultpyError) as info:
        parse(head(keys, 'cache_dir = "build"') + """
[secrets.a]
[secrets.d]
file = "build/d.age"
""", tmp_path)
    assert [(p.field, p.hint) for p in info.value.problems] == [
        ("secrets.d.file", "move it out of cache_dir")], info.value.problems


def test_parse_reports_every_problem_with_file_and_field(keys: dict[str, str],
                                                          tmp_path: Path) -> None:
    with pytest.raises(VaultpyError) as info:
        parse(head(keys, 'secret_dir = "x"') + f"""
[secrets."bad/id"]
[hosts.web]
pubkey = {toml_str(keys['web'])}
secrets = ["nosuch"]
[hosts.db]
pubkey = {toml_str(keys['db'])}
[hosts.db.secrets.x]
mode = "0999"
""", tmp_path)
    fields = sorted(p.field for p in info.value.problems)
    assert fields == sorted(['vaultpy.secret_dir', 'secrets."bad/id"',
                             "hosts.web.secrets.nosuch", "hosts.db.secrets.x.mode",
                             "hosts.db.secrets.x"]), info.value.problems
    assert all(p.file.endswith("hosts.toml") and p.hint for p in info.value.problems)
    assert "did you mean 'secrets_dir'?" in str(info.value)


@pytest.mark.parametrize("path, owned", [
    ("/run/vaultpy.d.lock", "'/run/vaultpy.d.lock', where activation keeps its lock file"),
    ("/run/vaultpy.d.lock/x", "'/run/vaultpy.d.lock', where activation keeps its lock"),
    ("/run/.vaultpy.vaultpy-tmp-0123456789ab",
     "'/run/.vaultpy.vaultpy-tmp-*', where activation keeps its dir's temporary symlinks"),
    ("/run/.vaultpy-early.vaultpy-tmp-x", "'/run/.vaultpy-early.vaultpy-tmp-*', where "
     "activation keeps its early_dir's temporary symlinks"),
    ("/run/vaultpy.d", "'/run/vaultpy.d', where activation keeps its store"),
    ("/run/.vaultpy.d.vaultpy-tmp-x", "'*.vaultpy-tmp-*', where activation keeps its "
     "temporary names"),
    ("/run/vaultpy.d.lockx", None), ("/run/vaultpy.lock", None),
])
def test_path_onto_a_file_activation_owns_is_refused(keys: dict[str, str], tmp_path: Path,
                                                     path: str, owned: str | None) -> None:
    """A link at <store>.lock made the next activation fail to lock ("Too many levels
    of symbolic links"), and one at a live symlink's temporary name is removed by the
    next run as a leftover: both are activation's own files, like its directories."""
    text = one_setting(keys, "db", "path", path)
    if owned is None:
        assert parse(text, tmp_path).hosts["web"].deployments[0].out.path == path
        return
    with pytest.raises(VaultpyError) as info:
        parse(text, tmp_path)
    [problem] = info.value.problems
    assert problem.field == "hosts.web.secrets.db.path"
    assert f"path {path!r} overlaps {owned}" in problem.message, problem


# --------------------------------------------------------------------------- vaultpy init

def _bare_repo(root: Path) -> Repo:
    root.mkdir(parents=True, exist_ok=True)
    # an empty VAULTPY_IDENTITY falls through to [vaultpy] identity
    return Repo(root, root / "unused", "", env={"VAULTPY_IDENTITY": ""})


def test_init_writes_hosts_toml_and_refuses_to_overwrite(tmp_path: Path) -> None:
    repo = _bare_repo(tmp_path / "site")
    repo.ok("init")
    text = (repo.root / "hosts.toml").read_text()
    assert "[vaultpy]" in text and "recipients" in text
    assert (repo.root / "secrets").is_dir()
    before = repo.snapshot()
    for args in (("init",), ("init", "--generate-identity", "keys/master.txt"),
                 ("init", str(repo.root))):
        proc = repo.run(*args)
        assert proc.returncode == 1, proc.stderr.decode()
        assert_one_clean_error(proc, "hosts.toml", "already exists")
        assert repo.snapshot() == before
        assert not (repo.root / "keys").exists()


def test_init_names_an_identity_under_home_with_a_tilde(tmp_path: Path) -> None:
    """The README's `init --generate-identity ~/.config/vaultpy/master.txt` wrote a
    path relative to the repository (`../home/…`): a clone elsewhere, or another
    user's checkout, could not find it.  Under $HOME it is `~/…` now; inside the
    repository it stays relative, elsewhere absolute."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}
    for name, ident, expected in (
            ("a", home / ".config" / "vaultpy" / "master.txt", "~/.config/vaultpy/master.txt"),
            ("b", tmp_path / "b" / "keys" / "m.txt", "keys/m.txt"),
            ("c", tmp_path / "elsewhere" / "m.txt", str(tmp_path / "elsewhere" / "m.txt"))):
        repo = _bare_repo(tmp_path / name)
        repo.ok("init", "--generate-identity", str(ident), env=env)
        line = next(ln for ln in (repo.root / "hosts.toml").read_text().splitlines()
                    if ln.startswith("identity = "))
        # a machine's own absolute path says how a teammate's differs (found in review)
        assert line == f'identity = "{expected}"' + (
            "   # yours: -i or VAULTPY_IDENTITY override it" if expected.startswith("/")
            else ""), line
    moved = tmp_path / "deeper" / "a"
    moved.parent.mkdir()
    shutil.move(tmp_path / "a", moved)
    with (moved / "hosts.toml").open("a") as fh:
        fh.write("\n[secrets.s]\n")
    repo = _bare_repo(moved)
    repo.ok("encrypt", "s", input=b"v", env=env)
    assert repo.ok("decrypt", "s", env=env).stdout == b"v"


def test_a_tilde_the_shell_left_is_home_in_every_key_option(tmp_path: Path) -> None:
    """`--generate-identity=~/...` (bash expands no ~ after =) or a quoted "~/...":
    init wrote the new key to ./~/.config/... in the repository, while hosts.toml named
    ~/.config/..., under $HOME (found in review); -i and --backup-identity did not
    expand it either, where VAULTPY_IDENTITY and hosts.toml do."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}
    repo = _bare_repo(tmp_path / "r")
    proc = repo.ok("init", "--generate-identity=~/.config/vaultpy/master.txt", env=env)
    key = home / ".config" / "vaultpy" / "master.txt"
    assert key.is_file() and not (repo.root / "~").exists()
    assert 'identity = "~/.config/vaultpy/master.txt"' in (repo.root / "hosts.toml").read_text()
    assert "Consider a second (backup) recipient" in proc.stderr.decode()
    with (repo.root / "hosts.toml").open("a") as fh:
        fh.write("\n[secrets.s]\n")
    repo.ok("encrypt", "s", input=b"v", env=env)
    for args in (("-i", "~/.config/vaultpy/master.txt", "decrypt", "s"),
                 ("decrypt", "--identity=~/.config/vaultpy/master.txt", "s")):
        assert repo.ok(*args, env={**env, "VAULTPY_IDENTITY": "/nowhere"}).stdout == b"v"
    repo.ok("check", "--backup-identity=~/.config/vaultpy/master.txt", env=env)
    # -r given: it is the backup; no advice to add one
    other = _bare_repo(tmp_path / "o")
    _, backup = age_keygen(tmp_path, "backup.txt")
    proc = other.ok("init", "--generate-identity", str(tmp_path / "m.txt"), "-r", backup,
                    env=env)
    assert "Consider a second" not in proc.stderr.decode()


def _initialised_site(tmp_path: Path) -> tuple[Repo, Path, Path, dict[str, str]]:
    """``vaultpy init`` in tmp_path/site, its master key made under a HOME of its own:
    (the repository, its folder, HOME, the environment naming HOME)."""
    home = tmp_path / "home"
    home.mkdir()
    env = {"HOME": str(home)}
    site = tmp_path / "site"
    repo = _bare_repo(site)
    repo.ok("init", "--generate-identity", str(home / "master.txt"), env=env)
    return repo, site, home, env


@pytest.mark.parametrize("first", ["renc", "encrypt"])
def test_a_cache_dir_changed_after_init_is_ignored_by_git_too(tmp_path: Path, first: str
                                                              ) -> None:
    """init writes secrets/cache/.gitignore; a cache_dir set after it was created
    without one (by renc, or by the first encrypt, for its lock), and `git add -A` took
    the lock, the verification index and the memo into the next commit.  The renc that
    first fills a cache directory with no .gitignore now writes the same one (and never
    replaces one that is there)."""
    need("git")
    repo, site, home, env = _initialised_site(tmp_path)
    subprocess.run(["git", "init", "-q", str(site)], check=True)
    text = (site / "hosts.toml").read_text()
    assert '# cache_dir = "secrets/cache"' in text
    _, pub = ssh_keygen(tmp_path, "h")
    (site / "hosts.toml").write_text(
        text.replace('# cache_dir = "secrets/cache"', 'cache_dir = "hostcache"')
        + f'\n[secrets.s]\n\n[hosts.web]\npubkey = {toml_str(pub)}\nsecrets = ["s"]\n')
    if first == "encrypt":
        repo.ok("encrypt", "s", input=b"v", env=env)
        assert (site / "hostcache" / ".vaultpy.lock").exists()
    else:
        (site / "secrets" / "s.age").write_bytes(
            subprocess.run(["age", "-r", (home / "master.txt").read_text().split(
                "public key: ")[1].split()[0]], input=b"v", capture_output=True,
                check=True).stdout)
    repo.ok("renc", env=env)
    repo.ok("check", env=env)
    added = subprocess.run(["git", "add", "-n", "-A"], cwd=site, capture_output=True,
                           text=True, check=True).stdout
    assert "hostcache/web/" in added, added
    for name in LOCAL_STATE:
        assert name not in added, added
    (site / "hostcache" / ".gitignore").write_text("# mine\n")
    shutil.rmtree(site / "hostcache" / "web")          # a renc that writes: no replacing
    repo.ok("renc", env=env)
    assert (site / "hostcache" / ".gitignore").read_text() == "# mine\n"
    # A repository with no .gitignore beside hosts.toml either (an import killed before
    # it wrote them, a hand-made one): the first fill adds the journal's lines there too.
    os.unlink(site / ".gitignore")
    shutil.rmtree(site / "hostcache")
    repo.ok("renc", env=env)
    assert "/.vaultpy-writes\n" in (site / ".gitignore").read_text()
    assert ".vaultpy.lock" in (site / "hostcache" / ".gitignore").read_text()


def test_init_without_a_recipient_takes_the_default_identitys(tmp_path: Path) -> None:
    """`vaultpy init` with no -r wrote `recipients = []`, though the default identity
    (~/.config/vaultpy/master.txt, the key every command uses) was there: its public
    key is the master recipient now, and init says so.  -r given, or no default key:
    as before."""
    home = tmp_path / "home"
    (home / ".config" / "vaultpy").mkdir(parents=True)
    env = {"HOME": str(home)}
    repo = _bare_repo(tmp_path / "none")
    repo.ok("init", env=env)
    assert "recipients = []" in (repo.root / "hosts.toml").read_text()
    _, public = age_keygen(home / ".config" / "vaultpy", "master.txt")
    repo = _bare_repo(tmp_path / "found")
    proc = repo.ok("init", env=env)
    assert model.load(repo.root).recipients == (public,)
    assert (f"master recipient: {public} (the public key of ~/.config/vaultpy/master.txt"
            in proc.stderr.decode()), proc.stderr.decode()
    _, other = age_keygen(tmp_path, "other.txt")
    repo = _bare_repo(tmp_path / "given")
    proc = repo.ok("init", "-r", other, env=env)
    assert model.load(repo.root).recipients == (other,)
    assert "master recipient" not in proc.stderr.decode()


def test_init_takes_the_master_key_named_with_i_or_vaultpy_identity(tmp_path: Path) -> None:
    """`vaultpy -i KEY init` (or VAULTPY_IDENTITY=KEY) encrypted the new repository to
    the default identity's key, ignoring the one named, which every other command takes
    (a review).  The named key's public key is the master recipient now, first before
    any -r; -i is also written as [vaultpy] identity, as --generate-identity's is."""
    home = tmp_path / "home"
    (home / ".config" / "vaultpy").mkdir(parents=True)
    _, default = age_keygen(home / ".config" / "vaultpy", "master.txt")
    _, named = age_keygen(tmp_path, "named.txt")
    _, backup = age_keygen(tmp_path, "backup.txt")
    env = {"HOME": str(home)}
    key = str(tmp_path / "named.txt")
    repo = _bare_repo(tmp_path / "flag")
    proc = repo.ok("-i", key, "init", "-r", backup, env=env)
    cfg = model.load(repo.root)
    assert cfg.recipients == (named, backup), cfg.recipients
    assert cfg.identity == tmp_path / "named.txt"
    assert f"master recipient: {named} (the public key of" in proc.stderr.decode()
    assert default not in proc.stderr.decode()
    repo = _bare_repo(tmp_path / "env")
    repo.ok("init", env={**env, "VAULTPY_IDENTITY": key})
    cfg = model.load(repo.root)
    assert cfg.recipients == (named,) and cfg.identity is None
    # -r given, VAULTPY_IDENTITY (set for every command, two files here) is not asked.
    repo = _bare_repo(tmp_path / "env-r")
    repo.ok("init", "-r", backup, env={**env, "VAULTPY_IDENTITY": f"{key}:{key}.nope"})
    assert model.load(repo.root).recipients == (backup,)
    # What init cannot take is refused before anything is written.
    ssh = tmp_path / "ssh_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh)], check=True)
    for args, code, words in (
            (("-i", key, "init", "--generate-identity", "new.txt"), 2,
             ("-i names the master identity, and --generate-identity makes a new one",)),
            (("-i", str(ssh), "init"), 1, ("ssh_key: holds no single age key (-i)",
                                          "give the master public key with -r KEY")),
            (("-i", key, "-i", str(ssh), "init"), 1, ("-i: names 2 identity files",))):
        repo = _bare_repo(tmp_path / f"refused{code}{len(args)}")
        proc = repo.run(*args, env=env)
        assert proc.returncode == code, proc.stderr.decode()
        assert_one_clean_error(proc, *words)
        assert sorted(os.listdir(repo.root)) == []


def test_init_names_the_file_in_the_way_and_makes_nothing(tmp_path: Path) -> None:
    """`init y --generate-identity afile/k`, afile a file, said "afile: already exists"
    with no fix, and left an empty y/ behind (a review).  The file in the way is named
    before anything is made."""
    repo = _bare_repo(tmp_path / "site")
    (repo.root / "afile").write_text("x\n")
    for args, words in (
            (("init", "y", "--generate-identity", "afile/k"),
             ("afile: is not a directory, so the identity afile/k cannot be created",
              "choose another --generate-identity")),
            (("init", "afile/z"), ("afile: is not a directory, so hosts.toml in afile/z "
                                   "cannot be created", "choose another directory"))):
        proc = repo.run(*args)
        assert proc.returncode == 1, proc.stderr.decode()
        assert_one_clean_error(proc, *words)
        assert sorted(os.listdir(repo.root)) == ["afile"]


def test_init_adds_the_journal_to_an_existing_gitignore(tmp_path: Path) -> None:
    """A repository that has a .gitignore keeps every line of it; the journal's lines
    are added once."""
    site = tmp_path / "site"
    site.mkdir()
    (site / ".gitignore").write_text("node_modules/\n*.log")    # no final newline
    os.chmod(site / ".gitignore", 0o640)
    _bare_repo(site).ok("init")
    text = (site / ".gitignore").read_text()
    assert text.startswith("node_modules/\n*.log\n\n# vaultpy: ")
    assert text.count("/.vaultpy-writes\n") == 1
    assert stat.S_IMODE((site / ".gitignore").stat().st_mode) == 0o640


def test_init_refuses_a_fifo_gitignore_before_writing(tmp_path: Path) -> None:
    """init added its lines to a FIFO .gitignore with read_text, after hosts.toml was
    written: it waited forever, and the rerun found hosts.toml there already."""
    site = tmp_path / "site"
    site.mkdir()
    os.mkfifo(site / ".gitignore")
    proc = _bare_repo(site).run("init", timeout=30)
    assert_one_clean_error(proc, ".gitignore", "not a regular file")
    assert sorted(os.listdir(site)) == [".gitignore"]


@pytest.mark.parametrize("where", ["keys/master.txt", "secrets/master.txt", "a b/m[1]*.txt"])
def test_a_master_key_made_inside_the_repository_is_never_committed(tmp_path: Path,
                                                                    where: str) -> None:
    """init --generate-identity secrets/master.txt, then the README's `git add hosts.toml
    secrets .gitignore`, staged the plaintext master key (a new-user review)."""
    need("git")
    repo = _bare_repo(tmp_path / "site")
    subprocess.run(["git", "init", "-q", str(repo.root)], check=True)
    err = repo.ok("init", "--generate-identity", where).stderr.decode()
    assert "wrote .gitignore" in err or "/.gitignore" in err, err
    key = repo.root / where
    assert "AGE-SECRET-KEY-" in key.read_text()
    subprocess.run(["git", "add", "-A"], cwd=repo.root, check=True)
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=repo.root,
                            check=True, capture_output=True, text=True).stdout.splitlines()
    assert "hosts.toml" in staged and ".gitignore" in staged
    assert where not in staged and not any("master" in s or "m[1]" in s for s in staged)
    # A key made outside the repository adds nothing (and init -r adds no such line).
    other = _bare_repo(tmp_path / "other")
    other.ok("init", "--generate-identity", str(tmp_path / "outside.txt"))
    assert "master identity" not in (other.root / ".gitignore").read_text()


def test_init_with_no_master_recipient_says_so(tmp_path: Path) -> None:
    """No -r, no --generate-identity and no default key: init wrote `recipients = []`
    and said nothing, and every later command failed (a new-user review)."""
    home = tmp_path / "home"
    home.mkdir()
    repo = _bare_repo(tmp_path / "site")
    err = repo.ok("init", env={"HOME": str(home)}).stderr.decode()
    assert ("warning: no master recipient (no -r, no --generate-identity, and no "
            "~/.config/vaultpy/master.txt): make a key (mkdir -p ~/.config/vaultpy && "
            "age-keygen -o ~/.config/vaultpy/master.txt) and add the public key it prints to "
            "[vaultpy] recipients in hosts.toml") in err, err
    # One there but unusable: its public key is what to add (age-keygen -o would refuse).
    (home / ".config" / "vaultpy").mkdir(parents=True)
    (home / ".config" / "vaultpy" / "master.txt").write_text("garbage\n")
    err = _bare_repo(tmp_path / "c").ok("init", env={"HOME": str(home)}).stderr.decode()
    assert ("~/.config/vaultpy/master.txt holds no plain age key" in err
            and "add its public key (age-keygen -y" in err), err
    err = _bare_repo(tmp_path / "b").ok("init", "-r", repo_recipient(tmp_path),
                                        env={"HOME": str(home)}).stderr.decode()
    assert "warning" not in err, err


def repo_recipient(tmp_path: Path) -> str:
    return age_keygen(tmp_path, "r.txt")[1]


def test_init_generate_identity_full_cycle(tmp_path: Path) -> None:
    repo = _bare_repo(tmp_path / "site")
    repo.ok("init", "--generate-identity", "keys/master.txt")
    ident = repo.root / "keys" / "master.txt"
    assert stat.S_IMODE(ident.stat().st_mode) == 0o600
    public = subprocess.run([need("age-keygen"), "-y", str(ident)], check=True,
                            capture_output=True, text=True).stdout.strip()
    assert public.startswith("age1")
    cfg = model.load(repo.root)
    assert cfg.recipients == (public,)
    assert cfg.identity == repo.root / "keys" / "master.txt"
    assert not [p for p in repo.root.rglob("*") if "vaultpy-tmp" in p.name]

    # add a secret and a host; the generated file still loads and the pipeline works
    key, pub = ssh_keygen(tmp_path, "web1", comment="root@web1")
    with open(repo.root / "hosts.toml", "a") as fh:
        fh.write(f'\n[secrets.db]\n\n[hosts.web1]\npubkey = {toml_str(pub)}\n'
                 f'secrets = ["db"]\n')
    assert model.load(repo.root).hosts["web1"].needed == ("db",)
    repo.ok("encrypt", "db", input=b"s3cret\n")
    repo.ok("renc")
    repo.ok("check")
    (cached,) = (repo.root / "secrets" / "cache" / "web1").glob("db.*.age")
    assert age_decrypt(cached, key) == b"s3cret\n"
    assert age_decrypt(repo.root / "secrets" / "db.age", ident) == b"s3cret\n"
    assert os.stat(ident).st_mode & 0o077 == 0

    # git (the real one) sees the cache files, never renc's local state
    git = need("git")
    repo.ok("renc")          # a no-op run: writes the memo too
    # and a kill's write journal beside hosts.toml, with its own temp file
    planted = [repo.root / ".vaultpy-writes", repo.root / "..vaultpy-writes.vaultpy-tmp-1"]
    for path in planted:
        path.write_text("{}\n")
    subprocess.run([git, "init", "-q", str(repo.root)], check=True)
    status = subprocess.run([git, "status", "--porcelain", "--untracked-files=all"],
                            cwd=repo.root, check=True, capture_output=True, text=True).stdout
    listed = {Path(line[3:]).name for line in status.splitlines()}
    assert listed & LOCAL_STATE == set(), status
    assert not {p.name for p in planted} & listed, status
    assert any(name.startswith("db.") for name in listed) and ".gitignore" in listed
    for path in planted:
        path.unlink()
    assert (repo.root / "secrets" / "cache" / ".vaultpy-memo").exists()


def test_a_hosts_identities_are_checked_paths(keys: dict[str, str], tmp_path: Path) -> None:
    """[hosts.<name>] identities: the key files its profile names (an age1 host's key
    is no sshd host key)."""
    base = head(keys) + f"[hosts.edge]\npubkey = {toml_str(keys['age_host'])}\n"
    cfg = parse(base + 'identities = ["/var/lib/vaultpy/edge.key"]\n', tmp_path)
    assert cfg.hosts["edge"].identities == ("/var/lib/vaultpy/edge.key",)
    assert parse(base, tmp_path).hosts["edge"].identities == ()
    for value, needle in [('"/k"', "expected a non-empty list of key paths, got a string"),
                          ("[]", "expected a non-empty list of key paths"),
                          ('["keys/edge.key"]', "invalid path 'keys/edge.key'"),
                          ("[1]", "hosts.edge.identities[0]")]:
        with pytest.raises(VaultpyError) as err:
            parse(base + f"identities = {value}\n", tmp_path)
        text = str(err.value)
        assert "hosts.edge.identities" in text and needle in text, (value, text)


def test_the_two_forms_of_a_hosts_secrets_mixed_get_a_fix(tmp_path: Path) -> None:
    """`host add` writes secrets = [...]; the README shows [hosts.X.secrets.<id>]: both
    in one host was a bare TOML error, "fix the syntax at that line" (a review)."""
    text = ('[vaultpy]\nrecipients = []\n[hosts.web2]\nsecrets = ["a"]\n'
            '[hosts.web2.secrets.db]\nowner = "x"\n')
    with pytest.raises(VaultpyError) as err:
        model.parse(text, tmp_path / "hosts.toml")
    line = str(err.value.problems[0])
    assert "not valid TOML: Cannot declare ('hosts', 'web2', 'secrets', 'db') twice" in line
    assert ("hosts.web2 lists its secrets (secrets = [...]) and has [hosts.web2.secrets.<id>] "
            "tables too: use one form") in line, line
    # A table written twice, with no list: the plain hint, not this one (a review).
    twice = ('[vaultpy]\nrecipients = []\n[hosts.web2]\n[hosts.web2.secrets.db]\n'
             '[hosts.web2.secrets.db]\n')
    with pytest.raises(VaultpyError) as err:
        model.parse(twice, tmp_path / "hosts.toml")
    line = str(err.value.problems[0])
    assert line.endswith("; [hosts.web2.secrets.db] is declared twice, first at line 4: "
                         "merge the two tables into one") and "lists its secrets" not in line


def test_a_key_in_the_git_repository_above_hosts_toml_is_ignored_there(tmp_path: Path) -> None:
    """hosts.toml in infra/, the key made at the git top: only hosts.toml's folder was
    looked at, and `git add -A` staged the key (a review)."""
    need("git")
    top = tmp_path / "gi"
    top.mkdir()
    subprocess.run(["git", "init", "-q", str(top)], check=True)
    repo = _bare_repo(top / "infra")
    repo.ok("init", str(top / "infra"), "--generate-identity", str(top / "master.txt"),
            cwd=top)
    subprocess.run(["git", "add", "-A"], cwd=top, check=True)
    staged = subprocess.run(["git", "diff", "--cached", "--name-only"], cwd=top, check=True,
                            capture_output=True, text=True).stdout.splitlines()
    assert "infra/hosts.toml" in staged and "master.txt" not in staged, staged
    assert "/master.txt" in (top / ".gitignore").read_text()


def test_renc_adds_its_lines_to_any_gitignore_and_leaves_a_linked_one(tmp_path: Path) -> None:
    """A .gitignore in Latin-1 made renc's first fill die with an internal error after it
    had written the cache; a symlinked one was replaced by a copy (a review)."""
    need("git")
    repo, site, _home, env = _initialised_site(tmp_path)
    _, pub = ssh_keygen(tmp_path, "h")
    with (site / "hosts.toml").open("a") as fh:
        fh.write(f'\n[secrets.s]\n\n[hosts.web]\npubkey = {toml_str(pub)}\nsecrets = ["s"]\n')
    repo.ok("encrypt", "s", input=b"v", env=env)
    latin = b"caf\xe9.txt\n"
    (site / ".gitignore").write_bytes(latin)
    shutil.rmtree(site / "secrets" / "cache")
    repo.ok("renc", env=env)
    data = (site / ".gitignore").read_bytes()
    assert data.startswith(latin) and b"/.vaultpy-writes\n" in data
    shared = tmp_path / "shared-ignore"
    shared.write_text("*.log\n")
    (site / ".gitignore").unlink()
    (site / ".gitignore").symlink_to(shared)
    shutil.rmtree(site / "secrets" / "cache")
    repo.ok("renc", env=env)
    assert (site / ".gitignore").is_symlink() and shared.read_text() == "*.log\n"
