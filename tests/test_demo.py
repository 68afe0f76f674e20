"""The repository's own demo (what `make demo` runs) stays correct and current."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import LOCAL_STATE, ROOT, Repo, age_decrypt


def demo_copy(tmp_path: Path) -> Repo:
    root = tmp_path / "demo-repo"
    root.mkdir()
    shutil.copy(ROOT / "hosts.toml", root)
    shutil.copytree(ROOT / "secrets", root / "secrets",
                    ignore=shutil.ignore_patterns(*LOCAL_STATE))
    shutil.copytree(ROOT / "demo", root / "demo")
    identity = root / "demo" / "master-identity.demo-only.txt"
    return Repo(root, identity, "", env={"VAULTPY_IDENTITY": ""})


def test_committed_cache_is_current_and_renc_is_a_noop(tmp_path: Path) -> None:
    repo = demo_copy(tmp_path)
    repo.ok("check")
    before = {k: v for k, v in repo.snapshot().items() if Path(k).name not in LOCAL_STATE}
    out = json.loads(repo.ok("renc", "--json").stdout)
    assert out["written"] == [] and out["pruned"] == [] and out["unchanged"] == 6
    after = {k: v for k, v in repo.snapshot().items()
             if Path(k).name not in LOCAL_STATE}
    assert after == before


def test_every_demo_cache_file_decrypts_with_its_host_key(tmp_path: Path) -> None:
    repo = demo_copy(tmp_path)
    keys = repo.root / "demo" / "hosts"
    seen = 0
    for host_dir in sorted(repo.cache.iterdir()):
        if not host_dir.is_dir():
            continue
        key = keys / f"{host_dir.name}.ssh_host_ed25519_key.demo-only"
        key.chmod(0o600)
        for f in sorted(host_dir.glob("*.age")):
            secret_id = f.name.split(".")[0]
            master = repo.ok("decrypt", secret_id).stdout      # via [vaultpy] identity
            assert age_decrypt(f, key) == master
            seen += 1
    assert seen == 6


def test_backup_recipient_opens_every_master(tmp_path: Path) -> None:
    repo = demo_copy(tmp_path)
    backup = repo.root / "demo" / "backup-identity.demo-only.txt"
    for master in sorted((repo.root / "secrets").glob("*.age")):
        assert age_decrypt(master, backup) == repo.ok("decrypt", master.stem).stdout
