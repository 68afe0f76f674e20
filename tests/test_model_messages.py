"""hosts.toml's error messages (vaultpy/model.py): each one line that names the file,
the field and a fix that works, says what is actually wrong, in TOML's words, and
echoes no user value at any length.

Parsed in memory with :func:`vaultpy.model.parse` (the demo's public keys: no key is
made here); ``check`` and ``renc`` print exactly these lines.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from vaultpy import model
from vaultpy.errors import VaultpyError

MASTER = "age1lkw9q5tsu7e5rkchdwhqyprkclvg4ege422qmz86pa90rt8jg55qaz6zqc"
WEB1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGqkayYyM7xri8xE+HoH3wJ87FEpSjrvj0VVmRJql5xs"
DB1 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMw6F/cMvNsLiZwOqBF1x0Rc1CnOOKPVif5C4eHIYpA9"
HEAD = f'[vaultpy]\nrecipients = ["{MASTER}"]\n\n[secrets.db]\n[secrets.api]\n\n'


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)     # hosts.toml is named as "hosts.toml"


def problems(text: str, root: Path) -> list[str]:
    """The lines hosts.toml ``text`` is refused with (none: it loads)."""
    try:
        model.parse(text, root / "hosts.toml")
    except VaultpyError as exc:
        lines = [str(p) for p in exc.problems]
        assert all("\n" not in ln for ln in lines)
        return lines
    return []


def one(text: str, root: Path) -> str:
    found = problems(text, root)
    assert len(found) == 1, found
    return found[0]


def host(body: str, name: str = "web1", key: str = WEB1) -> str:
    return f'[hosts.{name}]\npubkey = "{key}"\n{body}\n'


# ------------------------------------------------------------- lists of strings

@pytest.mark.parametrize(("text", "field"), [
    (f'[vaultpy]\nrecipients = ["{MASTER}", 7]\n', "vaultpy.recipients[1]"),
    (HEAD + f'[hosts.db1]\npubkey = ["{DB1}", 7]\n', "hosts.db1.pubkey[1]"),
    (HEAD + host('[hosts.web1.secrets.db]\nrestart_units = ["a.service", 7]'),
     "hosts.web1.secrets.db.restart_units[1]"),
    (HEAD + host('[hosts.web1.secrets.db]\nreload_units = [true]'),
     "hosts.web1.secrets.db.reload_units[0]"),
])
def test_a_list_item_that_is_no_string_is_named_by_its_index(tmp_path: Path, text: str,
                                                             field: str) -> None:
    line = one(text, tmp_path)
    got = "a boolean" if "true" in text else "an integer"
    assert line.startswith(f"hosts.toml: {field}: expected a string, got {got}"), line
    assert "got a list" not in line


def test_list_items_are_said_as_identities_and_secrets_say_them(tmp_path: Path) -> None:
    said = problems(HEAD + host('identities = ["/k", 4]\nsecrets = ["db", 3]'), tmp_path)
    pubkey = one(HEAD + f'[hosts.web1]\npubkey = ["{WEB1}", 4]\n', tmp_path)

    def words(line: str) -> str:        # what follows "hosts.toml: <field>: "
        return line.split(": ", 2)[2]

    assert len(said) == 2 and {words(ln) for ln in said} == {words(pubkey)}, (said, pubkey)


def test_a_list_where_none_may_be_is_still_said_as_a_whole(tmp_path: Path) -> None:
    line = one(HEAD + host('[hosts.web1.secrets.db]\nrestart_units = "a.service"'),
               tmp_path)
    assert ("hosts.web1.secrets.db.restart_units: expected a list of strings, got a string"
            in line), line


@pytest.mark.parametrize("user", [False, True])
def test_empty_identities_say_an_empty_list(tmp_path: Path, user: bool) -> None:
    line = one(HEAD + host("identities = []" + ("\nuser = true" if user else "")), tmp_path)
    assert "hosts.web1.identities: expected a non-empty list of key paths, got an empty " \
        "list; write identities = [" in line, line
    assert "got a list" not in line


# ------------------------------------------------------------- the signing key on a host

SIGNING = f'signing_key = "{WEB1}"\nsigning_secret = "db"\n'
SIGNED_HEAD = HEAD.replace("\n\n", f"\n{SIGNING}\n", 1)
TEMPLATE = '[hosts.web1.templates."app.env"]\ncontent = "URL=pg://app:{{ secrets.db }}@db1"\n'


def test_a_template_using_the_signing_key_is_named_not_the_hosts_secrets(tmp_path: Path
                                                                         ) -> None:
    line = one(SIGNED_HEAD + host("secrets = [\"api\"]\n" + TEMPLATE), tmp_path)
    assert line.startswith('hosts.toml: hosts.web1.templates."app.env".content: line 1 '
                           "column 14: the placeholder for 'db' gives the host the cache "
                           "signing key"), line
    assert line.endswith("; remove every placeholder for 'db' from the template"), line
    assert "hosts.web1.secrets" not in line


def test_a_template_file_using_the_signing_key_is_named_by_its_file(tmp_path: Path) -> None:
    (tmp_path / "app.env.in").write_text("URL=pg://app:{{ secrets.db }}@db1\n")
    line = one(SIGNED_HEAD + host('[hosts.web1.templates."app.env"]\nfile = "app.env.in"'),
               tmp_path)
    assert line.startswith('app.env.in: hosts.web1.templates."app.env".file: line 1 column '
                           "14: the placeholder for 'db'"), line


@pytest.mark.parametrize(("body", "field", "fix"), [
    ('secrets = ["api", "db"]', "hosts.web1.secrets", "remove 'db' from hosts.web1.secrets"),
    ("[hosts.web1.secrets.db]", "hosts.web1.secrets.db",
     "remove the table [hosts.web1.secrets.db]"),
])
def test_the_signing_key_in_a_hosts_secrets_names_the_form_used(
        tmp_path: Path, body: str, field: str, fix: str) -> None:
    line = one(SIGNED_HEAD + host(body), tmp_path)
    assert line.startswith(f"hosts.toml: {field}: "), line
    assert "the cache signing key ([vaultpy] signing_secret): no host may hold it" in line
    assert line.endswith(f"; {fix}"), line


def test_each_place_giving_a_host_the_signing_key_is_named(tmp_path: Path) -> None:
    said = problems(SIGNED_HEAD + host('secrets = ["db"]\n' + TEMPLATE), tmp_path)
    assert [ln.split(": ")[1] for ln in said] == [
        "hosts.web1.secrets", 'hosts.web1.templates."app.env".content'], said


# ------------------------------------------------------------- values of any length

BIG = "a" * 100_000
# hosts.toml texts with one value BIG (or starting or ending with it), each refused
LONG = {
    "owner": HEAD + host(f'[hosts.web1.secrets.db]\nowner = "{BIG}"'),
    "group": HEAD + host(f'[hosts.web1.secrets.db]\ngroup = "{BIG}"'),
    "mode": HEAD + host(f'[hosts.web1.secrets.db]\nmode = "{BIG}"'),
    "path": HEAD + host(f'[hosts.web1.secrets.db]\npath = "/{BIG}"'),
    "path_relative": HEAD + host(f'[hosts.web1.secrets.db]\npath = "{BIG}"'),
    "user_path": HEAD + host(f'user = true\n[hosts.web1.secrets.db]\npath = "~/{BIG}"'),
    "unit": HEAD + host(f'[hosts.web1.secrets.db]\nrestart_units = ["{BIG}/"]'),
    "unknown_key": HEAD + host(f'[hosts.web1.secrets.db]\n{BIG} = 1'),
    "unknown_quoted_key": HEAD + host(f'[hosts.web1.secrets.db]\n"{BIG}." = 1'),
    "nested_table": HEAD + f"[secrets.db.{BIG}]\n",
    "host_name": HEAD + host("", name=BIG),
    "host_name_and_owner": HEAD + host(f'[hosts.{BIG}.secrets.db]\nowner = "{BIG}"',
                                       name=BIG),
    "secret_id": HEAD + f"[secrets.{BIG}]\n",
    "listed_id": HEAD + host(f'secrets = ["{BIG}"]'),
    "template_name": HEAD + host(f'[hosts.web1.templates.{BIG}]\ncontent = ""'),
    "placeholder": HEAD + host('[hosts.web1.templates.t]\ncontent = "{{ secrets.'
                               f'{BIG} }}}}"'),
    "template_file": HEAD + host(f'[hosts.web1.templates.t]\nfile = "{BIG}"'),
    "identities": HEAD + host(f'identities = ["{BIG}"]'),
    "pubkey": HEAD + host("", key=f"ssh-{BIG} AAAA"),
    "recipient": f'[vaultpy]\nrecipients = ["ssh-{BIG} AAAA"]\n',
    "signing_key": HEAD.replace("\n\n", f'\nsigning_key = "x{BIG} A"\nsigning_secret = '
                                '"db"\n\n', 1),
    "signing_secret": HEAD.replace("\n\n", f'\nsigning_key = "{WEB1}"\nsigning_secret = '
                                   f'"{BIG}"\n\n', 1),
    "vault": HEAD + f'[secrets.x]\nvault = "{BIG}"\n',
    "vault_mount": HEAD + f'[secrets.x]\nvault = "-{BIG}/p#f"\n',
    "generate": HEAD + f'[secrets.x]\ngenerate = "{BIG}"\n',
    "generate_size": HEAD + f'[secrets.x]\ngenerate = "hex:{BIG}"\n',
    "secret_file": HEAD + f'[secrets.x]\nfile = "{BIG}\\n"\n',
    "cache_dir": f'[vaultpy]\nrecipients = ["{MASTER}"]\ncache_dir = "{BIG}"\n',
    "vault_addr": HEAD + f'[vaultpy.vault]\naddr = "{BIG}"\n',
    "vault_auth": HEAD + f'[vaultpy.vault]\nauth = "{BIG}"\n',
    "vault_mount_setting": HEAD + f'[vaultpy.vault]\nauth = "approle"\nrole_id = "r"\n'
                                  f'secret_id_file = "s"\napprole_mount = "{BIG}/"\n',
    "duplicate_table": HEAD + f"[secrets.{BIG}]\n[secrets.{BIG}]\n",
}


@pytest.mark.parametrize("case", list(LONG))
def test_no_value_is_echoed_at_length(tmp_path: Path, case: str) -> None:
    said = problems(LONG[case], tmp_path)
    assert said, "loaded"
    for line in said:
        assert len(line) < 800, line[:400] + " … " + line[-400:]
    cut = [ln for ln in said if "…" in ln]
    assert cut, said
    for line in cut:
        # a cut value says its own length (BIG's, with what the case adds to it), never
        # the length of the message it is in
        for n in re.findall(r"\((\d+) characters\)", line):
            assert 100_000 <= int(n) <= 100_010, line


def test_an_unknown_secret_id_says_its_own_length(tmp_path: Path) -> None:
    cfg = model.parse(HEAD, tmp_path / "hosts.toml")
    with pytest.raises(VaultpyError) as caught:
        cfg.secret("b" * 200)
    line = str(caught.value)
    assert "unknown secret id 'bbb" in line and "…' (200 characters)" in line, line
    assert "(220 characters)" not in line and "known: api, db" in line, line


def test_the_known_ids_a_hint_lists_are_cut_with_their_number(tmp_path: Path) -> None:
    text = HEAD + "".join(f"[secrets.s{i:03}]\n" for i in range(300))
    cfg = model.parse(text, tmp_path / "hosts.toml")
    with pytest.raises(VaultpyError) as caught:
        cfg.secret("no/such")
    line = str(caught.value)
    assert line.endswith(", … (302 in all)") and len(line) < 400, line


# ------------------------------------------------------------- what is wrong, said

@pytest.mark.parametrize(("body", "field"), [
    ('[hosts.web1.secrets.db]\npath = "/"', "hosts.web1.secrets.db.path"),
    ('[hosts.web1.templates.t]\ncontent = ""\npath = "/"', "hosts.web1.templates.t.path"),
    ('identities = ["/"]', "hosts.web1.identities[0]"),
])
def test_the_root_directory_as_a_path_is_said_to_be_it(tmp_path: Path, body: str,
                                                       field: str) -> None:
    line = one(HEAD + host(body), tmp_path)
    assert line.startswith(f"hosts.toml: {field}: invalid path '/': it is the root "
                           "directory itself, not a path below it; "), line
    assert "not an absolute, normalised" not in line


@pytest.mark.parametrize("path", ["etc/app", "/etc/../app", "/etc/app/", "//etc/app"])
def test_other_paths_are_still_not_absolute_and_normalised(tmp_path: Path, path: str
                                                           ) -> None:
    line = one(HEAD + host(f'[hosts.web1.secrets.db]\npath = "{path}"'), tmp_path)
    assert f"invalid path {path!r}: not an absolute, normalised path" in line, line


# ------------------------------------------------------------- a key set twice

TWICE = HEAD + host('[hosts.web1.secrets.db]\nowner = "app"\nmode = "0440"\nowner = "x"')


@pytest.mark.parametrize(("text", "field", "fix"), [
    (HEAD + f'[hosts.db1]\npubkey = "{DB1}"\npubkey = "{WEB1}"\n', "hosts.db1.pubkey",
     "it is set twice (again at line 9): remove one of them"),
    (TWICE, "hosts.web1.secrets.db.owner", "it is set twice (again at line 12)"),
    (TWICE.replace("\n", "\r\n"), "hosts.web1.secrets.db.owner", "(again at line 12)"),
    # a value that spans lines: its first line is named, and no line inside it
    (HEAD + host('[hosts.web1.templates.t]\ncontent = "a"\ncontent = """\nb = 1\n[x]\n"""'),
     "hosts.web1.templates.t.content", "(again at line 11)"),
    (HEAD + host('[hosts.web1.secrets.db]\nrestart_units = [\n "a",\n]\n'
                 'restart_units = [\n "b",\n]'),
     "hosts.web1.secrets.db.restart_units", "(again at line 13)"),
    (HEAD + '[hosts."web.1"]\n"pubkey" = "x"\n\'pubkey\' = "y"',
     'hosts."web.1".pubkey', "(again at line 9)"),
    (HEAD + host('[hosts.web1.secrets.db]\nowner = "app"\nowner.x = 1'),
     "hosts.web1.secrets.db.owner.x", "hosts.web1.secrets.db.owner is a string already, "
     "not a table (line 11 sets a key inside it): remove or rename one of them"),
    (HEAD + host('[hosts.web1.pubkey]'), "hosts.web1.pubkey", "hosts.web1.pubkey is a "
     "string already, not a table (line 9 declares [hosts.web1.pubkey])"),
    (HEAD + host('[hosts.web1.secrets.db]\nowner = "app"\n[[hosts.web1.secrets.db.owner]]'),
     "hosts.web1.secrets.db.owner", "hosts.web1.secrets.db.owner is a string already, not "
     "a table (line 11 declares [[hosts.web1.secrets.db.owner]])"),
    ('[[x]]\na = 1\n[[x]]\na = 1\na = 2', "x[1].a", "(again at line 5)"),
])
def test_a_key_set_twice_is_named(tmp_path: Path, text: str, field: str, fix: str) -> None:
    line = one(text, tmp_path)
    assert line.startswith(f"hosts.toml: {field}: not valid TOML: Cannot overwrite a value "
                           "(at "), line
    assert fix in line.split("; ", 1)[1], line


def test_a_key_set_twice_in_an_inline_table_is_still_said_by_tomllib(tmp_path: Path
                                                                     ) -> None:
    line = one(HEAD + host('x = {a = 1, a.b = 2}'), tmp_path)
    assert line == ("hosts.toml: not valid TOML: Cannot overwrite a value (at line 9, column "
                    "20); fix the syntax at that line"), line


# ------------------------------------------------------------- TOML's words, not Python's

@pytest.mark.parametrize(("key", "value", "said"), [
    ("mode", "true", "expected an octal string or an integer, got a boolean"),
    ("mode", "[1]", "expected an octal string or an integer, got a list"),
    ("mode", "4.5", "expected an octal string or an integer, got a float"),
    ("owner", "[]", "expected a user or group name or a numeric id, got a list"),
    ("group", "{a = 1}", "expected a user or group name or a numeric id, got a table"),
    ("owner", "false", "expected a user or group name or a numeric id, got a boolean"),
])
def test_a_wrong_type_is_said_in_tomls_words(tmp_path: Path, key: str, value: str,
                                             said: str) -> None:
    line = one(HEAD + host(f"[hosts.web1.secrets.db]\n{key} = {value}"), tmp_path)
    assert line.startswith(f"hosts.toml: hosts.web1.secrets.db.{key}: {said}; "), line
    for python in ("True", "False", "[1]", "4.5", "[]", "{'a': 1}"):
        assert python not in line.split("; ")[0], line


@pytest.mark.parametrize(("setting", "said"), [
    ("signing_key = 5\nsigning_secret = \"db\"", "vaultpy.signing_key: expected a string, "
     "got an integer"),
    (f'signing_key = "{WEB1}"\nsigning_secret = ["db"]', "vaultpy.signing_secret: "
     "expected a secret id, got a list"),
])
def test_signing_settings_of_a_wrong_type_are_said_in_tomls_words(
        tmp_path: Path, setting: str, said: str) -> None:
    line = one(HEAD.replace("\n\n", f"\n{setting}\n\n", 1), tmp_path)
    assert f"hosts.toml: {said};" in line, line


@pytest.mark.parametrize(("value", "got"), [("true", "a boolean"), ('"30"', "a string"),
                                            ("1.5", "a float"), ("0", "0")])
def test_rotate_days_of_a_wrong_type_is_said_in_tomls_words(tmp_path: Path, value: str,
                                                            got: str) -> None:
    line = one(HEAD + f"[secrets.x]\nrotate_days = {value}\n", tmp_path)
    assert f"secrets.x.rotate_days: expected a number of days, got {got};" in line, line
