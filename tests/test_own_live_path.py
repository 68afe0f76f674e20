"""``path = "/run/vaultpy/<name>"``, where the file is anyway (agenix users write their
paths out): the modules took it as no link, ``vaultpy check`` refused it as an overlap
with activation's own directory.  Now each takes it as no link: the same profile as
without it, from the CLI and from lib.nix; another name there is still refused."""

from __future__ import annotations

import json

import pytest
from conftest import ROOT, Nix, Repo, assert_one_clean_error

LIB = ROOT / "nix" / "lib.nix"


def _profiles(repo: Repo, nix: Nix) -> tuple[dict[str, object], dict[str, object]]:
    cli = json.loads(repo.ok("profile", "--host", "host0").stdout)
    lib = nix.eval(f'(import {LIB}).profileFromHostsToml {{ hostsToml = '
                   f'{repo.root}/hosts.toml; host = "host0"; }}')
    return cli, lib


@pytest.mark.parametrize(("item", "path"), [
    ('[hosts.host0.secrets.db]\nname = "db.pw"\n', "/run/vaultpy/db.pw"),
    ('[hosts.host0.secrets.db]\nearly = true\n', "/run/vaultpy-early/db"),
    ('[hosts.host0.templates."app.env"]\ncontent = "x"\n', "/run/vaultpy/app.env")])
def test_a_path_where_the_file_is_anyway_is_no_link(make_repo, nix: Nix, item: str,  # type: ignore[no-untyped-def]
                                                    path: str) -> None:
    repo: Repo = make_repo(hosts=1, secrets={"db": b"pw\n"})
    base = (repo.root / "hosts.toml").read_text().replace('secrets = ["db"]\n', "", 1)
    repo.write_hosts(base + item)
    repo.ok("renc")
    plain = _profiles(repo, nix)
    repo.write_hosts(base + item + f'path = "{path}"\n')
    repo.ok("check")
    assert _profiles(repo, nix) == plain
    assert plain[0] == plain[1]


def test_another_name_in_the_live_directory_is_still_refused(make_repo, nix: Nix) -> None:  # type: ignore[no-untyped-def]
    repo: Repo = make_repo(hosts=1, secrets={"db": b"pw\n"})
    base = (repo.root / "hosts.toml").read_text().replace('secrets = ["db"]\n', "", 1)
    for path in ("/run/vaultpy/other", "/run/vaultpy-early/db"):   # (db is not early)
        repo.write_hosts(base + f'[hosts.host0.secrets.db]\npath = "{path}"\n')
        assert_one_clean_error(repo.run("check"), "hosts.host0.secrets.db.path", "overlaps")
        proc = nix.eval_proc(f'(import {LIB}).profileFromHostsToml {{ hostsToml = '
                             f'{repo.root}/hosts.toml; host = "host0"; }}')
        assert proc.returncode != 0 and "hosts.host0.secrets.db.path" in proc.stderr

