"""hosts.toml's ``nixos``: renc reads hosts and secrets from NixOS configurations.

The configurations are real: the module (nix/module.nix) evaluated by the real
``lib.evalModules`` of the nixpkgs lib (../shared/nixpkgs-lib), through Debian's
``nix-instantiate``, run by vaultpy itself; the cache it writes is decrypted by the real
``age`` CLI and found by the module's own cache-name computation.  One test evaluates a
real flake (``builtins.getFlake``) in a store under the test's temp directory.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Nix, Repo, age_decrypt, assert_one_clean_error, need, ssh_keygen
from test_nix import Raw, nix_value

from vaultpy import nixhosts

STUBS = ROOT / "tests" / "nix" / "nixos-stubs.nix"
MODULE = ROOT / "nix" / "module.nix"
FAKE_PACKAGE = {"type": "derivation", "name": "vaultpy",
                "outPath": "/nix/store/11111111111111111111111111111111-vaultpy"}


def nixos_file(path: Path, lib: Path, configs: Mapping[str, Mapping[str, Any]]) -> Path:
    """A Nix file evaluating to ``{ <name> = lib.evalModules { … }; }``: NixOS
    configurations as far as the module is concerned (tests/nix/nixos-stubs.nix)."""
    body = " ".join(
        f"{json.dumps(name)} = mk ({nix_value(cfg)});" for name, cfg in configs.items())
    path.write_text(
        f"let lib = import {nix_value(lib)};\n"
        f"  mk = c: lib.evalModules {{ modules = [ {nix_value(STUBS)} {nix_value(MODULE)}\n"
        f"    {{ vaultpy.package = {nix_value(FAKE_PACKAGE)}; }} c ]; }};\n"
        f"in {{ {body} }}\n")
    return path


@pytest.fixture
def nixrepo(make_repo: Callable[..., Repo], nixpkgs_lib: Nix, tmp_path: Path
            ) -> tuple[Repo, Callable[..., None], Path]:
    """A repository whose hosts.toml declares secrets but no host, whose nixos.nix
    declares host0 with two of them (its key given as a path, as agenix-rekey takes it),
    and a configuration without vaultpy's secrets; and a function to rewrite it."""
    repo = make_repo(hosts=2, secrets={"db": b"db-pass\n", "api": b"api-token",
                                       "other": b"not for host0"})
    lib = Path(nixpkgs_lib.env["NIXPKGS_LIB"])
    toml = (repo.root / "hosts.toml").read_text()
    head, _, _ = toml.partition("\n[hosts.")
    repo.write_hosts(head.replace("[vaultpy]\n", '[vaultpy]\nnixos = "nixos.nix"\n', 1))
    repo.env.update({"NIX_STATE_DIR": str(tmp_path / "nix-state"), "NIX_PATH": ""})

    def write(**changes: Any) -> None:
        host0 = {"networking": {"hostName": "host0"},
                 "vaultpy": {"settings": {"hostPubkey": Path(f"{repo.hosts['host0'].key}.pub"),
                                          "cacheRoot": repo.root / "secrets" / "cache"},
                             "secrets": {"db": {"file": repo.root / "secrets" / "db.age",
                                                "owner": "root"},
                                         "api": {"file": repo.root / "secrets" / "api.age"}}}}
        for key, value in changes.items():
            node = host0["vaultpy"]
            *parents, last = key.split(".")
            for p in parents:
                node = node[p]
            if value is None:
                node.pop(last)
            else:
                node[last] = value
        nixos_file(repo.root / "nixos.nix", lib, {
            "host0": host0, "bare": {"networking": {"hostName": "bare"}}})

    write()
    return repo, write, lib


def module_eval(nix: Nix, repo: Repo) -> dict[str, Any]:
    """What the module itself makes of host0: failed assertions, cache files it reads."""
    expr = (f"let c = (import {nix_value(repo.root / 'nixos.nix')}).host0.config; in {{ "
            "failed = map (a: a.message) (builtins.filter (a: !a.assertion) c.assertions); "
            "files = map (s: baseNameOf s.file) c.vaultpy.profile.secrets; }")
    result: dict[str, Any] = nix.eval(expr)
    return result


def test_renc_writes_what_the_configurations_declare(nixrepo: tuple[Repo, Any, Path],
                                                    nixpkgs_lib: Nix) -> None:
    repo, _write, _lib = nixrepo
    before = module_eval(nixpkgs_lib, repo)
    # (before any renc, no directory for the host: cacheRoot or hostName, or renc)
    assert any("no cache directory" in m and m.endswith("then run vaultpy renc")
               for m in before["failed"]), before
    repo.ok("renc")
    files = sorted(p.name for p in (repo.cache / "host0").iterdir())
    assert [f.split(".")[0] for f in files] == ["api", "db"]      # not "other"
    assert not (repo.cache / "bare").exists()
    key = repo.hosts["host0"].key
    assert age_decrypt(next((repo.cache / "host0").glob("db.*")), key) == b"db-pass\n"
    assert age_decrypt(next((repo.cache / "host0").glob("api.*")), key) == b"api-token"
    # The module finds exactly these files: its assertions pass.
    after = module_eval(nixpkgs_lib, repo)
    assert after["failed"] == [] and sorted(
        f.split("-", 1)[1] for f in after["files"]) == files
    repo.ok("check")
    assert "host0" in repo.ok("status").stdout.decode()
    # Its profile is the module's: vaultpy's own would miss every Nix option.
    line = assert_one_clean_error(repo.run("profile", "--host", "host0"), "nixos.nix",
                                  "config.vaultpy.profileFile", "nixosConfigurations.host0")
    assert "declared in the NixOS configuration 'host0'" in line


def test_a_secret_added_in_nix_is_written_and_one_removed_is_pruned(
        nixrepo: tuple[Repo, Any, Path]) -> None:
    repo, write, _lib = nixrepo
    repo.ok("renc")
    write(**{"secrets.other": {"file": repo.root / "secrets" / "other.age"},
             "secrets.api": None})
    out = json.loads(repo.ok("renc", "--json").stdout)
    assert [Path(p).name.split(".")[0] for p in out["written"]] == ["other"]
    assert [Path(p).name.split(".")[0] for p in out["pruned"]] == ["api"]
    assert age_decrypt(next((repo.cache / "host0").glob("other.*")),
                       repo.hosts["host0"].key) == b"not for host0"


def test_a_host_in_both_gets_the_union(nixrepo: tuple[Repo, Any, Path],
                                       nixpkgs_lib: Nix) -> None:
    """A configuration that imports hosts.toml (vaultpy.hostsToml) and adds secrets of
    its own: renc writes all of them, and the module installs all of them."""
    repo, write, _lib = nixrepo
    host0 = repo.hosts["host0"]
    text = (repo.root / "hosts.toml").read_text()
    repo.write_hosts(text + f'\n[hosts.host0]\npubkey = "{host0.pubkey}"\n'
                     'secrets = ["other"]\n')
    write(hostsToml=repo.root / "hosts.toml")
    repo.ok("renc")
    assert sorted(p.name.split(".")[0] for p in (repo.cache / "host0").iterdir()) == \
        ["api", "db", "other"]
    view = module_eval(nixpkgs_lib, repo)
    assert view["failed"] == [] and len(view["files"]) == 3


def test_host_commands_on_a_host_nix_imports_from_hosts_toml(
        nixrepo: tuple[Repo, Any, Path]) -> None:
    """hosts.toml stays the source (the README's vaultpy.hostsToml set-up): host rotate
    edits it, and host add lists a host whose configuration imports it already, which
    until then evaluates to nothing for vaultpy (the module would throw)."""
    repo, _write, lib = nixrepo
    text = (repo.root / "hosts.toml").read_text()
    repo.write_hosts(text + f'\n[hosts.host1]\npubkey = "{repo.hosts["host1"].pubkey}"\n'
                     'secrets = ["other"]\n')
    imports = {"vaultpy": {"hostsToml": repo.root / "hosts.toml"}}
    body = (repo.root / "nixos.nix").read_text()
    nixos_file(repo.root / "nixos.nix", lib, {
        "h1": {"networking": {"hostName": "host1"}, **imports},
        "h2": {"networking": {"hostName": "host2"}, **imports}})
    (repo.root / "nixos.nix").write_text((repo.root / "nixos.nix").read_text().replace(
        "in {", "in { " + body.split("in {", 1)[1].rsplit("}", 1)[0], 1))
    repo.ok("renc")
    repo.ok("host", "rotate", "host1", "--pubkey", repo.hosts["host0"].pubkey)
    assert age_decrypt(next((repo.cache / "host1").glob("other.*")),
                       repo.hosts["host0"].key) == b"not for host0"
    key, pub = ssh_keygen(repo.root / "keys", "host2", comment="root@host2")
    repo.ok("host", "add", "host2", "--pubkey", pub, "--secrets", "other")
    assert age_decrypt(next((repo.cache / "host2").glob("other.*")), key) == b"not for host0"
    repo.ok("check")


@pytest.mark.parametrize("case", ["key", "file", "cache", "unset-key", "throw", "missing",
                                  "shared", "id", "order", "string-cache", "store-path",
                                  "hostname", "nothing", "not-config", "not-imported",
                                  "template-undeclared", "persons-name"])
def test_disagreements_are_one_line(nixrepo: tuple[Repo, Any, Path], case: str) -> None:
    repo, write, _lib = nixrepo
    root = repo.root
    text = (root / "hosts.toml").read_text()
    needles: tuple[str, ...]
    if case == "key":           # hosts.toml gives host0 another key, Nix sets its own
        repo.write_hosts(text + f'\n[hosts.host0]\npubkey = "{repo.hosts["host1"].pubkey}"\n'
                         'secrets = ["other"]\n')
        write(hostsToml=root / "hosts.toml")
        needles = ("nixos.nix", "nixosConfigurations.host0: vaultpy.settings.hostPubkey",
                   "differs from [hosts.host0]")
    elif case == "file":        # the same id, another master file
        write(**{"secrets.db": {"file": root / "secrets" / "other.age"}})
        needles = ("nixosConfigurations.host0: vaultpy.secrets.db.file",
                   "hosts.toml gives secret 'db' the master file")
    elif case == "cache":
        (root / "elsewhere").mkdir()
        write(**{"settings.cacheRoot": root / "elsewhere"})
        needles = ("vaultpy.settings.cacheRoot", "not the cache_dir renc writes",
                   "point both at the same directory")
    elif case == "unset-key":
        write(**{"settings.hostPubkey": None})
        needles = ("nixosConfigurations.host0: vaultpy.settings.hostPubkey", "not set")
    elif case == "throw":       # no file, no secretsDir: the module's own message
        write(**{"secrets.api": {"owner": "root"}})
        needles = ("nixos.nix", "did not evaluate", "secret api: file is not set",
                   "fix that, then run again")
    elif case == "missing":
        (root / "nixos.nix").unlink()
        needles = ("hosts.toml", "vaultpy.nixos", "nixos.nix: no such file")
    elif case == "shared":      # a new id whose master file is another secret's
        write(**{"secrets.db2": {"file": root / "secrets" / "db.age"}})
        needles = ("vaultpy.secrets.db2.file", "is already the master file of secret 'db'")
    elif case == "id":
        write(**{"secrets.bad/id": {"file": root / "secrets" / "db.age"}})
        needles = ("nixosConfigurations.host0: vaultpy.secrets", "'bad/id' is invalid")
    elif case == "order":       # the same keys in another order: other cache names
        age = repo.recipient
        repo.write_hosts(text + f'\n[hosts.host0]\npubkey = ["{repo.hosts["host0"].pubkey}", '
                         f'"{age}"]\nsecrets = ["other"]\n')
        write(**{"settings.hostPubkey": [age, repo.hosts["host0"].pubkey],
                 "hostsToml": root / "hosts.toml"})
        needles = ("vaultpy.settings.hostPubkey", "differs from [hosts.host0]",
                   "in the same order")
    elif case == "string-cache":
        write(**{"settings.cacheRoot": str(root / "secrets" / "cache")})
        needles = ("vaultpy.settings.cacheRoot", "is the string", "not a Nix path")
    elif case == "store-path":  # "${./x}": a store path of its own
        write(**{"secrets.db": {"file": Raw(f'"${{{nix_value(root / "secrets" / "db.age")}}}"')}})
        needles = ("vaultpy.secrets.db.file", "a store path of its own", "unquoted")
    elif case == "hostname":
        write(**{"settings.hostName": "h" * 200})
        needles = ("nixosConfigurations.host0: vaultpy.settings.hostName",
                   "invalid host name")
    elif case == "nothing":     # the flake itself, say: nothing there imports the module
        (root / "nixos.nix").write_text("{ bare = { config = { }; }; }\n")
        needles = ("nixos.nix", "vaultpy.nixos", "no configuration in it imports vaultpy's "
                   "module (bare)")
    elif case == "template-undeclared":     # renc and check died with KeyError (exit 70)
        write(templates={"ghost.env": {"content": "G={{ secrets.ghost }}"}})
        needles = ("nixosConfigurations.host0: vaultpy.templates.\"ghost.env\"",
                   "uses secret 'ghost', which this configuration does not declare",
                   "declare vaultpy.secrets.ghost")
    elif case == "not-imported":    # its profile is the module's: the table is dead
        repo.write_hosts(text + f'\n[hosts.host0]\npubkey = "{repo.hosts["host0"].pubkey}"\n'
                         'secrets = ["other"]\n')
        needles = ("nixosConfigurations.host0: vaultpy.hostsToml", "also declared in "
                   "hosts.toml", "would never be installed", "vaultpy.hostsToml = ./hosts.toml")
    elif case == "persons-name":    # a person's entry is no host's (was: "import it")
        repo.write_hosts(text + f'\n[hosts.host0]\nuser = true\npubkey = '
                         f'"{repo.hosts["host1"].pubkey}"\nsecrets = ["other"]\n')
        needles = ("nixosConfigurations.host0: vaultpy.settings.hostName", "a person's entry "
                   "in hosts.toml", "give the host its own name")
    else:
        (root / "nixos.nix").write_text("{ outputs = { self }: { }; }\n")
        needles = ("nixos.nix", "nixosConfigurations.outputs", "not a NixOS configuration")
    for command in ("renc", "check"):
        assert_one_clean_error(repo.run(command), *needles)
    assert not (repo.cache / "host0").exists()


def test_nix_instantiate_missing_is_one_line(nixrepo: tuple[Repo, Any, Path],
                                             tmp_path: Path) -> None:
    repo, _write, _lib = nixrepo
    empty = tmp_path / "no-nix"
    empty.mkdir()
    proc = repo.run("renc", env={"PATH": str(empty)})
    assert_one_clean_error(proc, "hosts.toml", "vaultpy.nixos", "nix-instantiate is not "
                           "installed", "remove nixos")


def test_no_memo_is_recorded(nixrepo: tuple[Repo, Any, Path]) -> None:
    """The memo knows hosts.toml's inputs, not Nix's: a change in nixos.nix alone must
    not be answered from it."""
    repo, write, _lib = nixrepo
    repo.ok("renc")
    repo.ok("renc")
    repo.ok("check")
    assert not (repo.cache / ".vaultpy-memo").exists()
    write(**{"secrets.other": {"file": repo.root / "secrets" / "other.age"}})
    assert repo.run("check").returncode != 0
    repo.ok("renc")
    repo.ok("check")


def test_a_flake_is_read_through_its_store_copy(nixrepo: tuple[Repo, Any, Path],
                                                tmp_path: Path) -> None:
    """A real flake: ``builtins.getFlake`` copies the repository into a store (here one
    under the temp directory), so every path names the copy; renc maps them back."""
    repo, _write, _lib = nixrepo
    git = need("git")
    root = repo.root
    # Paths relative to the flake: the copy must hold what they name.
    text = (root / "nixos.nix").read_text().replace(f"(/. + \"{root}", "(./. + \"")
    (root / "configs.nix").write_text(text)
    (root / "flake.nix").write_text(
        "{ outputs = { self }: { nixosConfigurations = import ./configs.nix; }; }\n")
    # git+file: the copy holds what git tracks, as `nixos-rebuild --flake .` builds
    (root / "nixos.nix").write_text(
        '(builtins.getFlake "git+file://${toString ./.}").nixosConfigurations\n')
    for cmd in (["init", "-q"], ["add", "-A"],
                ["-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "i"]):
        subprocess.run([git, *cmd], cwd=root, check=True)
    store = tmp_path / "store"
    env = {"NIX_CONFIG": f"store = {store}"}
    repo.ok("renc", env=env)
    assert list(store.glob("nix/store/*-source/secrets/db.age")), "no store copy was made"
    assert sorted(p.name.split(".")[0] for p in (repo.cache / "host0").iterdir()) == \
        ["api", "db"]
    # A master file git does not track is not in the copy: named, with what to do.
    (root / "secrets" / "new.age").write_bytes((root / "secrets" / "db.age").read_bytes())
    text = (root / "configs.nix").read_text().replace(
        '"api" = {', '"new" = { "file" = (./. + "/secrets/new.age"); }; "api" = {')
    (root / "configs.nix").write_text(text)
    subprocess.run([git, "add", "configs.nix"], cwd=root, check=True)
    assert_one_clean_error(repo.run("renc", env=env), "vaultpy.secrets.new.file",
                           "secrets/new.age is not in the flake's copy", "git add it")
    subprocess.run([git, "add", "secrets/new.age"], cwd=root, check=True)
    repo.ok("renc", env=env)
    assert age_decrypt(next((repo.cache / "host0").glob("new.*")),
                       repo.hosts["host0"].key) == b"db-pass\n"
    # Declared before its master exists: vaultpy encrypt makes it, where the flake reads.
    text = (root / "configs.nix").read_text().replace(
        '"api" = {', '"fresh" = { "file" = (./. + "/secrets/fresh.age"); }; "api" = {')
    (root / "configs.nix").write_text(text)
    subprocess.run([git, "add", "configs.nix"], cwd=root, check=True)
    repo.ok("encrypt", "fresh", input=b"fresh value", env=env)
    subprocess.run([git, "add", "secrets/fresh.age"], cwd=root, check=True)
    repo.ok("renc", env=env)
    assert age_decrypt(next((repo.cache / "host0").glob("fresh.*")),
                       repo.hosts["host0"].key) == b"fresh value"



def test_store_paths_map_to_the_repository(tmp_path: Path) -> None:
    """The mapping alone: a store path's part under the copy, from hosts.toml's folder
    up to the git top; an ordinary path as it is."""
    top = tmp_path / "top"
    (top / ".git").mkdir(parents=True)
    (top / "infra" / "secrets").mkdir(parents=True)
    (top / "secrets").mkdir()
    (top / "secrets" / "x.age").write_bytes(b"")
    cfg = type("C", (), {"root": top / "infra"})()
    store = "/nix/store/" + "a" * 32 + "-source"
    assert nixhosts._local(cfg, f"{store}/secrets/x.age") == [top / "secrets" / "x.age"]  # type: ignore[arg-type]
    assert nixhosts._local(cfg, f"/tmp/root{store}/secrets/x.age") == \
        [top / "secrets" / "x.age"]                                       # type: ignore[arg-type]
    assert nixhosts._local(cfg, f"{store}/secrets/y.age") == []          # type: ignore[arg-type]
    assert nixhosts._local(cfg, "/srv/a/../b.age") == [Path("/srv/b.age")]  # type: ignore[arg-type]
    assert nixhosts._local(cfg, f"{store}/secrets/cache", exists=False) == [  # type: ignore[arg-type]
        top / "infra" / "secrets" / "cache", top / "secrets" / "cache"]
    # With the store copy at hand, the file with its bytes: not the nearer namesake.
    copy = tmp_path / "root" / store.lstrip("/") / "secrets" / "x.age"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"top")
    (top / "secrets" / "x.age").write_bytes(b"top")
    (top / "infra" / "secrets" / "x.age").write_bytes(b"infra")
    assert nixhosts._local(cfg, str(copy)) == [top / "secrets" / "x.age"]  # type: ignore[arg-type]
    (top / "secrets" / "x.age").write_bytes(b"changed")
    assert nixhosts._local(cfg, str(copy)) == []                          # type: ignore[arg-type]


def test_nix_error_is_the_throw_text() -> None:
    stderr = ("error:\n       … while evaluating the attribute 'x'\n\n"
              "         at /r/nixos.nix:3:5:\n\n"
              "       error: vaultpy: secret api: file is not set: give it\n")
    assert nixhosts._nix_error(stderr) == "vaultpy: secret api: file is not set: give it"
    assert nixhosts._nix_error("error: undefined variable 'x'\n\n       at /r/a.nix:1:7:\n\n"
                               "            1| { a = x; }\n"
                               "(use '--show-trace' to show detailed location information)\n") \
        == "undefined variable 'x' (at /r/a.nix:1:7)"



def test_host_commands_keep_and_name_the_nix_hosts(nixrepo: tuple[Repo, Any, Path]) -> None:
    """host add renews the cache with the Nix hosts still in it (never pruning
    theirs); host rm and rotate of a host Nix declares say where to change it."""
    repo, _write, _lib = nixrepo
    repo.ok("renc")
    before = {p.name for p in (repo.cache / "host0").iterdir()}
    host1 = repo.hosts["host1"]
    repo.ok("host", "add", "host1", "--pubkey", host1.pubkey, "--secrets", "other")
    assert {p.name for p in (repo.cache / "host0").iterdir()} == before
    assert age_decrypt(next((repo.cache / "host1").glob("other.*")), host1.key) == \
        b"not for host0"
    for args in (("rm", "host0"), ("rotate", "host0", "--pubkey", host1.pubkey),
                 ("add", "host0", "--pubkey", host1.pubkey)):
        assert_one_clean_error(repo.run("host", *args), "nixos.nix", "vaultpy.nixos",
                               "host 'host0' is declared in the NixOS configuration 'host0'",
                               "nixosConfigurations.host0.config.vaultpy")
    assert {p.name for p in (repo.cache / "host0").iterdir()} == before
    repo.ok("check")


def test_a_store_copy_not_on_disk_is_trusted(make_repo: Callable[..., Repo]) -> None:
    """Lazy trees, a remote store: the copy a path names may not be on this disk.  The
    repository's file is then taken, not refused as 'not in the flake's copy'."""
    from vaultpy import model

    repo = make_repo(hosts=1, secrets={"db": b"x"})
    text = (repo.root / "hosts.toml").read_text().partition("\n[hosts.")[0]
    text = text.replace("[vaultpy]\n", '[vaultpy]\nnixos = "nixos.nix"\n', 1)
    cfg = model.parse(text, repo.root / "hosts.toml")
    store = "/nix/store/" + "0" * 32 + "-source"
    assert not Path(store).exists()
    merged = nixhosts.merge(cfg, {"h": {
        "host": "h", "recipients": [repo.hosts["host0"].pubkey],
        "cacheRoot": f"{store}/secrets/cache", "cacheRootIsPath": True,
        "installed": {"db": "db", "new": "new"}, "templates": {}, "hostsToml": None,
        "keyFromHostsToml": False,
        "secrets": {"db": f"{store}/secrets/db.age", "new": f"{store}/secrets/new.age"}}})
    assert merged.secrets["db"].file == repo.root / "secrets" / "db.age"
    assert merged.secrets["new"].file == repo.root / "secrets" / "new.age"   # not written yet
    assert merged.hosts["h"].nixos == "h" and merged.hosts["h"].needed == ("db", "new")


def test_check_names_nixos_where_it_names_hosts_toml(nixrepo: tuple[Repo, Any, Path],
                                                     nixpkgs_lib: Nix) -> None:
    """A host dropped from the configurations, a master no one declares: the words say
    where hosts and secrets are declared, both places."""
    repo, _write, lib = nixrepo
    repo.ok("renc")
    nixos_file(repo.root / "nixos.nix", lib, {"bare": {"networking": {"hostName": "bare"},
                                                       "vaultpy": {"secrets": {}}}})
    (repo.root / "nixos.nix").write_text((repo.root / "nixos.nix").read_text().replace(
        "in {", "in { keep = mk ({ networking.hostName = \"keep\"; vaultpy.settings = { "
        f"hostPubkey = \"{repo.hosts['host1'].pubkey}\"; cacheRoot = "
        f"{nix_value(repo.cache)}; }}; vaultpy.secrets.other.file = "
        f"{nix_value(repo.root / 'secrets' / 'other.age')}; }});", 1))
    (repo.root / "secrets" / "stray.age").write_bytes(b"")
    proc = repo.run("check")
    err = proc.stdout.decode() + proc.stderr.decode()
    assert "directory of a host that is not in hosts.toml or nixos.nix" in err, err
    assert "no secret in hosts.toml or nixos.nix has this master file" in err, err
    assert "declare it ([secrets.stray], or in nixos.nix)" in err, err
    assert_one_clean_error(repo.run("edit", "newid"), "unknown secret id 'newid'",
                           "or vaultpy.secrets.newid in a configuration of nixos.nix")


def test_status_shows_the_module_names_and_install_false(nixrepo: tuple[Repo, Any, Path]
                                                         ) -> None:
    """A secret installed under another name, and one with install = false (its value
    only for the module's templates): renc writes both; status shows the second as no
    file of its own, as it shows a template's secret."""
    repo, write, _lib = nixrepo
    write(**{"secrets.db": {"file": repo.root / "secrets" / "db.age", "name": "db.conf"},
             "secrets.api": {"file": repo.root / "secrets" / "api.age", "install": False},
             "templates": {"app.env": {"content": "TOKEN={{ secrets.api }}\n"}}})
    repo.ok("renc")
    grants = json.loads(repo.ok("access", "--json").stdout)
    rows = grants["grants"] if isinstance(grants, dict) else grants
    by_id = {g["secret"]: g for g in rows if g["host"] == "host0"}
    assert by_id["api"]["templates"] == ["app.env"], by_id
    assert by_id["api"]["installed_as"] is None and by_id["db"]["installed_as"] == "db.conf"
    assert sorted(p.name.split(".")[0] for p in (repo.cache / "host0").iterdir()) == \
        ["api", "db"]
    data = json.loads(repo.ok("status", "--json").stdout)
    rows = {r["id"]: r for r in data["entries"] if r["host"] == "host0"}
    assert rows["db"]["installed"] is True and rows["api"]["installed"] is False, data


def test_a_secret_hosts_toml_declares_needs_no_evaluation(nixrepo: tuple[Repo, Any, Path],
                                                          tmp_path: Path) -> None:
    """encrypt, decrypt and edit of a secret hosts.toml declares run without Nix (and
    with a configuration that does not evaluate); one only Nix declares needs it."""
    repo, write, _lib = nixrepo
    write(**{"secrets.nixonly": {"file": repo.root / "secrets" / "nixonly.age"}})
    repo.ok("encrypt", "nixonly", input=b"from nix")
    empty = tmp_path / "no-nix"
    empty.mkdir()
    no_nix = {"PATH": str(empty)}      # no nix-instantiate, and no sh either
    assert repo.ok("decrypt", "db", env=no_nix).stdout == b"db-pass\n"
    repo.ok("encrypt", "db", input=b"new", env=no_nix)
    assert repo.ok("decrypt", "db", env=no_nix).stdout == b"new"
    editor = tmp_path / "ed.sh"
    editor.write_text("#!/bin/sh\nprintf edited > \"$1\"\n")
    editor.chmod(0o755)
    repo.ok("edit", "db", env={**no_nix, "EDITOR": str(editor), "VISUAL": str(editor)})
    assert repo.ok("decrypt", "db", env=no_nix).stdout == b"edited"
    assert_one_clean_error(repo.run("decrypt", "nixonly", env=no_nix),
                           "nix-instantiate is not installed")
    assert repo.ok("decrypt", "nixonly").stdout == b"from nix"


def test_hosts_toml_hosts_use_a_secret_only_nix_declares(nixrepo: tuple[Repo, Any, Path],
                                                        tmp_path: Path) -> None:
    """Declared once, in a configuration: a plain host of hosts.toml gets it too (and
    host add can give it); an id declared nowhere is still one line."""
    repo, write, _lib = nixrepo
    write(**{"secrets.nixonly": {"file": repo.root / "secrets" / "nixonly.age"}})
    repo.ok("encrypt", "nixonly", input=b"shared")
    text = (repo.root / "hosts.toml").read_text()
    host1 = repo.hosts["host1"]
    repo.write_hosts(text + f'\n[hosts.host1]\npubkey = "{host1.pubkey}"\n'
                     'secrets = ["nixonly"]\n')
    repo.ok("renc")
    assert age_decrypt(next((repo.cache / "host1").glob("nixonly.*")), host1.key) == b"shared"
    key, pub = ssh_keygen(tmp_path, "host2", comment="root@host2")
    repo.ok("host", "add", "host2", "--pubkey", pub, "--secrets", "nixonly")
    assert age_decrypt(next((repo.cache / "host2").glob("nixonly.*")), key) == b"shared"
    repo.write_hosts(text + f'\n[hosts.host1]\npubkey = "{host1.pubkey}"\n'
                     'secrets = ["nowhere"]\n')
    for command in ("renc", "check"):
        assert_one_clean_error(repo.run(command), "hosts.toml", "hosts.host1.secrets.nowhere",
                               "unknown secret id 'nowhere'")


def test_imported_hosts_review_cases(nixrepo: tuple[Repo, Any, Path]) -> None:
    """Configurations importing hosts.toml: a Nix template of the same name as one of
    hosts.toml wins, and its secrets are written; a host name hosts.toml lacks is a
    warning, not a silent ok; an id hosts.toml gives such a host that only Nix declares
    gets the fix in the error; decrypt of an id declared nowhere names that id."""
    repo, _write, lib = nixrepo
    root = repo.root
    text = (root / "hosts.toml").read_text()
    repo.write_hosts(text + f'\n[hosts.host1]\npubkey = "{repo.hosts["host1"].pubkey}"\n'
                     'secrets = ["other"]\n[hosts.host1.templates."app.env"]\n'
                     'content = "X={{ secrets.db }}"\n')
    body = (root / "nixos.nix").read_text()
    imports = {"hostsToml": root / "hosts.toml"}
    nixos_file(root / "nixos.nix", lib, {
        "h1": {"networking": {"hostName": "host1"}, "vaultpy": {
            **imports, "secrets": {"api": {"file": root / "secrets" / "api.age",
                                           "install": False}},
            "templates": {"app.env": {"content": "Y={{ secrets.api }}"}}}},
        "typo": {"networking": {"hostName": "hots1"}, "vaultpy": dict(imports)}})
    (root / "nixos.nix").write_text((root / "nixos.nix").read_text().replace(
        "in {", "in { " + body.split("in {", 1)[1].rsplit("}", 1)[0], 1))
    proc = repo.ok("renc")
    assert "nixosConfigurations.typo" in proc.stderr.decode()
    assert next((repo.cache / "host1").glob("api.*"), None) is not None
    proc = repo.ok("check")
    assert "imports hosts.toml, which has no [hosts.hots1]" in proc.stderr.decode() + \
        proc.stdout.decode()
    assert_one_clean_error(repo.run("decrypt", "nowhere"), "unknown secret id 'nowhere'")
    # host1 (imported) is given an id only host0's configuration declares
    (root / "hosts.toml").write_text((root / "hosts.toml").read_text().replace(
        'secrets = ["other"]\n[hosts.host1.templates', 'secrets = ["other", "db2"]\n'
        '[hosts.host1.templates', 1))
    (root / "nixos.nix").write_text((root / "nixos.nix").read_text().replace(
        '"api" = {', f'"db2" = {{ "file" = {nix_value(root / "secrets" / "db.age")}; }}; '
        '"api" = {', 1))
    assert_one_clean_error(repo.run("renc"), "declare [secrets.db2] in hosts.toml")


def test_host_rm_is_the_way_out_of_a_host_declared_twice(
        nixrepo: tuple[Repo, Any, Path]) -> None:
    """host0 in hosts.toml too, and its configuration does not import hosts.toml: every
    command says to remove it from hosts.toml, and `vaultpy host rm` did not, refusing
    with that same line."""
    repo, _write, _lib = nixrepo
    host = repo.hosts["host0"]
    with (repo.root / "hosts.toml").open("a") as f:
        f.write(f'\n[hosts.host0]\npubkey = "{host.pubkey}"\nsecrets = ["db"]\n')
    said = assert_one_clean_error(repo.run("renc"), "also declared in hosts.toml")
    assert "remove [hosts.host0] from hosts.toml" in said, said
    out = repo.ok("host", "rm", "host0")
    assert "removed host host0 from hosts.toml" in out.stderr.decode(), out
    assert "[hosts.host0]" not in (repo.root / "hosts.toml").read_text()
    repo.ok("renc")                 # host0 is Nix's alone again
    # a host only Nix declares is still refused, with the line that says so
    assert_one_clean_error(repo.run("host", "rm", "host0"), "host0")
