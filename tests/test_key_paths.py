"""Field paths in messages name TOML keys and Nix attributes as those languages write
them: an id with a dot ("db.password") is quoted, so a hint such as ``declare
[secrets."db.password"]`` can be pasted as it is (``[secrets.db.password]`` would
declare a table ``password`` inside a table ``db``)."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from conftest import Nix, Repo, assert_one_clean_error

from vaultpy.errors import key_path, nix_attr, toml_key

NAMES = ["db", "db.password", "app.env", "1password", "a-b_c", "x'y", "sp ace", 'q"uote',
         "back\\slash", "ünï", "in", "let", "or"]     # (Nix keywords: in and let quoted)
NIX = Path(__file__).parent.parent / "nix"


@pytest.mark.parametrize("name", NAMES)
def test_key_path_reads_back_as_the_same_keys_in_toml(name: str) -> None:
    assert tomllib.loads(f"{key_path('hosts', name, 'templates', name)} = 1") == {
        "hosts": {name: {"templates": {name: 1}}}}
    assert tomllib.loads(f"[{key_path('secrets', name)}]\nfile = 'x'") == {
        "secrets": {name: {"file": "x"}}}


def test_only_keys_that_need_it_are_quoted() -> None:
    assert key_path("hosts", "web-1", "secrets", "db_pw") == "hosts.web-1.secrets.db_pw"
    assert key_path("secrets", "db.password") == 'secrets."db.password"'
    assert toml_key("1password") == "1password"          # a bare key in TOML
    assert nix_attr("1password") == '"1password"'        # not an identifier in Nix
    assert nix_attr("db") == "db" and nix_attr("x'y") == "x'y"
    assert nix_attr("in") == '"in"' and toml_key("in") == "in"


def test_nix_attr_reads_back_as_the_same_names_in_nix(nix: Nix) -> None:
    names = [n for n in NAMES if "\\" not in n]           # no id or file name has one
    attrs = " ".join(f"{nix_attr(n)} = {i};" for i, n in enumerate(names))
    got = nix.eval(f"builtins.attrNames {{ {attrs} }}")
    assert sorted(got) == sorted(names)


def test_lib_nix_quotes_as_python_does(nix: Nix) -> None:
    """lib.nix's tomlKey and nixAttr, twins of errors.toml_key and errors.nix_attr."""
    names = [n for n in NAMES if "\\" not in n]
    expr = (f"let l = import {NIX}/lib.nix; names = builtins.fromJSON ''{json.dumps(names)}''; "
            "in map (n: [ (l.tomlKey n) (l.nixAttr n) ]) names")
    assert nix.eval(expr) == [[toml_key(n), nix_attr(n)] for n in names]


def test_the_hint_for_an_undeclared_dotted_id_can_be_pasted(make_repo) -> None:  # type: ignore[no-untyped-def]
    repo: Repo = make_repo(hosts=1, secrets={"db.password": b"pw\n"})
    pubkey = repo.hosts["host0"].pubkey.replace("root@host0", "root@web9")
    add = ("host", "add", "web9", "--pubkey", pubkey, "--secrets", "api.token")
    line = assert_one_clean_error(repo.run(*add), "api.token")
    assert 'declare [secrets."api.token"] in hosts.toml' in line, line
    # Pasted as the hint says, with the master file made: the same command succeeds.
    with (repo.root / "hosts.toml").open("a") as f:
        f.write('\n[secrets."api.token"]\n')
    repo.ok("encrypt", "api.token", input=b"tok")
    repo.ok(*add)
    repo.ok("renc")
    repo.ok("check")


def test_check_names_a_dotted_id_of_a_host_quoted(make_repo) -> None:  # type: ignore[no-untyped-def]
    repo: Repo = make_repo(hosts=1, secrets={"db.password": b"pw\n"})
    proc = repo.run("check")                  # check lists its problems on stdout
    assert proc.returncode == 1
    assert 'hosts.host0.secrets."db.password": cache file is missing' in proc.stdout.decode()


def test_an_unknown_key_is_named_quoted(make_repo) -> None:  # type: ignore[no-untyped-def]
    repo: Repo = make_repo(hosts=1, secrets={"db": b"pw\n"})
    text = (repo.root / "hosts.toml").read_text()
    repo.write_hosts(text.replace("[hosts.host0]\n", '[hosts.host0]\n"pub.key" = "x"\n'))
    line = assert_one_clean_error(repo.run("check"), "unknown key")
    assert 'hosts.host0."pub.key": unknown key' in line, line


def test_a_user_profile_names_a_dotted_template_quoted(make_repo) -> None:  # type: ignore[no-untyped-def]
    repo: Repo = make_repo(hosts=1, secrets={"db": b"pw\n"})
    text = (repo.root / "hosts.toml").read_text()
    repo.write_hosts(text + '\n[hosts.host0.templates."app.env"]\ncontent = "x"\n'
                            'owner = "nobody"\n')
    line = assert_one_clean_error(repo.run("profile", "--host", "host0", "--user"),
                                  "owner 'nobody'")
    assert 'hosts.host0.templates."app.env".owner' in line, line


def test_lib_nix_names_a_dotted_template_quoted(nix: Nix, make_repo) -> None:  # type: ignore[no-untyped-def]
    """profileFromHostsToml says what `vaultpy check` says of the same mistake."""
    repo: Repo = make_repo(hosts=1, secrets={"db": b"pw\n"})
    text = (repo.root / "hosts.toml").read_text()
    repo.write_hosts(text + '\n[hosts.host0.templates."app.env"]\ncontent = "x"\nmdoe = "0400"\n')
    proc = nix.eval_proc(f'(import {NIX}/lib.nix).profileFromHostsToml '
                         f'{{ hostsToml = {repo.root}/hosts.toml; host = "host0"; }}')
    assert proc.returncode != 0
    assert 'hosts.host0.templates."app.env".mdoe: unknown key' in proc.stderr, proc.stderr
    line = assert_one_clean_error(repo.run("check"), "unknown key")
    assert 'hosts.host0.templates."app.env".mdoe: unknown key' in line, line


def test_rotation_toml_names_a_dotted_id_quoted(make_repo) -> None:  # type: ignore[no-untyped-def]
    repo: Repo = make_repo(hosts=1, secrets={"db.password": b"pw\n"})
    text = (repo.root / "hosts.toml").read_text()
    repo.write_hosts(text.replace('[secrets."db.password"]\n',
                                  '[secrets."db.password"]\nrotate_days = 30\n'))
    (repo.root / "secrets" / "rotation.toml").write_text('[rotated]\n"db.password" = "soon"\n')
    proc = repo.run("check")
    assert 'rotated."db.password": expected a date-time' in proc.stdout.decode() + \
        proc.stderr.decode(), (proc.stdout, proc.stderr)


def test_renc_counts_a_host_named_twice_once(make_repo) -> None:  # type: ignore[no-untyped-def]
    repo: Repo = make_repo(hosts=2, secrets={"db": b"pw\n"})
    repo.ok("renc")
    out = repo.ok("renc", "-H", "host0", "-H", "host0").stdout.decode()
    assert out == "nothing to do: 1 cache file of 1 host up to date\n", out


@pytest.mark.parametrize(("table", "line"), [
    ('[secrets.redis.password]\n',
     "secrets.redis.password: a table inside [secrets.redis]; for the name "
     "'redis.password', quote it: [secrets.\"redis.password\"]"),
    ('[hosts.host0.templates.app.env]\ncontent = "x"\n',
     "hosts.host0.templates.app.env: a table inside [hosts.host0.templates.app]; for the "
     "name 'app.env', quote it: [hosts.host0.templates.\"app.env\"]"),
    ('[hosts.host0.secrets.db.pw]\nmode = "0400"\n',
     "hosts.host0.secrets.db.pw: a table inside [hosts.host0.secrets.db]; for the name "
     "'db.pw', quote it: [hosts.host0.secrets.\"db.pw\"]")])
def test_a_dotted_name_left_unquoted_is_said_so(make_repo, table: str, line: str) -> None:  # type: ignore[no-untyped-def]
    """[secrets.redis.password] reads as a table inside [secrets.redis]: not an unknown
    key of that secret, but a name to quote."""
    repo: Repo = make_repo(hosts=1, secrets={"db": b"pw\n"})
    text = (repo.root / "hosts.toml").read_text().replace('secrets = ["db"]\n', "", 1)
    repo.write_hosts(text + table)
    said = assert_one_clean_error(repo.run("check"), "a table inside")
    assert said.endswith(line), said
    assert "unknown key" not in repo.run("check").stderr.decode()


@pytest.mark.parametrize("table", ['[hosts.host0.templates.app.env]\ncontent = "x"\n',
                                   '[hosts.host0.secrets.db.pw]\nmode = "0400"\n'])
def test_lib_nix_says_a_dotted_name_left_unquoted_as_check_does(make_repo, nix: Nix,  # type: ignore[no-untyped-def]
                                                                 table: str) -> None:
    repo: Repo = make_repo(hosts=1, secrets={"db": b"pw\n"})
    text = (repo.root / "hosts.toml").read_text().replace('secrets = ["db"]\n', "", 1)
    repo.write_hosts(text + table)
    said = assert_one_clean_error(repo.run("check"), "a table inside")
    line = said.split("hosts.toml: ", 1)[1]
    proc = nix.eval_proc(f'(import {NIX}/lib.nix).profileFromHostsToml '
                         f'{{ hostsToml = {repo.root}/hosts.toml; host = "host0"; }}')
    assert proc.returncode != 0 and f"/hosts.toml: {line}\n" in proc.stderr, (line, proc.stderr)


@pytest.mark.parametrize("line", ["mode = 0440", "mode = 0440  # the group reads it",
                                  "  mode=0600"])
def test_an_octal_mode_written_as_a_number_says_to_quote_it(make_repo, line: str) -> None:  # type: ignore[no-untyped-def]
    """TOML has no leading zeros, so mode = 0440 is a syntax error, which said only
    'fix the syntax at that line'."""
    repo: Repo = make_repo(hosts=1, secrets={"db": b"pw\n"})
    text = (repo.root / "hosts.toml").read_text().replace('secrets = ["db"]\n', "", 1)
    repo.write_hosts(text + f"[hosts.host0.secrets.db]\n{line}\n")
    value = line.split("=")[1].split("#")[0].strip()
    said = assert_one_clean_error(repo.run("check"), "not valid TOML")
    assert said.endswith(f'; write the mode as a string: mode = "{value}"'), said


@pytest.mark.parametrize("host", ["host0", "web 1"])
def test_a_table_declared_twice_says_where_the_first_one_is(make_repo, host: str) -> None:  # type: ignore[no-untyped-def]
    """A merge or a paste declares [hosts.X.secrets.db] twice: tomllib names the second
    only (found in review); the hint names the first's line, as TOML writes the table."""
    repo: Repo = make_repo(hosts=1, secrets={"db": b"pw\n"})
    table = f"hosts.{toml_key(host)}.secrets.db"
    text = (repo.root / "hosts.toml").read_text().replace('secrets = ["db"]\n', "", 1)
    text = text.replace("[hosts.host0]", f"[hosts.{toml_key(host)}]")
    first = len(text.splitlines()) + 2
    repo.write_hosts(text + f'\n[{table}]   # ours\nowner = "app"\n\n[{table}]\nmode = "0400"\n')
    said = assert_one_clean_error(repo.run("check"), "not valid TOML", "declared twice")
    assert said.endswith(f"; [{table}] is declared twice, first at line {first}: merge the "
                         "two tables into one"), said


def test_a_header_inside_a_template_s_text_is_not_the_first_declaration(make_repo) -> None:  # type: ignore[no-untyped-def]
    """A template's INI text holds "[hosts.host0.secrets.db]"-like lines: they are text,
    not the first header (found in review)."""
    repo: Repo = make_repo(hosts=1, secrets={"db": b"pw\n"})
    text = (repo.root / "hosts.toml").read_text().replace('secrets = ["db"]\n', "", 1)
    table = "hosts.host0.secrets.db"
    body = (f'[hosts.host0.templates."app.ini"]\ncontent = """\n[{table}]\nx = 1\n"""\n'
            f"[{table}]\n")
    first = len(text.splitlines()) + 6      # (the one in the text is at + 3)
    repo.write_hosts(text + body + f'[{table}]\nmode = "0400"\n')
    said = assert_one_clean_error(repo.run("check"), "not valid TOML", "declared twice")
    assert f"first at line {first}:" in said, (said, first)


@pytest.mark.parametrize(("key", "head", "hint"), [
    ("neededForUsers = true", "", "sops-nix's neededForUsers is early = true here"),
    ("symlink = false", "", "agenix's symlink: a path here is always a symlink (to the file "
                            "in RAM); remove it"),
    # a person's entry has no early: the list, not a fix it would refuse
    ("neededForUsers = true", "user = true\n", "allowed keys: name, mode, path")])
def test_another_tools_key_says_what_it_is_here(make_repo, key: str, head: str,  # type: ignore[no-untyped-def]
                                                hint: str) -> None:
    repo: Repo = make_repo(hosts=1, secrets={"db": b"pw\n"})
    text = (repo.root / "hosts.toml").read_text().replace('secrets = ["db"]\n', "", 1)
    repo.write_hosts(text.replace("[hosts.host0]\n", "[hosts.host0]\n" + head)
                     + f"[hosts.host0.secrets.db]\n{key}\n")
    said = assert_one_clean_error(repo.run("check"), "unknown key")
    assert f"unknown key; {hint}" in said, said
