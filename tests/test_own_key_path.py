"""An item's ``path`` may not be the private key its entry decrypts with (its
``identities``, else sshd's host key or a person's ~/.ssh/id_ed25519): the link would
replace that key, and would lead nowhere once the runtime directory is gone after a
reboot, when nothing could be decrypted any more.  Refused by ``vaultpy check`` (and
every command loading hosts.toml), by lib.profileFromHostsToml and the modules'
import of hosts.toml, and by activation's profile loader, each in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, Nix, Repo

from vaultpy import profile as vprofile
from vaultpy.errors import VaultpyError

LIB = ROOT / "nix" / "lib.nix"


CASES = {   # the entry's head, its item, the field, the path, whose key
    "host-default": ("", '[hosts.host0.secrets.db]\npath = "/etc/ssh/ssh_host_ed25519_key"\n',
                     "hosts.host0.secrets.db.path", "/etc/ssh/ssh_host_ed25519_key", "host's"),
    "host-identities": ('identities = ["/etc/vaultpy/host.key"]\n',
                        '[hosts.host0.templates."app.env"]\ncontent = "x"\n'
                        'path = "/etc/vaultpy/host.key"\n',
                        'hosts.host0.templates."app.env".path', "/etc/vaultpy/host.key",
                        "host's"),
    "person-default": ("user = true\n", '[hosts.host0.secrets.db]\npath = "%h/.ssh/id_ed25519"\n',
                       "hosts.host0.secrets.db.path", "%h/.ssh/id_ed25519", "person's"),
}


@pytest.mark.parametrize("case", CASES)
def test_check_and_lib_nix_refuse_a_path_on_the_entrys_own_key(make_repo, nix: Nix,  # type: ignore[no-untyped-def]
                                                               case: str) -> None:
    repo: Repo = make_repo(hosts=1, secrets={"db": b"pw\n"})
    head, body, field, path, whose = CASES[case]
    text = (repo.root / "hosts.toml").read_text().replace('secrets = ["db"]\n', "", 1)
    repo.write_hosts(text.replace("[hosts.host0]\n", "[hosts.host0]\n" + head) + body)
    expected = f"{field}: path {path!r} is the {whose} private key, which activation decrypts"
    proc = repo.run("check")
    said = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 1 and expected in said, said
    assert "give the secret a path of its own" in said
    assert "Traceback" not in said
    lib = nix.eval_proc(f'(import {LIB}).profileFromHostsToml {{ hostsToml = '
                        f'{repo.root}/hosts.toml; host = "host0"; }}')
    assert lib.returncode != 0
    assert f"{field}: path {json.dumps(path)} is the {whose} private key" in lib.stderr, \
        lib.stderr


def test_another_key_file_may_be_a_path(make_repo) -> None:  # type: ignore[no-untyped-def]
    """Deploying a key is fine, where the entry does not decrypt with it."""
    repo: Repo = make_repo(hosts=1, secrets={"db": b"pw\n"})
    text = (repo.root / "hosts.toml").read_text().replace('secrets = ["db"]\n', "", 1)
    repo.write_hosts(text.replace("[hosts.host0]\n", '[hosts.host0]\nidentities = '
                                  '["/etc/vaultpy/host.key"]\n')
                     + '[hosts.host0.secrets.db]\npath = "/etc/ssh/ssh_host_ed25519_key"\n')
    repo.ok("renc")
    repo.ok("check")


def test_activation_refuses_a_profile_linking_over_its_key(make_repo, tmp_path: Path  # type: ignore[no-untyped-def]
                                                           ) -> None:
    repo: Repo = make_repo(hosts=1, secrets={"db": b"pw\n"})
    repo.ok("renc")
    prof = json.loads(repo.ok("profile", "--host", "host0").stdout)
    prof["secrets"][0]["path"] = "/etc/ssh/ssh_host_ed25519_key"
    with pytest.raises(VaultpyError) as raised:
        vprofile.parse(prof, "profile.json", tmp_path)
    assert any(p.field == "secrets[0].path" and "the host's private key" in p.message
               for p in raised.value.problems), raised.value.problems
