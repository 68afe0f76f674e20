"""The renc pipeline (DESIGN §3, §4): naming, idempotence, incremental updates,
pruning, --host, --jobs, crash leftovers, repair, template-only secrets, --json."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    LOCAL_STATE,
    Repo,
    age_decrypt,
    age_keygen,
    assert_one_clean_error,
    is_cache_gitignore,
    need,
    ssh_keygen,
    toml_str,
)

RESULT_KEYS = {"ok", "written", "repaired", "unchanged", "pruned", "failed", "warnings"}


# --------------------------------------------------------------------------- helpers

def toml_value(value: str | list[str]) -> str:
    if isinstance(value, str):
        return toml_str(value)
    return "[" + ", ".join(map(toml_str, value)) + "]"


def write_config(repo: Repo, secrets: list[str],
                 hosts: dict[str, tuple[str | list[str], list[str]]], extra: str = "") -> None:
    """hosts.toml with the repo's master recipient; a pubkey may be a list of keys."""
    lines = ["[vaultpy]", f"recipients = {toml_value([repo.recipient])}", ""]
    lines += [f'[secrets."{s}"]' for s in secrets]
    for name, (pubkey, ids) in hosts.items():
        lines += ["", f"[hosts.{name}]", f"pubkey = {toml_value(pubkey)}",
                  f"secrets = {toml_value(ids)}"]
    repo.write_hosts("\n".join(lines) + "\n" + extra)


def renc_json(repo: Repo, *args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    proc = repo.ok("renc", "--json", *args, env=env)
    data = json.loads(proc.stdout)          # the whole of stdout is one JSON document
    assert set(data) >= RESULT_KEYS, data
    return data


def state(repo: Repo) -> dict[str, tuple[bytes, int]]:
    """Bytes and mtime_ns of every file under the cache (renc's local state excluded)."""
    out = {}
    for p in sorted(repo.cache.rglob("*")):
        if p.is_file() and p.name not in LOCAL_STATE and not is_cache_gitignore(repo, p):
            out[str(p.relative_to(repo.cache))] = (p.read_bytes(), p.stat().st_mtime_ns)
    return out


def rel(repo: Repo, paths: list[str]) -> set[str]:
    """Paths from --json output, relative to the cache dir."""
    return {str(Path(p).resolve().relative_to(repo.cache.resolve())) for p in paths}


def normalise(pubkey: str) -> str:
    """DESIGN §3: `type base64`, the SSH comment dropped (age1 keys as they are)."""
    pubkey = pubkey.strip()
    if pubkey.startswith("age1"):
        return pubkey
    kind, b64 = pubkey.split()[:2]
    return f"{kind} {b64}"


def expected_name(repo: Repo, sid: str, pubkeys: str | list[str]) -> str:
    """DESIGN §3, computed independently of vaultpy."""
    keys = [pubkeys] if isinstance(pubkeys, str) else pubkeys
    master = hashlib.sha256((repo.root / "secrets" / f"{sid}.age").read_bytes()).hexdigest()
    text = master + "\n" + "\n".join(normalise(k) for k in keys)
    return f"{sid}.{hashlib.sha256(text.encode()).hexdigest()[:32]}.age"


def host_files(repo: Repo, host: str) -> set[str]:
    d = repo.cache / host
    return set(os.listdir(d)) if d.exists() else set()


def three_host_repo(make_repo: Any) -> tuple[Repo, dict[str, bytes], dict[str, list[str]]]:
    """host0: alpha beta gamma; host1: alpha beta; host2: beta gamma."""
    secrets = {"alpha": b"alpha-1\n", "beta": b"beta-1", "gamma": os.urandom(3000)}
    repo = make_repo(hosts=3, secrets=secrets)
    layout = {"host0": ["alpha", "beta", "gamma"], "host1": ["alpha", "beta"],
              "host2": ["beta", "gamma"]}
    write_config(repo, list(secrets),
                 {h: (repo.hosts[h].pubkey, ids) for h, ids in layout.items()})
    return repo, secrets, layout


def assert_all_decrypt(repo: Repo, plaintexts: dict[str, bytes],
                       layout: dict[str, list[str]], keys: dict[str, Path] | None = None) -> None:
    keys = keys or {h: repo.hosts[h].key for h in layout}
    for host, ids in layout.items():
        files = sorted((repo.cache / host).iterdir())
        assert sorted(f.name.split(".")[0] for f in files) == sorted(ids), host
        for f in files:
            assert age_decrypt(f, keys[host]) == plaintexts[f.name.split(".")[0]]


# --------------------------------------------------------------------------- 4. naming

def test_cache_names_follow_design_section_3(make_repo):
    secrets = {"alpha": b"a", "beta": b"", "db.pass-word_2": b"with dots and dashes\n"}
    repo = make_repo(hosts=2, secrets=secrets, encrypt=False)
    keys = repo.root / "keys"
    _, bare_pub = ssh_keygen(keys, "bare", comment="")               # no comment at all
    _, spaced_pub = ssh_keygen(keys, "spaced", comment="root@web1 the web server")
    _, age_pub = age_keygen(keys, "agehost.txt")
    _, second_pub = ssh_keygen(keys, "second", comment="second@key")
    assert len(bare_pub.split()) == 2 and len(spaced_pub.split()) == 6
    ids = list(secrets)
    hosts: dict[str, tuple[str | list[str], list[str]]] = {
        "host0": (repo.hosts["host0"].pubkey, ids),            # "ssh-ed25519 AAAA root@host0"
        "host1": (repo.hosts["host1"].pubkey, ["alpha"]),
        "bare": (bare_pub, ids),
        "spaced": (spaced_pub.replace(" ", "  ", 1) + "  ", ids),   # odd whitespace too
        "agehost": (age_pub, ["beta", "db.pass-word_2"]),
        "dual": ([second_pub, age_pub], ids),                   # order as listed
        "dual2": ([age_pub, second_pub], ids),
    }
    write_config(repo, ids, hosts)
    for sid, plaintext in secrets.items():
        repo.ok("encrypt", sid, input=plaintext)
    repo.ok("renc")

    for host, (pubkeys, host_ids) in hosts.items():
        want = {expected_name(repo, sid, pubkeys) for sid in host_ids}
        assert host_files(repo, host) == want, host
    # Sanity of the contract itself: the comment does not matter, the key does.
    assert expected_name(repo, "alpha", bare_pub) == expected_name(
        repo, "alpha", bare_pub + " some comment")
    assert host_files(repo, "dual") != host_files(repo, "dual2")
    repo.ok("check")


# --------------------------------------------------------------------------- 5. no-op

def test_second_renc_writes_nothing(make_repo):
    repo, _plaintexts, layout = three_host_repo(make_repo)
    first = renc_json(repo)
    n = sum(len(ids) for ids in layout.values())
    assert len(first["written"]) == n and first["unchanged"] == 0
    before_cache = state(repo)
    before_repo = local_state_aside(repo.snapshot())
    assert len(before_cache) == n

    second = renc_json(repo)
    assert second["ok"] is True
    assert second["written"] == []
    assert second["repaired"] == []
    assert second["pruned"] == []
    assert second["failed"] == []
    assert second["unchanged"] == n
    assert state(repo) == before_cache          # bytes and mtime_ns of every cache file
    assert local_state_aside(repo.snapshot()) == before_repo   # and nothing else


def local_state_aside(snapshot: dict[str, tuple[bytes, int]]) -> dict[str, tuple[bytes, int]]:
    """Without the git-ignored local state (a no-op run records its memo)."""
    return {k: v for k, v in snapshot.items() if Path(k).name not in LOCAL_STATE}


# --------------------------------------------------------------------------- 6. changes

def test_changed_master_rewrites_only_that_secret(make_repo):
    repo, plaintexts, layout = three_host_repo(make_repo)
    renc_json(repo)
    before = state(repo)

    plaintexts["alpha"] = b"alpha-2, rotated\n"
    repo.ok("encrypt", "alpha", input=plaintexts["alpha"])
    result = renc_json(repo)

    after = state(repo)
    old_alpha = {p for p in before if p.split("/")[1].startswith("alpha.")}
    new_alpha = {p for p in after if p.split("/")[1].startswith("alpha.")}
    assert {p.split("/")[0] for p in new_alpha} == {"host0", "host1"}    # host2 has no alpha
    assert old_alpha.isdisjoint(new_alpha)                  # new names …
    assert old_alpha.isdisjoint(after)                      # … old ones pruned
    for p in new_alpha:
        assert p.split("/")[1] == expected_name(repo, "alpha", repo.hosts[p.split("/")[0]].pubkey)
    untouched = set(before) - old_alpha
    assert set(after) - new_alpha == untouched
    for p in untouched:
        assert after[p] == before[p], p                     # bytes and mtime identical
    assert rel(repo, result["written"]) == new_alpha
    assert rel(repo, result["pruned"]) == old_alpha
    assert result["unchanged"] == len(untouched)
    assert_all_decrypt(repo, plaintexts, layout)


def test_changed_host_key_rewrites_only_that_host(make_repo):
    repo, plaintexts, layout = three_host_repo(make_repo)
    renc_json(repo)
    before = state(repo)
    old_key = repo.hosts["host1"].key

    new_key, new_pub = ssh_keygen(repo.root / "keys", "host1-new", comment="root@host1")
    write_config(repo, list(plaintexts),
                 {h: (new_pub if h == "host1" else repo.hosts[h].pubkey, ids)
                  for h, ids in layout.items()})
    result = renc_json(repo)

    after = state(repo)
    old_host1 = {p for p in before if p.startswith("host1/")}
    new_host1 = {p for p in after if p.startswith("host1/")}
    assert len(new_host1) == len(layout["host1"])
    assert old_host1.isdisjoint(after)
    assert {p.split("/")[1] for p in new_host1} == {
        expected_name(repo, sid, new_pub) for sid in layout["host1"]}
    for p in set(before) - old_host1:
        assert after[p] == before[p], p
    assert set(after) - new_host1 == set(before) - old_host1
    assert rel(repo, result["written"]) == new_host1
    assert rel(repo, result["pruned"]) == old_host1
    keys = {h: repo.hosts[h].key for h in layout} | {"host1": new_key}
    assert_all_decrypt(repo, plaintexts, layout, keys)
    for p in new_host1:                     # the old key no longer opens them
        proc = subprocess.run([need("age"), "-d", "-i", str(old_key),
                                             str(repo.cache / p)], capture_output=True)
        assert proc.returncode != 0


def test_removed_host_loses_its_cache_directory(make_repo):
    repo, plaintexts, layout = three_host_repo(make_repo)
    renc_json(repo)
    before = state(repo)
    assert (repo.cache / "host2").is_dir()

    del layout["host2"]
    write_config(repo, list(plaintexts), {h: (repo.hosts[h].pubkey, ids)
                                          for h, ids in layout.items()})
    result = renc_json(repo)

    assert not (repo.cache / "host2").exists()
    assert rel(repo, result["pruned"]) == {"host2"}
    assert result["written"] == []
    after = state(repo)
    assert after == {p: v for p, v in before.items() if not p.startswith("host2/")}
    repo.ok("check")


def test_secret_removed_from_host_is_pruned(make_repo):
    repo, plaintexts, layout = three_host_repo(make_repo)
    renc_json(repo)
    before = state(repo)

    layout["host0"] = ["alpha", "gamma"]            # beta no longer deployed to host0
    write_config(repo, list(plaintexts), {h: (repo.hosts[h].pubkey, ids)
                                          for h, ids in layout.items()})
    result = renc_json(repo)

    gone = {p for p in before if p.startswith("host0/beta.")}
    assert len(gone) == 1
    after = state(repo)
    assert after == {p: v for p, v in before.items() if p not in gone}
    assert rel(repo, result["pruned"]) == gone
    assert result["written"] == []
    assert_all_decrypt(repo, plaintexts, layout)


# --------------------------------------------------------------------------- 7. --host, --jobs

def test_renc_host_touches_only_that_host(make_repo):
    repo, plaintexts, layout = three_host_repo(make_repo)

    # From scratch: only host1's directory appears.
    result = renc_json(repo, "--host", "host1")
    assert sorted(p.name for p in repo.cache.iterdir() if p.is_dir()) == ["host1"]
    assert {p.split("/")[0] for p in rel(repo, result["written"])} == {"host1"}

    renc_json(repo)                                     # now everyone is up to date
    # Make every host out of date, and give the others something prunable.
    plaintexts["beta"] = b"beta-2"
    repo.ok("encrypt", "beta", input=plaintexts["beta"])
    for h in ("host0", "host2"):
        (repo.cache / h / f".beta.{'0' * 32}.age.vaultpy-tmp-abcdef").write_bytes(b"x")
    (repo.cache / "oldhost").mkdir()
    (repo.cache / "oldhost" / "alpha.0123456789abcdef0123456789abcdef.age").write_bytes(b"x")
    before = state(repo)

    result = renc_json(repo, "--host", "host1")

    after = state(repo)
    for p, v in before.items():
        if not p.startswith("host1/"):
            assert after.get(p) == v, p                  # others: byte+mtime identical
    assert {p for p in after if not p.startswith("host1/")} == {
        p for p in before if not p.startswith("host1/")}
    assert {p.split("/")[0] for p in rel(repo, result["written"])} == {"host1"}
    assert {p.split("/")[0] for p in rel(repo, result["pruned"])} == {"host1"}
    host1 = {p.split("/")[1] for p in after if p.startswith("host1/")}
    assert host1 == {expected_name(repo, s, repo.hosts["host1"].pubkey)
                     for s in layout["host1"]}
    assert_all_decrypt(repo, plaintexts, {"host1": layout["host1"]})


def test_jobs_1_and_2_give_the_same_valid_cache(make_repo):
    secrets = {f"s{i}": f"secret number {i}\n".encode() for i in range(6)}
    secrets["s6"] = os.urandom(200_000)
    repo = make_repo(hosts=3, secrets=secrets)
    layout = {h: list(secrets) for h in repo.hosts}
    n = len(secrets) * len(repo.hosts)

    one = renc_json(repo, "--jobs", "1")
    assert len(one["written"]) == n
    names_one = set(state(repo))
    assert_all_decrypt(repo, secrets, layout)

    for h in repo.hosts:
        shutil.rmtree(repo.cache / h)
    two = renc_json(repo, "--jobs", "2")
    assert len(two["written"]) == n and two["failed"] == []
    assert set(state(repo)) == names_one                 # names do not depend on --jobs
    assert_all_decrypt(repo, secrets, layout)
    repo.ok("check")


@pytest.mark.parametrize("jobs", [1, 2])
def test_worker_processes_are_used_for_jobs_above_one(make_repo, monkeypatch, tmp_path, jobs):
    """Each job runs once, in a forked worker when --jobs > 1, here otherwise."""
    from vaultpy import model
    from vaultpy import renc as pipeline
    from vaultpy._internal import forkpool

    secrets = {f"s{i}": f"pool secret {i}".encode() for i in range(4)}
    repo = make_repo(hosts=2, secrets=secrets)
    ran_in = tmp_path / "ran-in"
    real_job, real_run = pipeline._run_job, forkpool.run
    pools: list[int] = []

    def job(j: Any) -> Any:
        with open(ran_in, "a") as f:        # one short append per job: whole lines
            f.write(f"{os.getpid()} {j.secret_id}\n")
        return real_job(j)

    def run(n: int, workers: int, *args: Any, **kw: Any) -> None:
        pools.append(workers)
        real_run(n, workers, *args, **kw)

    monkeypatch.setattr(pipeline, "_run_job", job)
    monkeypatch.setattr(forkpool, "run", run)
    monkeypatch.chdir(repo.root)

    result = pipeline.renc(model.load(repo.root), jobs=jobs, identity_files=[repo.identity])

    assert result.ok, result.failed
    assert len(result.written) == len(secrets) * len(repo.hosts)
    runs = [line.split() for line in ran_in.read_text().splitlines()]
    assert sorted(sid for _pid, sid in runs) == sorted(secrets)    # one job per secret
    if jobs == 1:
        assert pools == []
        assert {int(pid) for pid, _sid in runs} == {os.getpid()}
    else:
        assert pools == [2]
        assert os.getpid() not in {int(pid) for pid, _sid in runs}
    assert_all_decrypt(repo, secrets, {h: list(secrets) for h in repo.hosts})


# --------------------------------------------------------------------------- 8. leftovers, repair

def test_leftover_temp_files_are_removed(make_repo):
    repo, _plaintexts, _layout = three_host_repo(make_repo)
    renc_json(repo)
    before = state(repo)
    alpha = next(p for p in before if p.startswith("host0/alpha."))
    leftovers = [
        repo.cache / "host0" / f".{alpha.split('/')[1]}.vaultpy-tmp-abcdef",   # of a live name
        repo.cache / "host0" / f".beta.{'f' * 32}.age.vaultpy-tmp-0123456789ab",
        repo.cache / "host2" / ".gamma.0123456789abcdef0123456789abcdef.age.vaultpy-tmp-ffffff",
    ]
    for p in leftovers:
        p.write_bytes(b"age-encryption.org/v1\n-> partial")

    result = renc_json(repo)

    assert [p for p in leftovers if os.path.lexists(p)] == []
    assert state(repo) == before
    assert result["written"] == [] and result["repaired"] == []
    assert result["unchanged"] == len(before)
    repo.ok("check")


def _damage_and_renc(repo: Repo, damage: dict[str, bytes]) -> tuple[dict[str, Any],
                                                                   dict[str, tuple[bytes, int]],
                                                                   dict[str, tuple[bytes, int]]]:
    before = state(repo)
    for victim_rel, data in damage.items():
        (repo.cache / victim_rel).write_bytes(data)
    damaged = state(repo)
    result = renc_json(repo)
    return result, before, damaged


def _header_end(data: bytes) -> int:
    """Offset just past the MAC line ("--- …\n") of a binary age file."""
    mac = data.index(b"\n--- ") + 1
    return data.index(b"\n", mac) + 1


def _assert_repaired(repo: Repo, result: dict[str, Any], before: dict[str, tuple[bytes, int]],
                     damaged: dict[str, tuple[bytes, int]], victims: set[str],
                     plaintexts: dict[str, bytes]) -> None:
    assert result["ok"] is True
    assert rel(repo, result["repaired"]) == victims
    assert rel(repo, result["written"]).isdisjoint(victims)
    assert result["unchanged"] == len(before) - len(victims)
    after = state(repo)
    assert set(after) == set(before)                   # same names, rewritten in place
    for p in victims:
        assert after[p][0] != damaged[p][0], p
        host, sid = p.split("/")[0], p.split("/")[1].split(".")[0]
        assert age_decrypt(repo.cache / p, repo.hosts[host].key) == plaintexts[sid]
    for p in set(before) - victims:
        assert after[p] == before[p], p
    repo.ok("check")


def test_damaged_cache_file_header_is_repaired(make_repo):
    repo, plaintexts, _layout = three_host_repo(make_repo)
    renc_json(repo)
    files = state(repo)
    pick = {f"{h}/{s}": next(p for p in files if p.startswith(f"{h}/{s}."))
            for h, s in (("host0", "gamma"), ("host0", "alpha"), ("host1", "alpha"),
                         ("host1", "beta"), ("host2", "gamma"))}
    data = {k: files[v][0] for k, v in pick.items()}
    damage = {
        pick["host0/gamma"]: b"",                                           # emptied
        pick["host1/alpha"]: data["host1/alpha"][:60],                     # cut in header
        pick["host2/gamma"]: data["host2/gamma"][:_header_end(data["host2/gamma"])],
        pick["host1/beta"]: data["host1/beta"][:_header_end(data["host1/beta"]) + 10],
        # a complete age file, but for another host's key (e.g. a bad merge)
        pick["host0/alpha"]: data["host1/alpha"],
    }
    result, before, damaged = _damage_and_renc(repo, damage)
    _assert_repaired(repo, result, before, damaged, set(damage), plaintexts)


def test_truncated_cache_file_payload_is_repaired(make_repo):
    """Cut inside the last payload chunk: the header is intact, age -d fails."""
    repo, plaintexts, _layout = three_host_repo(make_repo)
    renc_json(repo)
    files = state(repo)
    g0 = next(p for p in files if p.startswith("host0/gamma."))
    g2 = next(p for p in files if p.startswith("host2/gamma."))
    d0, d2 = files[g0][0], files[g2][0]
    he = _header_end(d2)
    damage = {g0: d0[:-5], g2: d2[: he + (len(d2) - he) // 2]}
    for p, data in damage.items():
        (repo.cache / p).write_bytes(data)
        proc = subprocess.run([need("age"), "-d", "-i",
                                             str(repo.hosts[p.split("/")[0]].key),
                                             str(repo.cache / p)], capture_output=True)
        assert proc.returncode != 0                     # really unusable on the host
    result, _before, damaged = _damage_and_renc(repo, damage)
    _assert_repaired(repo, result, files, damaged, set(damage), plaintexts)


def test_a_damaged_file_that_could_not_be_rewritten_is_not_counted_repaired(make_repo,
                                                                             tmp_path):
    """With the wrong key, nothing can be re-encrypted: the summary and --json listed
    the damaged file as repaired and as failed at once."""
    repo, _plaintexts, _layout = three_host_repo(make_repo)
    renc_json(repo)
    g0 = next(p for p in state(repo) if p.startswith("host0/gamma."))
    (repo.cache / g0).write_bytes(b"")
    other, _ = age_keygen(tmp_path, "other.txt")
    proc = repo.run("renc", "--json", env={"VAULTPY_IDENTITY": str(other)})
    data = json.loads(proc.stdout)
    assert proc.returncode == 1 and not data["ok"] and data["failed"], data
    assert data["repaired"] == [] and data["written"] == [], data
    repo.ok("renc")
    repo.ok("check")


def test_a_run_that_failed_whole_prints_no_table_of_zeros(make_repo, tmp_path):
    """With the wrong key every item failed, and renc still printed its table: one row,
    "total 0 0 0 0", above the line that said what was wrong."""
    repo, _plaintexts, _layout = three_host_repo(make_repo)
    renc_json(repo)
    for name in state(repo):
        (repo.cache / name).unlink()            # (the lock stays: not a first run)
    other, _ = age_keygen(tmp_path, "other.txt")
    proc = repo.run("renc", env={"VAULTPY_IDENTITY": str(other), "NO_COLOR": "1"})
    assert proc.returncode == 1 and proc.stdout == b"", proc.stdout
    err = proc.stderr.decode()
    assert err.startswith("3 failed\n") and "none of the identities" in err, err  # 3 masters
    proc = repo.run("renc", env={"NO_COLOR": "1"})       # a run that did something: its table
    assert proc.stdout.decode().splitlines()[-1].split() == ["total", "7", "0", "0", "0"]


def test_a_symlinked_cache_file_is_replaced_not_read_through(make_repo, tmp_path):
    """A symlink in a cache file's place is no file renc wrote: it was verified through
    (what it points at passed for the cache file, and was bundled).  Now renc repairs
    it as a damaged file: the link is replaced, its target left as it was."""
    repo, plaintexts, _layout = three_host_repo(make_repo)
    renc_json(repo)
    name = next(p for p in state(repo) if p.startswith("host0/alpha."))
    target = tmp_path / "elsewhere.age"
    (repo.cache / name).rename(target)
    (repo.cache / name).symlink_to(target)
    good = target.read_bytes()
    no_memo = {**os.environ, "VAULTPY_NO_MEMO": "1"}
    result = renc_json(repo, env=no_memo)
    assert rel(repo, result["repaired"]) == {name}
    assert target.read_bytes() == good
    assert not (repo.cache / name).is_symlink()
    assert age_decrypt(repo.cache / name, repo.hosts["host0"].key) == plaintexts["alpha"]


def test_the_index_does_not_vouch_for_a_file_changed_in_the_tick_it_was_read(make_repo):
    """git's "racily clean" rule.  A cache file renc verified by reading, but which
    last changed in the very tick of the run's clock, is not recorded: a same-size
    rewrite later in that tick keeps its stat (1 s ticks on some file systems), and
    every later check and renc would trust it.  The tick is made to coincide here by
    handing the index the file's own ctime as the clock."""
    from vaultpy import cache, model

    repo, _plaintexts, _layout = three_host_repo(make_repo)
    renc_json(repo)
    (repo.cache / cache.INDEX).unlink()
    item = cache.plan(model.load(repo.root), ()).items[0]
    st = os.stat(item.path)
    tick = max(st.st_mtime_ns, st.st_ctime_ns)
    racy = cache.VerifiedIndex(repo.cache, clock=tick)
    assert racy.check(item) is None and item not in racy
    blind = cache.VerifiedIndex(repo.cache)               # `check`: no clock, no vouching
    assert blind.check(item) is None and item not in blind
    later = cache.VerifiedIndex(repo.cache, clock=tick + 1)
    assert later.check(item) is None and later.get(item) == cache.stat_key(st)
    # A real run reads the file system's clock first: files older than it are recorded.
    renc_json(repo, env={**os.environ, "VAULTPY_NO_MEMO": "1"})
    assert item in cache.VerifiedIndex(repo.cache)


def test_the_index_is_a_line_per_file_and_a_line_that_does_not_parse_vouches_for_nothing(
        make_repo):
    """The index file is read and written a line at a time (a large cache's index, parsed
    whole, was the peak of renc's memory).  A damaged line costs its file one
    verification by reading, never a wrong answer; an index of another format (earlier
    versions wrote JSON) costs every file one, and the next full run writes it anew."""
    from vaultpy import cache, model

    repo, _plaintexts, _layout = three_host_repo(make_repo)
    renc_json(repo)
    no_memo = {**os.environ, "VAULTPY_NO_MEMO": "1"}
    items = cache.plan(model.load(repo.root), ()).items
    path = repo.cache / cache.INDEX
    header, *lines = path.read_bytes().splitlines()
    assert header == b"vaultpy-verified 2"
    assert sorted(lines) == lines
    assert [ln.split()[0].decode() for ln in lines] == sorted(i.key for i in items)
    index = cache.VerifiedIndex(repo.cache)
    assert all(index.get(i) == cache.stat_key(os.stat(i.path)) for i in items)

    damaged, *rest = lines
    path.write_bytes(b"\n".join([header, damaged[:-3], *rest]) + b"\n")
    index = cache.VerifiedIndex(repo.cache)
    assert [i for i in items if i not in index] == [
        i for i in items if i.key == damaged.split()[0].decode()]

    stats = {i.key: os.stat(i.path) for i in items}
    path.write_text(json.dumps({key: [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
                                for key, st in stats.items()}))
    assert not any(i in cache.VerifiedIndex(repo.cache) for i in items)
    assert renc_json(repo, env=no_memo)["repaired"] == []     # verified, none rewritten
    assert path.read_bytes().startswith(b"vaultpy-verified 2\n")
    assert all(i in cache.VerifiedIndex(repo.cache) for i in items)


# --------------------------------------------------------------------------- 9. templates

def test_template_only_secret_reaches_the_host(make_repo):
    secrets = {"alpha": b"alpha-secret\n", "beta": b"beta-secret"}
    repo = make_repo(hosts=2, secrets=secrets)
    write_config(repo, list(secrets),
                 {"host0": (repo.hosts["host0"].pubkey, ["alpha"]),
                  "host1": (repo.hosts["host1"].pubkey, ["alpha"])},
                 extra='\n[hosts.host0.templates."a.env"]\ncontent = "K={{ secrets.beta }}"\n')
    result = renc_json(repo)

    assert host_files(repo, "host0") == {expected_name(repo, s, repo.hosts["host0"].pubkey)
                                         for s in ("alpha", "beta")}
    assert host_files(repo, "host1") == {expected_name(repo, "alpha",
                                                       repo.hosts["host1"].pubkey)}
    assert len(result["written"]) == 3
    assert_all_decrypt(repo, secrets, {"host0": ["alpha", "beta"], "host1": ["alpha"]})
    repo.ok("check")


# --------------------------------------------------------------------------- 10. --json

def test_json_report_shape(make_repo):
    repo, _plaintexts, layout = three_host_repo(make_repo)
    n = sum(len(ids) for ids in layout.values())
    data = renc_json(repo)
    assert data["ok"] is True
    assert isinstance(data["written"], list) and len(data["written"]) == n
    assert all(isinstance(p, str) and Path(p).is_file() for p in data["written"])
    assert data["repaired"] == [] and data["pruned"] == [] and data["failed"] == []
    assert data["unchanged"] == 0
    assert rel(repo, data["written"]) == set(state(repo))

    # A failure is reported in the same shape, with exit status 1.
    _stranger, stranger_pub = age_keygen(repo.root / "keys", "stranger.txt")
    (repo.root / "secrets" / "beta.age").unlink()
    proc = subprocess.run(
        [need("age"), "-r", stranger_pub, "-o", str(repo.root / "secrets" / "beta.age")],
        input=b"beta for someone else", capture_output=True)
    assert proc.returncode == 0
    proc = repo.run("renc", "--json")
    assert proc.returncode == 1
    data = json.loads(proc.stdout)
    assert set(data) >= RESULT_KEYS
    assert data["ok"] is False
    assert data["written"] == []
    assert len(data["failed"]) == 1
    failure = data["failed"][0]
    assert "beta.age" in failure["file"] and failure["message"]
    assert "Traceback" not in proc.stderr.decode()


# --------------------------------------------------------------------------- --timings

def test_timings_name_each_step_of_a_run(make_repo):
    """--timings: a cold run lists each step it took, in order, with the time no step
    accounts for; a run with nothing to do lists no encryption (and is a full run: the
    no-op memo would have nothing to time).  Without it, the JSON has no timings."""
    repo, _plaintexts, _layout = three_host_repo(make_repo)
    data = renc_json(repo, "--timings", "--jobs", "2")
    phases = [p["phase"] for p in data["timings"]]
    assert phases == ["load", "survey", "unlock", "encrypt", "publish", "prune", "index",
                      "total"], phases
    for p in data["timings"]:
        assert set(p) == {"phase", "wall_s", "cpu_s"}
        assert p["wall_s"] >= 0 and p["cpu_s"] >= 0
    total = data["timings"][-1]
    assert total["wall_s"] >= sum(p["wall_s"] for p in data["timings"][:-1]) - 1e-6

    assert "timings" not in renc_json(repo)          # nothing to do (the memo is recorded)
    proc = repo.ok("renc", "--timings")
    assert proc.stdout.decode().startswith("nothing to do: 7 cache files of 3 hosts")
    lines = proc.stderr.decode().splitlines()
    assert lines[0].split() == ["phase", "wall", "ms", "CPU", "ms"]
    assert [line.split()[0] for line in lines[1:]] == ["load", "survey", "prune", "index",
                                                       "other", "total"]
    for line in lines[1:]:
        _name, wall, cpu = line.split()
        assert float(wall) >= 0 and float(cpu) >= 0


def test_a_step_s_cpu_time_counts_the_worker_processes_it_waited_for():
    """The encrypt step's CPU time is mostly its workers': a phase counts the CPU time of
    the children reaped in it, not only this process's."""
    from vaultpy._internal import timings

    clock = timings.Clock()
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    with clock.phase("child"):
        subprocess.run([sys.executable, "-c", busy], check=True)
    (phase,) = clock.phases
    assert phase.name == "child" and phase.cpu >= 0.25, phase
    assert clock.total().wall >= phase.wall


def test_a_missing_master_says_that_no_host_was_renewed(make_repo):
    """One missing master stops the whole renc; its line named that master only, and
    the other hosts' out-of-date files looked like another failure.  A last line says
    nothing was written, and names --host for a host that needs none of the broken
    masters, which then works."""
    repo = make_repo(hosts=2, secrets={"alpha": b"a", "beta": b"b"})
    write_config(repo, ["alpha", "beta"],
                 {"host0": (repo.hosts["host0"].pubkey, ["alpha"]),
                  "host1": (repo.hosts["host1"].pubkey, ["beta"])})
    renc_json(repo)
    (repo.root / "secrets" / "beta.age").unlink()
    repo.ok("encrypt", "alpha", input=b"a2")
    before = sorted(p.name for p in (repo.cache / "host0").iterdir())
    proc = repo.run("renc")
    assert_one_clean_error(proc, "secrets/beta.age", "master file is missing")
    assert_one_clean_error(proc, "renc: nothing was written, for any host",
                           "vaultpy renc --host host0")
    assert sorted(p.name for p in (repo.cache / "host0").iterdir()) == before
    repo.ok("renc", "--host", "host0")
    assert sorted(p.name for p in (repo.cache / "host0").iterdir()) != before


def test_an_unreadable_master_names_the_damaged_ones_too(make_repo):
    """A master renc could not read (a directory in its place) hid another that was
    read but is no age file (cut short): renc named the first only, and advised
    --host for a host that needs the cut one, which then failed on it.  Each is named
    in one run, and the advice names only a host that needs neither."""
    repo = make_repo(hosts=3, secrets={"alpha": b"a", "beta": b"b", "gamma": b"c"})
    write_config(repo, ["alpha", "beta", "gamma"],
                 {"host0": (repo.hosts["host0"].pubkey, ["gamma"]),
                  "host1": (repo.hosts["host1"].pubkey, ["beta"]),
                  "host2": (repo.hosts["host2"].pubkey, ["alpha"])})
    renc_json(repo)
    beta = repo.root / "secrets" / "beta.age"
    beta.write_bytes(beta.read_bytes()[:60])                # cut: no MAC line
    gamma = repo.root / "secrets" / "gamma.age"
    gamma.unlink()
    gamma.mkdir()
    repo.ok("encrypt", "alpha", input=b"a2")
    before = state(repo)
    proc = repo.run("renc")
    assert_one_clean_error(proc, "secrets/gamma.age", "cannot read master file: Is a "
                           "directory")
    assert_one_clean_error(proc, "secrets/beta.age: needed by host1: not a valid age "
                           "file: header: no MAC line", "restore it from git")
    line = assert_one_clean_error(proc, "renc: nothing was written, for any host")
    assert "vaultpy renc --host host2 (and each other host" in line
    assert state(repo) == before
    data = json.loads(repo.run("renc", "--json").stdout)
    assert [p["file"] for p in data["problems"]] == ["secrets/beta.age",
                                                     "secrets/gamma.age", "renc"]
    repo.ok("renc", "--host", "host2")      # the advice works
    assert state(repo) != before
    proc = repo.run("renc", "--host", "host1")
    assert_one_clean_error(proc, "secrets/beta.age", "not a valid age file")


def test_an_unreadable_master_with_a_dot_in_its_id_is_known_by_its_id(make_repo):
    """The plan knew its broken masters by their field, secrets."gam.ma" for an id
    with a dot, and took "gam.ma" (quotes and all) for the id: renc advised --host for
    the very host that needs it, and check, hashing the masters no host needs,
    named it twice."""
    repo = make_repo(hosts=2, secrets={"beta": b"b", "gam.ma": b"c"})
    write_config(repo, ["beta", "gam.ma"],
                 {"host0": (repo.hosts["host0"].pubkey, ["gam.ma"]),
                  "host1": (repo.hosts["host1"].pubkey, ["beta"])})
    renc_json(repo)
    gamma = repo.root / "secrets" / "gam.ma.age"
    gamma.unlink()
    gamma.mkdir()
    proc = repo.run("renc")
    line = assert_one_clean_error(proc, "renc: nothing was written, for any host")
    assert "vaultpy renc --host host1 (and each other host" in line
    proc = repo.run("check")
    assert proc.returncode == 1
    lines = [ln for ln in (proc.stdout + proc.stderr).decode().splitlines()
             if "gam.ma.age:" in ln and "cannot read master file" in ln]
    assert len(lines) == 1, proc
