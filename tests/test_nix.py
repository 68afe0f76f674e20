"""The Nix side (nix/lib.nix, nix/module.nix, flake.nix) against the Python side.

Everything runs the real Debian ``nix-instantiate`` (``--readonly-mode``, a private
``NIX_STATE_DIR``: no daemon, no store writes) and, for the module and the flake, the
real ``lib.evalModules`` of the nixpkgs lib copy found through ``NIXPKGS_LIB``
(default ``../shared/nixpkgs-lib/lib``).  Without either, the tests skip; with ``CI``
set they fail instead, because CI must run them.

Evaluations are batched (one ``nix-instantiate`` per fixture, not per pair) to keep
the file fast.  Python results come from the real CLI (``vaultpy profile``, ``renc``)
and from ``vaultpy.cache`` / ``vaultpy.templates``; the cache name is also recomputed
here from DESIGN §3 independently of both.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Nix, Repo, age_keygen, need, ssh_keygen, toml_str
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vaultpy import cache as vcache
from vaultpy import model as vmodel
from vaultpy import profile as vprofile
from vaultpy import templates as vtemplates
from vaultpy.age import normalize_recipient
from vaultpy.errors import VaultpyError

LIB_NIX = ROOT / "nix" / "lib.nix"
EVAL_MODULE = ROOT / "tests" / "nix" / "eval-module.nix"
FAKE_PACKAGE = "/nix/store/11111111111111111111111111111111-vaultpy"
FAKE_SYSTEMD = "/nix/store/00000000000000000000000000000000-systemd"
STORE_RE = re.compile(r"/nix/store/([0-9a-df-np-sv-z]{32})-([^/]+)")


# --------------------------------------------------------------------------- Nix values

class Raw(str):
    """A Nix expression inserted as is."""


def nix_str(s: str) -> str:
    out = s.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${")
    return '"' + out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t") + '"'


def nix_value(v: Any) -> str:
    """A Python value as a Nix expression (Path -> a path literal, Raw -> as is)."""
    if isinstance(v, Raw):
        return str(v)
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return f"({v})"
    if isinstance(v, Path):
        return f"(/. + {nix_str(str(v.absolute()))})"
    if isinstance(v, str):
        return nix_str(v)
    if isinstance(v, list | tuple):
        return "[ " + " ".join(f"({nix_value(x)})" for x in v) + " ]"
    if isinstance(v, Mapping):
        return "{ " + "".join(f"{nix_str(k)} = {nix_value(x)}; " for k, x in v.items()) + "}"
    raise TypeError(v)


def write_module(path: Path, config: Mapping[str, Any]) -> Path:
    path.write_text(nix_value(config) + "\n")
    return path


def eval_modules(nix: Nix, configs: Mapping[str, Path]) -> dict[str, Any]:
    """Every output of tests/nix/eval-module.nix, for several configs in one call."""
    expr = (f"let em = import {nix_value(EVAL_MODULE)}; in "
            f"builtins.mapAttrs (_: c: em {{ config = c; }}) {nix_value(configs)}")
    result: dict[str, Any] = nix.eval(expr)
    return result


# --------------------------------------------------------------------------- store paths

_NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"


def _nix32(data: bytes) -> str:
    chars = []
    for n in range((len(data) * 8 - 1) // 5, -1, -1):
        i, j = divmod(n * 5, 8)
        c = data[i] >> j
        if i + 1 < len(data):
            c |= data[i + 1] << (8 - j)
        chars.append(_NIX32[c & 0x1F])
    return "".join(chars)


def _store_path(kind: str, inner_sha256: str, name: str) -> str:
    digest = hashlib.sha256(f"{kind}:sha256:{inner_sha256}:/nix/store:{name}".encode()).digest()
    folded = bytearray(20)
    for i, b in enumerate(digest):
        folded[i % 20] ^= b
    return f"/nix/store/{_nix32(bytes(folded))}-{name}"


def store_path_of_file(path: Path) -> str:
    """Where ``"${path}"`` copies a regular file (NAR hash, "source" path)."""
    def s(b: bytes) -> bytes:
        return len(b).to_bytes(8, "little") + b + b"\0" * (-len(b) % 8)
    parts = [b"nix-archive-1", b"(", b"type", b"regular"]
    if os.access(path, os.X_OK):
        parts += [b"executable", b""]
    parts += [b"contents", path.read_bytes(), b")"]
    nar = b"".join(map(s, parts))
    return _store_path("source", hashlib.sha256(nar).hexdigest(), path.name)


def store_path_of_text(name: str, text: str, references: Iterable[str]) -> str:
    """Where ``builtins.toFile name text`` puts ``text``."""
    kind = "text" + "".join(f":{r}" for r in sorted(set(references)))
    return _store_path(kind, hashlib.sha256(text.encode()).hexdigest(), name)


# --------------------------------------------------------------------------- Python side

def independent_cache_name(sid: str, master: Path, recipients: str | list[str]) -> str:
    """DESIGN §3, written again from the text (not vaultpy.cache)."""
    keys = [recipients] if isinstance(recipients, str) else recipients
    norm = [k.split()[0] if k.strip().startswith("age1") else " ".join(k.split()[:2])
            for k in keys]
    inner = hashlib.sha256(master.read_bytes()).hexdigest()
    h = hashlib.sha256((inner + "\n" + "\n".join(norm)).encode()).hexdigest()
    return f"{sid}.{h[:32]}.age"


def cli_profiles(root: Path, hosts: Iterable[str]) -> dict[str, str]:
    """``vaultpy profile --host H`` stdout for each host (run in parallel)."""
    repo = Repo(root, root / "unused-identity", "")

    def one(host: str) -> str:
        proc = repo.ok("-C", str(root), "profile", "--host", host)
        return proc.stdout.decode()
    hosts = list(hosts)
    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip(hosts, pool.map(one, hosts), strict=True))


def normalise_files(profile: dict[str, Any], *, store: bool) -> dict[str, Any]:
    """The profile with each secret's ``file`` reduced to its name: the Nix store
    prefix ``/nix/store/<hash>-`` (``store``) or the directory (the CLI's paths)."""
    out: dict[str, Any] = json.loads(json.dumps(profile))
    for s in out["secrets"]:
        if store:
            m = STORE_RE.fullmatch(s["file"])
            assert m, f"not a store path: {s['file']}"
            s["file"] = m.group(2)
        else:
            s["file"] = Path(s["file"]).name
    return out


# --------------------------------------------------------------------------- fixtures

@dataclass
class Rich:
    """A generated operator repository exercising every hosts.toml feature."""

    root: Path
    repo: Repo
    doc: dict[str, Any]
    pub: dict[str, str]          # raw pubkey values, as written
    masters: dict[str, Path]

    @property
    def cache(self) -> Path:
        return self.root / "vault" / "out"

    @property
    def hosts(self) -> list[str]:
        return sorted(self.doc["hosts"])


RICH_TOML = """\
[vaultpy]
recipients = [{age_master}, {ssh_master}]
secrets_dir = "vault/masters"
cache_dir = "./vault/../vault/out"

[secrets.db_password]
[secrets.api-token]
[secrets."tls.key"]
file = "other/tls.age"
[secrets.only_tmpl]
[secrets.user_hash]
[secrets.unused]

[hosts.web1]
pubkey = {web1}

[hosts.web1.secrets.db_password]
owner = 1000
group = 1000
mode = 0o440
restart_units = ["app.service", "worker@1.service"]

[hosts.web1.secrets."tls.key"]
name = "server.key"
owner = "nginx"
mode = "440"
path = "/etc/nginx/tls/server.key"
reload_units = ["nginx.service"]

[hosts.web1.secrets.user_hash]
early = true
name = "alice.hash"

[hosts.web1.templates."app.env"]
content = \"\"\"
DB={{{{ secrets.db_password }}}}
ONLY={{{{secrets.only_tmpl}}}}
TLS={{{{  secrets.tls.key  }}}}
LITERAL={{{{{{{{ not a placeholder }}}}
OTHER={{{{ .Values.x }}}} "quoted" \\\\ back é ✓\ttab
\"\"\"
trim = true
owner = "app"
group = "app"
mode = 0o440
path = "/etc/app/app.env"
restart_units = ["app.service"]
reload_units = ["app-reload.service"]

[hosts.web1.templates.motd]
content = 'hello {{{{ secrets.api-token }}}} and {{{{ secrets.api-token }}}}'
early = true
mode = "0444"

[hosts.db1]
pubkey = {db1}
secrets = ["db_password", "api-token"]
[hosts.db1.templates."pg.conf"]
file = "templates/pg.conf"
mode = "0440"

[hosts.mail1]
pubkey = {mail1}
[hosts.mail1.secrets.api-token]
[hosts.mail1.templates.creds]
content = "{{{{ secrets.only_tmpl }}}}"

[hosts.edge1]
pubkey = {edge1}
identities = ["/var/lib/vaultpy/edge1.key"]
secrets = ["db_password", "user_hash"]

[hosts.multi]
pubkey = [{multi_ssh}, {multi_age}]
[hosts.multi.templates."x.conf"]
content = "{{{{ secrets.db_password }}}}:{{{{ secrets.api-token }}}}"
"""


# db1's template, from its own file: a secret only it uses reaches db1 through it.
PG_CONF = "password = '{{ secrets.only_tmpl }}'\n# é ✓\tand {{{{ kept\n"


@pytest.fixture(scope="session")
def rich(tmp_path_factory: pytest.TempPathFactory) -> Rich:
    """>= 3 hosts; pubkeys with and without comments, with extra spaces and a tab, an
    age1 host, a host with two keys; master recipients age1 + ssh-ed25519; custom
    secrets_dir/cache_dir, a ``file`` override, templates, early items; after renc."""
    root = tmp_path_factory.mktemp("rich")
    keys = root / "keys"
    keys.mkdir()
    identity, age_master = age_keygen(keys, "master.txt")
    _, ssh_master = ssh_keygen(keys, "master_ssh", comment="backup@laptop")
    _, web1 = ssh_keygen(keys, "web1", comment="root@web1")
    _, db1 = ssh_keygen(keys, "db1")                      # no comment
    assert len(db1.split()) == 2
    _, mail1 = ssh_keygen(keys, "mail1", comment="root@mail1")
    mail1 = "  " + mail1.replace(" ", " \t  ", 1).replace(" root@", "   root@") + "   extra  "
    _, edge1 = age_keygen(keys, "edge1.txt")
    _, multi_ssh = ssh_keygen(keys, "multi", comment="root@multi")
    _, multi_age = age_keygen(keys, "multi.txt")
    pub: dict[str, Any] = {"web1": web1, "db1": db1, "mail1": mail1, "edge1": edge1,
                           "multi": [multi_ssh, multi_age]}
    text = RICH_TOML.format(
        age_master=toml_str(age_master), ssh_master=toml_str(ssh_master),
        **{k: toml_str(v) for k, v in pub.items() if isinstance(v, str)},
        multi_ssh=toml_str(multi_ssh), multi_age=toml_str(multi_age))
    (root / "hosts.toml").write_text(text)
    (root / "templates").mkdir()
    (root / "templates" / "pg.conf").write_text(PG_CONF)
    doc = tomllib.loads(text)
    assert doc["hosts"]["mail1"]["pubkey"] == mail1 and "\t" in mail1
    # Master files: the real age CLI, to both master recipients.
    rfile = keys / "master-recipients.txt"
    rfile.write_text(f"{age_master}\n{ssh_master}\n")
    masters = {sid: root / "vault" / "masters" / f"{sid}.age" for sid in doc["secrets"]}
    masters["tls.key"] = root / "other" / "tls.age"
    for sid, path in masters.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([need("age"), "-R", str(rfile), "-o", str(path)],
                       input=f"{sid}-plaintext\n".encode(), check=True, capture_output=True)
    repo = Repo(root, identity, age_master, env={"VAULTPY_IDENTITY": str(identity)})
    repo.ok("renc")
    return Rich(root, repo, doc, pub, masters)


@pytest.fixture(scope="session")
def demo_doc() -> dict[str, Any]:
    return tomllib.loads((ROOT / "hosts.toml").read_text())


# =========================================================================== 1. parsing

NIX_FILES = sorted({ROOT / "flake.nix", *ROOT.glob("nix/*.nix"), *ROOT.glob("tests/nix/*.nix"),
                    *(p for p in ROOT.rglob("*.nix")
                      if not any(part.startswith(".") for part in p.relative_to(ROOT).parts))})


def test_the_glob_finds_the_nix_files() -> None:
    names = {str(p.relative_to(ROOT)) for p in NIX_FILES}
    assert {"flake.nix", "nix/lib.nix", "nix/module.nix", "nix/package.nix",
            "tests/nix/eval-module.nix", "tests/nix/nixos-stubs.nix"} <= names, names


@pytest.mark.parametrize("path", NIX_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_nix_file_parses(nix: Nix, path: Path) -> None:
    proc = nix.run("--parse", path)
    assert proc.returncode == 0, proc.stderr


def test_parse_check_rejects_a_broken_file(nix: Nix, tmp_path: Path) -> None:
    bad = tmp_path / "bad.nix"
    bad.write_text("{ a = 1; b = ; }\n")
    proc = nix.run("--parse", bad)
    assert proc.returncode != 0 and "syntax error" in proc.stderr


# =========================================================================== 2. cacheName

def _cache_name_parity(nix: Nix, hosts_toml: Path, doc: dict[str, Any], tmp_path: Path
                       ) -> dict[tuple[str, str], str]:
    """Nix's cacheName for every (host, needed secret), compared with vaultpy.cache and
    the independent recomputation; returns {(host, id): name}."""
    cfg = vmodel.load(hosts_toml)
    pairs = [{"host": h, "id": sid, "file": str(cfg.secrets[sid].file),
              "recipients": doc["hosts"][h]["pubkey"]}
             for h in sorted(cfg.hosts) for sid in cfg.hosts[h].needed]
    data = tmp_path / "pairs.json"
    data.write_text(json.dumps(pairs))
    names = nix.eval(
        f"let l = import {nix_value(LIB_NIX)}; in map (p: l.cacheName "
        f"{{ inherit (p) id recipients; secretFile = p.file; }}) "
        f"(builtins.fromJSON (builtins.readFile {nix_value(data)}))")
    assert len(names) == len(pairs) > 0
    out = {}
    for p, name in zip(pairs, names, strict=True):
        master = Path(p["file"])
        raw = p["recipients"]
        python = vcache.cache_name(
            p["id"], hashlib.sha256(master.read_bytes()).hexdigest(),
            [normalize_recipient(k) for k in ([raw] if isinstance(raw, str) else raw)])
        assert name == python == independent_cache_name(p["id"], master, raw), p
        out[(p["host"], p["id"])] = name
    return out


def _on_disk(cache_dir: Path) -> set[tuple[str, str]]:
    return {(p.parent.name, p.name) for p in cache_dir.glob("*/*.age")}


def test_cache_name_parity_demo(nix: Nix, demo_doc: dict[str, Any], tmp_path: Path) -> None:
    names = _cache_name_parity(nix, ROOT / "hosts.toml", demo_doc, tmp_path)
    assert {h for h, _ in names} == {"web1", "db1", "mail1"}
    # The committed renc output carries exactly these names.
    assert {(h, n) for (h, _), n in names.items()} == _on_disk(ROOT / "secrets" / "cache")


def test_cache_name_parity_generated(nix: Nix, rich: Rich, tmp_path: Path) -> None:
    names = _cache_name_parity(nix, rich.root / "hosts.toml", rich.doc, tmp_path)
    assert {h for h, _ in names} == set(rich.hosts) and len(rich.hosts) >= 5
    # renc wrote exactly the files Nix names: no more, no less.
    assert {(h, n) for (h, _), n in names.items()} == _on_disk(rich.cache)
    # A comment, spaces or a tab in the key line do not change a name; a key does.
    assert names[("web1", "db_password")] != names[("db1", "db_password")]


def test_cache_name_ignores_comments_and_whitespace(nix: Nix, rich: Rich) -> None:
    bare = " ".join(rich.pub["web1"].split()[:2])
    variants = [rich.pub["web1"], bare, f"  {bare}\t  some comment  ", [bare]]
    master = rich.masters["db_password"]
    names = nix.eval(
        f"let l = import {nix_value(LIB_NIX)}; in map (r: l.cacheName {{ id = \"x\"; "
        f"secretFile = {nix_value(master)}; recipients = r; }}) {nix_value(variants)}")
    assert set(names) == {independent_cache_name("x", master, bare)}


# =========================================================================== 3. profiles

def _profile_parity(nix: Nix, root: Path, hosts: list[str]) -> None:
    nix_json = nix.eval(
        f"let l = import {nix_value(LIB_NIX)}; in builtins.listToAttrs (map (h: {{ name = h; "
        f"value = builtins.toJSON (l.profileFromHostsToml {{ hostsToml = "
        f"{nix_value(root / 'hosts.toml')}; host = h; }}); }}) {nix_value(hosts)})")
    cli = cli_profiles(root, hosts)
    for host in hosts:
        assert cli[host].endswith("\n") and not cli[host].endswith("\n\n")
        assert json.loads(nix_json[host]) == json.loads(cli[host]), host
        assert nix_json[host] == cli[host][:-1], host         # byte for byte


def test_profile_parity_demo(nix: Nix, demo_doc: dict[str, Any]) -> None:
    _profile_parity(nix, ROOT, sorted(demo_doc["hosts"]))


def test_profile_parity_generated(nix: Nix, rich: Rich) -> None:
    _profile_parity(nix, rich.root, rich.hosts)


def test_generated_profile_covers_the_features(rich: Rich) -> None:
    """Guards the fixture: the parity above is only as good as what it contains."""
    web1 = json.loads(cli_profiles(rich.root, ["web1"])["web1"])
    s = {x["id"]: x for x in web1["secrets"]}
    assert set(s) == {"db_password", "tls.key", "user_hash", "only_tmpl", "api-token"}
    assert s["db_password"]["owner"] == "1000" and s["db_password"]["mode"] == "0440"
    assert s["tls.key"]["mode"] == "0440" and s["tls.key"]["name"] == "server.key"
    assert s["tls.key"]["path"] == "/etc/nginx/tls/server.key"
    assert s["tls.key"]["reload_units"] == ["nginx.service"]
    assert s["user_hash"]["early"] is True
    assert s["only_tmpl"]["install"] is False and s["api-token"]["install"] is False
    assert Path(s["tls.key"]["file"]).parent == rich.cache / "web1"
    t = {x["name"]: x for x in web1["templates"]}
    assert t["app.env"]["trim"] is True and t["app.env"]["mode"] == "0440"
    assert t["app.env"]["owner"] == "app" and t["motd"]["early"] is True
    assert "é ✓\ttab" in t["app.env"]["content"] and '"quoted" \\ back' in t["app.env"]["content"]
    db1 = json.loads(cli_profiles(rich.root, ["db1"])["db1"])
    t = {x["name"]: x for x in db1["templates"]}
    assert t["pg.conf"]["content"] == PG_CONF and t["pg.conf"]["mode"] == "0440"
    assert {x["id"]: x["install"] for x in db1["secrets"]}["only_tmpl"] is False


def toml_basic(text: str) -> str:
    """A TOML basic string; every control character escaped (TOML forbids them raw)."""
    def esc(c: str) -> str:
        if c in '"\\':
            return "\\" + c
        return f"\\u{ord(c):04X}" if ord(c) < 0x20 or ord(c) == 0x7F else c
    return '"' + "".join(map(esc, text)) + '"'


def test_profile_json_escaping_matches(nix: Nix, tmp_path: Path) -> None:
    """Control characters, quotes, backslashes and non-ASCII text in a template."""
    root = tmp_path / "esc"
    (root / "secrets").mkdir(parents=True)
    (root / "secrets" / "a.age").write_bytes(b"not really age, only hashed")
    _, pub = ssh_keygen(tmp_path, "k", comment="c")
    content = 'q" b\\ \\n t\t r\r nl\n c\u0001 \u001f del\u007f é 𝄞 \u2028 bell\u0007 bs\b ff\f'
    master = "age1lkw9q5tsu7e5rkchdwhqyprkclvg4ege422qmz86pa90rt8jg55qaz6zqc"   # the demo's
    (root / "hosts.toml").write_text(
        f'[vaultpy]\nrecipients = ["{master}"]\n'
        "[secrets.a]\n[hosts.h]\npubkey = " + toml_str(pub) + "\n"
        "[hosts.h.templates.t]\ncontent = " + toml_basic(content) + "\n"
        'trim = false\n[hosts.h.secrets.a]\n')
    got = nix.eval(f"builtins.toJSON ((import {nix_value(LIB_NIX)}).profileFromHostsToml "
                   f"{{ hostsToml = {nix_value(root / 'hosts.toml')}; host = \"h\"; }})")
    cli = cli_profiles(root, ["h"])["h"][:-1]
    assert json.loads(got) == json.loads(cli)
    assert json.loads(got)["templates"][0]["content"] == content
    # Nix < 2.13 (Debian's 2.8) writes \b and \f as \u0008 and \u000c; later Nix (nlohmann
    # json) and Python write \b and \f.  Every other byte must be identical.
    old_style = got.replace("\\u0008", "\\b").replace("\\u000c", "\\f")
    assert old_style == cli


def test_lib_profile_from_hosts_toml_refuses_what_vaultpy_check_refuses(nix: Nix,
                                                                        tmp_path: Path) -> None:
    """lib.profileFromHostsToml (a flake output) passed a typo over ("mdoe": the mode
    became 0400), and an unknown host or a missing master was a bare Nix error.  Each
    is now one line naming the file, the field and the fix, as the module's hostsToml."""
    root = tmp_path / "v"
    (root / "secrets").mkdir(parents=True)
    (root / "secrets" / "a.age").write_bytes(b"only hashed")
    _, pub = ssh_keygen(tmp_path, "k", comment="c")
    master = "age1lkw9q5tsu7e5rkchdwhqyprkclvg4ege422qmz86pa90rt8jg55qaz6zqc"
    head = f'[vaultpy]\nrecipients = ["{master}"]\n[secrets.a]\n[secrets.b]\n'
    hosts = root / "hosts.toml"
    cases = [
        ("[hosts.h]\npubkey = " + toml_str(pub) + '\n[hosts.h.secrets.a]\nmdoe = "0440"\n',
         "h", "hosts.h.secrets.a.mdoe: unknown key; did you mean 'mode'?"),
        ("[hosts.h]\npubkey = " + toml_str(pub) + '\n[hosts.h.secrets.a]\nzzz = "0440"\n',
         "h", "hosts.h.secrets.a.zzz: unknown key; allowed keys: name, owner, group, mode, "
         "path, restart_units, reload_units, early"),
        # a person's entry: not pointed at the owner it would then refuse
        ("[hosts.h]\nuser = true\npubkey = " + toml_str(pub) + '\n[hosts.h.secrets.a]\n'
         'ownr = "me"\n', "h", "hosts.h.secrets.a.ownr: unknown key; allowed keys: name, "
         "mode, path, restart_units, reload_units"),
        ("[hosts.h]\npubkey = " + toml_str(pub) + "\n[hosts.h.templates.t]\n"
         'content = "x"\ntirm = true\n', "h", "hosts.h.templates.t.tirm: unknown key"),
        ("[hosts.h]\npubkey = " + toml_str(pub) + '\nsecrets = ["a"]\n', "nohost",
         "hosts: no host nohost; known hosts: h"),
        ('[hosts.h]\nsecrets = ["a"]\n', "h", "hosts.h.pubkey: missing"),
        ("[hosts.h]\npubkey = " + toml_str(pub) + '\nsecrets = ["b"]\n', "h",
         "hosts.h.secrets: secret b has no master file"),
        # (a bare Nix error: attribute 'z.z' missing)
        ("[hosts.h]\npubkey = " + toml_str(pub) + '\nsecrets = ["z.z"]\n', "h",
         "hosts.h.secrets: unknown secret id 'z.z'; declare [secrets.\"z.z\"] in hosts.toml"),
        # a placeholder's typo: said at the template, with the closest id
        ("[hosts.h]\npubkey = " + toml_str(pub) + '\n[hosts.h.templates."app.env"]\n'
         'content = "X={{ secrets.bb }}"\n', "h", "hosts.h.templates.\"app.env\".content: "
         "unknown secret id 'bb' in placeholder; did you mean 'b'?"),
        ("[hosts.h]\npubkey = " + toml_str(pub) + "\n[hosts.h.templates.t]\n"
         'file = "secrets/a.age"\ncontent = "x"\n', "h",
         "hosts.h.templates.t.file: a template has content or a file, not both"),
        ("[hosts.h]\npubkey = " + toml_str(pub) + "\n[hosts.h.templates.t]\ntrim = true\n",
         "h", "hosts.h.templates.t.content: missing: give the template's text (content = "),
        # What the NixOS review found passed (or failed as a bare Nix error): one line.
        *(("[hosts.h]\npubkey = " + toml_str(pub) + "\n" + body, "h", expected)
          for body, expected in (
              ('[hosts.h.secrets.a]\nmode = "0o440"\n',
               'hosts.h.secrets.a.mode: invalid mode "0o440"; use an octal string'),
              ('[hosts.h.secrets.a]\nmode = "00440"\n',
               'hosts.h.secrets.a.mode: invalid mode "00440"'),
              ('[hosts.h.secrets.a]\nmode = "40"\n', 'hosts.h.secrets.a.mode: invalid mode "40"'),
              ("[hosts.h.secrets.a]\nmode = true\n", "hosts.h.secrets.a.mode: invalid mode true"),
              ("[hosts.h.secrets.a]\nowner = true\n", "hosts.h.secrets.a.owner: expected a "
               "user or group name or a numeric id, got true"),
              ('[hosts.h.templates.t]\ncontent = "x"\ngroup = ""\n',
               "hosts.h.templates.t.group: expected a user or group name"),
              ('secrets = "a"\n', "hosts.h.secrets: expected a list of ids or a table, got "
               "string"),
              ('secrets = ["a", "a"]\n', "hosts.h.secrets: secret a is listed twice"),
              ('templates = "x"\n', "hosts.h.templates: expected a table, got string"),
              ('[hosts.h.template.t]\ncontent = "x"\n', "hosts.h.template: unknown key; "
               "did you mean 'templates'?"),
              ('identites = ["/k"]\n', "hosts.h.identites: unknown key"),
              # a host's item path, as `vaultpy check` refuses it (lib wrote it out)
              ('[hosts.h.secrets.a]\npath = "rel/x"\n', 'hosts.h.secrets.a.path: invalid '
               'path "rel/x"'),
              ('[hosts.h.secrets.a]\npath = "/run/vaultpy/x"\n', 'hosts.h.secrets.a.path: '
               'path "/run/vaultpy/x" overlaps "/run/vaultpy"'))),
        # as `vaultpy profile` refuses it (it would not boot)
        ('[hosts.h]\npubkey = "age1lkw9q5tsu7e5rkchdwhqyprkclvg4ege422qmz86pa90rt8jg55qaz6zqc"'
         '\nsecrets = ["a"]\n', "h", "hosts.h.identities: the host's key is an age1… key, "
         "and no identities say where its identity file is"),
        # A template's file: each mistake one line, as vaultpy check says it (a review:
        # bare Nix errors, and a FIFO hung the evaluation).
        *(("[hosts.h]\npubkey = " + toml_str(pub) + "\n[hosts.h.templates.t]\n"
           f"file = {value}\n", "h", f"hosts.h.templates.t.file: {expected}")
          for value, expected in (
              ('"templates/nope.conf"', f"cannot read the template {root}/templates/nope.conf"
               ": no such file; check the path: a relative one is read from hosts.toml's "
               "directory"),
              ('"nowhere/nope.conf"', f"cannot read the template {root}/nowhere/nope.conf: "
               "no such file"),
              ('"templates"', f"cannot read the template {root}/templates: it is a "
               "directory"),
              ('"templates/fifo"', f"cannot read the template {root}/templates/fifo: not a "
               "regular file"),
              ('"templates/fifolink"', f"cannot read the template {root}/templates/fifolink:"
               " a symbolic link, not a file"),
              ('"hosts.toml"', f"{root}/hosts.toml is hosts.toml itself"),
              ('""', "an empty path"),
              ("3", "expected a string, got int"))),
    ]
    (root / "templates").mkdir()
    os.mkfifo(root / "templates" / "fifo")
    (root / "templates" / "fifolink").symlink_to("fifo")
    for body, host, expected in cases:
        hosts.write_text(head + body)
        proc = nix.eval_proc(f"builtins.toJSON ((import {nix_value(LIB_NIX)})"
                             f".profileFromHostsToml {{ hostsToml = {nix_value(hosts)}; "
                             f'host = "{host}"; }})')
        assert proc.returncode != 0, body
        assert f"vaultpy: {hosts}: {expected}" in proc.stderr, (body, proc.stderr)


def test_an_unknown_key_is_said_by_nix_as_by_vaultpy_check(nix: Nix, tmp_path: Path) -> None:
    """The same line from lib.profileFromHostsToml and from hosts.toml's loader: the
    field, quoted where TOML quotes it, and the closest key (difflib's) or the list."""
    root = tmp_path / "v"
    (root / "secrets").mkdir(parents=True)
    (root / "secrets" / "a.age").write_bytes(b"only hashed")
    _, pub = ssh_keygen(tmp_path, "k", comment="c")
    head = ('[vaultpy]\nrecipients = ["age1lkw9q5tsu7e5rkchdwhqyprkclvg4ege422qmz86pa90rt8jg55'
            'qaz6zqc"]\n[secrets.a]\n[hosts.h]\npubkey = ' + toml_str(pub) + "\n")
    hosts = root / "hosts.toml"
    for body in ('[hosts.h.secrets.a]\nmdoe = "0440"\n', '[hosts.h.secrets.a]\nzzz = 1\n',
                 '[hosts.h.templates."app.env"]\ncontent = "x"\ntirm = true\n',
                 '[hosts.h.templates."app.env"]\ncontent = "x"\n"re.load_units" = []\n',
                 'identites = ["/k"]\n', '[hosts.h.template.t]\ncontent = "x"\n',
                 'user = true\n[hosts.h.secrets.a]\nownr = "me"\n',
                 'user = true\n[hosts.h.secrets.a]\nerly = true\n',
                 # other tools' keys, as a migrated table keeps them
                 '[hosts.h.secrets.a]\nneededForUsers = true\n',
                 '[hosts.h.secrets.a]\nsymlink = false\n',
                 'user = true\n[hosts.h.secrets.a]\nneededForUsers = true\n'):
        hosts.write_text(head + body)
        with pytest.raises(VaultpyError) as raised:
            vmodel.load(hosts)
        python = [f"{p.field}: {p.message}; {p.hint}" for p in raised.value.problems
                  if p.message == "unknown key"]
        assert len(python) == 1, (body, raised.value.problems)
        proc = nix.eval_proc(f"builtins.toJSON ((import {nix_value(LIB_NIX)})"
                             f".profileFromHostsToml {{ hostsToml = {nix_value(hosts)}; "
                             'host = "h"; })')
        assert f"vaultpy: {hosts}: {python[0]}\n" in proc.stderr, (body, python, proc.stderr)


def test_lib_close_match_is_difflibs(nix: Nix) -> None:
    """lib.nix closeMatch, the twin of model.did_you_mean (difflib.get_close_matches):
    the same suggestion, or none, for typos of hosts.toml's keys and for random words."""
    import random

    rng = random.Random(6)
    key_sets = [[*vmodel.OUTPUT_KEYS, "name"], ["content", "file", "trim"],
                ["pubkey", "identities", "secrets", "templates", "user"],
                ["ab", "ba", "abc", "cab", "aab"]]
    letters = "abcdeilmnoprstuy_-"
    cases = []
    for _ in range(800):
        known = rng.choice(key_sets)
        word = list(rng.choice(known))
        for _ in range(rng.randint(0, 4)):     # deletions, insertions, swaps, changes
            op, at = rng.randint(0, 3), rng.randint(0, max(0, len(word) - 1))
            if op == 0 and word:
                del word[at]
            elif op == 1:
                word.insert(at, rng.choice(letters))
            elif op == 2 and len(word) > 1:
                at = min(at, len(word) - 2)
                word[at], word[at + 1] = word[at + 1], word[at]
            elif word:
                word[at] = rng.choice(letters)
        if rng.random() < 0.15:
            word = [rng.choice(letters) for _ in range(rng.randint(0, 9))]
        cases.append(["".join(word), known])
    want = [(vmodel.did_you_mean(w, k)[len("did you mean '"):-2] or None) for w, k in cases]
    assert sum(w is not None for w in want) > 400          # mostly close, some not
    got = nix.eval(f"let c = (import {nix_value(LIB_NIX)}).closeMatch; in map (p: c "
                   f"(builtins.elemAt p 0) (builtins.elemAt p 1)) (builtins.fromJSON "
                   f"{nix_value(json.dumps(cases))})")
    assert got == want


def test_a_persons_entry_is_the_same_users_profile_from_nix(nix: Nix, tmp_path: Path) -> None:
    """``user = true``: lib.profileFromHostsToml gives what `vaultpy profile` writes, a
    user's profile byte for byte (its paths as written, %h and all), and refuses what
    `vaultpy check` refuses there, in one line naming the field."""
    root = tmp_path / "v"
    (root / "secrets").mkdir(parents=True)
    for sid in ("a", "b"):
        (root / "secrets" / f"{sid}.age").write_bytes(f"only hashed {sid}".encode())
    _, pub = ssh_keygen(tmp_path, "k", comment="alice@laptop")
    master = "age1lkw9q5tsu7e5rkchdwhqyprkclvg4ege422qmz86pa90rt8jg55qaz6zqc"
    head = (f'[vaultpy]\nrecipients = ["{master}"]\n[secrets.a]\n[secrets.b]\n'
            f"[hosts.alice]\nuser = true\npubkey = {toml_str(pub)}\n")
    hosts = root / "hosts.toml"
    hosts.write_text(head + 'identities = ["%h/.ssh/id_ed25519_vaultpy"]\n'
                     '[hosts.alice.secrets.a]\npath = "%h/.config/app/token"\nmode = "0600"\n'
                     'restart_units = ["app.service"]\n'
                     '[hosts.alice.templates.netrc]\ncontent = "password {{ secrets.b }}"\n'
                     'path = "%h/.netrc"\n')
    _profile_parity(nix, root, ["alice"])
    got = json.loads(cli_profiles(root, ["alice"])["alice"])
    assert got["settings"]["user"] is True
    assert got["settings"]["identities"] == ["%h/.ssh/id_ed25519_vaultpy"]
    assert got["secrets"][0]["path"] == "%h/.config/app/token"
    cases = [
        ('[hosts.alice.secrets.a]\nowner = "app"\n', "hosts.alice.secrets.a.owner: owner in "
         "a person's entry (user = true)"),
        ('[hosts.alice.templates.t]\ncontent = "x"\ngroup = "wheel"\n',
         "hosts.alice.templates.t.group: group in a person's entry"),
        ("[hosts.alice.secrets.a]\nearly = true\n", "hosts.alice.secrets.a.early: early in a "
         "person's entry"),
        ('identities = ["%x/key"]\n', 'hosts.alice.identities: invalid path "%x/key"'),
        ('identities = ["key"]\n', 'hosts.alice.identities: invalid path "key"'),
        ('identities = ["%hkey"]\n', 'hosts.alice.identities: invalid path "%hkey"'),
        # an item's path: what `vaultpy check` refuses, lib refuses (it wrote them out)
        *((f'[hosts.alice.secrets.a]\npath = "{bad}"\n', f'hosts.alice.secrets.a.path: {why}')
          for bad, why in (
              ("/a/%z", 'invalid path "/a/%z"'), ("/a/b%", 'invalid path "/a/b%"'),
              ("rel/x", 'invalid path "rel/x"'), ("%h/../x", 'invalid path "%h/../x"'),
              ("/srv/%h/x", 'invalid path "/srv/%h/x"'), ("%hfoo", 'invalid path "%hfoo"'),
              ("%%h/x", 'invalid path "%%h/x"'),
              ("%r/vaultpy.d/x", 'path "%r/vaultpy.d/x" overlaps "%r/vaultpy.d"'),
              ("%h/.local/state/vaultpy/secrets/x", 'path "%h/.local/state/vaultpy/secrets/x"'
               ' overlaps "%h/.local/state/vaultpy/secrets", where activation keeps its dir'),
              ("%r/vaultpy.d.lock", 'path "%r/vaultpy.d.lock" overlaps "%r/vaultpy.d.lock", '
               "where activation keeps its lock file"))),
        ('[hosts.alice.secrets.a]\nrestart_units = ["bad unit"]\n',
         'hosts.alice.secrets.a.restart_units: invalid unit name "bad unit"'),
    ]
    for body, expected in cases:
        hosts.write_text(head + body)
        proc = nix.eval_proc(f"builtins.toJSON ((import {nix_value(LIB_NIX)})"
                             f".profileFromHostsToml {{ hostsToml = {nix_value(hosts)}; "
                             'host = "alice"; })')
        assert proc.returncode != 0, body
        assert f"vaultpy: {hosts}: {expected}" in proc.stderr, (body, proc.stderr)
        py = subprocess.run([sys.executable, "-m", "vaultpy", "-C", str(root), "check"],
                            capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
        assert py.returncode != 0 and expected.split(": ")[0] in py.stdout + py.stderr, body
    hosts.write_text(head.replace(toml_str(pub), f'"{master}"') + 'secrets = ["a"]\n')
    proc = nix.eval_proc(f"builtins.toJSON ((import {nix_value(LIB_NIX)}).profileFromHostsToml "
                         f'{{ hostsToml = {nix_value(hosts)}; host = "alice"; }})')
    assert "hosts.alice.identities: the person's key is an age1… key" in proc.stderr
    assert '"%h/.config/age/keys.txt"' in proc.stderr


_CLASH_CASES = [
    ("host", p) for p in ("/run/vaultpy/x", "/var/run/vaultpy/x", "/var/run", "/run",
                          "/run/vaultpy.d.lock", "/run/vaultpy.d.lock/x", "/",
                          "/run/.vaultpy.vaultpy-tmp-abc", "/etc/app/.x.vaultpy-tmp-1",
                          "/etc/app/x", "/run/vaultpy-early", "/etc/a.vaultpy-tmp-/b",
                          "/run/.vaultpy-early.vaultpy-tmp-q", "/run/vaultpyx")
] + [
    ("user", p) for p in ("%h/.local/state/vaultpy/secrets/x", "%r/vaultpy.d.lock",
                          "%h/.local/state/vaultpy/.secrets.vaultpy-tmp-x", "%h/x",
                          "%r/vaultpy.d", "%h/.local", "%r/vaultpy.d2")
]


def test_lib_path_clash_is_pythons(nix: Nix) -> None:
    """lib.pathClash (what lib.profileFromHostsToml and the modules' hostsToml refuse
    as an item's path) says what vaultpy/output.py path_clash says, for a host's
    settings and a user's."""
    from vaultpy.output import DEFAULT_DIRS, path_clash

    dirs = {"host": dict(DEFAULT_DIRS),
            "user": {k: vprofile.USER_SETTINGS[k] for k in DEFAULT_DIRS}}
    got = nix.eval(f"let l = import {nix_value(LIB_NIX)}; in map (c: l.pathClash "
                   "(if c.kind == \"user\" then l.userSettings else l.defaultSettings) c.path) "
                   + nix_value([{"kind": k, "path": p} for k, p in _CLASH_CASES]))
    for (kind, path), clash in zip(_CLASH_CASES, got, strict=True):
        want = path_clash(path, dirs[kind])
        assert (None if clash is None else (clash["what"], clash["where"])) == want, path


# =========================================================================== 4. templateRefs

TRICKY_REFS: list[tuple[str, list[str]]] = [
    ("{{{{ secrets.a }}", []),
    ("{{{ secrets.a }}", ["a"]),
    ("{{secrets.a}}{{ secrets.b.c }}", ["a", "b.c"]),
    ("{{ foo }}", []),
    ("x {{{{{ secrets.a }}", []),
    ("{{{{{{ secrets.a }}", ["a"]),
    ("{{{{{{{ secrets.a }}", ["a"]),
    ("{{{{{{{{ secrets.a }}", []),
    ("{{ secrets.b }}{{ secrets.a }}{{secrets.b}} {{ secrets.a }}", ["b", "a"]),
    ("{{ secrets.my-id.v2 }} {{ secrets.X_1-y.z }}", ["my-id.v2", "X_1-y.z"]),
    ("{{   secrets.a   }}", ["a"]),
    ("{{ secrets.a. }}", ["a."]),
    ("{{ secrets.a }}}}", ["a"]),
    ("{ {{ secrets.a }} }", ["a"]),
    ("{{ foo {{ secrets.a }}", ["a"]),
    ("{{\nsecrets.a }}", []),
    ("{{\tsecrets.a\t}} {{ \t secrets.b }}", ["a", "b"]),     # tabs, as spaces
    ("é{{ secrets.a }}\n{{ secrets.B_2 }}ü", ["a", "B_2"]),
    ("{{ secrets.a }} {{{{ secrets.b }}", ["a"]),
    ("", []),
    ("no braces at all", []),
]


def _nix_refs(nix: Nix, texts: list[str], tmp: Path) -> list[list[str]]:
    data = tmp / f"refs-{hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:12]}.json"
    data.write_text(json.dumps(texts, ensure_ascii=False))
    refs: list[list[str]] = nix.eval(
        f"map (import {nix_value(LIB_NIX)}).templateRefs "
        f"(builtins.fromJSON (builtins.readFile {nix_value(data)}))")
    return refs


def test_template_refs_tricky(nix: Nix, tmp_path: Path) -> None:
    texts = [t for t, _ in TRICKY_REFS]
    got = _nix_refs(nix, texts, tmp_path)
    for (text, want), nix_refs in zip(TRICKY_REFS, got, strict=True):
        assert vtemplates.references(text) == want, text
        assert nix_refs == want, text


_TOKENS = st.sampled_from(["{", "}", "{{", "}}", "{{{{", " ", "  ", "\t", "secrets.", "a", "b",
                           ".", "s", "e", "{{ secrets.", "{{secrets.", " }}", "}}", "ab"])
_TEMPLATE_TEXT = st.one_of(st.text(alphabet="{} secrets.ab", max_size=40),
                           st.lists(_TOKENS, max_size=16).map("".join))


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])
@given(texts=st.lists(_TEMPLATE_TEXT, min_size=50, max_size=50))
def test_template_refs_random(nix: Nix, tmp_path: Path, texts: list[str]) -> None:
    """Random text: wherever Python accepts a template, Nix finds the same ids, and
    Nix's brokenPlaceholder is true exactly where Python rejects the text."""
    got = _nix_refs(nix, texts, tmp_path)
    broken = _nix_broken(nix, texts, tmp_path)
    for text, nix_refs, nix_broken in zip(texts, got, broken, strict=True):
        try:
            want = vtemplates.references(text)
        except vtemplates.TemplateError:
            assert nix_broken, text
            continue
        assert not nix_broken, text
        assert nix_refs == want, text


def _nix_broken(nix: Nix, texts: list[str], tmp: Path) -> list[bool]:
    data = tmp / f"broken-{hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:12]}.json"
    data.write_text(json.dumps(texts, ensure_ascii=False))
    out: list[bool] = nix.eval(
        f"map (import {nix_value(LIB_NIX)}).brokenPlaceholder "
        f"(builtins.fromJSON (builtins.readFile {nix_value(data)}))")
    return out


def test_broken_placeholder_tricky(nix: Nix, tmp_path: Path) -> None:
    texts = ["{{ secrets.a }}", "{{ secrets.a }", "{{{{ secrets.a }", "x {{ secrets. }}",
             "{{{ secrets.a }}", "{{ other }}", "{{secrets.a}}{{ secrets.", "{{ secrets.-a }}"]
    want = []
    for t in texts:
        try:
            vtemplates.parse(t)
            want.append(False)
        except vtemplates.TemplateError:
            want.append(True)
    assert want == [False, True, False, True, False, False, True, True]
    assert _nix_broken(nix, texts, tmp_path) == want


_MODE_LINES = st.lists(st.sampled_from([
    "mode = 440", "mode=0o440", "  mode\t= 600 # c", "x = { mode = 640, a = 1 }",
    "{ mode = 7 }, { mode = 9 }", "mode = 440_0", "mode = 1.5", "mode = 0x1ff",
    "mode = 12345678901234567890123", "mode = 12345678901234567890", 'mode = "0440"',
    "node = 440", "amode = 440", "mode = 77\r", "mode = 44:", "[x]", ""]), max_size=8)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])
@given(texts=st.lists(_MODE_LINES.map("\n".join), min_size=30, max_size=30))
def test_decimal_modes_match_the_python_scan(nix: Nix, tmp_path: Path,
                                             texts: list[str]) -> None:
    """lib.decimalModes is the twin of vaultpy/model.py's _DECIMAL_MODE: the module and
    lib.profileFromHostsToml refuse `mode = 440` (0o670) exactly where Python does."""
    data = tmp_path / f"modes-{hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:12]}"
    data.write_text(json.dumps(texts))
    got = nix.eval(f"map (import {nix_value(LIB_NIX)}).decimalModes "
                   f"(builtins.fromJSON (builtins.readFile {nix_value(data)}))")
    for text, nix_modes in zip(texts, got, strict=True):
        want = {m.group("value") for m in vmodel._DECIMAL_MODE.finditer(text)}
        assert set(nix_modes) == want, text


def test_placeholder_round_trips(nix: Nix) -> None:
    ids = ["a", "db_password", "tls.key", "x-1.b_2"]
    got = nix.eval(f"map (import {nix_value(LIB_NIX)}).placeholder {nix_value(ids)}")
    assert got == [f"{{{{ secrets.{i} }}}}" for i in ids]
    assert [vtemplates.references(p) for p in got] == [[i] for i in ids]


# =========================================================================== 5. the module

DEMO_USERS: dict[str, Any] = {"users": {"users": {"app": {}, "nginx": {}, "postgres": {}},
                        "groups": {"app": {}, "postgres": {}}}}


def _check_store_files(module_profile: dict[str, Any], cli_profile: dict[str, Any]) -> None:
    """Each module ``file`` is the store copy of exactly the CLI's cache file."""
    by_id = {s["id"]: s["file"] for s in cli_profile["secrets"]}
    for s in module_profile["secrets"]:
        assert s["file"] == store_path_of_file(Path(by_id[s["id"]])), s["id"]


def test_module_from_demo_hosts_toml(nixpkgs_lib: Nix, tmp_path: Path) -> None:
    """(a) vaultpy.hostsToml = the demo: every demo host's module profile equals
    `vaultpy profile --host H` (file paths reduced to names), no failed assertion."""
    hosts = ["web1", "db1", "mail1"]
    configs = {h: write_module(tmp_path / f"{h}.nix", {
        "vaultpy": {"hostsToml": ROOT / "hosts.toml"}, "networking": {"hostName": h},
        **DEMO_USERS}) for h in hosts}
    out = eval_modules(nixpkgs_lib, configs)
    cli = {h: json.loads(t) for h, t in cli_profiles(ROOT, hosts).items()}
    for h in hosts:
        assert out[h]["failedAssertions"] == [], h
        assert normalise_files(out[h]["profile"], store=True) == \
            normalise_files(cli[h], store=False), h
        assert json.loads(out[h]["profileJson"]) == out[h]["profile"]
        _check_store_files(out[h]["profile"], cli[h])
    assert out["web1"]["outPaths"]["tls_key"] == "/run/vaultpy/web1.key"


def test_module_from_generated_hosts_toml(nixpkgs_lib: Nix, rich: Rich, tmp_path: Path) -> None:
    """(a) the same through the generated fixture: owner ints, modes 0o440 and "440",
    custom dirs, a file override, template-only secrets, early items, two keys."""
    users: dict[str, Any] = {"users": {"users": {"app": {}, "nginx": {}}, "groups": {"app": {}}}}
    configs = {h: write_module(tmp_path / f"{h}.nix", {
        "vaultpy": {"hostsToml": rich.root / "hosts.toml"}, "networking": {"hostName": h},
        **users}) for h in rich.hosts}
    out = eval_modules(nixpkgs_lib, configs)
    cli = {h: json.loads(t) for h, t in cli_profiles(rich.root, rich.hosts).items()}
    for h in rich.hosts:
        assert out[h]["failedAssertions"] == [], h
        assert normalise_files(out[h]["profile"], store=True) == \
            normalise_files(cli[h], store=False), h
        _check_store_files(out[h]["profile"], cli[h])
        early = any(i["early"] for i in cli[h]["secrets"] if i["install"]) or any(
            i["early"] for i in cli[h]["templates"])
        # (classic NixOS: early items by the activation script, no unit)
        assert ("vaultpy-early" in out[h]["activationScripts"]) == early, h
        assert "vaultpy-activate-early" not in out[h]["services"], h


def _web1_options(rich: Rich) -> dict[str, Any]:
    """The generated fixture's web1, as pure module options (no hosts.toml)."""
    m = rich.masters
    tmpl = rich.doc["hosts"]["web1"]["templates"]
    return {
        "vaultpy": {
            "settings": {"hostPubkey": rich.pub["web1"], "cacheRoot": rich.cache,
                         "hostName": "web1"},
            "secrets": {
                "db_password": {"file": m["db_password"], "owner": 1000, "group": 1000,
                                "mode": "0440",
                                "restartUnits": ["app.service", "worker@1.service"]},
                "tls.key": {"file": m["tls.key"], "name": "server.key", "owner": "nginx",
                            "mode": "0440", "path": "/etc/nginx/tls/server.key",
                            "reloadUnits": ["nginx.service"]},
                "user_hash": {"file": m["user_hash"], "early": True, "name": "alice.hash"},
                "only_tmpl": {"file": m["only_tmpl"], "install": False},
                "api-token": {"file": m["api-token"], "install": False},
            },
            "templates": {
                "app.env": {"content": tmpl["app.env"]["content"], "trim": True,
                            "owner": "app", "group": "app", "mode": "0440",
                            "path": "/etc/app/app.env", "restartUnits": ["app.service"],
                            "reloadUnits": ["app-reload.service"]},
                "motd": {"content": tmpl["motd"]["content"], "early": True, "mode": "0444"},
            },
        },
        "users": {"users": {"app": {}, "nginx": {}}, "groups": {"app": {}}},
    }


@pytest.fixture(scope="session")
def web1_options(nixpkgs_lib: Nix, rich: Rich, tmp_path_factory: pytest.TempPathFactory
                 ) -> dict[str, Any]:
    """The module evaluated with _web1_options (every eval-module.nix output)."""
    path = write_module(tmp_path_factory.mktemp("opts") / "web1.nix", _web1_options(rich))
    result: dict[str, Any] = eval_modules(nixpkgs_lib, {"web1": path})["web1"]
    return result


def test_module_from_options(web1_options: dict[str, Any], rich: Rich) -> None:
    """(b) pure option declarations give what `vaultpy profile` gives for the
    equivalent hosts.toml."""
    cli = json.loads(cli_profiles(rich.root, ["web1"])["web1"])
    assert web1_options["failedAssertions"] == []
    assert normalise_files(web1_options["profile"], store=True) == \
        normalise_files(cli, store=False)
    _check_store_files(web1_options["profile"], cli)


def _profile_store_path(out: dict[str, Any]) -> str:
    files = [s["file"] for s in out["profile"]["secrets"] if s["file"].startswith("/nix/store/")]
    return store_path_of_text(f"vaultpy-profile-{out['profile']['host']}.json",
                              out["profileJson"], files)


def test_module_activation_unit(nixpkgs_lib: Nix, tmp_path: Path) -> None:
    """(c) the unit that runs activation, for the demo's web1 (no early items)."""
    cfg = write_module(tmp_path / "web1.nix", {"vaultpy": {"hostsToml": ROOT / "hosts.toml"},
                                               "networking": {"hostName": "web1"},
                                               **DEMO_USERS})
    out = eval_modules(nixpkgs_lib, {"web1": cfg})["web1"]
    unit = out["services"]["vaultpy-activate"]
    assert "sysinit.target" in unit["wantedBy"]
    assert "sysinit.target" in unit["before"]
    assert {"local-fs.target", "systemd-sysusers.service"} <= set(unit["after"])
    assert unit["serviceConfig"]["Type"] == "oneshot"
    assert unit["serviceConfig"]["RemainAfterExit"] is True
    assert unit["unitConfig"]["DefaultDependencies"] is False
    # ExecStart runs the package's vaultpy on exactly the module's profile JSON.
    profile_path = _profile_store_path(out)
    assert unit["serviceConfig"]["ExecStart"] == (
        f"{FAKE_PACKAGE}/bin/vaultpy-activate --profile {profile_path} "
        f"--systemctl {FAKE_SYSTEMD}/bin/systemctl")
    assert re.fullmatch(r"/nix/store/[0-9a-df-np-sv-z]{32}-vaultpy-profile-web1\.json",
                        profile_path)
    # No early item: no early unit and no activation script.
    assert "vaultpy-activate-early" not in out["services"]
    assert out["activationScripts"] == {}


def test_module_early_unit(web1_options: dict[str, Any]) -> None:
    """(c) on classic NixOS an early item adds the vaultpy-early activation script, and
    makes the users script depend on it; no early unit (it installed them a second
    time at every switch, one generation more each time)."""
    services = web1_options["services"]
    assert "vaultpy-activate-early" not in services
    profile_path = _profile_store_path(web1_options)
    cmd = f"{FAKE_PACKAGE}/bin/vaultpy-activate --profile {profile_path} --early"
    assert services["vaultpy-activate"]["serviceConfig"]["ExecStart"].startswith(
        f"{FAKE_PACKAGE}/bin/vaultpy-activate --profile {profile_path} --systemctl ")
    scripts = web1_options["activationScripts"]
    assert scripts["vaultpy-early"]["text"] == cmd
    assert "specialfs" in scripts["vaultpy-early"]["deps"]
    assert scripts["users"]["deps"] == ["vaultpy-early"]


def test_module_out_paths_and_placeholders(web1_options: dict[str, Any]) -> None:
    """(d) outPath = <dir>/<name> (<early_dir>/<name> for early items), placeholders."""
    assert web1_options["outPaths"] == {
        "db_password": "/run/vaultpy/db_password",
        "tls.key": "/run/vaultpy/server.key",
        "user_hash": "/run/vaultpy-early/alice.hash",
        "only_tmpl": None,                  # install = false: no file, no outPath
        "api-token": None,
        "template:app.env": "/run/vaultpy/app.env",
        "template:motd": "/run/vaultpy-early/motd",
    }
    ids = ["api-token", "db_password", "only_tmpl", "tls.key", "user_hash"]
    assert web1_options["placeholder"] == {i: f"{{{{ secrets.{i} }}}}" for i in ids}


def test_module_path_is_where_the_file_is_read_as_with_agenix(
        web1_options: dict[str, Any], nixpkgs_lib: Nix, rich: Rich, tmp_path: Path) -> None:
    """`config.vaultpy.secrets.<id>.path`, as agenix's, sops-nix's and vaultix's, is where
    a service reads the file: the live place by default (no symlink then), the extra
    symlink when set.  Set to the live place itself, it is no symlink either."""
    assert web1_options["paths"] == {**web1_options["outPaths"],
                                     "tls.key": "/etc/nginx/tls/server.key",
                                     "template:app.env": "/etc/app/app.env"}
    opts = _base_secret(rich, path="/run/vaultpy/db_password")
    out = eval_modules(nixpkgs_lib, {"c": write_module(tmp_path / "c.nix", opts)})["c"]
    assert out["failedAssertions"] == []
    assert out["paths"]["db_password"] == "/run/vaultpy/db_password"
    assert [s_["path"] for s_ in out["profile"]["secrets"]] == [None]


def test_the_path_of_a_secret_not_installed_is_an_error_naming_it(
        nixpkgs_lib: Nix, rich: Rich, tmp_path: Path) -> None:
    """A secret only a template uses (install = false) has no file on the host: its
    `.path` used to name /run/vaultpy/<id> all the same, so `passwordFile = ….path`
    evaluated, and the service failed at boot.  Reading it is now an evaluation error
    that says what to do; the rest of the configuration evaluates as before."""
    opts = _base_secret(rich, install=False)
    opts["vaultpy"]["templates"] = {"t": {"content": "{{ secrets.db_password }}"}}
    config = write_module(tmp_path / "c.nix", opts)
    expr = (f"let em = import {nix_value(EVAL_MODULE)}; v = em {{ config = {nix_value(config)}; }};"
            " in { inherit (v) failedAssertions; profile = v.profileJson; }")
    out = nixpkgs_lib.eval(expr)
    assert out["failedAssertions"] == [] and '"install":false' in out["profile"]
    read = (f"let lib = import (builtins.getEnv \"NIXPKGS_LIB\"); c = (lib.evalModules {{ "
            f"modules = [ {nix_value(ROOT / 'tests/nix/nixos-stubs.nix')} "
            f"{nix_value(ROOT / 'nix/module.nix')} {{ vaultpy.package = {{ type = "
            f"\"derivation\"; name = \"v\"; outPath = \"/x\"; }}; }} "
            f"{nix_value(config)} ]; }}).config; in c.vaultpy.secrets.db_password.path")
    proc = nixpkgs_lib.eval_proc(read)
    assert proc.returncode != 0
    assert ("vaultpy: secret db_password is not installed on this host (install = false: "
            "it only feeds templates), so it has no path") in proc.stderr, proc.stderr


@pytest.mark.parametrize("sysusers", ["systemd", "userborn", None])
def test_early_items_order_the_users_script_only_on_classic_nixos(
        nixpkgs_lib: Nix, rich: Rich, tmp_path: Path, sysusers: str | None) -> None:
    """With systemd-sysusers or userborn, nixpkgs makes `activationScripts.users` an
    empty string: no `deps` may be added to it (the early unit orders itself before
    them instead)."""
    opts: dict[str, Any] = _web1_options(rich)
    if sysusers == "systemd":
        opts["systemd"] = {"sysusers": {"enable": True}}
    elif sysusers == "userborn":
        opts["services"] = {"userborn": {"enable": True}}
    out = eval_modules(nixpkgs_lib, {"c": write_module(tmp_path / "c.nix", opts)})["c"]
    scripts = out["activationScripts"]
    if sysusers is None:
        assert scripts["users"]["deps"] == ["vaultpy-early"]
        assert "vaultpy-activate-early" not in out["services"]
        return
    # The unit installs early items, the activation script does not (twice per switch).
    assert scripts == {}
    early = out["services"]["vaultpy-activate-early"]
    profile_path = _profile_store_path(out)
    assert early["serviceConfig"]["ExecStart"] == (
        f"{FAKE_PACKAGE}/bin/vaultpy-activate --profile {profile_path} --early")
    assert early["serviceConfig"]["Type"] == "oneshot"
    assert {"systemd-sysusers.service", "userborn.service", "sysinit.target",
            "sysinit-reactivation.target"} <= set(early["before"])
    assert {"systemd-sysusers.service", "userborn.service"} <= set(early["wantedBy"])
    assert early["requiredBy"] == ["sysinit-reactivation.target"]
    # Not after local-fs.target: systemd-tmpfiles-setup-dev.service is ordered after
    # sysusers and before local-fs-pre.target, so that order was a cycle at boot.
    assert early["after"] == ["systemd-remount-fs.service"]
    assert early["unitConfig"]["RequiresMountsFor"] == ["/etc/ssh/ssh_host_ed25519_key"]


# hosts.toml mistakes the module must report as `vaultpy check` does: one line naming
# the file, the field and the fix (not a Nix error about an attribute or an option).
_DEMO_TOML = (ROOT / "hosts.toml").read_text()
_WEB1_PUBKEY = next(ln for ln in _DEMO_TOML.splitlines() if "AAAAIGqkay" in ln)
_APP_ENV_TEXT = _DEMO_TOML[_DEMO_TOML.index('content = """\nDATABASE_URL'):]
_APP_ENV_TEXT = _APP_ENV_TEXT[:_APP_ENV_TEXT.index('"""\n', 14) + 4]   # the whole string
HOSTS_TOML_ERRORS = {
    "no-pubkey": (_DEMO_TOML.replace(_WEB1_PUBKEY, ""),
                  "hosts.web1.pubkey: missing: give this host's"),
    "template-without-content": (_DEMO_TOML.replace(_APP_ENV_TEXT, ""),
        "hosts.web1.templates.\"app.env\".content: missing: give the template's text"),
    "template-content-typo": (_DEMO_TOML.replace(
        '[hosts.web1.templates."app.env"]\ncontent = """',
        '[hosts.web1.templates."app.env"]\ncontents = """'),
        "hosts.web1.templates.\"app.env\".contents: unknown key; did you mean 'content'?"),
    "template-content-and-file": (_DEMO_TOML.replace(
        '[hosts.web1.templates."app.env"]\ncontent = """',
        '[hosts.web1.templates."app.env"]\nfile = "hosts.toml"\ncontent = """'),
        'hosts.web1.templates."app.env".file: a template has content or a file, not both'),
    "template-file-missing": (_DEMO_TOML.replace(
        _APP_ENV_TEXT, 'file = "templates/app.env"\n'),
        'hosts.web1.templates."app.env".file: cannot read the template '),
    "unknown-key": (_DEMO_TOML.replace('owner = "app"\ngroup = "app"',
                                       'ownr = "app"\ngroup = "app"'),
                    "hosts.web1.secrets.api_token.ownr: unknown key; did you mean 'owner'?"),
    # (the option type's error named the module, not hosts.toml's field)
    "path-relative": (_DEMO_TOML.replace('owner = "app"\ngroup = "app"',
                                         'owner = "app"\ngroup = "app"\npath = "app/token"'),
                      'hosts.web1.secrets.api_token.path: invalid path "app/token"'),
    "decimal-mode": (_DEMO_TOML.replace('mode = "0440"', "mode = 440"),
                     'hosts.web1.secrets.api_token.mode: mode = 440 is a decimal number '
                     '(0o670); write it as a string "0440"'),
    # (the module put a relative key path in the profile, which `vaultpy check` refuses)
    "identities-relative": (_DEMO_TOML.replace(_WEB1_PUBKEY, _WEB1_PUBKEY
                                               + '\nidentities = ["keys/web1.key"]'),
                            'hosts.web1.identities: invalid path "keys/web1.key"'),
    "identities-string": (_DEMO_TOML.replace(_WEB1_PUBKEY, _WEB1_PUBKEY
                                             + '\nidentities = "/etc/web1.key"'),
                          "hosts.web1.identities: expected a non-empty list of key paths"),
    "identities-empty": (_DEMO_TOML.replace(_WEB1_PUBKEY, _WEB1_PUBKEY + "\nidentities = []"),
                         "hosts.web1.identities: expected a non-empty list of key paths"),
    # a person's entry is a user's profile, activated by them: never a host's
    "persons-entry": (_DEMO_TOML.replace(_WEB1_PUBKEY, _WEB1_PUBKEY + "\nuser = true"),
                      "hosts.web1.user: a person's entry (user = true) is activated by "
                      "that person, not by a host"),
    "undeclared-secret": (_DEMO_TOML.replace("[hosts.web1.secrets.api_token]",
                                             "[hosts.web1.secrets.nope]\n"
                                             "[hosts.web1.secrets.api_token]"),
                          "hosts.web1.secrets: unknown secret id 'nope'; declare [secrets.nope] "
                          "in hosts.toml, or vaultpy.secrets.nope in this configuration"),
    "missing-master": (_DEMO_TOML.replace("[hosts.web1.secrets.api_token]",
                                          "[secrets.nope]\n[hosts.web1.secrets.nope]\n"
                                          "[hosts.web1.secrets.api_token]"),
                       "hosts.web1.secrets: secret nope has no master file"),
}


@pytest.mark.parametrize("case", list(HOSTS_TOML_ERRORS))
def test_hosts_toml_mistakes_are_one_clear_line(nixpkgs_lib: Nix, tmp_path: Path,
                                                case: str) -> None:
    text, expected = HOSTS_TOML_ERRORS[case]
    assert text != _DEMO_TOML
    (tmp_path / "secrets").symlink_to(ROOT / "secrets")
    hosts = tmp_path / "hosts.toml"
    hosts.write_text(text)
    cfg = write_module(tmp_path / "c.nix", {"vaultpy": {"hostsToml": hosts},
                                            "networking": {"hostName": "web1"},
                                            **DEMO_USERS})
    proc = nixpkgs_lib.eval_proc(file=EVAL_MODULE, attr="profileJson",
                                 args=["--arg", "config", str(cfg)])
    assert proc.returncode != 0, proc.stdout
    assert f"vaultpy.hostsToml: {hosts}: {expected}" in proc.stderr, proc.stderr
    # and Python says the same of the same file
    py = subprocess.run([sys.executable, "-m", "vaultpy", "-C", str(tmp_path), "check"],
                        capture_output=True, text=True, env={**os.environ, "NO_COLOR": "1"})
    assert py.returncode != 0


def test_module_out_paths_follow_custom_dirs(nixpkgs_lib: Nix, rich: Rich, tmp_path: Path
                                            ) -> None:
    opts = _web1_options(rich)
    opts["vaultpy"]["settings"].update(dir="/run/sec", earlyDir="/run/sec-early")
    out = eval_modules(nixpkgs_lib, {"c": write_module(tmp_path / "c.nix", opts)})["c"]
    assert out["outPaths"]["tls.key"] == "/run/sec/server.key"
    assert out["outPaths"]["user_hash"] == "/run/sec-early/alice.hash"
    assert out["profile"]["settings"]["dir"] == "/run/sec"
    assert out["profile"]["settings"]["early_dir"] == "/run/sec-early"


def _base_secret(rich: Rich, **fields: Any) -> dict[str, Any]:
    """web1 of the generated fixture with one secret, db_password (its cache file
    exists), plus ``fields``: valid as it is (see the "base" cases below)."""
    return {"vaultpy": {"settings": {"hostPubkey": rich.pub["web1"], "cacheRoot": rich.cache,
                                     "hostName": "web1"},
                        "secrets": {"db_password": {"file": rich.masters["db_password"],
                                                    **fields}}}}


_OPT = "vaultpy.secrets.db_password."
TYPE_ERRORS = {
    "mode-too-short": ({"mode": "40"}, _OPT + "mode"),
    "mode-not-octal": ({"mode": "0999"}, _OPT + "mode"),
    "unknown-option": ({"bogus": True}, _OPT + "bogus"),
    "unit-with-space": ({"restartUnits": ["bad unit.service"]}, _OPT + "restartUnits"),
    "unit-with-slash": ({"reloadUnits": ["a/b.service"]}, _OPT + "reloadUnits"),
    # (the profile loader refuses these: the whole profile would not boot)
    "unit-as-option": ({"restartUnits": ["--now"]}, _OPT + "restartUnits"),
    "path-line-break": ({"path": "/etc/a\nb"}, _OPT + "path"),
    "path-long-name": ({"path": "/etc/" + "k" * 256}, _OPT + "path"),
    "bad-owner": ({"owner": "Bad Name"}, _OPT + "owner"),
}


def test_module_option_type_errors(nixpkgs_lib: Nix, rich: Rich, tmp_path: Path) -> None:
    """(e) a wrong value fails evaluation with an error naming the option."""
    def run(item: tuple[str, tuple[dict[str, Any], str]]
            ) -> tuple[str, str, subprocess.CompletedProcess[str]]:
        name, (fields, option) = item
        cfg = write_module(tmp_path / f"{name}.nix", _base_secret(rich, **fields))
        return name, option, nixpkgs_lib.eval_proc(file=EVAL_MODULE, attr="profile",
                                                   args=["--arg", "config", str(cfg)])
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(run, TYPE_ERRORS.items()))
    for name, option, proc in results:
        assert proc.returncode != 0, f"{name}: evaluation succeeded"
        # "`vaultpy.secrets.db_password.mode'", or "`…restartUnits."[definition …"
        assert re.search(f"`{re.escape(option)}['.]", proc.stderr), f"{name}:\n{proc.stderr}"
        # and says what the value should be in words, not as the regular expression
        assert "matching the pattern" not in proc.stderr, f"{name}:\n{proc.stderr}"
        said = {"mode": "octal mode, a string", "Units": "systemd unit name",
                "path": "absolute, normalised path", "owner": "user or group name (a "
                "letter or _ first"}
        for tail, words in said.items():
            if option.endswith(tail):
                assert words in proc.stderr, f"{name}:\n{proc.stderr}"
    # The same base with a valid value evaluates: the failures above are the values'.
    ok = write_module(tmp_path / "ok.nix", _base_secret(rich, mode="440"))   # as vaultix
    assert nixpkgs_lib.eval(file=EVAL_MODULE, attr="profile",
                            args=["--arg", "config", str(ok)])["secrets"][0]["mode"] == "0440"


def _assertion_cases(rich: Rich, tmp_path: Path) -> dict[str, dict[str, Any]]:
    base = _base_secret(rich)
    settings_ = base["vaultpy"]["settings"]
    master = rich.masters["db_password"]
    empty = tmp_path / "empty-cache"
    (empty / "web1").mkdir(parents=True, exist_ok=True)       # renc's, for another host
    no_host = tmp_path / "no-host-cache"
    no_host.mkdir(exist_ok=True)
    stale = tmp_path / "stale-cache"
    (stale / "web1").mkdir(parents=True, exist_ok=True)
    (stale / "web1" / f"x.{'0' * 32}.age").write_bytes(b"for another master")
    return {
        "no-host-cache": {"vaultpy": {"settings": {**settings_, "cacheRoot": no_host},
                                      "secrets": {"x": {"file": master}}}},
        "stale-cache": {"vaultpy": {"settings": {**settings_, "cacheRoot": stale},
                                    "secrets": {"x": {"file": master}}}},
        "demo-valid": {"vaultpy": {"hostsToml": ROOT / "hosts.toml"},
                       "networking": {"hostName": "web1"}, **DEMO_USERS},
        "options-valid": _web1_options(rich),
        "missing-cache": {"vaultpy": {"settings": {**settings_, "cacheRoot": empty},
                                      "secrets": {"x": {"file": master}}}},
        "unknown-owner": {"vaultpy": {"settings": settings_,
                                      "secrets": {"db_password": {"file": master,
                                                                  "owner": "ghost"}}}},
        "unknown-group": {"vaultpy": {"settings": settings_,
                                      "secrets": {"db_password": {"file": master,
                                                                  "group": "ghosts"}}}},
        "duplicate-path": {"vaultpy": {"settings": settings_, "secrets": {
            "db_password": {"file": master, "path": "/etc/same"},
            "user_hash": {"file": rich.masters["user_hash"], "path": "/etc/same"}}}},
        "nested-path": {"vaultpy": {"settings": settings_, "secrets": {
            "db_password": {"file": master, "path": "/etc/app"},
            "user_hash": {"file": rich.masters["user_hash"], "path": "/etc/app/conf/hash"}}}},
        "sibling-paths": {"vaultpy": {"settings": settings_, "secrets": {
            "db_password": {"file": master, "path": "/etc/app"},
            "user_hash": {"file": rich.masters["user_hash"], "path": "/etc/app-hash"}}}},
        "undeclared-template-secret": {"vaultpy": {
            "settings": settings_, "secrets": {"db_password": {"file": master}},
            "templates": {"t": {"content": "{{ secrets.db_password }} {{ secrets.nope }}"}}}},
        "template-name-traversal": {"vaultpy": {
            "settings": settings_, "secrets": {"db_password": {"file": master}},
            "templates": {"../../etc/shadow": {"content": "x"}}}},
        "secret-id-slash": {"vaultpy": {"settings": settings_,
                                        "secrets": {"a/b": {"file": master, "name": "ab"}}}},
        # (its name defaults to the id: that was a type error blaming module.nix)
        "secret-id-slash-no-name": {"vaultpy": {"settings": settings_, "secrets": {
            "nginx/cert": {"file": master}}}},
        "broken-placeholder": {"vaultpy": {
            "settings": settings_, "secrets": {"db_password": {"file": master}},
            "templates": {"t": {"content": "{{ secrets.db_password }"}}}},
        "path-in-live-dir": _base_secret(rich, path="/run/vaultpy/other"),
        "path-in-live-dir-via-var-run": _base_secret(rich, path="/var/run/vaultpy/other"),
        "path-above-store": _base_secret(rich, path="/run"),
        "path-is-store-lock": _base_secret(rich, path="/run/vaultpy.d.lock"),
        "path-is-tmp-link": _base_secret(rich, path="/run/.vaultpy-early.vaultpy-tmp-x"),
        "path-is-a-links-tmp-name": _base_secret(rich, path="/etc/.x.vaultpy-tmp-1"),
        "path-not-installed": _base_secret(rich, install=False, path="/etc/x"),
        "owner-too-big": _base_secret(rich, owner="4294967295"),
        "group-too-big-int": _base_secret(rich, group=99999999999),
        "bad-host-key": {"vaultpy": {**base["vaultpy"], "settings": {
            **settings_, "hostPubkey": "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC root@x"}}},
        "early-dir-on-store-lock": {"vaultpy": {**base["vaultpy"], "settings": {
            **base["vaultpy"]["settings"], "earlyDir": "/run/vaultpy.d.lock"}}},
        "early-named-owner": {**_base_secret(rich, early=True, owner="app"), **DEMO_USERS},
        "early-numeric-ids": _base_secret(rich, early=True, owner="0", group=0),
        "cache-root-string": {"vaultpy": {**base["vaultpy"], "settings": {
            **settings_, "cacheRoot": str(rich.cache)}}},
        "no-host-key": {"vaultpy": {**base["vaultpy"], "settings": {
            **settings_, "hostKeys": []}}},
        # agenix's idiom: owner = config.users.users.svc.name, a name of its own
        # (an assertion said "owner my-service is not in users.users").
        "owner-by-name": {**_base_secret(rich, owner="my-service", group="svcgroup"),
                          "users": {"users": {"svc": {"name": "my-service"}},
                                    "groups": {"svcgrp": {"name": "svcgroup"}}}},
        # dir set under /var/run, a path below it: activation refuses the overlap.
        "var-run-dir": {"vaultpy": {
            "settings": {**settings_, "dir": "/var/run/secrets"},
            "secrets": {"db_password": {"file": master, "path": "/var/run/secrets/db"}}}},
        # An age1 host with sshd's key as hostKeys (the default): it could open nothing.
        "age-key-sshd-default": {"vaultpy": {
            "settings": {"hostPubkey": rich.pub["edge1"], "cacheRoot": rich.cache,
                         "hostName": "edge1"},
            "secrets": {"db_password": {"file": master}}}},
        "age-key-with-host-keys": {"vaultpy": {
            "settings": {"hostPubkey": rich.pub["edge1"], "cacheRoot": rich.cache,
                         "hostName": "edge1", "hostKeys": ["/var/lib/vaultpy/edge1.key"]},
            "secrets": {"db_password": {"file": master}}}},
        "late-password-hash": {**_base_secret(rich), "users": {"users": {"alice": {
            "hashedPasswordFile": "/run/vaultpy/db_password"}}}},
        "early-password-hash": {**_base_secret(rich, early=True), "users": {"users": {
            "alice": {"hashedPasswordFile": "/run/vaultpy-early/db_password"}}}},
        "name-with-slash": _base_secret(rich, name="nginx/cert"),
        # path = null, and a user whose password file is another file: evaluation
        # stopped at "value is null while a string was expected".
        "null-path-and-a-password-file": {**_base_secret(rich, path=None), "users": {
            "users": {"alice": {"hashedPasswordFile": "/etc/alice.hash"}}}},
        "late-password-hash-by-out-path": {**_base_secret(rich, path="/etc/db.pw"),
                                           "users": {"users": {"alice": {
                                               "hashedPasswordFile":
                                                   "/run/vaultpy/db_password"}}}},
        "name-dot-dot": _base_secret(rich, name=".."),
        "master-missing": {"vaultpy": {**base["vaultpy"], "secrets": {
            "nope": {"file": Raw(f"{nix_value(master.parent)} + \"/nope.age\"")}}}},
    }


@pytest.fixture(scope="session")
def assertion_results(nixpkgs_lib: Nix, rich: Rich, tmp_path_factory: pytest.TempPathFactory
                      ) -> dict[str, list[str]]:
    tmp = tmp_path_factory.mktemp("assertions")
    cases = _assertion_cases(rich, tmp)
    configs = {n: write_module(tmp / f"{n}.nix", c) for n, c in cases.items()}
    expr = (f"let em = import {nix_value(EVAL_MODULE)}; in "
            f"builtins.mapAttrs (_: c: (em {{ config = c; }}).failedAssertions) "
            f"{nix_value(configs)}")
    failed: dict[str, list[str]] = nixpkgs_lib.eval(expr)
    return failed


def test_module_assertions_pass_for_valid_configs(assertion_results: dict[str, list[str]]
                                                  ) -> None:
    assert assertion_results["demo-valid"] == []
    assert assertion_results["options-valid"] == []
    assert assertion_results["early-numeric-ids"] == []
    assert assertion_results["sibling-paths"] == []
    assert assertion_results["early-password-hash"] == []
    assert assertion_results["null-path-and-a-password-file"] == []
    assert assertion_results["age-key-with-host-keys"] == []
    assert assertion_results["owner-by-name"] == []


@pytest.mark.parametrize("case, needles", [
    ("missing-cache", ["secret x", "is missing", "run `vaultpy renc`"]),
    # the wrong cacheRoot or hostName: no directory for this host at all
    ("no-host-cache", ["no cache directory", "/no-host-cache/web1", "settings.cacheRoot",
                       "settings.hostName (web1"]),
    # another master or key than renc used (an old key after a reinstall, agenix's file)
    ("stale-cache", ["secret x: the cache holds x.00000000000000000000000000000000.age, made "
                     "for another master file or host key", "run `vaultpy renc` if hosts.toml "
                     "changed"]),
    ("unknown-owner", ["secret db_password", "owner ghost is not in users.users: declare "
                       "users.users.ghost (the service's module may, once enabled), or give "
                       "a numeric id"]),
    ("unknown-group", ["secret db_password", "group ghosts is not in users.groups"]),
    ("duplicate-path", ["secret db_password", "secret user_hash", "same path /etc/same"]),
    ("nested-path", ["secret user_hash: path /etc/app/conf/hash lies inside /etc/app, "
                     "secret db_password's path", "another path"]),
    ("undeclared-template-secret", ["template t uses secrets.nope",
                                    "declare vaultpy.secrets.nope"]),
    ("template-name-traversal", ['template name "../../etc/shadow" is invalid']),
    ("secret-id-slash", ['secret id "a/b" is invalid']),
    ("secret-id-slash-no-name", ['secret id "nginx/cert" is invalid', "letters, digits"]),
    ("broken-placeholder", ["template t: broken placeholder", "{{ secrets.<id> }}"]),
    ("path-in-live-dir", ["secret db_password", "/run/vaultpy/other overlaps /run/vaultpy,"]),
    ("path-in-live-dir-via-var-run", ["secret db_password", "path /var/run/vaultpy/other "
                                      "overlaps /run/vaultpy,"]),
    ("path-above-store", ["path /run overlaps /run/vaultpy and /run/vaultpy-early and "
                          "/run/vaultpy.d"]),
    ("path-is-store-lock", ["secret db_password", "path /run/vaultpy.d.lock overlaps "
                            "/run/vaultpy.d.lock, where activation keeps its own files"]),
    ("path-is-tmp-link", ["secret db_password", "path /run/.vaultpy-early.vaultpy-tmp-x "
                          "overlaps /run/.vaultpy-early.vaultpy-tmp-*,"]),
    ("path-is-a-links-tmp-name", ["secret db_password", "path /etc/.x.vaultpy-tmp-1 "
                                  "overlaps *.vaultpy-tmp-*,"]),
    ("path-not-installed", ["secret db_password", "install = false"]),
    ("owner-too-big", ["secret db_password", "owner 4294967295 is too big"]),
    ("group-too-big-int", ["secret db_password", "group 99999999999 is too big"]),
    ("bad-host-key", ["hostPubkey", "ssh-rsa", "not an ssh-ed25519 or age1 public key"]),
    ("early-dir-on-store-lock", ["vaultpy.settings: earlyDir and the store's lock file "
                                 "overlap", "a place of its own"]),
    ("early-named-owner", ["secret db_password", "an early item is installed before users "
                           "and groups exist", "root or numeric ids"]),
    # A string is no path: the cache would not go to the store, the host looks for it there.
    ("cache-root-string", ["vaultpy.settings.cacheRoot is the string", "not a Nix path",
                           "./secrets/cache, no quotes"]),
    ("no-host-key", ["vaultpy.settings.hostKeys is empty", "ed25519",
                     "/etc/ssh/ssh_host_ed25519_key"]),
    ("var-run-dir", ["secret db_password: path /var/run/secrets/db overlaps /var/run/secrets"]),
    ("age-key-sshd-default", ["vaultpy.settings.hostKeys: this host's key is an age1… key",
                              'set vaultpy.settings.hostKeys = [ "/etc/vaultpy/host.key" ]']),
    # agenix orders its install before users; here a password hash must be early.
    ("late-password-hash", ["users.users.alice.hashedPasswordFile is /run/vaultpy/db_password",
                            "secret db_password's path", "installed after users are created",
                            "vaultpy.secrets.db_password.early = true"]),
    ("name-with-slash", ['secret db_password: name "nginx/cert" is invalid', "letters"]),
    # (the path type check failed first, blaming module.nix)
    ("name-dot-dot", ['secret db_password: name ".." is invalid']),
    ("late-password-hash-by-out-path", ["users.users.alice.hashedPasswordFile is "
                                        "/run/vaultpy/db_password", "early = true"]),
    ("master-missing", ["secret nope: master file", "/nope.age does not exist: if "
                        "vaultpy.secrets.nope.file has a typo, correct it; else create the "
                        "master: vaultpy edit nope writes the file hosts.toml's "
                        "[secrets.nope] names"]),
])
def test_module_assertion_fires(assertion_results: dict[str, list[str]], case: str,
                                needles: list[str]) -> None:
    """(f) exactly one failed assertion, with the right text."""
    failed = assertion_results[case]
    assert len(failed) == 1, failed
    assert all(n in failed[0] for n in needles), failed


def test_missing_cache_assertion_names_the_expected_file(
        assertion_results: dict[str, list[str]], rich: Rich, tmp_path: Path) -> None:
    name = independent_cache_name("x", rich.masters["db_password"], rich.pub["web1"])
    [message] = assertion_results["missing-cache"]
    assert f"/empty-cache/web1/{name} is missing" in message


def test_the_nested_path_check_is_linear_in_the_items(nixpkgs_lib: Nix, rich: Rich,
                                                     tmp_path: Path) -> None:
    """The module's `nested` check, as vaultpy/output.py `nesting`, looks each path's
    ancestors up by name: a pairwise scan over every item with a path is quadratic
    (about 35 s of evaluation for 4,000 items, minutes for 10,000).  Counted in
    evaluation steps (NIX_SHOW_STATS), not seconds: the work that items with a path
    add to items without one must double, not quadruple, with the items."""
    stats = tmp_path / "stats.json"
    counting = Nix(nixpkgs_lib.exe, {**nixpkgs_lib.env, "NIX_SHOW_STATS": "1",
                                     "NIX_SHOW_STATS_PATH": str(stats)})

    def calls(n: int, paths: bool) -> int:
        config = {"vaultpy": {
            "settings": {"hostPubkey": rich.pub["web1"], "cacheRoot": rich.cache,
                         "hostName": "web1"},
            "templates": {f"t{i}": {"content": "x", **({"path": f"/etc/t{i}/deep/conf"}
                                                        if paths else {})}
                          for i in range(n)}}}
        module = write_module(tmp_path / f"m{n}{paths}.nix", config)
        failed = counting.eval(f"(import {nix_value(EVAL_MODULE)} "
                               f"{{ config = {nix_value(module)}; }}).failedAssertions")
        assert failed == []
        steps: int = json.loads(stats.read_text())["nrFunctionCalls"]
        return steps

    added = {n: calls(n, True) - calls(n, False) for n in (300, 600)}
    assert added[600] < 2.5 * added[300], added


# Configurations the module must refuse (a type error or a failed assertion) because
# `vaultpy activate` refuses their profile at boot (vaultpy/profile.py `parse`), and
# hosts.toml validation refuses the same thing (vaultpy/model.py).
def _refused_cases(rich: Rich) -> dict[str, dict[str, Any]]:
    master = rich.masters["db_password"]
    base = _base_secret(rich)
    return {
        "same-name-early-and-not": {"vaultpy": {
            "settings": base["vaultpy"]["settings"],
            "secrets": {"db_password": {"file": master, "name": "same", "early": True}},
            "templates": {"same": {"content": "x"}}}},
        "negative-owner": _base_secret(rich, owner=-1),
        "path-with-dotdot": _base_secret(rich, path="/etc/app/../x"),
        "path-is-root": _base_secret(rich, path="/"),
        "path-is-store-lock": _base_secret(rich, path="/run/vaultpy.d.lock"),
        "path-in-custom-store-lock": {"vaultpy": {**base["vaultpy"], "settings": {
            **base["vaultpy"]["settings"], "store": "/srv/st"}, "secrets": {
            "db_password": {**base["vaultpy"]["secrets"]["db_password"],
                            "path": "/srv/st.lock/key"}}}},
        "path-is-dir-tmp-link": _base_secret(rich, path="/run/.vaultpy.vaultpy-tmp-0a"),
        "dir-trailing-slash": {"vaultpy": {**base["vaultpy"], "settings": {
            **base["vaultpy"]["settings"], "dir": "/run/vaultpy/"}}},
        "no-host-keys": {"vaultpy": {**base["vaultpy"], "settings": {
            **base["vaultpy"]["settings"], "hostKeys": []}}},
        "dir-inside-store": {"vaultpy": {**base["vaultpy"], "settings": {
            **base["vaultpy"]["settings"], "dir": "/run/vaultpy.d/live"}}},
        "early-dir-on-store-lock": {"vaultpy": {**base["vaultpy"], "settings": {
            **base["vaultpy"]["settings"], "earlyDir": "/run/vaultpy.d.lock"}}},
        "dir-is-early-dir": {"vaultpy": {**base["vaultpy"], "settings": {
            **base["vaultpy"]["settings"], "dir": "/run/vaultpy-early"}}},
    }


@pytest.fixture(scope="session")
def refused_results(nixpkgs_lib: Nix, rich: Rich, tmp_path_factory: pytest.TempPathFactory
                    ) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("refused")
    configs = {n: write_module(tmp / f"{n}.nix", c) for n, c in _refused_cases(rich).items()}
    configs["control"] = write_module(tmp / "control.nix", _web1_options(rich))
    configs["base"] = write_module(tmp / "base.nix", _base_secret(rich))
    expr = (f"let em = import {nix_value(EVAL_MODULE)}; in builtins.mapAttrs (_: c: "
            f"let v = em {{ config = c; }}; x = {{ inherit (v) failedAssertions profileJson; }};"
            f" r = builtins.tryEval (builtins.deepSeq x x); in "
            f"{{ evaluates = r.success; value = if r.success then r.value else null; }}) "
            f"{nix_value(configs)}")
    results: dict[str, Any] = nixpkgs_lib.eval(expr)
    return results


@pytest.mark.parametrize("case", ["control", "base", *(
    "same-name-early-and-not", "negative-owner", "path-with-dotdot", "path-is-root",
    "path-is-store-lock", "path-in-custom-store-lock", "path-is-dir-tmp-link",
    "dir-trailing-slash", "no-host-keys", "dir-inside-store", "early-dir-on-store-lock",
    "dir-is-early-dir")])
def test_module_accepts_only_profiles_activation_loads(refused_results: dict[str, Any],
                                                       case: str) -> None:
    r = refused_results[case]
    controls = ("control", "base")
    if not r["evaluates"] or r["value"]["failedAssertions"]:
        assert case not in controls, r
        # Refused by the module: good, unless for an unrelated reason.
        assert not any("is missing" in m for m in (r["value"] or {}).get(
            "failedAssertions", [])), r
        return
    try:
        vprofile.parse(json.loads(r["value"]["profileJson"]), "module", Path("/"))
        rejected = None
    except VaultpyError as exc:
        rejected = str(exc)
    if rejected is not None:
        pytest.fail(f"{case}: the module accepts a configuration (no type error, no failed "
                    f"assertion) whose profile `vaultpy activate` rejects at boot: {rejected}",
                    pytrace=False)
    assert case in controls, f"{case}: expected the profile loader to reject it"


# =========================================================================== 6. the flake

def test_flake_outputs(nixpkgs_lib: Nix, demo_doc: dict[str, Any]) -> None:
    """flake.nix evaluates without real nixpkgs: lib.cacheName, nixosModules.default."""
    lib_path = nixpkgs_lib.env["NIXPKGS_LIB"]
    pub = demo_doc["hosts"]["db1"]["pubkey"]
    expr = f"""
      let
        flake = import {nix_value(ROOT / 'flake.nix')};
        nixpkgs = {{ lib = import {nix_value(Path(lib_path))}; legacyPackages = {{ }}; }};
        self = flake.outputs {{ inherit self nixpkgs; }};
        module = self.nixosModules.default {{
          lib = nixpkgs.lib; pkgs = {{ stdenv.hostPlatform.system = "x86_64-linux"; }}; }};
      in {{
        name = self.lib.cacheName {{ id = "db_password"; recipients = {nix_str(pub)};
          secretFile = {nix_value(ROOT / 'secrets' / 'db_password.age')}; }};
        defaultIsFunction = builtins.isFunction self.nixosModules.default;
        aliasIsFunction = builtins.isFunction self.nixosModules.vaultpy;
        imports = map toString module.imports;
        systems = builtins.attrNames self.packages;
        description = flake.description;
      }}"""
    out = nixpkgs_lib.eval(expr)
    expected = independent_cache_name("db_password", ROOT / "secrets" / "db_password.age", pub)
    assert out["name"] == expected
    assert (ROOT / "secrets" / "cache" / "db1" / expected).is_file()
    assert out["defaultIsFunction"] is True and out["aliasIsFunction"] is True
    assert out["imports"] == [str(ROOT / "nix" / "module.nix")]
    assert out["systems"] == ["aarch64-linux", "x86_64-linux"]
    assert "vaultpy" in out["description"]


def _package_args(nixpkgs_lib: Nix, *, with_pyrage: bool, system: str = "x86_64-linux"
                  ) -> Any:
    """nix/package.nix called with stub nixpkgs pieces that return their arguments:
    what it asks buildPythonApplication for (no real nixpkgs here)."""
    lib_path = nixpkgs_lib.env["NIXPKGS_LIB"]
    names = ["setuptools", "cryptography", "bcrypt", "typer", "rich", "tomli-w",
             "shamir-mnemonic", "tomlkit", "hvac"] + (["pyrage"] if with_pyrage else [])
    py = "{ " + " ".join(f'{nix_str(n)} = {{ pname = {nix_str(n)}; from = "nixpkgs"; }};'
                         for n in names) + """
        buildPythonApplication = a: a;
        buildPythonPackage = a: a // { from = "wheel"; };
        fetchPypi = a: a; }"""
    expr = f"""
      let lib = import {nix_value(Path(lib_path))}; in
      import {nix_value(ROOT / 'nix' / 'package.nix')} {{
        inherit lib; age = "age"; autoPatchelfHook = "autoPatchelfHook";
        stdenv = {{ hostPlatform.system = {nix_str(system)}; cc.cc.lib = "libgcc"; }};
        python3Packages = {py};
      }}"""
    return nixpkgs_lib.eval(f"let a = ({expr}); in {{ deps = a.dependencies; inherit (a) pname; }}")


@pytest.mark.parametrize("with_pyrage", [True, False])
def test_the_package_depends_on_every_project_dependency(nixpkgs_lib: Nix,
                                                         with_pyrage: bool) -> None:
    """nix/package.nix listed 6 of pyproject's 9 dependencies: host add, identity split
    and pull failed to import in the Nix package.  pyrage comes from nixpkgs when it
    has one, else from its PyPI wheel."""
    got = _package_args(nixpkgs_lib, with_pyrage=with_pyrage)
    names = {d["pname"] for d in got["deps"]}
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    wanted = {re.split(r"[\[<>=!~ ;]", d, maxsplit=1)[0].lower()
              for d in doc["project"]["dependencies"]}
    assert wanted <= names, wanted - names
    pyrage = next(d for d in got["deps"] if d["pname"] == "pyrage")
    assert pyrage["from"] == ("nixpkgs" if with_pyrage else "wheel")
    if not with_pyrage:
        assert pyrage["src"]["hash"].startswith("sha256-")
        assert "x86_64" in pyrage["src"]["platform"]


def test_flake_module_uses_the_flake_package(nixpkgs_lib: Nix) -> None:
    """nixosModules.default sets vaultpy.package to the flake's package (here built by a
    stub callPackage: no real nixpkgs)."""
    lib_path = nixpkgs_lib.env["NIXPKGS_LIB"]
    pkg = "/nix/store/22222222222222222222222222222222-vaultpy-flake"
    expr = f"""
      let
        lib = import {nix_value(Path(lib_path))};
        fake = {{ type = "derivation"; name = "vaultpy"; outPath = {nix_str(pkg)}; }};
        nixpkgs = {{ inherit lib;
          legacyPackages.x86_64-linux.callPackage = _: _: fake; }};
        self = (import {nix_value(ROOT / 'flake.nix')}).outputs {{ inherit self nixpkgs; }};
        c = (lib.evalModules {{ modules = [
          {nix_value(ROOT / 'tests' / 'nix' / 'nixos-stubs.nix')}
          self.nixosModules.default
          {{ _module.args.pkgs = {{ stdenv.hostPlatform.system = "x86_64-linux"; }};
             vaultpy.hostsToml = {nix_value(ROOT / 'hosts.toml')};
             networking.hostName = "db1"; users.users.postgres = {{ }};
             users.groups.postgres = {{ }}; }}
        ]; }}).config;
      in c.systemd.services.vaultpy-activate.serviceConfig.ExecStart"""
    assert nixpkgs_lib.eval(expr).startswith(
        f"{pkg}/bin/vaultpy-activate --profile /nix/store/")


def test_a_host_not_in_hosts_toml_names_the_hosts_and_the_option(nixpkgs_lib: Nix,
                                                                 tmp_path: Path) -> None:
    """The error named only the host missing, not the hosts there nor the option that
    picks the name (networking.hostName by default)."""
    config = write_module(tmp_path / "c.nix", {
        "vaultpy": {"hostsToml": ROOT / "hosts.toml"}, "networking": {"hostName": "web2"},
        **DEMO_USERS})
    proc = nixpkgs_lib.eval_proc(file=EVAL_MODULE, attr="profile",
                                 args=["--arg", "config", str(config)])
    assert proc.returncode != 0
    line = next(ln for ln in proc.stderr.splitlines() if "no [hosts.web2]" in ln)
    assert "hosts there: db1, mail1, web1" in line, line
    assert "set vaultpy.settings.hostName" in line, line


def test_a_group_readable_mode_with_the_group_left_to_root_is_a_warning(
        nixpkgs_lib: Nix, rich: Rich, tmp_path: Path) -> None:
    """agenix, sops-nix and vaultix default group to the owner's group; here it is root.
    `owner = "grafana"; mode = "0440";` moved over as is gave group root read access and
    grafana's group none, without a word."""
    users = {"users": {"users": {"grafana": {"group": "grafana"}},
                       "groups": {"grafana": {}}}}
    cases = {
        "left": {**_base_secret(rich, owner="grafana", mode="0440"), **users},
        "root-said": {**_base_secret(rich, owner="grafana", mode="0440", group="root"),
                      **users},
        "owner-only": {**_base_secret(rich, owner="grafana", mode="0400"), **users},
        "root-owner": _base_secret(rich, mode="0440"),
        "short-mode": {**_base_secret(rich, owner="grafana", mode="440"), **users},
    }
    configs = {n: write_module(tmp_path / f"{n}.nix", c) for n, c in cases.items()}
    expr = (f"let em = import {nix_value(EVAL_MODULE)}; in "
            f"builtins.mapAttrs (_: c: (em {{ config = c; }}).warnings) {nix_value(configs)}")
    out = nixpkgs_lib.eval(expr)
    [warning] = out["left"]
    assert "secret db_password: mode 0440 lets group root read it" in warning, warning
    assert 'set group = "grafana", or group = "root" to keep it' in warning, warning
    assert out["root-said"] == out["owner-only"] == out["root-owner"] == []
    [warning] = out["short-mode"]           # shown as the profile has it (a review)
    assert "mode 0440 lets group root read it" in warning, warning


def test_a_path_where_every_user_may_create_names_is_a_warning(
        nixpkgs_lib: Nix, rich: Rich, tmp_path: Path) -> None:
    """The twin of check's warning (found in review): a path under /tmp can be taken
    first by any user, whose directory there then stops every activation."""
    cases = {"tmp": _base_secret(rich, path="/tmp/app/db"),
             "shm": _base_secret(rich, path="/dev/shm/db"),
             "etc": _base_secret(rich, path="/etc/app/db"),
             "tmpish": _base_secret(rich, path="/tmpfiles/db")}
    configs = {n: write_module(tmp_path / f"{n}.nix", c) for n, c in cases.items()}
    expr = (f"let em = import {nix_value(EVAL_MODULE)}; in "
            f"builtins.mapAttrs (_: c: (em {{ config = c; }}).warnings) {nix_value(configs)}")
    out = nixpkgs_lib.eval(expr)
    [warning] = out["tmp"]
    assert warning.startswith("vaultpy: secret db_password: path /tmp/app/db lies under "
                              "/tmp, where every user may create names"), warning
    assert "/dev/shm, where every user" in out["shm"][0]
    assert out["etc"] == out["tmpish"] == []


def test_a_host_key_path_that_is_not_there_is_one_line(nixpkgs_lib: Nix, rich: Rich,
                                                      tmp_path: Path) -> None:
    """hostPubkey = ./hosts/web1.pub with no such file was Nix's bare "opening file";
    a key line with spaces around it slipped past the age1 check (a NixOS review)."""
    base = _base_secret(rich)
    cfg = write_module(tmp_path / "c.nix", {"vaultpy": {**base["vaultpy"], "settings": {
        **base["vaultpy"]["settings"], "hostPubkey": tmp_path / "missing.pub"}}})
    proc = nixpkgs_lib.eval_proc(file=EVAL_MODULE, attr="profileJson",
                                 args=["--arg", "config", str(cfg)])
    assert proc.returncode != 0
    assert (f"vaultpy.settings.hostPubkey: {tmp_path}/missing.pub: no such file; give the "
            "host's /etc/ssh/ssh_host_ed25519_key.pub") in proc.stderr, proc.stderr
    spaced = write_module(tmp_path / "s.nix", {"vaultpy": {
        "settings": {"hostPubkey": "  " + rich.pub["edge1"] + " ", "cacheRoot": rich.cache,
                     "hostName": "edge1"},
        "secrets": {"db_password": {"file": rich.masters["db_password"]}}}})
    failed = nixpkgs_lib.eval(f"(import {nix_value(EVAL_MODULE)} {{ config = "
                              f"{nix_value(spaced)}; }}).failedAssertions")
    assert any("this host's key is an age1… key" in f for f in failed), failed


def test_the_host_key_may_be_given_as_a_path(nixpkgs_lib: Nix, rich: Rich,
                                             tmp_path: Path) -> None:
    """vaultix and agenix-rekey take hostPubkey = ./web1.pub; here it was a type error."""
    pub = tmp_path / "web1.pub"
    pub.write_text(rich.pub["web1"] + "\n")
    by_text = _base_secret(rich)
    by_path = _base_secret(rich)
    by_path["vaultpy"]["settings"]["hostPubkey"] = pub
    in_list = _base_secret(rich)
    in_list["vaultpy"]["settings"]["hostPubkey"] = [pub]
    out = eval_modules(nixpkgs_lib, {n: write_module(tmp_path / f"{n}.nix", c) for n, c in
                                     {"text": by_text, "path": by_path, "list": in_list}.items()})
    assert out["path"]["failedAssertions"] == [] == out["list"]["failedAssertions"]
    assert out["path"]["profile"] == out["text"]["profile"] == out["list"]["profile"]


def test_a_hosts_identities_reach_its_profile_on_every_path(nixpkgs_lib: Nix, rich: Rich,
                                                            tmp_path: Path) -> None:
    """[hosts.edge1] identities (an age1 host: its key is no sshd host key) names the
    key files in the profile: `vaultpy profile`, lib.profileFromHostsToml and the
    module (settings.hostKeys) alike.  Only profile.json could say it before."""
    want = ["/var/lib/vaultpy/edge1.key"]
    cli = json.loads(cli_profiles(rich.root, ["edge1", "db1"])["edge1"])
    assert cli["settings"]["identities"] == want
    lib_side = nixpkgs_lib.eval(
        f"(import {nix_value(LIB_NIX)}).profileFromHostsToml {{ hostsToml = "
        f"{nix_value(rich.root / 'hosts.toml')}; host = \"edge1\"; }}")
    assert lib_side["settings"]["identities"] == want
    config = write_module(tmp_path / "edge1.nix", {
        "vaultpy": {"hostsToml": rich.root / "hosts.toml"}, "networking": {"hostName": "edge1"}})
    out = eval_modules(nixpkgs_lib, {"edge1": config})["edge1"]
    assert out["profile"]["settings"]["identities"] == want
    assert out["failedAssertions"] == []


def test_a_secrets_file_defaults_to_its_id_in_secrets_dir(nixpkgs_lib: Nix, rich: Rich,
                                                          tmp_path: Path) -> None:
    """vaultpy.secrets.db_password = { } failed with "`file' was accessed but has no
    value defined"; with settings.secretsDir (vaultix's defaultSecretDirectory) the
    file is <id>.age there, and without it the error says what to set."""
    given = _base_secret(rich)
    by_dir = _base_secret(rich)
    del by_dir["vaultpy"]["secrets"]["db_password"]["file"]
    by_dir["vaultpy"]["settings"]["secretsDir"] = rich.masters["db_password"].parent
    out = eval_modules(nixpkgs_lib, {n: write_module(tmp_path / f"{n}.nix", c)
                                     for n, c in {"given": given, "dir": by_dir}.items()})
    assert out["dir"]["failedAssertions"] == []
    assert out["dir"]["profile"] == out["given"]["profile"]
    del by_dir["vaultpy"]["settings"]["secretsDir"]
    proc = nixpkgs_lib.eval_proc(file=EVAL_MODULE, attr="profile",
                                 args=["--arg", "config", str(write_module(
                                     tmp_path / "none.nix", by_dir))])
    assert proc.returncode != 0
    assert ("vaultpy: secret db_password: file is not set: give "
            "vaultpy.secrets.db_password.file = ./secrets/db_password.age, or set "
            "vaultpy.settings.secretsDir") in proc.stderr, proc.stderr


def test_a_path_on_the_hosts_own_key_is_refused_by_the_module(nixpkgs_lib: Nix, rich: Rich,
                                                              tmp_path: Path) -> None:
    """A link there would replace the key activation decrypts with, and lead nowhere
    after a reboot (vaultpy check refuses the same in hosts.toml)."""
    mod = _base_secret(rich, path="/etc/ssh/ssh_host_ed25519_key")
    other = _base_secret(rich, path="/etc/ssh/ssh_host_ed25519_key")
    other["vaultpy"]["settings"]["hostKeys"] = ["/etc/vaultpy/host.key"]
    out = eval_modules(nixpkgs_lib, {"sshd": write_module(tmp_path / "sshd.nix", mod),
                                     "other": write_module(tmp_path / "other.nix", other)})
    assert out["sshd"]["failedAssertions"] == [
        "vaultpy: secret db_password: path /etc/ssh/ssh_host_ed25519_key is one of "
        "vaultpy.settings.hostKeys, the private key activation decrypts with: give it a "
        "path of its own (a link there would lead nowhere after a reboot, and nothing could "
        "be decrypted)"]
    assert out["other"]["failedAssertions"] == []     # not this host's key: a secret's file


def test_a_private_key_given_as_the_host_pubkey_is_never_shown(nixpkgs_lib: Nix, rich: Rich,
                                                               tmp_path: Path) -> None:
    """The key file beside the .pub (a typo away): the assertion names it, never its
    text, which would be in every build log."""
    key, _ = ssh_keygen(tmp_path, "ssh_host_ed25519_key", comment="root@web1")
    mod = _base_secret(rich)
    mod["vaultpy"]["settings"]["hostPubkey"] = key
    failed = eval_modules(nixpkgs_lib, {"k": write_module(tmp_path / "k.nix", mod)}
                          )["k"]["failedAssertions"]
    said = "\n".join(failed)
    assert ("vaultpy.settings.hostPubkey: a private key (its text is not shown) is not an "
            "ssh-ed25519 or age1 public key") in said, failed
    assert "PRIVATE KEY-----" not in said and key.read_text().splitlines()[1] not in said


def test_a_password_file_where_no_secret_is_installed_is_refused(nixpkgs_lib: Nix,
                                                                  rich: Rich,
                                                                  tmp_path: Path) -> None:
    """hashedPasswordFile = "/run/vaultpy/db_password" for an early secret (its file is
    in /run/vaultpy-early): the user would have no password, without a word."""
    mod = {**_base_secret(rich, early=True),
           "users": {"users": {"alice": {"hashedPasswordFile": "/run/vaultpy/db_password"}}}}
    right = {**_base_secret(rich, early=True),
             "users": {"users": {"alice": {
                 "hashedPasswordFile": "/run/vaultpy-early/db_password"}}}}
    out = eval_modules(nixpkgs_lib, {n: write_module(tmp_path / f"{n}.nix", c)
                                     for n, c in {"wrong": mod, "right": right}.items()})
    assert out["wrong"]["failedAssertions"] == [
        "vaultpy: users.users.alice.hashedPasswordFile is /run/vaultpy/db_password, where "
        "no secret is installed: secret db_password is at /run/vaultpy-early/db_password; "
        "write config.vaultpy.secrets.db_password.path"]
    assert out["right"]["failedAssertions"] == []


def test_a_sops_style_id_is_refused_with_the_id_an_import_makes(nixpkgs_lib: Nix, rich: Rich,
                                                                 tmp_path: Path) -> None:
    """vaultpy.secrets."db/password", as sops-nix names it: one line with the id to use
    (migrate_sops.to_id's, whose twin common.toId is), not a fix that cannot work."""
    from vaultpy.migrate_sops import to_id

    mod = _base_secret(rich)
    mod["vaultpy"]["secrets"] = {"db/password": {"file": tmp_path / "nope.age"}}
    failed = nixpkgs_lib.eval(file=EVAL_MODULE, attr="failedAssertions", args=[
        "--arg", "config", str(write_module(tmp_path / "s.nix", mod))])
    assert ('vaultpy: secret id "db/password" is invalid: use letters, digits, _ . - '
            "(starting with a letter or digit, at most 128), as in hosts.toml (vaultpy "
            "import sops names it db_password: vaultpy.secrets.db_password, and {{ "
            "secrets.db_password }} in templates)") in failed, failed
    assert not any("vaultpy edit db/password" in m for m in failed), failed
    words = ["db/password", "/lead/x", "a b//c", "-x", "..a", "ok", "ü/x", "a.b-c_d"]
    got = nixpkgs_lib.eval(f"let c = import {nix_value(ROOT / 'nix' / 'common.nix')} "
                           "{ lib = import (builtins.getEnv \"NIXPKGS_LIB\"); }; in map c.toId "
                           f"(builtins.fromJSON {nix_value(json.dumps(words))})")
    assert got == [to_id(w) for w in words]


def test_lib_near_misses_are_the_pythons(nix: Nix) -> None:
    """lib.nearMisses, the twin of templates.near_misses (check's warning)."""
    from vaultpy import templates as vtemplates

    texts = ["a {{ secret.db }} b", "{{ Secrets.db.pw }}", "{{secrets: x}}", "{{ secrets . y }}",
             "{{ secrets.ok }}", "{{{{ secret.lit }}", "x {{ SECRET:z }}{{ secret.w }}",
             "{{ secret.a }} and {{ secrets.b }} and {{ SeCrEtS.c }}", "no {{ such.x }}", ""]
    want = [[{"text": t, "id": m[len("{{ secrets."):-3]} for _l, _c, t, m
             in vtemplates.near_misses(text)] for text in texts]
    assert any(want) and not all(want)
    got = nix.eval(f"map (import {nix_value(LIB_NIX)}).nearMisses "
                   f"(builtins.fromJSON {nix_value(json.dumps(texts))})")
    assert got == want


def test_a_mistyped_placeholder_is_warned_of_by_the_module(nixpkgs_lib: Nix, rich: Rich,
                                                           tmp_path: Path) -> None:
    mod = _base_secret(rich)
    mod["vaultpy"]["templates"] = {"app.env": {"content": "A={{ secret.db_password }}\n"
                                               "B={{ secret.password }}\n"}}   # (Jinja's)
    out = eval_modules(nixpkgs_lib, {"t": write_module(tmp_path / "t.nix", mod)})["t"]
    assert out["warnings"] == [
        'vaultpy: template app.env: "{{ secret.db_password }}" is kept as text, not a '
        "placeholder; did you mean {{ secrets.db_password }}? (to keep it, write {{{{ for "
        "its {{)"], out["warnings"]
    assert out["failedAssertions"] == []


def test_a_templates_text_may_come_from_a_file(nixpkgs_lib: Nix, rich: Rich,
                                               tmp_path: Path) -> None:
    """sops-nix's templates.<name>.file: the text read at evaluation, the same profile
    as with content; both set, neither set, or a missing file: one line each."""
    text = "DB={{ secrets.db_password }}\n"
    (tmp_path / "app.env").write_text(text)
    with_content = _base_secret(rich)
    with_content["vaultpy"]["templates"] = {"app.env": {"content": text}}
    with_file = _base_secret(rich)
    with_file["vaultpy"]["templates"] = {"app.env": {"file": tmp_path / "app.env"}}
    both = _base_secret(rich)
    both["vaultpy"]["templates"] = {"app.env": {"file": tmp_path / "app.env", "content": "x"}}
    out = eval_modules(nixpkgs_lib, {n: write_module(tmp_path / f"{n}.nix", c) for n, c in
                                     {"content": with_content, "file": with_file,
                                      "both": both}.items()})
    assert out["file"]["failedAssertions"] == []
    assert out["file"]["profile"] == out["content"]["profile"]
    assert out["file"]["profile"]["templates"][0]["content"] == text
    assert out["both"]["failedAssertions"] == [
        "vaultpy: template app.env: both content and file are set: remove one (content "
        "imported from hosts.toml with vaultpy.hostsToml counts too)"]
    for name, spec, said in (
            ("missing", {"file": tmp_path / "nope.env"}, "vaultpy: template app.env: file "
             f"{tmp_path}/nope.env does not exist: create it, or give the template's content"),
            ("none", {}, "vaultpy: template app.env: no text: set its content, or file = "
             "./templates/app.env (a file holding it)")):
        mod = _base_secret(rich)
        mod["vaultpy"]["templates"] = {"app.env": spec}
        proc = nixpkgs_lib.eval_proc(file=EVAL_MODULE, attr="profile", args=[
            "--arg", "config", str(write_module(tmp_path / f"{name}.nix", mod))])
        assert proc.returncode != 0 and said in proc.stderr, (name, proc.stderr)


def test_an_option_path_names_a_dotted_id_as_nix_writes_it(nixpkgs_lib: Nix, rich: Rich,
                                                           tmp_path: Path) -> None:
    """The fix to paste: vaultpy.secrets.db.password.file would be another option."""
    mod = _base_secret(rich)
    mod["vaultpy"]["secrets"] = {"db.password": {}}
    proc = nixpkgs_lib.eval_proc(file=EVAL_MODULE, attr="profile",
                                 args=["--arg", "config", str(write_module(
                                     tmp_path / "dotted.nix", mod))])
    assert proc.returncode != 0
    assert ('vaultpy: secret db.password: file is not set: give '
            'vaultpy.secrets."db.password".file = ./secrets/db.password.age') in proc.stderr, \
        proc.stderr


# =========================================================================== signed cache

def test_a_signed_cache_reaches_the_profile_on_every_path(nixpkgs_lib: Nix, tmp_path: Path
                                                          ) -> None:
    """With [vaultpy] signing_key, `vaultpy profile`, lib.profileFromHostsToml (byte for
    byte) and the module (the list and its signature copied to the store) all give
    activation the key and the signed list; the module refuses a host whose list is
    missing, as activation would."""
    root = tmp_path / "demo"
    root.mkdir()
    shutil.copy(ROOT / "hosts.toml", root)
    for d in ("secrets", "demo"):
        shutil.copytree(ROOT / d, root / d)
    identity = root / "demo" / "master-identity.demo-only.txt"
    repo = Repo(root, identity, "", env={"VAULTPY_IDENTITY": str(identity)})
    repo.ok("signing-key")
    repo.ok("renc")
    _profile_parity(nixpkgs_lib, root, ["db1", "mail1", "web1"])
    key = " ".join(repo.ok("signing-key", "--public").stdout.decode().split()[:2])
    cli = json.loads(cli_profiles(root, ["mail1"])["mail1"])
    host_dir = root / "secrets" / "cache" / "mail1"    # (no owners to declare)
    assert cli["signed"] == {"key": key, "sums": str(host_dir / "SHA256SUMS"),
                             "signature": str(host_dir / "SHA256SUMS.sig")}
    config = write_module(tmp_path / "mail1.nix", {
        "vaultpy": {"hostsToml": root / "hosts.toml"}, "networking": {"hostName": "mail1"}})
    out = eval_modules(nixpkgs_lib, {"mail1": config})["mail1"]
    assert out["failedAssertions"] == []
    assert out["profile"]["signed"] == {
        "key": key, "sums": store_path_of_file(host_dir / "SHA256SUMS"),
        "signature": store_path_of_file(host_dir / "SHA256SUMS.sig")}
    # A list older than its files (a new value renc'd, the list not committed with it):
    # refused at evaluation, not first by activation on the host.
    old = {n: (host_dir / n).read_bytes() for n in ("SHA256SUMS", "SHA256SUMS.sig")}
    repo.ok("encrypt", "smtp_password", input=b"a new value")
    repo.ok("renc")
    for name, data in old.items():
        (host_dir / name).write_bytes(data)
    out = eval_modules(nixpkgs_lib, {"mail1": config})["mail1"]
    (stale,) = [m for m in out["failedAssertions"] if "SHA256SUMS lists" in m]
    assert "smtp_password." in stale and "not committed with it?" in stale and "git add" in stale
    (host_dir / "SHA256SUMS.sig").unlink()
    out = eval_modules(nixpkgs_lib, {"mail1": config})["mail1"]
    assert any("SHA256SUMS or its .sig is missing" in m and "vaultpy renc" in m
               for m in out["failedAssertions"]), out["failedAssertions"]
