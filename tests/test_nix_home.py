"""nix/home-module.nix (home-manager: a user's own secrets) against the Python side.

The real Debian ``nix-instantiate`` and the real ``lib.evalModules`` of the nixpkgs
lib copy (tests/test_nix.py says how they are found); home-manager's own options are
declared loosely by tests/nix/home-manager-stubs.nix (home-manager is not in this
checkout).  Python results come from the real CLI (``vaultpy profile --user``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, Nix, Repo, age_keygen, ssh_keygen, toml_str
from test_nix import (
    FAKE_PACKAGE,
    Raw,
    nix_value,
    normalise_files,
    store_path_of_file,
    store_path_of_text,
    write_module,
)

from vaultpy import profile as vprofile

EVAL = ROOT / "tests" / "nix" / "eval-home-module.nix"
SYSTEMCTL = "/nix/store/00000000000000000000000000000000-systemd/bin/systemctl"
AGE_KEY = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


class Alice:
    """A repository with a user's entry, alice (her own ssh key), renc'd."""

    def __init__(self, root: Path) -> None:
        (root / "keys").mkdir(parents=True)
        identity, recipient = age_keygen(root / "keys", "master.txt")
        _key, self.pub = ssh_keygen(root / "keys", "alice", comment="alice@laptop")
        self.root = root
        self.repo = Repo(root, identity, recipient, env={"VAULTPY_IDENTITY": str(identity)})
        self.repo.write_hosts(
            f"[vaultpy]\nrecipients = [{toml_str(recipient)}]\n\n[secrets.token]\n"
            f"[secrets.db]\n\n[hosts.alice]\npubkey = {toml_str(self.pub)}\n\n"
            "[hosts.alice.secrets.token]\nmode = \"0600\"\n"
            "path = \"/home/alice/.config/app/token\"\n"
            "restart_units = [\"app.service\"]\n\n"
            "[hosts.alice.templates.\"app.env\"]\ncontent = \"DB={{ secrets.db }}\\n\"\n")
        (root / "secrets").mkdir()
        self.repo.ok("encrypt", "token", input=b"api-token\n")
        self.repo.ok("encrypt", "db", input=b"db-password")
        self.repo.ok("renc")

    def options(self, **settings: Any) -> dict[str, Any]:
        """The same, as home-manager options."""
        return {"vaultpy": {
            "settings": {"hostPubkey": self.pub, "cacheRoot": self.root / "secrets" / "cache",
                         **settings},
            "secrets": {
                "token": {"file": self.root / "secrets/token.age", "mode": "0600",
                          "path": "/home/alice/.config/app/token",
                          "restartUnits": ["app.service"]},
                "db": {"file": self.root / "secrets/db.age", "install": False},
            },
            "templates": {"app.env": {"content": "DB={{ secrets.db }}\n"}},
        }}


@pytest.fixture(scope="module")
def alice(tmp_path_factory: pytest.TempPathFactory) -> Alice:
    return Alice(tmp_path_factory.mktemp("home") / "repo")


def evaluate(nix: Nix, configs: dict[str, Path], attr: str = "") -> dict[str, Any]:
    """Every output of tests/nix/eval-home-module.nix (or only ``attr``) per config."""
    expr = (f"let em = import {nix_value(EVAL)}; in builtins.mapAttrs (_: c: "
            f"(em {{ config = c; }}){'.' + attr if attr else ''}) {nix_value(configs)}")
    out: dict[str, Any] = nix.eval(expr)
    return out


def test_the_modules_profile_is_the_clis(nixpkgs_lib: Nix, alice: Alice, tmp_path: Path) -> None:
    """The module writes what `vaultpy profile --user` writes, field for field, but for
    the places in the home: the module knows it (/home/alice/…), the CLI says %h.  Read
    by activation's loader, for alice, the two are the same profile; each cache file is
    the store copy of the CLI's."""
    out = evaluate(nixpkgs_lib, {"a": write_module(tmp_path / "a.nix", alice.options())})["a"]
    assert out["failedAssertions"] == []
    cli = json.loads(alice.repo.ok("profile", "-H", "alice", "--user").stdout)
    module = normalise_files(out["profile"], store=True)
    assert {k: v for k, v in module.items() if k != "settings"} == \
        {k: v for k, v in normalise_files(cli, store=False).items() if k != "settings"}
    assert module["settings"] == {**cli["settings"],
                                  "identities": ["/home/alice/.ssh/id_ed25519"],
                                  "dir": "/home/alice/.local/state/vaultpy/secrets",
                                  "early_dir": "/home/alice/.local/state/vaultpy/early"}
    env = {"HOME": "/home/alice", "XDG_RUNTIME_DIR": "/run/user/1000"}
    assert vprofile.parse(module, "m", Path("/"), env) == \
        vprofile.parse(normalise_files(cli, store=False), "m", Path("/"), env)
    by_id = {s["id"]: s["file"] for s in cli["secrets"]}
    for s in out["profile"]["secrets"]:
        assert s["file"] == store_path_of_file(Path(by_id[s["id"]])), s["id"]
    assert json.loads(out["profileJson"]) == out["profile"]


def test_defaults_give_programs_absolute_paths(nixpkgs_lib: Nix, alice: Alice,
                                               tmp_path: Path) -> None:
    """By default the live link is in the home (a path a program's option can take);
    the generations are in RAM, the runtime directory; the key is ~/.ssh/id_ed25519."""
    opts = alice.options()
    del opts["vaultpy"]["secrets"]["token"]["path"]
    out = evaluate(nixpkgs_lib, {"a": write_module(tmp_path / "a.nix", opts)})["a"]
    assert out["failedAssertions"] == []
    assert out["settings"] == {"hostKeys": ["/home/alice/.ssh/id_ed25519"],
                               "dir": "/home/alice/.local/state/vaultpy/secrets",
                               "store": "%r/vaultpy.d", "hostName": "alice"}
    assert out["paths"]["token"] == "/home/alice/.local/state/vaultpy/secrets/token"
    assert out["paths"]["template:app.env"] == "/home/alice/.local/state/vaultpy/secrets/app.env"
    assert out["paths"]["db"] is None                 # not installed: no file
    settings = out["profile"]["settings"]
    assert settings["user"] is True and settings["store"] == "%r/vaultpy.d"
    assert all({"owner", "group", "early"}.isdisjoint(i)
               for i in out["profile"]["secrets"] + out["profile"]["templates"])


def test_the_user_unit_activates_the_profile(nixpkgs_lib: Nix, alice: Alice,
                                             tmp_path: Path) -> None:
    out = evaluate(nixpkgs_lib, {"a": write_module(tmp_path / "a.nix", alice.options())})["a"]
    unit = out["services"]["vaultpy"]
    files = [s["file"] for s in out["profile"]["secrets"]]
    profile = store_path_of_text("vaultpy-profile-alice.json", out["profileJson"], files)
    assert unit["Service"]["ExecStart"] == (
        f"{FAKE_PACKAGE}/bin/vaultpy-activate --profile {profile} --systemctl {SYSTEMCTL}")
    assert unit["Service"]["Type"] == "oneshot" and unit["Service"]["RemainAfterExit"] is True
    assert unit["Install"]["WantedBy"] == ["default.target"]
    assert unit["Unit"]["X-Restart-Triggers"] == [profile]
    assert out["packages"] == [FAKE_PACKAGE]


def test_nothing_declared_adds_nothing(nixpkgs_lib: Nix, tmp_path: Path) -> None:
    out = evaluate(nixpkgs_lib, {"a": write_module(tmp_path / "a.nix", {})})["a"]
    assert out["services"] == {} and out["packages"] == [] and out["failedAssertions"] == []


def test_a_private_key_given_as_the_pubkey_is_never_shown(nixpkgs_lib: Nix, alice: Alice,
                                                          tmp_path: Path) -> None:
    """hostPubkey = ./id_ed25519 (the .pub left off): the assertion, which goes to build
    logs, says what it is and not what it holds."""
    key, _ = ssh_keygen(tmp_path, "id_ed25519", comment="alice@laptop")
    opts = alice.options()
    opts["vaultpy"]["settings"]["hostPubkey"] = key
    failed = evaluate(nixpkgs_lib, {"a": write_module(tmp_path / "a.nix", opts)},
                      "failedAssertions")["a"]
    said = "\n".join(failed)
    assert "a private key (its text is not shown)" in said and "the .pub file" in said, failed
    assert "PRIVATE KEY-----" not in said and key.read_text().splitlines()[1] not in said


@pytest.mark.parametrize(("change", "needle"), [
    (lambda o: o["vaultpy"]["settings"].pop("hostPubkey"),
     "vaultpy.settings.hostPubkey is not set"),
    (lambda o: o["vaultpy"]["settings"].pop("cacheRoot"), "vaultpy.settings.cacheRoot is not set"),
    (lambda o: o["vaultpy"]["settings"].update(hostName="bob"),
     "vaultpy: secret token: no cache file"),
    (lambda o: o["vaultpy"]["templates"].update({"x": {"content": "{{ secrets.nope }}"}}),
     "template x uses secrets.nope: declare vaultpy.secrets.nope"),
    (lambda o: o["vaultpy"]["secrets"]["token"].update(
        path="/home/alice/.local/state/vaultpy/secrets/x"), "lies in or above vaultpy's own"),
    (lambda o: o["vaultpy"]["templates"]["app.env"].update(path="/home/alice/.config/app/token"),
     "use the same path /home/alice/.config/app/token"),
    (lambda o: o["vaultpy"]["settings"].update(
        store="/home/alice/.local/state/vaultpy/secrets/gens"), "overlap"),
    (lambda o: o["vaultpy"]["settings"].update(hostPubkey=[]),
     "vaultpy.settings.hostPubkey is not set"),
    (lambda o: o["vaultpy"]["settings"].update(cacheRoot="/somewhere/cache"),
     "not a Nix path"),
    (lambda o: o["vaultpy"]["settings"].update(hostPubkey=AGE_KEY),
     "your key is an age1… key, and hostKeys is ~/.ssh/id_ed25519"),
    (lambda o: o["vaultpy"]["secrets"]["token"].update(file=Path("/nonexistent/t.age")),
     "vaultpy: secret token: master file /nonexistent/t.age does not exist"),
    (lambda o: o["vaultpy"]["secrets"]["db"].update(path="/home/alice/.db"),
     "vaultpy: secret db: path is set, but install = false"),
    (lambda o: o["vaultpy"]["templates"].update({"y": {"content": "{{ secrets.token }"}}),
     "vaultpy: template y: broken placeholder"),
    (lambda o: o["vaultpy"]["templates"]["app.env"].update(
        path="/home/alice/.config/app/token/app.env"), "lies inside /home/alice/.config/app/token"),
])
def test_mistakes_fail_as_assertions_that_say_what_to_do(nixpkgs_lib: Nix, alice: Alice,
                                                         tmp_path: Path, change: Any,
                                                         needle: str) -> None:
    opts = alice.options()
    change(opts)
    # (home-manager stops at failed assertions: the profile is never built then)
    failed = evaluate(nixpkgs_lib, {"a": write_module(tmp_path / "a.nix", opts)},
                      "failedAssertions")["a"]
    assert any(needle in m for m in failed), failed


@pytest.mark.parametrize("bad", ["owner", "group", "early"])
def test_a_hosts_only_options_do_not_exist_here(nixpkgs_lib: Nix, alice: Alice,
                                                tmp_path: Path, bad: str) -> None:
    opts = alice.options()
    opts["vaultpy"]["secrets"]["token"][bad] = True if bad == "early" else "root"
    proc = nixpkgs_lib.eval_proc(file=EVAL, attr="profileJson",
                                 args=["--arg", "config", str(write_module(tmp_path / "a.nix",
                                                                           opts))])
    assert proc.returncode != 0
    assert f"vaultpy.secrets.token.{bad}' does not exist" in proc.stderr, proc.stderr


def test_the_flakes_home_manager_module_sets_the_package(nixpkgs_lib: Nix, alice: Alice) -> None:
    pkg = "/nix/store/22222222222222222222222222222222-vaultpy"
    expr = f"""
      let
        lib = import (builtins.getEnv "NIXPKGS_LIB");
        fake = {{ type = "derivation"; name = "vaultpy"; outPath = "{pkg}"; }};
        nixpkgs = {{ inherit lib; legacyPackages.x86_64-linux.callPackage = _: _: fake; }};
        self = (import {nix_value(ROOT / 'flake.nix')}).outputs {{ inherit self nixpkgs; }};
        c = (lib.evalModules {{ modules = [
          {nix_value(ROOT / 'tests' / 'nix' / 'home-manager-stubs.nix')}
          self.homeManagerModules.default
          {{ _module.args.pkgs = {{ stdenv.hostPlatform.system = "x86_64-linux"; }};
             home.username = "alice"; home.homeDirectory = "/home/alice"; }}
          {nix_value(Raw(nix_value(alice.options())))}
        ]; }}).config;
      in c.systemd.user.services.vaultpy.Service.ExecStart"""
    assert nixpkgs_lib.eval(expr).startswith(f"{pkg}/bin/vaultpy-activate --profile /nix/store/")


def test_an_age_key_with_its_identity_file_is_fine(nixpkgs_lib: Nix, alice: Alice,
                                                  tmp_path: Path) -> None:
    opts = alice.options(hostPubkey=AGE_KEY,
                         hostKeys=["/home/alice/.config/sops/age/keys.txt"])
    failed = evaluate(nixpkgs_lib, {"a": write_module(tmp_path / "a.nix", opts)},
                      "failedAssertions")["a"]
    assert not any("age1" in m for m in failed), failed


def test_a_percent_in_a_path_is_written_to_mean_itself(nixpkgs_lib: Nix, alice: Alice,
                                                       tmp_path: Path) -> None:
    """Activation expands %h and %r in a user's profile: the module writes a % of its
    own as %%, and the store's leading %r as the specifier it is."""
    opts = alice.options(store="%r/vault%py.d")
    opts["vaultpy"]["secrets"]["token"]["path"] = "/home/alice/50%off/token"
    out = evaluate(nixpkgs_lib, {"a": write_module(tmp_path / "a.nix", opts)})["a"]
    assert out["failedAssertions"] == []
    token = next(s for s in out["profile"]["secrets"] if s["id"] == "token")
    assert token["path"] == "/home/alice/50%%off/token"
    assert out["profile"]["settings"]["store"] == "%r/vault%%py.d"
    read = vprofile.parse(normalise_files(out["profile"], store=True), "m", Path("/"),
                          {"HOME": "/home/alice", "XDG_RUNTIME_DIR": "/run/user/1000"})
    assert read.settings.store == "/run/user/1000/vault%py.d"
    assert read.secret("token").out.path == "/home/alice/50%off/token"  # type: ignore[union-attr]


@pytest.mark.parametrize(("opts", "needle"), [
    ({"settings": {"dir": "~/.secrets"}}, "not ~ or $HOME"),
    ({"secrets": {"token": {"path": "$HOME/.token"}}}, "not ~ or $HOME"),
])
def test_a_path_not_absolute_says_how_to_write_one(nixpkgs_lib: Nix, alice: Alice,
                                                   tmp_path: Path, opts: dict[str, Any],
                                                   needle: str) -> None:
    config = alice.options()
    for key, value in opts.items():
        for k, v in value.items():
            if isinstance(v, dict):
                config["vaultpy"][key][k].update(v)
            else:
                config["vaultpy"][key][k] = v
    proc = nixpkgs_lib.eval_proc(file=EVAL, attr="profileJson",
                                 args=["--arg", "config", str(write_module(tmp_path / "a.nix",
                                                                           config))])
    assert proc.returncode != 0 and needle in proc.stderr, proc.stderr


def test_a_user_name_hosts_toml_cannot_hold_asks_for_host_name(nixpkgs_lib: Nix,
                                                               alice: Alice,
                                                               tmp_path: Path) -> None:
    config = alice.options()
    config["home"] = {"username": Raw('lib.mkForce "alice@corp"')}
    path = tmp_path / "a.nix"
    path.write_text("{ lib, ... }: " + nix_value(config) + "\n")
    proc = nixpkgs_lib.eval_proc(file=EVAL, attr="profileJson", args=["--arg", "config",
                                                                       str(path)])
    assert proc.returncode != 0
    assert ('vaultpy.settings.hostName: home.username "alice@corp" is no name hosts.toml '
            "can hold") in proc.stderr, proc.stderr


def test_lib_user_settings_are_the_pythons(nix: Nix) -> None:
    """lib.nix userSettings and vaultpy/profile.py USER_SETTINGS: one set of defaults
    (the home module sets every field but `user` itself, so nothing else compares them)."""
    from test_nix import LIB_NIX

    assert nix.eval(f"(import {nix_value(LIB_NIX)}).userSettings") == vprofile.USER_SETTINGS


# ------------------------------------------------- vaultpy.hostsToml: a person's entry

def _person(root: Path) -> Repo:
    """A repository whose [hosts.alice] is a person's (user = true), %h in its paths,
    renc'd."""
    (root / "keys").mkdir(parents=True)
    identity, recipient = age_keygen(root / "keys", "master.txt")
    _key, pub = ssh_keygen(root / "keys", "alice", comment="alice@laptop")
    repo = Repo(root, identity, recipient, env={"VAULTPY_IDENTITY": str(identity)})
    repo.write_hosts(
        f"[vaultpy]\nrecipients = [{toml_str(recipient)}]\n\n[secrets.token]\n[secrets.db]\n\n"
        f"[hosts.alice]\nuser = true\npubkey = {toml_str(pub)}\n"
        'identities = ["%h/.ssh/id_vaultpy"]\n\n'
        '[hosts.alice.secrets.token]\nmode = "0600"\npath = "%h/.config/app/token"\n'
        'restart_units = ["app.service"]\n\n'
        '[hosts.alice.templates."app.env"]\ncontent = "DB={{ secrets.db }}\\n"\n'
        'path = "%h/.config/app/env"\n')
    (root / "secrets").mkdir()
    repo.ok("encrypt", "token", input=b"api-token\n")
    repo.ok("encrypt", "db", input=b"db-password")
    repo.ok("renc")
    return repo


def test_hosts_toml_import_gives_the_clis_profile(nixpkgs_lib: Nix, tmp_path: Path) -> None:
    """vaultpy.hostsToml with a person's entry: key, cache, master files, secrets,
    templates and key path all from hosts.toml, %h written as the home; read by
    activation's loader for alice, the same profile `vaultpy profile` writes."""
    repo = _person(tmp_path / "repo")
    config = write_module(tmp_path / "a.nix", {"vaultpy": {"hostsToml": repo.root /
                                                           "hosts.toml"}})
    out = evaluate(nixpkgs_lib, {"a": config})["a"]
    assert out["failedAssertions"] == []
    cli = json.loads(repo.ok("profile", "-H", "alice").stdout)
    assert cli["settings"]["user"] is True
    module = normalise_files(out["profile"], store=True)
    env = {"HOME": "/home/alice", "XDG_RUNTIME_DIR": "/run/user/1000"}
    assert vprofile.parse(module, "m", Path("/"), env) == \
        vprofile.parse(normalise_files(cli, store=False), "m", Path("/"), env)
    assert out["settings"]["hostKeys"] == ["/home/alice/.ssh/id_vaultpy"]
    assert out["paths"]["token"] == "/home/alice/.config/app/token"
    assert out["paths"]["template:app.env"] == "/home/alice/.config/app/env"
    # the options win over hosts.toml
    config = write_module(tmp_path / "b.nix", {"vaultpy": {
        "hostsToml": repo.root / "hosts.toml", "secrets": {"token": {"mode": "0400"}}}})
    out = evaluate(nixpkgs_lib, {"b": config})["b"]
    assert {s["id"]: s["mode"] for s in out["profile"]["secrets"]}["token"] == "0400"


@pytest.mark.parametrize(("hosts_edit", "needle"), [
    (lambda t: t.replace("user = true\n", ""),
     "hosts.alice.user: not a person's entry: the home-manager module imports a person's "
     "entry only; add user = true"),
    (lambda t: t.replace('path = "%h/.config/app/token"', 'path = "%r/token"'),
     "hosts.alice.secrets.token.path: \"%r/token\": the home-manager module writes a path "
     "with %h (your home) only"),
    (lambda t: t.replace('mode = "0600"', 'mode = "0600"\nowner = "app"'),
     "hosts.alice.secrets.token.owner: owner in a person's entry (user = true)"),
    # a typo is not pointed at the owner it would then refuse
    (lambda t: t.replace('mode = "0600"', 'mode = "0600"\nownr = "app"'),
     "hosts.alice.secrets.token.ownr: unknown key; allowed keys: name, mode, path, "
     "restart_units, reload_units"),
    (lambda t: t.replace('mode = "0600"', 'mdoe = "0600"'),
     "hosts.alice.secrets.token.mdoe: unknown key; did you mean 'mode'?"),
    (lambda t: t.replace("[hosts.alice]", "[hosts.bob]").replace("hosts.alice.", "hosts.bob."),
     "no [hosts.alice] in"),
    # one line naming hosts.toml's field, not the option type's error about the module
    (lambda t: t.replace('path = "%h/.config/app/token"', 'path = "/srv/%h/x"'),
     'hosts.alice.secrets.token.path: invalid path "/srv/%h/x"'),
    (lambda t: t.replace('path = "%h/.config/app/env"', 'path = "%h/.local/state/vaultpy"'),
     'hosts.alice.templates."app.env".path: path "%h/.local/state/vaultpy" overlaps'),
    (lambda t: t.replace('mode = "0600"', 'mode = "0600"\nearly = true'),
     "hosts.alice.secrets.token.early: early in a person's entry (user = true): early files "
     "are for a host's boot"),
    (lambda t: t.replace('restart_units = ["app.service"]', 'restart_units = ["bad unit"]'),
     'hosts.alice.secrets.token.restart_units: invalid unit name "bad unit"'),
    (lambda t: "\n".join(ln for ln in t.splitlines() if not ln.startswith("pubkey")) + "\n",
     "hosts.alice.pubkey: missing: give the person's ~/.ssh/id_ed25519.pub line"),
])
def test_hosts_toml_import_mistakes_are_one_line(nixpkgs_lib: Nix, tmp_path: Path,
                                                 hosts_edit: Any, needle: str) -> None:
    repo = _person(tmp_path / "repo")
    hosts = repo.root / "hosts.toml"
    hosts.write_text(hosts_edit(hosts.read_text()))
    config = write_module(tmp_path / "a.nix", {"vaultpy": {"hostsToml": hosts}})
    proc = nixpkgs_lib.eval_proc(file=EVAL, attr="profileJson", args=["--arg", "config",
                                                                     str(config)])
    assert proc.returncode != 0
    line = next((ln for ln in proc.stderr.splitlines() if needle in ln), "")
    assert line.startswith("error: vaultpy.hostsToml: ") and str(hosts) in line, proc.stderr


def test_hosts_toml_as_a_string_says_to_write_a_path(nixpkgs_lib: Nix, tmp_path: Path) -> None:
    """A quoted hostsToml makes every path from it a string: the one assertion that
    fires (about cacheRoot, never set by hand) says to unquote hostsToml too."""
    repo = _person(tmp_path / "repo")
    config = write_module(tmp_path / "a.nix", {"vaultpy": {
        "hostsToml": str(repo.root / "hosts.toml")}})
    failed = evaluate(nixpkgs_lib, {"a": config}, "failedAssertions")["a"]
    assert any("not a Nix path" in m and "for vaultpy.hostsToml too: ./hosts.toml" in m
               for m in failed), failed


def test_a_signed_cache_reaches_the_persons_profile(nixpkgs_lib: Nix, tmp_path: Path) -> None:
    """With [vaultpy] signing_key, the home module's profile carries the key and the
    list (copied to the store), as `vaultpy profile` does: the user's activation
    refuses a forged file as a host's does."""
    repo = _person(tmp_path / "repo")
    repo.ok("signing-key")
    repo.ok("renc")
    config = write_module(tmp_path / "a.nix", {"vaultpy": {"hostsToml": repo.root /
                                                           "hosts.toml"}})
    out = evaluate(nixpkgs_lib, {"a": config})["a"]
    assert out["failedAssertions"] == []
    key = " ".join(repo.ok("signing-key", "--public").stdout.decode().split()[:2])
    folder = repo.cache / "alice"
    assert out["profile"]["signed"] == {
        "key": key, "sums": store_path_of_file(folder / "SHA256SUMS"),
        "signature": store_path_of_file(folder / "SHA256SUMS.sig")}
    cli = json.loads(repo.ok("profile", "-H", "alice").stdout)
    assert cli["signed"]["key"] == key
    (folder / "SHA256SUMS").unlink()
    out = evaluate(nixpkgs_lib, {"a": config})["a"]
    assert any("SHA256SUMS or its .sig is missing" in m for m in out["failedAssertions"])
