"""``vaultpy check`` / ``status``: the cache versus what hosts.toml asks for (no key).

Every damage is made for real on disk (deleted, copied, truncated, swapped files,
a temp file as a killed renc leaves it); ``check`` must name each file with the fix,
``check --json`` must hold one entry per problem, and ``renc`` must repair it.
"""

from __future__ import annotations

import json
import os
import secrets as pysecrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import LOCAL_STATE, Repo, age_decrypt, assert_one_clean_error, hosts_toml, need

from vaultpy._internal import fsutil

Expected = list[tuple[str, str]]        # (file as displayed, message fragment)


def cache_file(repo: Repo, host: str, sid: str) -> Path:
    (path,) = (repo.cache / host).glob(f"{sid}.*.age")
    return path


def rel(repo: Repo, path: Path) -> str:
    return str(path.relative_to(repo.root))


def check_lines(proc: subprocess.CompletedProcess[bytes]) -> list[str]:
    """check's problem lines (stdout), after asserting a clean failure."""
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, out, err)
    assert "Traceback" not in out + err
    return [ln for ln in out.splitlines() if ln.strip()]


def check_json(repo: Repo) -> dict:
    proc = repo.run("check", "--json")
    assert "Traceback" not in proc.stderr.decode()
    data = json.loads(proc.stdout)
    assert proc.returncode == (0 if data["ok"] else 1), proc.stderr.decode()
    assert set(data) - {"warnings"} == {"ok", "problems"}   # warnings: rotation (check.py)
    return data


def assert_lines(repo: Repo, expected: Expected) -> None:
    """check fails with exactly one line per expected problem, each with the fix."""
    lines = check_lines(repo.run("check"))
    assert len(lines) == len(expected), lines
    for file, fragment in expected:
        hits = [ln for ln in lines if ln.startswith(file + ":") and fragment in ln]
        assert len(hits) == 1, (file, fragment, lines)
        assert "vaultpy renc" in hits[0], hits[0]


def assert_reports(repo: Repo, expected: Expected) -> None:
    """... and ``check --json`` has exactly one entry per problem."""
    assert_lines(repo, expected)
    data = check_json(repo)
    assert data["ok"] is False
    assert len(data["problems"]) == len(expected), data
    assert sorted(p["file"] for p in data["problems"]) == sorted(f for f, _ in expected)
    for p in data["problems"]:
        assert set(p) == {"file", "field", "message", "hint"}
        assert "vaultpy renc" in p["hint"], p


def assert_clean(repo: Repo) -> None:
    """check exits 0 (the JSON form carries the same verdict and exit code)."""
    assert check_json(repo) == {"ok": True, "problems": [], "warnings": []}


# --------------------------------------------------------------------------- damages

def missing(repo: Repo) -> Expected:
    path = cache_file(repo, "host0", "alpha")
    path.unlink()
    return [(rel(repo, path), "cache file is missing")]


def stale_file(repo: Repo) -> Expected:
    extra = repo.cache / "host0" / f"alpha.{pysecrets.token_hex(16)}.age"
    shutil.copy2(cache_file(repo, "host0", "alpha"), extra)
    return [(rel(repo, extra), "stale cache file")]


def unknown_host_dir(repo: Repo) -> Expected:
    gone = repo.cache / "oldhost"
    gone.mkdir()
    shutil.copy2(cache_file(repo, "host0", "alpha"),
                 gone / "alpha.0123456789abcdef0123456789abcdef.age")
    return [(rel(repo, gone), "directory of a host that is not in hosts.toml")]


def removed_host(repo: Repo) -> Expected:
    h = repo.hosts["host0"]
    repo.write_hosts(hosts_toml([repo.recipient], ["alpha"], {"host0": (h.pubkey, ["alpha"])}))
    return [(rel(repo, repo.cache / "host1"), "directory of a host that is not in hosts.toml")]


def truncated_tail(repo: Repo) -> Expected:
    path = cache_file(repo, "host1", "alpha")
    path.write_bytes(path.read_bytes()[:-20])
    return [(rel(repo, path), "cache file is damaged")]


def swapped(repo: Repo) -> Expected:
    a, b = cache_file(repo, "host0", "alpha"), cache_file(repo, "host1", "alpha")
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    return [(rel(repo, a), "not encrypted to the host's current key"),
            (rel(repo, b), "not encrypted to the host's current key")]


def leftover_tmp(repo: Repo) -> Expected:
    final = cache_file(repo, "host1", "alpha")
    tmp = fsutil.tmp_name(final)            # exactly what a killed renc leaves behind
    tmp.write_bytes(final.read_bytes()[:50])
    return [(rel(repo, tmp), "leftover temporary file")]


# an unknown host's directory and a header cut are covered by the all-at-once test
DAMAGES: dict[str, Callable[[Repo], Expected]] = {
    "missing": missing, "stale_file": stale_file, "removed_host": removed_host,
    "truncated_tail": truncated_tail, "swapped_host_keys": swapped, "leftover_tmp": leftover_tmp,
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_check_reports_each_problem_and_renc_repairs_it(make_repo, damage: str) -> None:
    repo = make_repo(hosts=2, secrets={"alpha": b"alpha-secret\n"})
    repo.ok("renc")
    expected = DAMAGES[damage](repo)
    assert_lines(repo, expected)      # the JSON count is checked with all damages at once
    repo.ok("renc")
    assert_clean(repo)
    for file, _ in expected:            # stale things are gone, the rest is rewritten
        path = repo.root / file
        assert not path.exists() or (path.name.endswith(".age") and path.stat().st_size > 0)
    assert not [p for p in repo.cache.rglob("*") if fsutil.is_tmp(p.name)]


def test_a_damaged_master_and_the_copy_renc_keeps(make_repo) -> None:
    """The host's last good copy, which renc keeps while the master is damaged, was
    called a stale file that renc would remove, and the item a missing cache file to
    renc: neither is what renc does.  One line for the master, one for the copy."""
    repo = make_repo(hosts=2, secrets={"alpha": b"alpha-secret\n", "beta": b"b"})
    repo.ok("renc")
    kept = {h: cache_file(repo, h, "alpha") for h in ("host0", "host1")}
    (repo.root / "secrets" / "alpha.age").write_bytes(b"garbage, not age\n")
    assert repo.run("renc").returncode == 1
    assert all(p.exists() for p in kept.values())           # renc kept them
    data = check_json(repo)
    lines = sorted((p["file"], p["message"]) for p in data["problems"])
    assert lines == sorted(
        [("secrets/alpha.age", "master file is not a valid age file: not an age file (no "
          "age-encryption.org/v1 header)")] +
        [(rel(repo, p), "the host's last good copy, kept while its master file is damaged")
         for p in kept.values()]), lines
    proc = repo.run("status", "--json")
    rows = [e for e in json.loads(proc.stdout)["entries"] if e["id"] == "alpha"]
    assert rows and all(e["detail"] == "its master file is damaged" for e in rows), rows
    # (the table said "missing", which the cache files renc kept are not)
    assert all(e["state"] == "bad-master" for e in rows), rows
    table = repo.run("status", env={**os.environ, "NO_COLOR": "1"}).stdout.decode()
    assert table.count("master damaged") == 2 and "missing" not in table, table


def test_check_invalid_hosts_toml(make_repo) -> None:
    repo = make_repo(hosts=2, secrets={"alpha": b"x"})
    repo.ok("renc")
    good = (repo.root / "hosts.toml").read_text()
    repo.write_hosts(good.replace("[hosts.host1]", "[hosts.host1]\npubkye = 1"))
    before = repo.snapshot()
    proc = repo.run("check")
    assert proc.returncode == 1
    assert_one_clean_error(proc, "hosts.toml", "hosts.host1.pubkye", "unknown key",
                           "did you mean 'pubkey'?")
    assert repo.snapshot() == before
    repo.write_hosts(good)          # the fix for this one is in hosts.toml
    assert_clean(repo)


def test_check_json_reports_invalid_hosts_toml(make_repo) -> None:
    """``check --json`` is for machines: a broken hosts.toml must still yield the JSON
    document (ok false, one entry per problem), not an empty stdout."""
    repo = make_repo(hosts=1, secrets={"alpha": b"x"}, encrypt=False)
    text = (repo.root / "hosts.toml").read_text()
    repo.write_hosts("bogus = 1\n" + text.replace("[vaultpy]", "[vaultpy]\nrecipents = []"))
    proc = repo.run("check", "--json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr.decode()
    data = json.loads(proc.stdout or b"null")
    assert isinstance(data, dict), (proc.stdout, proc.stderr)
    assert data["ok"] is False
    assert len(data["problems"]) == 2, data
    assert all(p["file"] == "hosts.toml" for p in data["problems"])
    assert sorted(p["field"] for p in data["problems"]) == ["bogus", "vaultpy.recipents"]


def test_all_damages_at_once_status_and_repair(make_repo) -> None:
    repo = make_repo(hosts=3)
    repo.ok("renc")
    assert repo.ok("check").stdout.decode().strip() == ""
    status = json.loads(repo.ok("status", "--json").stdout)
    assert status["ok"] is True and status["problems"] == []
    assert {(e["host"], e["id"], e["state"]) for e in status["entries"]} == {
        (h, s, "ok") for h in repo.hosts for s in ("alpha", "beta")}
    assert all(e["installed"] for e in status["entries"])

    gone = cache_file(repo, "host0", "beta")
    gone.unlink()
    broken = cache_file(repo, "host2", "alpha")
    broken.write_bytes(broken.read_bytes()[:-20])
    cut = cache_file(repo, "host2", "beta")
    cut.write_bytes(cut.read_bytes()[:100])
    expected = [(rel(repo, gone), "cache file is missing"),
                (rel(repo, broken), "cache file is damaged"),
                (rel(repo, cut), "cache file is damaged")]
    expected += unknown_host_dir(repo) + swapped(repo) + leftover_tmp(repo) + stale_file(repo)
    assert_reports(repo, expected)

    states = {(e["host"], e["id"]): e for e in
              json.loads(repo.run("status", "--json").stdout)["entries"]}
    assert states["host0", "beta"]["state"] == "missing"
    assert states["host0", "beta"]["file"] == rel(repo, gone)
    assert states["host2", "alpha"]["state"] == "damaged"
    assert "truncated" in states["host2", "alpha"]["detail"]
    assert states["host0", "alpha"]["state"] == states["host1", "alpha"]["state"] == "damaged"
    assert states["host2", "beta"]["state"] == "damaged"
    assert states["host1", "beta"]["state"] == "ok"
    assert len(states) == 6
    text = repo.run("status")
    assert text.returncode == 1 and "Traceback" not in text.stderr.decode()
    table = text.stdout.decode()
    assert "missing" in table and "damaged" in table and " ok " in table
    assert "problem" in text.stderr.decode()

    repo.ok("renc")
    assert_clean(repo)
    status = json.loads(repo.ok("status", "--json").stdout)
    assert {e["state"] for e in status["entries"]} == {"ok"}
    assert sorted(p.name for p in repo.cache.iterdir()
                  if p.name not in LOCAL_STATE) == [".gitignore", "host0", "host1", "host2"]
    assert all(len(list((repo.cache / h).iterdir())) == 2 for h in repo.hosts)


def test_an_edited_master_makes_the_hosts_copies_outdated_not_missing(make_repo) -> None:
    """After `vaultpy edit`, status said "missing" for every host, and check added a
    "stale cache file" line for each old copy: the copy is there, only out of date."""
    repo = make_repo(hosts=2, secrets={"alpha": b"a1", "beta": b"b"})
    repo.ok("renc")
    repo.ok("encrypt", "alpha", input=b"a2")
    data = check_json(repo)
    lines = sorted((p["field"], p["message"]) for p in data["problems"])
    why = "cache file is out of date: its master or the host's key changed since renc"
    assert lines == [("hosts.host0.secrets.alpha", why), ("hosts.host1.secrets.alpha", why)], lines
    states = {(e["host"], e["id"]): e["state"]
              for e in json.loads(repo.run("status", "--json").stdout)["entries"]}
    assert states == {("host0", "alpha"): "outdated", ("host1", "alpha"): "outdated",
                      ("host0", "beta"): "ok", ("host1", "beta"): "ok"}
    assert "outdated" in repo.run("status").stdout.decode()
    repo.ok("renc")
    assert_clean(repo)


def test_status_shows_missing_before_first_renc_and_exits_1_as_check_does(make_repo) -> None:
    """status listed problems and exited 0: a script had to parse its table (or its
    JSON) to learn what check's status says.  It exits 1 unless every file is ok."""
    repo = make_repo(hosts=1, secrets={"alpha": b"x"})
    proc = repo.run("status", "--json")
    assert proc.returncode == 1, proc.stderr.decode()
    data = json.loads(proc.stdout)
    assert data["ok"] is False
    table = repo.run("status")
    assert table.returncode == 1 and "missing" in table.stdout.decode()
    assert "1 problem(s); see vaultpy check" in table.stderr.decode()
    repo.ok("renc")
    assert json.loads(repo.ok("status", "--json").stdout)["ok"] is True
    assert " ok " in repo.ok("status").stdout.decode()
    (entry,) = data["entries"]
    assert (entry["host"], entry["id"], entry["state"]) == ("host0", "alpha", "missing")
    assert data["problems"][0]["message"] == "cache file is missing"


def test_two_hosts_with_one_key_are_named_by_check_and_renc(make_repo) -> None:
    """A key pasted into two [hosts] tables lets each host read the other's secrets:
    `host add` warned of it, a hand edit of hosts.toml went unnoticed."""
    repo = make_repo(hosts=2, secrets={"alpha": b"a", "beta": b"b"})
    h0, h1 = repo.hosts["host0"], repo.hosts["host1"]
    repo.write_hosts(hosts_toml([repo.recipient], ["alpha", "beta"],
                                {"host0": (h0.pubkey, ["alpha"]), "host1": (h0.pubkey, ["beta"])}))
    for _ in range(2):                      # said again: no memo hides it
        err = repo.ok("renc").stderr.decode()
        assert ("warning: hosts.toml: hosts.host1.pubkey: hosts 'host0' and 'host1' have the "
                "same key") in err, err
    for _ in range(2):
        proc = repo.ok("check")
        assert "have the same key" in proc.stderr.decode()
    data = check_json(repo)
    assert data["ok"] and [w["field"] for w in data["warnings"]] == ["hosts.host1.pubkey"]
    data = json.loads(repo.ok("renc", "--json").stdout)
    assert [w["field"] for w in data["warnings"]] == ["hosts.host1.pubkey"]
    repo.write_hosts(hosts_toml([repo.recipient], ["alpha", "beta"],
                                {"host0": (h0.pubkey, ["alpha"]), "host1": (h1.pubkey, ["beta"])}))
    assert "same key" not in repo.ok("renc").stderr.decode()


def test_group_bits_for_the_default_group_root_are_a_warning(make_repo) -> None:
    """agenix, sops-nix and vaultix give a secret the owner's group; vaultpy gives root.
    A migrated `owner = "app"`, `mode = "0440"` with no group lets group root read it,
    not app's: the NixOS module warned of it, hosts.toml said nothing (found in review)."""
    repo = make_repo(hosts=1, secrets={"alpha": b"a", "beta": b"b"})
    h = repo.hosts["host0"]
    items = {"alpha": 'owner = "app"\nmode = "0440"',           # the migration's mistake
             "beta": 'owner = "app"\ngroup = "app"\nmode = "0440"'}  # said: fine
    text = (f'[vaultpy]\nrecipients = ["{repo.recipient}"]\n[secrets.alpha]\n[secrets.beta]\n'
            f'[hosts.host0]\npubkey = "{h.pubkey}"\n'
            + "".join(f"[hosts.host0.secrets.{sid}]\n{body}\n" for sid, body in items.items())
            + '[hosts.host0.templates."t.env"]\ncontent = "x"\nowner = "1001"\nmode = "0640"\n'
            + '[hosts.host0.templates."r.env"]\ncontent = "y"\nmode = "0640"\n')
    repo.write_hosts(text)
    repo.ok("renc")
    data = check_json(repo)
    assert data["ok"] and [w["field"] for w in data["warnings"]] == \
        ["hosts.host0.secrets.alpha.group"], data["warnings"]
    (w,) = data["warnings"]
    assert w["message"].startswith("mode 0440 lets group root read it, the default group "
                                   "here (agenix, sops-nix and vaultix default to the owner's)")
    assert w["hint"] == ('set group to the group meant to read it (the owner\'s: group = '
                         '"app"?), or group = "root" to keep it')
    assert "hosts.host0.secrets.alpha.group" in repo.ok("check").stderr.decode()
    assert repo.run("check", "--strict").returncode == 1
    repo.write_hosts(text.replace('owner = "app"\nmode', 'owner = "app"\ngroup = "root"\nmode'))
    assert check_json(repo)["warnings"] == []


def test_a_path_where_every_user_may_create_names_is_a_warning(make_repo) -> None:
    """Found in review: with `path = "/tmp/app/tok"`, any user who makes /tmp/app first
    stops every activation of the host (the link is refused, rightly, before the
    switch): check and renc say so before it is deployed."""
    repo = make_repo(hosts=1, secrets={"alpha": b"a", "beta": b"b"})
    h = repo.hosts["host0"]
    repo.write_hosts(f'[vaultpy]\nrecipients = ["{repo.recipient}"]\n[secrets.alpha]\n'
                     f'[secrets.beta]\n[hosts.host0]\npubkey = "{h.pubkey}"\n'
                     '[hosts.host0.secrets.alpha]\npath = "/tmp/app/alpha"\n'
                     '[hosts.host0.secrets.beta]\npath = "/var/lib/app/beta"\n')
    repo.ok("renc")
    data = check_json(repo)
    assert data["ok"] and [w["field"] for w in data["warnings"]] == \
        ["hosts.host0.secrets.alpha.path"]
    assert data["warnings"][0]["message"].startswith(
        "path '/tmp/app/alpha' lies under /tmp, where every user may create names")
    assert "hosts.host0.secrets.alpha.path" in repo.ok("renc").stderr.decode()


def test_a_misspelt_id_gets_the_id_it_resembles(make_repo) -> None:
    repo = make_repo(hosts=1, secrets={"smtp_password": b"a"})
    h = repo.hosts["host0"]
    repo.write_hosts(hosts_toml([repo.recipient], ["smtp_password"],
                                {"host0": (h.pubkey, ["smtp_pasword"])}))
    assert_one_clean_error(repo.run("check"), "hosts.host0.secrets.smtp_pasword",
                           "did you mean 'smtp_password'?")
    repo.write_hosts(hosts_toml([repo.recipient], ["smtp_password"],
                                {"host0": (h.pubkey, ["smtp_password"])}))
    assert_one_clean_error(repo.run("decrypt", "smtp_pasword"), "smtp_pasword",
                           "did you mean 'smtp_password'?")


def test_many_files_are_read_by_workers_with_the_same_verdicts(make_repo, monkeypatch) -> None:
    """With many files to read (a fresh clone, as CI checks it: no verification index),
    forked workers read and parse them.  Every verdict is the one a single process
    gives, damage included, and the share of a worker that died is read here."""
    import os

    from vaultpy import cache, check, model
    from vaultpy._internal import forkpool

    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("one CPU: check reads every file itself")
    repo = make_repo(hosts=3)
    repo.ok("renc")
    gone = cache_file(repo, "host0", "beta")
    gone.unlink()
    cut = cache_file(repo, "host2", "beta")
    cut.write_bytes(cut.read_bytes()[:100])
    swapped(repo)
    stale_file(repo)
    (repo.cache / cache.INDEX).unlink()
    cfg = model.load(repo.root)
    monkeypatch.setattr(check, "PARALLEL_FILES", 10**9)
    alone = check.survey(cfg)
    assert len(alone[1]) == 5 and {e.state for e in alone[0]} == {"ok", "missing", "damaged"}

    monkeypatch.setattr(check, "PARALLEL_FILES", 1)
    pools: list[int] = []
    real_run = forkpool.run

    def counted(n: int, workers: int, *args: object, **kw: object) -> None:
        pools.append(workers)
        real_run(n, workers, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(forkpool, "run", counted)
    assert check.survey(cfg) == alone
    assert len(pools) == 1 and pools[0] >= 2

    parent, real_check = os.getpid(), cache.VerifiedIndex.check

    def dies_in_a_worker(self: cache.VerifiedIndex, item: cache.Item) -> str | None:
        if os.getpid() != parent and (item.host, item.id) == ("host1", "alpha"):
            os._exit(9)                 # as the OOM killer would end it
        return real_check(self, item)

    monkeypatch.setattr(cache.VerifiedIndex, "check", dies_in_a_worker)
    assert check.survey(cfg) == alone
    assert len(pools) == 2


def test_a_master_no_host_needs_yet_is_checked_too(make_repo) -> None:
    """check walked only the masters some host needs: a declared secret no host lists
    yet (a generated key made ahead of its host) could be missing, garbage or addressed
    to old recipients, and CI passed it."""
    repo: Repo = make_repo(hosts=1, secrets={"alpha": b"a", "spare": b"s"})
    host = repo.hosts["host0"]
    repo.write_hosts(hosts_toml([repo.recipient], ["alpha", "spare"],
                                {"host0": (host.pubkey, ["alpha"])}))
    repo.ok("renc")
    repo.ok("check")
    spare = repo.root / "secrets" / "spare.age"
    good = spare.read_bytes()
    for damage, expected in ((b"garbage\n", "master file is not a valid age file"),
                             (None, "master file is missing")):
        if damage is None:
            spare.unlink()
        else:
            spare.write_bytes(damage)
        proc = repo.run("check")
        assert proc.returncode == 1
        [line] = proc.stdout.decode().splitlines()
        assert line.startswith("secrets/spare.age: secrets.spare: " + expected), line
    spare.write_bytes(good)
    repo.ok("check")


def test_renc_deletes_nothing_from_a_cache_dir_that_holds_what_it_never_wrote(
        make_repo) -> None:
    """With cache_dir = "~" (or a folder of other files), every directory there that is
    not a host's was "a host that is not in hosts.toml": renc deleted ~/.ssh and the
    master identity it had just used, and exited 0; check told the user to run renc to
    do it.  A directory holding anything vaultpy does not name so is now named by both,
    and renc removes nothing at all until it is gone."""
    repo: Repo = make_repo(hosts=2, secrets={"alpha": b"a"})
    repo.ok("renc")
    ssh = repo.cache / ".ssh"
    ssh.mkdir()
    (ssh / "id_ed25519").write_text("a private key\n")
    (repo.cache / "projects" / "x").mkdir(parents=True)
    removed = repo.cache / "oldhost"                     # a removed host's, by its look
    removed.mkdir()
    shutil.copy(cache_file(repo, "host0", "alpha"), removed)
    for command in ("check", "renc"):
        proc = repo.run(command, env={**os.environ, "VAULTPY_NO_MEMO": "1"})
        assert proc.returncode == 1
        out = (proc.stdout + proc.stderr).decode()
        for name in (".ssh", "projects"):
            assert f"secrets/cache/{name}: not vaultpy's" in out, out
        assert "oldhost" not in out if command == "renc" else True
    assert (ssh / "id_ed25519").read_text() == "a private key\n"
    assert (repo.cache / "projects" / "x").is_dir() and removed.is_dir()
    shutil.rmtree(ssh)
    shutil.rmtree(repo.cache / "projects")
    repo.ok("renc")                                     # now the removed host goes
    assert not removed.exists()
    repo.ok("check")


def test_renc_removes_from_a_host_directory_only_what_it_could_have_written(
        make_repo, tmp_path: Path) -> None:
    """Everything in a host's directory that was not a planned file was "stale": renc
    removed it, directories whole.  With cache_dir = "/etc" and a host named ssh, that
    was /etc/ssh's files.  Now only files named as vaultpy names them go; anything else
    is named by check and renc, and renc removes nothing while it is there."""
    repo: Repo = make_repo(hosts=2, secrets={"alpha": b"a"})
    repo.ok("renc")
    host1 = repo.cache / "host1"
    tmp_dir = fsutil.tmp_name(cache_file(repo, "host1", "alpha"))   # a temp name, a dir
    tmp_dir.mkdir()
    stale = host1 / f"alpha.{pysecrets.token_hex(16)}.age"      # vaultpy's, by its name
    shutil.copy2(cache_file(repo, "host1", "alpha"), stale)
    (host1 / "junk").mkdir()
    (host1 / "junk" / "kept").write_text("x\n")
    (host1 / "ssh_config").write_text("Host *\n")
    foreign = [host1 / "junk", tmp_dir, host1 / "ssh_config"]
    for command in ("check", "renc"):
        proc = repo.run(command, env={**os.environ, "VAULTPY_NO_MEMO": "1"})
        assert proc.returncode == 1
        out = (proc.stdout + proc.stderr).decode()
        assert "Traceback" not in out
        for path in foreign:
            assert f"{rel(repo, path)}: not vaultpy's" in out, out
    assert (host1 / "junk" / "kept").read_text() == "x\n" and tmp_dir.is_dir()
    assert (host1 / "ssh_config").read_text() == "Host *\n" and stale.exists()
    for path in foreign:
        fsutil.remove_tree(path)
    repo.ok("renc")                                     # now the stale file goes
    assert not stale.exists()
    repo.ok("check")


def test_a_symlink_for_a_host_directory_is_never_followed(make_repo, tmp_path: Path
                                                          ) -> None:
    """secrets/cache/<host> as a symlink to another directory (/etc, in a review):
    renc listed the directory it leads to, removed every file there as stale, and wrote
    the host's cache files into it.  Now nothing is read, written or removed through it:
    each of the host's files fails, naming the link; the other host is renewed."""
    repo: Repo = make_repo(hosts=2, secrets={"alpha": b"a", "beta": b"b"})
    repo.ok("renc")
    other = tmp_path / "fake-etc"
    (other / "ssh").mkdir(parents=True)
    (other / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (other / "ssh" / "sshd_config").write_text("PermitRootLogin no\n")
    before = sorted((p.relative_to(other), p.read_bytes() if p.is_file() else b"")
                    for p in other.rglob("*"))
    fsutil.remove_tree(repo.cache / "host1")
    (repo.cache / "host1").symlink_to(other)
    repo.ok("encrypt", "alpha", input=b"a2")     # host0 has something to renew
    for command in ("renc", "check"):
        proc = repo.run(command, env={**os.environ, "VAULTPY_NO_MEMO": "1"})
        assert proc.returncode == 1
        out = (proc.stdout + proc.stderr).decode()
        assert "Traceback" not in out
        for sid in ("alpha", "beta"):
            assert f"hosts.host1.secrets.{sid}" in out, out
        assert out.count("secrets/cache/host1 is a symlink: a host's cache directory is "
                         "a directory of its own") == 2, out
        assert sorted((p.relative_to(other), p.read_bytes() if p.is_file() else b"")
                      for p in other.rglob("*")) == before
    assert age_decrypt(cache_file(repo, "host0", "alpha"),     # the other host: renewed
                       repo.hosts["host0"].key) == b"a2"
    out = tmp_path / "bundle"                                  # nor is it bundled from
    assert_one_clean_error(repo.run("bundle", "--host", "host1", "-o", str(out)),
                           "secrets/cache/host1", "is a symlink")
    assert not os.path.lexists(out)
    (repo.cache / "host1").unlink()
    repo.ok("renc")
    repo.ok("check")


def test_a_linked_host_folder_s_files_are_named_where_the_link_is(make_repo) -> None:
    """secrets/cache/host1 a link to host0's folder: renc named host1's files as
    secrets/cache/host0/…, the link's target (display_path resolves a file's folder),
    as if host0's files were in the way (a review).  check named them right."""
    repo: Repo = make_repo(hosts=2, secrets={"alpha": b"a", "beta": b"b"})
    repo.ok("renc")
    fsutil.remove_tree(repo.cache / "host1")
    (repo.cache / "host1").symlink_to("host0")
    for command in ("renc", "check"):
        proc = repo.run(command, env={**os.environ, "VAULTPY_NO_MEMO": "1"})
        lines = [ln for ln in (proc.stdout + proc.stderr).decode().splitlines()
                 if "is a symlink" in ln]
        assert len(lines) == 2, lines
        assert all(ln.startswith("secrets/cache/host1/") for ln in lines), lines


def test_a_cache_file_that_is_a_symlink_is_never_read_through(make_repo, tmp_path: Path
                                                              ) -> None:
    """A cache file replaced by a symlink (git keeps them) to another age file for the
    same host, with a payload as long: check read through it and passed it, and bundle
    shipped the other secret's ciphertext under this one's name.  Now check and bundle
    name the link, and renc replaces the link (never its target) with the real file."""
    repo: Repo = make_repo(hosts=2, secrets={"alpha": b"aaaa", "beta": b"bbbb"})
    repo.ok("renc")
    alpha, beta = cache_file(repo, "host1", "alpha"), cache_file(repo, "host1", "beta")
    beta_bytes = beta.read_bytes()
    alpha.unlink()
    alpha.symlink_to(beta.name)
    proc = repo.run("check")
    assert proc.returncode == 1
    text = (proc.stdout + proc.stderr).decode()
    assert "Traceback" not in text
    assert (f"{rel(repo, alpha)}: hosts.host1.secrets.alpha: cache file is a symbolic link, not a "
            "file; run vaultpy renc") in text, text
    out = tmp_path / "bundle"
    assert_one_clean_error(repo.run("bundle", "--host", "host1", "-o", str(out)),
                           rel(repo, alpha), "a symbolic link, not a file",
                           "run vaultpy renc first")
    assert not os.path.lexists(out)
    repo.ok("renc")
    assert not alpha.is_symlink() and beta.read_bytes() == beta_bytes
    assert age_decrypt(alpha, repo.hosts["host1"].key) == b"aaaa"
    repo.ok("check")
    repo.ok("bundle", "--host", "host1", "-o", str(out))
    assert age_decrypt(out / "cache" / alpha.name, repo.hosts["host1"].key) == b"aaaa"


def test_a_symlinked_cache_directory_is_refused_and_a_temp_named_one_of_others_kept(
        make_repo, tmp_path: Path) -> None:
    """secrets/cache itself as a symlink (git keeps them) sent renc's files, and its
    prune, where it led: a directory there was deleted as a removed host's.  And a
    temp-named directory beside the hosts was deleted whole, whatever it held."""
    repo: Repo = make_repo(hosts=1, secrets={"alpha": b"a"})
    repo.ok("renc")
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "emptydir").mkdir(parents=True)
    (elsewhere / "passwd").write_text("x\n")
    shutil.move(repo.cache, tmp_path / "old-cache")
    repo.cache.symlink_to(elsewhere)
    for command in ("renc", "check", "status"):
        assert_one_clean_error(repo.run(command), "hosts.toml", "vaultpy.cache_dir",
                               "secrets/cache is a symlink", "replace the link")
    assert sorted(p.name for p in elsewhere.iterdir()) == ["emptydir", "passwd"]
    repo.cache.unlink()
    shutil.move(tmp_path / "old-cache", repo.cache)
    kept = repo.cache / fsutil.tmp_basename("newhost") / "sub"
    kept.mkdir(parents=True)
    (kept / "file").write_text("precious\n")
    proc = repo.run("renc", env={**os.environ, "VAULTPY_NO_MEMO": "1"})
    assert proc.returncode == 1 and b"not vaultpy's" in proc.stderr, proc.stderr
    assert (kept / "file").read_text() == "precious\n"


@pytest.mark.parametrize("name", [".vaultpy.lock", ".vaultpy-memo", ".vaultpy-verified"])
def test_a_directory_in_place_of_a_bookkeeping_file_is_named_to_be_removed(
        make_repo, name: str) -> None:
    """check called a directory at the lock's path "a host that is not in hosts.toml;
    run vaultpy renc to remove it", and renc then could not take the lock."""
    repo: Repo = make_repo(hosts=1, secrets={"alpha": b"a"})
    repo.ok("renc")
    path = repo.cache / name
    if path.exists():
        path.unlink()
    path.mkdir()
    proc = repo.run("check", env={**os.environ, "VAULTPY_NO_MEMO": "1"})
    assert proc.returncode == 1
    out = proc.stdout.decode()
    assert f"secrets/cache/{name}: a directory where vaultpy keeps a file of its own; " \
        "remove the directory" in out, out
    assert "not in hosts.toml" not in out
    path.rmdir()
    repo.ok("renc")
    repo.ok("check")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (chown, setpriv)")
@pytest.mark.parametrize("blocked", ["host directory", "secrets directory"])
def test_a_cache_this_user_cannot_read_is_one_line(make_repo, blocked: str) -> None:
    """A host's cache directory of another user's (mode 0700), or a secrets/ directory
    this user cannot search: check, renc and status crashed in listdir or stat
    (PermissionError, exit 70).  Root here runs without its capabilities to override
    permissions (setpriv), as another user would."""
    need("setpriv")
    repo: Repo = make_repo(hosts=1, secrets={"alpha": b"a"})
    repo.ok("renc")
    where = repo.cache / "host0" if blocked == "host directory" else repo.root / "secrets"
    os.chown(where, 65534, 65534)
    where.chmod(0o700)
    drop = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    env = {**os.environ, "NO_COLOR": "1", "VAULTPY_NO_MEMO": "1", **repo.env}
    for command in ("check", "renc", "status"):
        proc = subprocess.run([*drop, sys.executable, "-m", "vaultpy", command],
                              cwd=repo.root, env=env, capture_output=True, timeout=60)
        text = (proc.stdout + proc.stderr).decode()
        assert proc.returncode == 1, text
        assert "Traceback" not in text and "internal error" not in text, text
        assert "Permission denied" in text, text


def test_master_files_no_secret_declares_and_kept_edits_are_warnings(make_repo) -> None:
    """A secret removed from hosts.toml left its master in secrets/ (still committed,
    still readable by the master key), and an edit kept beside its master
    (`.conflict-…`) went into the README's `git add hosts.toml secrets`: check said
    nothing of either.  Both are warnings now (--strict fails on them); and the memo,
    whose digest holds the secrets folder's names, never answers over them."""
    repo = make_repo(hosts=1, secrets={"alpha": b"a", "beta": b"b"})
    repo.ok("renc")
    repo.ok("check")
    secrets = repo.root / "secrets"
    (secrets / "gone.age").write_bytes((secrets / "alpha.age").read_bytes())
    (secrets / "alpha.age.conflict-20261129T101010Z").write_bytes(b"kept")
    for _ in range(2):                                  # the second: no memo answer
        proc = repo.run("check", env={**os.environ, "NO_COLOR": "1"})
        assert proc.returncode == 0, proc.stderr.decode()
        err = proc.stderr.decode()
        assert ("warning: secrets/gone.age: secrets.gone: no secret in hosts.toml has this "
                "master file; declare it ([secrets.gone]), or delete it (git rm)") in err, err
        assert ("warning: secrets/alpha.age.conflict-20261129T101010Z: an edit kept beside "
                "a master written while its editor was open") in err, err
        assert "vaultpy edit alpha" in err
        # The way to read it is vaultpy's own, as edit's message and the README say:
        # it was `age -d -i YOUR_KEY` (a review).
        assert ("read it with vaultpy decrypt --file "
                "secrets/alpha.age.conflict-20261129T101010Z, merge it") in err, err
    proc = repo.run("check", "--strict")
    assert proc.returncode == 1 and b"secrets/gone.age" in proc.stdout, proc.stdout
    (secrets / "gone.age").unlink()
    (secrets / "alpha.age.conflict-20261129T101010Z").unlink()
    proc = repo.ok("check")
    assert b"warning" not in proc.stderr


def test_an_age_host_without_identities_is_named_before_it_fails_at_boot(make_repo,
                                                                         tmp_path: Path
                                                                         ) -> None:
    """A host whose key is age1… and that names no identities: every command passed,
    profile and bundle named sshd's ed25519 key, and activation failed on the host
    with "run vaultpy renc and deploy again" (a new-user review).  check and renc warn
    (--strict fails), profile and bundle refuse; identities = […] mends it."""
    from conftest import age_keygen

    repo = make_repo(hosts=1, secrets={"alpha": b"a"})
    _key, host_pub = age_keygen(tmp_path, "edge.txt")
    text = (repo.root / "hosts.toml").read_text()
    repo.write_hosts(text + f'\n[hosts.edge]\npubkey = "{host_pub}"\nsecrets = ["alpha"]\n')
    warning = ("warning: hosts.toml: hosts.edge.identities: the host's key is an age1… key, "
               "and no identities say where its identity file is")
    for command in ("renc", "check"):
        err = repo.ok(command).stderr.decode()
        assert warning in err and 'add identities = ["/etc/vaultpy/host.key"]' in err, err
    assert repo.run("check", "--strict").returncode == 1
    for args in (("profile", "--host", "edge"),
                 ("bundle", "--host", "edge", "-o", str(tmp_path / "b"))):
        assert_one_clean_error(repo.run(*args), "hosts.toml", "hosts.edge.identities",
                               "the host's key is an age1… key")
    assert not (tmp_path / "b").exists()
    repo.ok("profile", "--host", "host0")               # an ssh host: as before
    repo.write_hosts(text + f'\n[hosts.edge]\npubkey = "{host_pub}"\nsecrets = ["alpha"]\n'
                     'identities = ["/etc/vaultpy/host.key"]\n')
    assert "warning" not in repo.ok("check").stderr.decode()
    assert '"/etc/vaultpy/host.key"' in repo.ok("profile", "--host", "edge").stdout.decode()


def test_a_damaged_masters_fix_can_be_run_from_where_check_was(make_repo,
                                                               tmp_path: Path) -> None:
    """check of a damaged master said to run "vaultpy encrypt db < FILE", which, with
    check run as `vaultpy -C repo check` from elsewhere, finds no hosts.toml (a review):
    the command it names carries -C then."""
    repo = make_repo(hosts=1, secrets={"db": b"v"})
    master = repo.root / "secrets" / "db.age"
    data = master.read_bytes()
    master.write_bytes(data[:len(data) // 2])       # (rage's grease stanzas vary the size)
    proc = repo.run("check")
    assert proc.returncode == 1 and ("secrets/db.age: secrets.db: master file is not a valid "
                                     "age file") in proc.stdout.decode(), proc.stdout
    assert "give it a new value: vaultpy encrypt db < FILE" in proc.stdout.decode()
    name = repo.root.name
    proc = repo.run("-C", name, "check", cwd=repo.root.parent)
    out = proc.stdout.decode()
    assert proc.returncode == 1 and "Traceback" not in out + proc.stderr.decode()
    assert f"give it a new value: vaultpy -C {name} encrypt db < FILE" in out, out
    assert f"git checkout -- {name}/secrets/db.age" in out, out
