"""On-host activation (DESIGN §5, §6), end to end and step by step.

Everything is real: masters and cache files from the CLI, host keys from
ssh-keygen, activation as ``python -m vaultpy activate`` into a temporary
``--root`` (as root, so chown/chmod are real), ramfs/tmpfs mounts inside
``unshare -m``, and a recording script in place of systemctl.
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from activate_helpers import (
    HostRoot,
    Recorder,
    activate_cmd,
    activate_ok,
    activate_run,
    copy_repo,
    demo_repo,
    file_state,
    make_host_root,
    make_recorder,
    new_repo,
    prepare_root,
    run_vaultpy,
    snapshot_tree,
    unshare_sh,
    vaultpy_env,
    write_deploy_hosts,
    write_profile,
)
from conftest import Repo, assert_one_clean_error

if os.geteuid() != 0:
    pytest.skip("activation tests chown files and mount: run as root", allow_module_level=True)

SECRETS: dict[str, bytes] = {            # declared out of order on purpose
    "num": b"numeric-owner-secret\n",
    "named": b"named\x00binary\xff\xfe data",
    "plain": b"plain-secret",
    "tonly": b"  \n padded-template-only \t\n",
    "early_pw": b"early-password\n",
}

SECRET_OPTS: dict[str, dict[str, Any]] = {
    "num": {"owner": "1234", "group": "4321", "mode": "0640",
            "restart_units": ["num.service"]},
    "named": {"owner": "app", "group": "svc", "mode": "0440", "path": "/etc/app/named.key",
              "reload_units": ["named.service"]},
    "plain": {},
    "early_pw": {"early": True, "owner": "0", "mode": "0400",
                 "restart_units": ["early.service"]},
}
TEMPLATE_OPTS: dict[str, dict[str, Any]] = {
    "trim.env": {"content": "A=[{{ secrets.tonly }}] B=[{{secrets.plain}}]\n", "trim": True,
                 "owner": "svc", "group": "app", "mode": "0444",
                 "restart_units": ["tmpl.service"]},
    "raw.env": {"content": "# café ☕\nA=[{{ secrets.tonly }}]\n{{{{ literal }}\n",
                "trim": False, "mode": "0400"},
}
TRIM_ENV = b"A=[padded-template-only] B=[plain-secret]\n"
RAW_ENV = ("# café ☕\nA=[  \n padded-template-only \t\n]\n{{ literal }}\n").encode()
NORMAL_FILES = {"num", "named", "plain", "trim.env", "raw.env"}
HOST = "host0"


# ------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def base_repo(tmp_path_factory: pytest.TempPathFactory) -> Repo:
    """Built once per module (keys, masters, hosts.toml, renc); copied per test."""
    repo = new_repo(tmp_path_factory.mktemp("base") / "repo", SECRETS)
    write_deploy_hosts(repo, SECRETS, {HOST: (SECRET_OPTS, TEMPLATE_OPTS)})
    repo.ok("renc")
    return repo


class World:
    """A repository, a host root with its profile, and a recording systemctl."""

    def __init__(self, repo: Repo, host: HostRoot, rec: Recorder) -> None:
        self.repo, self.host, self.rec = repo, host, rec
        self.secret_opts = copy.deepcopy(SECRET_OPTS)
        self.template_opts = copy.deepcopy(TEMPLATE_OPTS)

    def activate(self, *extra: str) -> Any:
        return activate_ok(self.host.profile, self.host.root, *extra,
                           systemctl=self.rec.script)

    def redeploy(self) -> None:
        """hosts.toml from the current options, renc, profile again."""
        write_deploy_hosts(self.repo, SECRETS, {HOST: (self.secret_opts, self.template_opts)})
        self.repo.ok("renc")
        write_profile(self.repo, HOST, self.host.profile)

    def change_secret(self, sid: str, plaintext: bytes) -> None:
        self.repo.ok("encrypt", sid, input=plaintext)
        self.redeploy()

    @property
    def live(self) -> Path:
        return self.host.live

    def names(self, directory: Path) -> set[str]:
        return {n for n in os.listdir(directory) if not n.startswith(".")}


@pytest.fixture
def world(base_repo: Repo, tmp_path: Path) -> World:
    repo = copy_repo(base_repo, tmp_path / "repo")
    host = make_host_root(repo, HOST, tmp_path / "root")
    return World(repo, host, make_recorder(tmp_path / "bin"))


def assert_normal_generation(w: World, gen: Path) -> None:
    h = w.host
    assert w.names(gen) == NORMAL_FILES
    assert file_state(gen / "num") == (SECRETS["num"], 1234, 4321, 0o640)
    assert file_state(gen / "named") == (SECRETS["named"], h.uid("app"), h.gid("svc"), 0o440)
    assert file_state(gen / "plain") == (SECRETS["plain"], 0, 0, 0o400)
    assert file_state(gen / "trim.env") == (TRIM_ENV, h.uid("svc"), h.gid("app"), 0o444)
    assert file_state(gen / "raw.env") == (RAW_ENV, 0, 0, 0o400)


# ------------------------------------------------------------- 1. end to end

def test_end_to_end_files_owners_modes_templates_links(world: World) -> None:
    w, h = world, world.host
    proc = w.activate()
    assert os.readlink(h.live) == "vaultpy.d/1"            # relative
    gen = h.store / "1"
    assert stat.S_IMODE(gen.stat().st_mode) == 0o751 and gen.stat().st_uid == 0
    assert_normal_generation(w, gen)
    # also read through the live symlink, as services do
    assert (h.live / "num").read_bytes() == SECRETS["num"]
    # not installed: the template-only secret and the early item
    assert not (gen / "tonly").exists() and not (gen / "early_pw").exists()
    assert not os.path.lexists(h.early)
    # the extra path: a relative symlink that resolves into the live generation
    link = h.root / "etc/app/named.key"
    assert link.is_symlink() and not os.path.isabs(os.readlink(link))
    assert os.path.realpath(link) == os.path.realpath(gen / "named")
    assert link.read_bytes() == SECRETS["named"]
    assert b"Traceback" not in proc.stderr


def test_demo_web1_activates(tmp_path: Path) -> None:
    repo = demo_repo(tmp_path)
    host = make_host_root(repo, "web1", tmp_path / "root",
                          users={"app": (1201, 2201), "nginx": (1202, 2202)}, groups={})
    activate_ok(host.profile, host.root, systemctl=make_recorder(tmp_path / "bin").script)
    assert os.readlink(host.live) == "vaultpy.d/1"
    api = repo.ok("decrypt", "api_token").stdout
    db = repo.ok("decrypt", "db_password").stdout
    tls = repo.ok("decrypt", "tls_key").stdout
    assert {n for n in os.listdir(host.live) if not n.startswith(".")} == {
        "api_token", "web1.key", "app.env"}
    assert file_state(host.live / "api_token") == (api, 1201, 2201, 0o440)
    assert file_state(host.live / "web1.key") == (tls, 1202, 0, 0o400)
    env = (f"DATABASE_URL=postgres://app:{db.decode().strip()}@db1/app\n"
           f"API_TOKEN={api.decode().strip()}\n").encode()
    assert file_state(host.live / "app.env") == (env, 1201, 0, 0o400)
    link = host.root / "etc/nginx/tls/web1.key"
    assert os.path.realpath(link) == os.path.realpath(host.store / "1" / "web1.key")
    assert link.read_bytes() == tls


# ------------------------------------------------------------- 2. profile JSON

def _canonical(text: str) -> str:
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False)


def test_profile_json_paths_order_and_format(world: World, tmp_path: Path) -> None:
    repo = world.repo
    out = repo.ok("profile", "--host", HOST).stdout.decode("utf-8")
    assert out.endswith("}\n") and out.count("\n") == 1
    assert out[:-1] == _canonical(out)
    data = json.loads(out)
    assert [s["id"] for s in data["secrets"]] == ["early_pw", "named", "num", "plain", "tonly"]
    assert [t["name"] for t in data["templates"]] == ["raw.env", "trim.env"]
    assert {s["id"]: s["install"] for s in data["secrets"]} == {
        "early_pw": True, "named": True, "num": True, "plain": True, "tonly": False}
    cache = {p.resolve() for p in (repo.cache / HOST).glob("*.age")}
    absolute = {}
    for s in data["secrets"]:
        assert os.path.isabs(s["file"]), s
        assert Path(s["file"]).resolve() in cache
        absolute[s["id"]] = Path(s["file"]).resolve()
    assert len(absolute) == len(cache) == 5
    named = next(s for s in data["secrets"] if s["id"] == "named")
    assert (named["owner"], named["group"], named["mode"], named["path"],
            named["reload_units"]) == ("app", "svc", "0440", "/etc/app/named.key",
                                       ["named.service"])
    # -o: relative to the output file's directory, and they still resolve
    target = tmp_path / "elsewhere" / "deep" / "p.json"
    target.parent.mkdir(parents=True)
    repo.ok("profile", "--host", HOST, "-o", str(target))
    written = target.read_text(encoding="utf-8")
    assert written.endswith("\n") and written[:-1] == _canonical(written)
    rel = json.loads(written)
    for s in rel["secrets"]:
        assert not os.path.isabs(s["file"]), s
        assert (target.parent / s["file"]).resolve() == absolute[s["id"]]
        s["file"] = data["secrets"][[x["id"] for x in data["secrets"]].index(s["id"])]["file"]
    assert rel == data                       # nothing else differs


# ------------------------------------------------------------- 3. ramfs

def _mount_rows(mountinfo: str, mountpoint: Path) -> list[str]:
    target = os.path.realpath(mountpoint)
    rows = []
    for row in mountinfo.splitlines():
        left, _, right = row.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and fields[4].replace("\\040", " ") == target:
            rows.append(right.split()[0])
    return rows


def test_store_is_ramfs_when_mounting(world: World) -> None:
    h = world.host
    cmd = shlex.join(activate_cmd(h.profile, h.root, no_mount=False,
                                  systemctl=world.rec.script))
    script = f"""
set -e
{cmd}
{cmd}
echo "@@mountinfo"
cat /proc/self/mountinfo
echo "@@stat"
stat -c '%u %g %a' {shlex.quote(str(h.live / 'named'))}
echo "@@data"
cat {shlex.quote(str(h.live / 'plain'))}
"""
    proc = unshare_sh(script)
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode("utf-8", "replace")
    mountinfo = out.split("@@mountinfo\n")[1].split("@@stat\n")[0]
    assert _mount_rows(mountinfo, h.store) == ["ramfs"]          # mounted once, ramfs
    stat_line, data = out.split("@@stat\n")[1].split("@@data\n")
    assert stat_line.split() == [str(h.uid("app")), str(h.gid("svc")), "440"]
    assert data == SECRETS["plain"].decode()
    # the plaintext lived only on the ramfs: outside the namespace the store is empty
    assert os.listdir(h.store) == []
    assert os.readlink(h.live) == "vaultpy.d/2"      # (a dangling link on the disk)


def test_tmpfs_store_is_refused(world: World) -> None:
    h = world.host
    h.store.mkdir(parents=True)
    os.chmod(h.store, 0o751)
    cmd = shlex.join(activate_cmd(h.profile, h.root, no_mount=False,
                                  systemctl=world.rec.script))
    script = f"""
mount -t tmpfs -o mode=0751 tmpfs {shlex.quote(str(h.store))} || exit 99
{cmd}
rc=$?
echo "@@ls"
ls -A {shlex.quote(str(h.store))}
exit $rc
"""
    proc = unshare_sh(script)
    assert proc.returncode != 99, proc.stderr.decode()
    assert_one_clean_error(proc, "tmpfs", "ramfs")
    assert proc.stdout.decode().split("@@ls\n")[1].strip() == ""   # no generation
    assert not os.path.lexists(h.live)
    assert world.rec.calls() == []


# ------------------------------------------------- inputs and places nobody else controls

NOBODY = 65534


@pytest.mark.parametrize("how", ["mode", "owner", "group", "folder", "symlinked", "dotdot",
                                 "cache", "cache-folder", "sticky"])
def test_a_profile_or_cache_others_can_write_is_refused(world: World, tmp_path: Path,
                                                        how: str) -> None:
    """Whoever can write the profile chooses owners, modes and paths; whoever can write
    a cache file chooses the value (a host's public key is public): activation, as root,
    refuses both before it does anything, and the live generation stays (found in
    review: a profile chmod 666 had root hand its secret to nobody)."""
    h = world.host
    world.activate()
    world.rec.clear()
    cache_dir = world.repo.cache / HOST
    cached = next(cache_dir.glob("plain.*.age"))
    profile = h.profile
    if how == "mode":
        os.chmod(profile, 0o666)
        path, said, fix = profile, "writable by every user", f"chmod go-w {profile}"
    elif how == "owner":
        os.chown(profile, NOBODY, -1)
        path, said, fix = profile, f"owned by uid {NOBODY}, not root", f"chown root {profile}"
    elif how == "group":
        os.chown(profile, -1, NOBODY)
        os.chmod(profile, 0o664)
        path, said, fix = profile, f"writable by group {NOBODY}", f"chmod go-w {profile}"
    elif how == "folder":
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        profile = theirs / "profile.json"
        shutil.copy(h.profile, profile)
        os.chown(theirs, NOBODY, NOBODY)
        path, said, fix = theirs, f"on the way to {profile}", f"chown root {theirs}"
    elif how == "symlinked":          # the profile's real place is theirs
        theirs = tmp_path / "theirs"
        theirs.mkdir()
        shutil.copy(h.profile, theirs / "profile.json")
        os.chown(theirs, NOBODY, NOBODY)
        profile = tmp_path / "link.json"
        profile.symlink_to(theirs / "profile.json")
        path, said, fix = theirs, "owned by uid 65534", f"chown root {theirs}"
    elif how == "dotdot":             # through root's symlink, then "..": theirs
        real = tmp_path / "opt" / "vp"
        (real / "b").mkdir(parents=True)
        shutil.copy(h.profile, real / "b" / "profile.json")
        theirs = real / "cache"
        shutil.copytree(cached.parent, theirs)
        os.chown(theirs, NOBODY, NOBODY)
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "vaultpy").symlink_to(real / "b")
        profile = tmp_path / "etc" / "vaultpy" / "profile.json"
        data = json.loads(profile.read_text())
        for item in data["secrets"]:    # as `profile -o` writes them: relative, with ../
            item["file"] = "../cache/" + os.path.basename(item["file"])
        profile.write_text(json.dumps(data))
        path, said, fix = theirs, "owned by uid 65534", f"chown root {theirs}"
    elif how == "cache":
        os.chmod(cached, 0o646)
        path, said, fix = cached, "writable by every user", f"chmod go-w {cached}"
    elif how == "cache-folder":
        os.chmod(cache_dir, 0o777)
        path, said, fix = cache_dir, "writable by every user", f"chmod go-w {cache_dir}"
    else:                             # sticky: others cannot rename or remove root's entries
        os.chmod(cache_dir, 0o1777)
        world.activate()
        assert os.readlink(h.live) == "vaultpy.d/2"
        return
    before = snapshot_tree(h.root)
    proc = activate_run(profile, h.root, systemctl=world.rec.script)
    line = assert_one_clean_error(proc, str(path), said, fix)
    assert "whoever" in line and "chooses what activation installs" in line
    assert snapshot_tree(h.root) == before and os.readlink(h.live) == "vaultpy.d/1"
    assert world.rec.calls() == []


def test_a_profile_streamed_in_is_the_invokers_whatever_it_came_from(
        world: World, tmp_path: Path) -> None:
    """`--profile /dev/stdin`: what the stream comes from is the invoker's choice (a
    pipe, or a file they redirected); it is no path another user can reach (found in
    review: a redirected file was checked, and the hint said to chown /dev/stdin)."""
    h = world.host
    streamed = tmp_path / "streamed.json"
    streamed.write_bytes(world.repo.ok("profile", "--host", HOST).stdout)
    os.chown(streamed, NOBODY, NOBODY)              # refused as --profile FILE
    proc = activate_run(streamed, h.root, systemctl=world.rec.script)
    assert_one_clean_error(proc, str(streamed), f"owned by uid {NOBODY}")
    with streamed.open("rb") as stdin:
        proc = subprocess.run(activate_cmd(Path("/dev/stdin"), h.root,
                                           systemctl=world.rec.script),
                              stdin=stdin, capture_output=True, env=vaultpy_env(),
                              timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert os.readlink(h.live) == "vaultpy.d/1"


@pytest.mark.parametrize("bob", [True, False])
def test_a_users_cache_in_a_shared_group_s_directory_is_refused(bob: bool) -> None:
    """A user's own profile: a cache directory writable by their primary group is theirs
    alone only if nobody else is in the group (found in review: NixOS gives every user
    the group users; any of them could write there).  Run as the user, with --root's
    account files saying who is in the group (in /tmp: pytest's own folders are 0700)."""
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="vaultpy-trust-", dir="/tmp"))
    request_cleanup = tmp_path
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "group").write_text("users:x:100:\n")
    (root / "etc" / "passwd").write_text("alice:x:1000:100::/:/bin/sh\n"
                                         + ("bob:x:1001:100::/:/bin/sh\n" if bob else ""))
    home = tmp_path / "alice"
    (home / "cache").mkdir(parents=True)
    (home / "cache" / "x.age").write_text("v")
    (home / "profile.json").write_text("{}")
    for p in (home, home / "cache", home / "cache" / "x.age", home / "profile.json"):
        os.chown(p, 1000, 100)
    os.chmod(home, 0o755)
    os.chmod(home / "cache", 0o775)
    os.chmod(tmp_path, 0o755)
    code = f"""
import os, types
from pathlib import Path
from vaultpy.activate import trust
from vaultpy.errors import VaultpyError
os.setgroups([100]); os.setresgid(100, 100, 100); os.setresuid(1000, 1000, 1000)
ctx = types.SimpleNamespace(
    opts=types.SimpleNamespace(profile=Path({str(home / "profile.json")!r}),
                               root=Path({str(root)!r})),
    profile=types.SimpleNamespace(secrets=[types.SimpleNamespace(
        file=Path({str(home / "cache" / "x.age")!r}))], signed=None),
    user=True, uid=1000, gid=100)
try:
    trust.trust_inputs(ctx)
    print("accepted")
except VaultpyError as exc:
    print("refused:", exc.problems[0])
"""
    from activate_helpers import ROOT

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env=vaultpy_env({"PYTHONPATH": str(ROOT)}), timeout=60)
    assert proc.returncode == 0, proc.stderr
    shutil.rmtree(request_cleanup)
    if bob:
        assert proc.stdout.startswith(f"refused: {home / 'cache'} (on the way to "), proc.stdout
        assert "writable by group 100" in proc.stdout
    else:
        assert proc.stdout.strip() == "accepted", proc.stdout


@pytest.mark.parametrize("field", ["dir", "store", "early_dir"])
def test_a_hosts_places_below_another_users_directory_are_refused(
        world: World, tmp_path: Path, field: str) -> None:
    """A host's live link, store and early link in a directory another user owns: they
    could swap the live link for theirs, and services would read their files (found in
    review).  A user's profile had this check; a host's now has it too."""
    h = world.host
    data = json.loads(h.profile.read_text())
    theirs = h.root / "srv" / "app"
    theirs.mkdir(parents=True)
    os.chown(theirs, 1101, 1101)
    data["settings"][field] = f"/srv/app/{field}"
    h.profile.write_text(json.dumps(data))
    proc = activate_run(h.profile, h.root, systemctl=world.rec.script)
    line = assert_one_clean_error(proc, "/srv/app", "owned by another user",
                                  f"settings.{field}")
    assert "only root can write to" in line
    assert os.listdir(theirs) == [] and world.rec.calls() == []


# ------------------------------------------------------------- 4. generations, notify

def test_generations_numbering_and_keep(world: World) -> None:
    w, h = world, world.host
    w.activate()
    w.rec.clear()
    w.activate()
    w.activate()
    assert h.generations() == [1, 2, 3]
    assert os.readlink(h.live) == "vaultpy.d/3"
    assert w.rec.calls() == []                       # unchanged runs call nothing
    w.activate()                                     # the profile's keep: 3
    assert h.generations() == [2, 3, 4] and os.readlink(h.live) == "vaultpy.d/4"
    w.activate("--keep", "2")
    assert h.generations() == [4, 5] and os.readlink(h.live) == "vaultpy.d/5"
    w.activate("--keep", "2")
    assert h.generations() == [5, 6] and os.readlink(h.live) == "vaultpy.d/6"
    assert_normal_generation(w, h.live)
    # a live generation is never pruned, even when older than the newest `keep`:
    # the early link keeps its generation while normal runs move on with --keep 1
    w.activate("--early")
    assert os.readlink(h.early) == "vaultpy.d/7"
    w.activate("--keep", "1")
    w.activate("--keep", "1")
    assert h.generations() == [7, 9]
    assert os.readlink(h.live) == "vaultpy.d/9" and os.readlink(h.early) == "vaultpy.d/7"
    assert (h.early / "early_pw").read_bytes() == SECRETS["early_pw"]
    assert_normal_generation(w, h.live)


def test_under_root_no_unit_of_this_machine_is_restarted(world: World) -> None:
    """--root prefixes every host path (an image being built, a test), but systemctl
    talks to the machine it runs on: a review saw `activate --root DIR` restart this
    machine's postgresql.service.  Units are called there only with --systemctl."""
    import subprocess

    from activate_helpers import ROOT, activate_cmd, vaultpy_env

    w, h = world, world.host
    w.activate()
    w.rec.clear()
    w.change_secret("num", b"num v2")
    env = {**vaultpy_env(), "PATH": f"{w.rec.script.parent}:{os.environ['PATH']}"}
    proc = subprocess.run(activate_cmd(h.profile, h.root), env=env, capture_output=True,
                          cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr.decode()
    assert w.rec.take() == []                           # the systemctl on PATH: not called
    assert "not restarting num.service: --root is not /" in proc.stderr.decode()
    assert (h.live / "num").read_bytes() == b"num v2"
    w.change_secret("num", b"num v2b")                  # a dry run says the same
    proc = subprocess.run(activate_cmd(h.profile, h.root, "--dry-run"), env=env,
                          capture_output=True, cwd=ROOT, timeout=120)
    assert "would not restart num.service: --root is not /" in proc.stderr.decode()
    subprocess.run(activate_cmd(h.profile, h.root), env=env, capture_output=True, cwd=ROOT,
                   timeout=120, check=True)
    w.change_secret("num", b"num v3")
    w.activate()                                        # --systemctl given: called
    assert w.rec.take() == ["try-restart num.service"]


def test_changes_call_exactly_their_units(world: World) -> None:
    w, h = world, world.host
    w.activate()
    w.rec.clear()
    # content of one secret
    w.change_secret("num", b"num v2")
    w.activate()
    assert w.rec.take() == ["try-restart num.service"]
    assert (h.live / "num").read_bytes() == b"num v2"
    assert file_state(h.live / "named")[0] == SECRETS["named"]
    # a reload unit
    w.change_secret("named", b"named v2")
    w.activate()
    assert w.rec.take() == ["try-reload-or-restart named.service"]
    link = h.root / "etc/app/named.key"           # the extra path follows the switch
    assert os.path.realpath(link) == os.path.realpath(h.store / "3" / "named")
    assert link.read_bytes() == b"named v2"
    # a template-only secret changes a template, which carries the units
    w.change_secret("tonly", b"tonly v2")
    w.activate()
    assert w.rec.take() == ["try-restart tmpl.service"]
    assert (h.live / "trim.env").read_bytes() == b"A=[tonly v2] B=[plain-secret]\n"
    # whitespace only: the trimmed template is unchanged, raw.env (no units) changed
    w.change_secret("tonly", b"\ttonly v2 \n")
    w.activate()
    assert w.rec.take() == []
    assert (h.live / "raw.env").read_bytes().endswith(b"A=[\ttonly v2 \n]\n{{ literal }}\n")
    # owner only
    w.secret_opts["named"]["owner"] = "svc"
    w.redeploy()
    w.activate()
    assert w.rec.take() == ["try-reload-or-restart named.service"]
    assert file_state(h.live / "named") == (b"named v2", h.uid("svc"), h.gid("svc"), 0o440)
    # mode only
    w.secret_opts["num"]["mode"] = "0600"
    w.redeploy()
    w.activate()
    assert w.rec.take() == ["try-restart num.service"]
    assert file_state(h.live / "num") == (b"num v2", 1234, 4321, 0o600)
    # group only
    w.secret_opts["num"]["group"] = "secrets"
    w.redeploy()
    w.activate()
    assert w.rec.take() == ["try-restart num.service"]
    assert file_state(h.live / "num") == (b"num v2", 1234, h.gid("secrets"), 0o600)
    # the extra path moves: the old link goes, the new one resolves; no unit called
    w.secret_opts["named"]["path"] = "/srv/new/named.key"
    w.redeploy()
    w.activate()
    assert w.rec.take() == []
    assert not os.path.lexists(link)
    assert (h.root / "srv/new/named.key").read_bytes() == b"named v2"
    # nothing changed
    w.redeploy()
    w.activate()
    assert w.rec.take() == []
    assert os.readlink(h.live) == "vaultpy.d/10"


def test_removed_secret_disappears_and_calls_its_units(world: World) -> None:
    w, h = world, world.host
    w.activate()
    assert (h.root / "etc/app/named.key").is_symlink()
    w.rec.clear()
    del w.secret_opts["num"], w.secret_opts["named"]
    w.redeploy()
    assert "num" not in {s["id"] for s in json.loads(h.profile.read_text())["secrets"]}
    w.activate()
    assert sorted(w.rec.take()) == ["try-reload-or-restart named.service",
                                    "try-restart num.service"]
    assert w.names(h.live) == NORMAL_FILES - {"num", "named"}
    assert not os.path.lexists(h.root / "etc/app/named.key")     # its extra path too
    assert file_state(h.live / "plain") == (SECRETS["plain"], 0, 0, 0o400)


# ------------------------------------------------------------- 5. dry run, early

def test_dry_run_changes_nothing(world: World) -> None:
    w, h = world, world.host
    before = snapshot_tree(h.root)
    proc = activate_ok(h.profile, h.root, "--dry-run", systemctl=w.rec.script)
    assert snapshot_tree(h.root) == before           # not even the store or a lock file
    err = proc.stderr.decode()
    assert "would" in err and "num (added)" in err and "trim.env (added)" in err, err
    assert w.rec.calls() == []
    # with a live generation and a changed secret
    w.activate()
    w.rec.clear()
    w.change_secret("num", b"num v2")
    before = snapshot_tree(h.root)
    proc = activate_ok(h.profile, h.root, "--dry-run", "--keep", "1",
                       systemctl=w.rec.script)
    assert snapshot_tree(h.root) == before
    err = proc.stderr.decode()
    assert "would change: num (changed)" in err, err
    assert "try-restart num.service" in err, err
    assert w.rec.calls() == []
    # with mounting on, too: nothing is mounted or created
    proc = activate_ok(h.profile, h.root, "--dry-run", no_mount=False,
                       systemctl=w.rec.script)
    assert snapshot_tree(h.root) == before


def test_early_and_normal_runs_install_disjoint_items(world: World) -> None:
    w, h = world, world.host
    w.activate("--early")
    assert os.readlink(h.early) == "vaultpy.d/1"
    assert w.names(h.early) == {"early_pw"}
    assert file_state(h.early / "early_pw") == (SECRETS["early_pw"], 0, 0, 0o400)
    assert not os.path.lexists(h.live)
    w.activate()
    assert os.readlink(h.live) == "vaultpy.d/2"
    assert_normal_generation(w, h.live)
    assert os.readlink(h.early) == "vaultpy.d/1" and w.names(h.early) == {"early_pw"}
    w.rec.clear()
    w.activate("--early")                             # unchanged: nothing called
    assert w.rec.calls() == []
    assert os.readlink(h.early) == "vaultpy.d/3"
    assert h.generations() == [1, 2, 3]
    w.change_secret("early_pw", b"early v2")
    w.activate()                                      # normal run: early item not its business
    assert w.rec.take() == []
    w.activate("--early")
    assert w.rec.take() == ["try-restart early.service"]
    assert (h.early / "early_pw").read_bytes() == b"early v2"


# ------------------------------------------------------------- 6. status

def test_status_in_sync_then_differs(world: World) -> None:
    w, h = world, world.host
    w.activate()
    w.activate("--early")        # the profile has early items: both sides must be live
    w.rec.clear()
    args = ("status", "--profile", str(h.profile), "--root", str(h.root))
    before = snapshot_tree(h.root)
    proc = run_vaultpy(*args)
    assert proc.returncode == 0, proc.stderr.decode()
    proc = run_vaultpy(*args, "--json")
    assert proc.returncode == 0, proc.stderr.decode()
    data = json.loads(proc.stdout)
    assert data["ok"] is True and data["changes"] == []
    assert {f["name"] for f in data["files"]} == NORMAL_FILES
    assert snapshot_tree(h.root) == before           # status only looks
    w.change_secret("num", b"num v2")
    before = snapshot_tree(h.root)
    proc = run_vaultpy(*args)
    assert proc.returncode == 1, proc.stderr.decode()
    assert b"num" in proc.stdout
    proc = run_vaultpy(*args, "--json")
    assert proc.returncode == 1 and b"Traceback" not in proc.stderr
    data = json.loads(proc.stdout)
    assert data["ok"] is False
    assert [(c["name"], c["kind"]) for c in data["changes"]] == [("num", "changed")]
    assert snapshot_tree(h.root) == before
    assert w.rec.calls() == []
    # drift on the host (someone chowned a live file) is a difference too
    w.activate()
    assert run_vaultpy(*args).returncode == 0
    os.chown(h.live / "plain", 5, 5)
    proc = run_vaultpy(*args, "--json")
    assert proc.returncode == 1
    assert [(c["name"], c["kind"], c["detail"]) for c in json.loads(proc.stdout)["changes"]
            ] == [("plain", "changed", "owner")]


def test_status_shows_what_stays_live_when_the_profile_would_fail(world: World) -> None:
    """A damaged cache file: status --profile printed only the decryption error, when
    what an operator needs then is what is live, and that it stays so (found in
    review)."""
    w, h = world, world.host
    w.activate()
    cached = h.profile.parent / json.loads(h.profile.read_text())["secrets"][0]["file"]
    cached.write_bytes(cached.read_bytes()[:200])
    args = ("status", "--profile", str(h.profile), "--root", str(h.root))
    proc = run_vaultpy(*args)
    out, err = proc.stdout.decode(), proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert out.startswith(f"live generation: {os.path.realpath(h.live)} (stays live: "
                          "activating this profile would fail)"), out
    assert "early live generation: none (and none until this profile activates)" in out, out
    assert "secret " in err and "run vaultpy renc, which rewrites it" in err, err
    proc = run_vaultpy(*args, "--json")
    data = json.loads(proc.stdout)
    assert proc.returncode == 1 and data["ok"] is False
    assert data["live"] == os.path.realpath(h.live) and data["changes"] == []
    assert len(data["problems"]) == 1 and "damaged" in data["problems"][0]["hint"]
    assert data["early_live"] is None              # (never activated early here)
    h.profile.write_text("{")                      # a profile that cannot be read at all
    proc = run_vaultpy(*args)
    assert proc.returncode == 1 and "not valid JSON" in proc.stderr.decode()
    assert proc.stdout == b""


def test_status_names_a_path_link_that_is_missing_or_replaced(world: World) -> None:
    """status --profile compared the generation's files only: with a `path` link deleted,
    or a file put in its place (which activation refuses), it said "in sync"."""
    w, h = world, world.host
    w.activate()
    w.activate("--early")
    args = ("status", "--profile", str(h.profile), "--root", str(h.root), "--json")
    assert run_vaultpy(*args).returncode == 0
    data = json.loads(h.profile.read_text())
    item = next(i for i in data["secrets"] if i.get("path") and i.get("install", True))
    link = h.root / item["path"].lstrip("/")
    assert link.is_symlink()
    target = os.readlink(link)
    link.unlink()
    proc = run_vaultpy(*args)
    assert proc.returncode == 1
    assert [(c["name"], c["kind"], c["detail"]) for c in json.loads(proc.stdout)["changes"]
            ] == [(item["name"], "link", f"{item['path']} is missing")]
    link.write_text("someone's file\n")
    proc = run_vaultpy(*args)
    assert proc.returncode == 1
    assert [c["detail"] for c in json.loads(proc.stdout)["changes"]] == [
        f"{item['path']} is not a link (a file or directory is there)"]
    link.unlink()
    os.symlink(target, link)
    assert run_vaultpy(*args).returncode == 0


@pytest.mark.parametrize("kind, field, value", [
    ("templates", "content", "X=\ud800{{ secrets.plain }}"),
    ("secrets", "path", "/etc/app/x\ud800"),
])
def test_profile_string_that_is_not_utf8_is_one_line(world: World, kind: str, field: str,
                                                      value: str) -> None:
    """A "\\ud800" JSON escape in a profile string crashed activation and status with
    exit 70 (UnicodeEncodeError) writing it; the loader refuses it, naming the field."""
    w, h = world, world.host
    w.activate()
    data = json.loads(h.profile.read_text())
    i = next(i for i, item in enumerate(data[kind]) if field in item)
    data[kind][i][field] = value
    h.profile.write_text(json.dumps(data))          # ASCII: the surrogate as an escape
    before = snapshot_tree(h.root)
    where = f"{kind}[{i}].{field}"
    for cmd in (activate_cmd(h.profile, h.root, systemctl=w.rec.script),
                [sys.executable, "-m", "vaultpy.activate.main",
                 *activate_cmd(h.profile, h.root, systemctl=w.rec.script)[4:]],
                [sys.executable, "-m", "vaultpy", "status", "--profile", str(h.profile),
                 "--root", str(h.root)]):
        proc = subprocess.run(cmd, capture_output=True, env=vaultpy_env(), timeout=120)
        assert_one_clean_error(proc, str(h.profile.name), where, "not valid UTF-8")
        assert len(proc.stderr.decode().splitlines()) == 1, proc.stderr.decode()
    assert snapshot_tree(h.root) == before


def test_status_covers_early_items(world: World) -> None:
    """The profile's early items live in early_dir; a change to one of them is a
    difference from the profile like any other."""
    w, h = world, world.host
    w.activate("--early")
    w.activate()
    args = ("status", "--profile", str(h.profile), "--root", str(h.root), "--json")
    proc = run_vaultpy(*args)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()
    w.change_secret("early_pw", b"early v2")
    proc = run_vaultpy(*args)
    assert proc.returncode == 1, proc.stdout.decode()
    changes = json.loads(proc.stdout)["changes"]
    assert [(c["name"], c["kind"]) for c in changes] == [("early_pw", "changed")]


@pytest.mark.parametrize("what", ["num", ".vaultpy-manifest.json"])
def test_a_fifo_in_the_live_generation_is_passed_over_not_waited_on(world: World,
                                                                    what: str) -> None:
    """The previous generation's files (an item, to compare, and the manifest, for
    removals, links and unit calls) were opened as they were: a FIFO there hung status,
    --dry-run and every activation, with the store's lock held.  Now it reads as
    missing: the item as added (its units are called), the manifest as none."""
    w, h = world, world.host
    w.activate()
    w.activate("--early")        # the profile has early items: status looks at both
    w.rec.clear()
    path = h.live / what
    path.unlink()
    os.mkfifo(path)
    args = ("status", "--profile", str(h.profile), "--root", str(h.root), "--json")
    proc = run_vaultpy(*args, timeout=30)
    assert proc.returncode == (1 if what == "num" else 0), proc.stderr.decode()
    assert [(c["name"], c["kind"]) for c in json.loads(proc.stdout)["changes"]] == (
        [("num", "added")] if what == "num" else [])
    activate_ok(h.profile, h.root, "--dry-run", systemctl=w.rec.script, timeout=30)
    assert w.rec.take() == []
    activate_ok(h.profile, h.root, systemctl=w.rec.script, timeout=30)
    assert w.rec.take() == (["try-restart num.service"] if what == "num" else [])
    assert_normal_generation(w, h.live)


# ------------------------------------------------------------- 7. bundle

def test_bundle_activates_from_a_copy_and_refuses_overwrite(world: World,
                                                            tmp_path: Path) -> None:
    repo = world.repo
    out = tmp_path / "bundle"
    repo.ok("bundle", "--host", HOST, "-o", str(out))
    names = {str(p.relative_to(out)) for p in out.rglob("*")}
    cache = {p.name: p.read_bytes() for p in (repo.cache / HOST).glob("*.age")}
    assert {n for n in names if n.startswith("cache")} == {"cache"} | {
        f"cache/{n}" for n in cache}
    for n, data in cache.items():
        assert (out / "cache" / n).read_bytes() == data
    assert {"profile.json", "vaultpy-activate.service"} <= names
    unit = (out / "vaultpy-activate.service").read_text()
    assert "ExecStart=" in unit and "vaultpy-activate --profile /etc/vaultpy/profile.json" in unit
    early_unit = (out / "vaultpy-activate-early.service").read_text()  # host has early items
    assert "activate --profile /etc/vaultpy/profile.json --early" in early_unit
    prof_text = (out / "profile.json").read_text()
    assert prof_text[:-1] == _canonical(prof_text)
    for s in json.loads(prof_text)["secrets"]:
        assert not os.path.isabs(s["file"]) and s["file"].startswith("cache/"), s
    # activate from a copy, with the original bundle and the repo's cache gone
    copy_dir = tmp_path / "host-etc" / "vaultpy"
    shutil.copytree(out, copy_dir)
    shutil.move(repo.cache, tmp_path / "cache-moved-away")
    shutil.move(out, tmp_path / "bundle-moved-away")
    h = prepare_root(tmp_path / "root2", repo.hosts[HOST].key, copy_dir / "profile.json")
    activate_ok(h.profile, h.root, systemctl=world.rec.script)
    assert os.readlink(h.live) == "vaultpy.d/1"
    assert_normal_generation(World(repo, h, world.rec), h.live)
    # refuses to overwrite without --force
    shutil.move(tmp_path / "cache-moved-away", repo.cache)
    shutil.move(tmp_path / "bundle-moved-away", out)
    (out / "cache" / "stale-file.age").write_text("x")   # an old bundle's cache file
    before = snapshot_tree(out)
    proc = repo.run("bundle", "--host", HOST, "-o", str(out))
    line = assert_one_clean_error(proc, "exists")
    assert "--force" in proc.stderr.decode(), line
    assert snapshot_tree(out) == before
    repo.ok("bundle", "--host", HOST, "-o", str(out), "--force")
    assert not (out / "cache" / "stale-file.age").exists() and (out / "profile.json").is_file()


@pytest.mark.parametrize("path", ["/opt/my vault/bin/vaultpy", "vaultpy",
                                  "/opt/100%/vaultpy", "/opt/v\nExecStartPre=/bin/sh -c id"])
def test_bundle_refuses_a_vaultpy_path_the_unit_cannot_hold(world: World, tmp_path: Path,
                                                             path: str) -> None:
    """--vaultpy was pasted into ExecStart= as given: a space split it, % was expanded
    as a systemd specifier, a newline put a unit line of its own in (ExecStartPre=),
    a relative name is no command.  Each was written, exit 0, and failed at boot."""
    out = tmp_path / "bundle"
    proc = world.repo.run("bundle", "--host", HOST, "-o", str(out), "--vaultpy", path)
    assert proc.returncode == 1
    assert_one_clean_error(proc, "--vaultpy", "cannot be put in the unit's ExecStart=",
                           "absolute path")
    assert not os.path.lexists(out)


def test_bundle_force_replaces_only_a_bundle(world: World, tmp_path: Path) -> None:
    """--force replaced whatever -o named: a file of notes, a directory of other data,
    a device (a review run turned /dev/null into a bundle directory)."""
    import stat as stat_mod

    repo = world.repo
    notes = tmp_path / "notes.txt"
    notes.write_text("important\n")
    data_dir = tmp_path / "data"
    (data_dir / "sub").mkdir(parents=True)
    (data_dir / "sub" / "keep").write_text("keep")
    device = tmp_path / "null"
    os.mknod(device, stat_mod.S_IFCHR | 0o666, os.makedev(1, 3))
    link = tmp_path / "link"
    link.symlink_to(data_dir)
    for target in (notes, data_dir, device, link):
        before = snapshot_tree(tmp_path)
        proc = repo.run("bundle", "--host", HOST, "-o", str(target), "--force")
        assert_one_clean_error(proc, str(target), "is not a vaultpy bundle",
                               "move it away yourself")
        assert snapshot_tree(tmp_path) == before, target
    assert stat_mod.S_ISCHR(device.lstat().st_mode) and notes.read_text() == "important\n"


def test_bundle_suggests_force_only_where_it_works(world: World, tmp_path: Path) -> None:
    """Without --force, a file of notes at -o got "pass --force to replace it", and then
    --force refused it as no bundle; and -o under a file said "File exists" of neither
    (a review).  --force is suggested for a bundle alone, and the file in the way of a
    folder is named."""
    repo = world.repo
    notes = tmp_path / "notes.txt"
    notes.write_text("important\n")
    before = snapshot_tree(tmp_path)
    proc = repo.run("bundle", "--host", HOST, "-o", str(notes))
    assert_one_clean_error(proc, str(notes), "already exists, and is not a vaultpy bundle",
                           "choose another -o")
    assert "--force" not in proc.stderr.decode()
    proc = repo.run("bundle", "--host", HOST, "-o", str(notes / "sub" / "b"))
    assert_one_clean_error(proc, f"{notes}: is not a directory (-o {notes}/sub/b)",
                           "choose another -o")
    assert snapshot_tree(tmp_path) == before
    out = tmp_path / "b"
    repo.ok("bundle", "--host", HOST, "-o", str(out))
    proc = repo.run("bundle", "--host", HOST, "-o", str(out))
    assert_one_clean_error(proc, str(out), "already exists", "pass --force to replace it")


def test_bundle_force_keeps_what_it_did_not_write(world: World, tmp_path: Path) -> None:
    """An age host's key put into its bundle folder (which mirrors /etc/vaultpy) went
    with the old bundle on --force, without a word."""
    repo = world.repo
    out = tmp_path / "b"
    repo.ok("bundle", "--host", HOST, "-o", str(out))
    repo.ok("bundle", "--host", HOST, "-o", str(out), "--force")      # its own files: fine
    for extra in (out / "host.key", out / "cache" / "notes.txt"):
        extra.write_text("keep me\n")
        before = snapshot_tree(tmp_path)
        proc = repo.run("bundle", "--host", HOST, "-o", str(out), "--force")
        rel = str(extra.relative_to(out))
        assert_one_clean_error(proc, str(out), f"does not write ({rel})",
                               "which --force would delete", "move it out of the bundle")
        assert snapshot_tree(tmp_path) == before
        extra.unlink()
    repo.ok("bundle", "--host", HOST, "-o", str(out), "--force")


def test_profile_output_replaces_only_a_profile(world: World, tmp_path: Path) -> None:
    """profile -o wrote over any file: -o hosts.toml, -o the master key were one typo
    from losing them."""
    repo = world.repo
    out = tmp_path / "p.json"
    repo.ok("profile", "--host", HOST, "-o", str(out))
    first = out.read_bytes()
    repo.ok("profile", "--host", HOST, "-o", str(out))                # a profile: replaced
    assert out.read_bytes() == first
    empty = tmp_path / "mktemp.json"       # an empty file (mktemp's): nothing to lose
    empty.touch()
    repo.ok("profile", "--host", HOST, "-o", str(empty))
    assert empty.read_bytes() == first
    proc = repo.run("profile", "--host", HOST, "-o", "/dev/null")
    assert_one_clean_error(proc, "/dev/null", "exists and is not a regular file",
                           "leave -o out to print the profile")
    for victim in (repo.identity, repo.root / "hosts.toml", tmp_path / "notes.json"):
        if not victim.exists():
            victim.write_text('{"a": 1}\n')
        before = victim.read_bytes()
        proc = repo.run("profile", "--host", HOST, "-o", str(victim))
        assert_one_clean_error(proc, "--output", "exists and is not a vaultpy profile",
                               "give another file name")
        assert victim.read_bytes() == before


def _bundle_under_strace(repo: Repo, out: Path, fault: str) -> Any:
    import subprocess
    import sys

    from conftest import need

    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **repo.env}
    return subprocess.run([need("strace"), "-f", "-qq", "-o", "/dev/null", "-e", fault,
                           sys.executable, "-m", "vaultpy", "bundle", "--host", HOST,
                           "-o", str(out), "--force"],
                          cwd=repo.root, env=env, capture_output=True, timeout=120)


def test_bundle_replacement_is_one_step_and_a_failure_keeps_the_old_one(
        world: World, tmp_path: Path) -> None:
    """--force swaps the new bundle in (renameat2 RENAME_EXCHANGE): the old one was
    removed first, so a crash in between left no bundle.  A failure keeps the old
    bundle whole, leaves no temp directory, and names the bundle's own path, never
    the temp one; a killed run's temp directory is removed by the next run."""
    repo = world.repo
    out = tmp_path / "out" / "bundle"
    repo.ok("bundle", "--host", HOST, "-o", str(out))
    (out / "cache" / "old-marker.age").write_text("old")
    before = snapshot_tree(out)

    def leftovers() -> list[str]:
        return sorted(n for n in os.listdir(out.parent) if n != "bundle")

    proc = _bundle_under_strace(repo, out, "inject=renameat2:error=EIO")
    line = assert_one_clean_error(proc, str(out), "cannot write the bundle",
                                  "Input/output error")
    assert ".vaultpy-tmp-" not in line
    assert snapshot_tree(out) == before and leftovers() == []
    # a full disk while copying a ciphertext: the line names the file in the bundle
    proc = _bundle_under_strace(repo, out, "inject=write:error=ENOSPC:when=1")
    line = assert_one_clean_error(proc, f"{out}/cache/", "No space left on device")
    assert ".vaultpy-tmp-" not in line
    assert snapshot_tree(out) == before and leftovers() == []
    # a file system that cannot exchange: replaced through a temp name instead
    (out.parent / ".bundle.vaultpy-tmp-killedrun" / "cache").mkdir(parents=True)
    proc = _bundle_under_strace(repo, out, "inject=renameat2:error=EINVAL")
    assert proc.returncode == 0, proc.stderr.decode()
    assert not (out / "cache" / "old-marker.age").exists() and (out / "profile.json").is_file()
    assert leftovers() == []
    (out / "cache" / "old-marker.age").write_text("old")
    repo.ok("bundle", "--host", HOST, "-o", str(out), "--force")
    assert not (out / "cache" / "old-marker.age").exists() and leftovers() == []


# ------------------------------------------------------------- 8. steps alone

def test_each_step_alone(world: World) -> None:
    from vaultpy import profile as profile_mod
    from vaultpy.activate import STEPS, Context, Options

    h = world.host
    assert [name for name, _ in STEPS] == [
        "trust_inputs", "verify_signature", "lock", "load_identities", "mount_store",
        "new_generation", "decrypt_secrets", "render_templates", "check_paths", "switch",
        "link_paths", "retire_early", "diff_and_notify", "prune"]
    steps = dict(STEPS)
    opts = Options(profile=h.profile, root=h.root, no_mount=True, quiet=True,
                   systemctl=str(world.rec.script))
    ctx = Context(opts, profile_mod.load(h.profile))
    try:
        steps["trust_inputs"](ctx)                          # reads only
        assert not (h.root / "run").exists()
        steps["verify_signature"](ctx)                      # no signed list: nothing
        assert ctx.signed_ids is None and not (h.root / "run").exists()
        steps["lock"](ctx)
        assert ctx.lock_fd is not None and (h.root / "run/vaultpy.d.lock").exists()
        steps["load_identities"](ctx)
        assert len(ctx.identities) == 1
        steps["mount_store"](ctx)
        assert h.store.is_dir() and os.listdir(h.store) == []
        steps["new_generation"](ctx)
        gen = h.store / "1"
        assert ctx.generation == gen and gen.is_dir() and os.listdir(gen) == []
        assert stat.S_IMODE(gen.stat().st_mode) == 0o751 and gen.stat().st_uid == 0
        assert not os.path.lexists(h.live)
        steps["decrypt_secrets"](ctx)
        assert set(os.listdir(gen)) == {"num", "named", "plain"}
        assert file_state(gen / "num") == (SECRETS["num"], 1234, 4321, 0o640)
        assert file_state(gen / "named") == (SECRETS["named"], h.uid("app"), h.gid("svc"),
                                             0o440)
        assert file_state(gen / "plain") == (SECRETS["plain"], 0, 0, 0o400)
        assert not os.path.lexists(h.live)
        steps["render_templates"](ctx)
        assert set(os.listdir(gen)) == NORMAL_FILES
        assert file_state(gen / "trim.env") == (TRIM_ENV, h.uid("svc"), h.gid("app"), 0o444)
        assert not os.path.lexists(h.live)
        assert not os.path.lexists(h.root / "etc/app/named.key")
        steps["check_paths"](ctx)
        assert not os.path.lexists(h.root / "etc/app") and not os.path.lexists(h.live)
        steps["switch"](ctx)
        assert os.readlink(h.live) == "vaultpy.d/1" and ctx.switched
        assert not os.path.lexists(h.root / "etc/app/named.key")    # links: next step
        steps["link_paths"](ctx)
        assert (h.root / "etc/app/named.key").is_symlink() and ctx.problems == []
        assert (h.root / "etc/app/named.key").read_bytes() == SECRETS["named"]
        assert world.rec.calls() == []
        steps["retire_early"](ctx)          # (no early generation was ever live here)
        assert ctx.problems == [] and not os.path.lexists(h.early)
        steps["diff_and_notify"](ctx)
        assert {c.name for c in ctx.changes} == NORMAL_FILES
        assert {c.kind for c in ctx.changes} == {"added"}
        assert sorted(world.rec.calls()) == sorted(ctx.notified)
        steps["prune"](ctx)
        assert os.listdir(h.store) == ["1"]
    finally:
        for fd in (ctx.generation_fd, ctx.lock_fd):
            if fd is not None:
                os.close(fd)


def _switched(world: World) -> Any:
    """A Context run through the steps up to the switch, its links not placed yet."""
    from vaultpy import profile as profile_mod
    from vaultpy.activate import STEPS, Context, Options

    h = world.host
    opts = Options(profile=h.profile, root=h.root, no_mount=True, quiet=True,
                   systemctl=str(world.rec.script))
    ctx = Context(opts, profile_mod.load(h.profile))
    for name, step in STEPS:
        step(ctx)
        if name == "switch":
            return ctx
    raise AssertionError("no switch step")


@pytest.mark.parametrize("appears", ["file on disk", "symlink"])
def test_an_entry_that_appears_after_the_check_is_replaced_only_if_replaceable(
        world: World, monkeypatch: pytest.MonkeyPatch, appears: str) -> None:
    """In a sticky directory every user may write to, another user's file can appear at
    an extra path between link_paths' look and its rename.  The rename swaps (it does
    not replace) and the check is made on what it took out: a file on disk goes back,
    kept and named; a symlink, which holds no data, is replaced."""
    from vaultpy.activate import links

    ctx = _switched(world)
    try:
        at = world.host.root / "etc/app/named.key"
        assert not os.path.lexists(at)
        real_symlink = os.symlink

        def racing_symlink(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
            real_symlink(src, dst, *args, **kwargs)     # our temp link; then, theirs:
            if appears == "file on disk":
                at.write_bytes(b"another user's file\n")
            else:
                real_symlink("/nowhere", at)

        monkeypatch.setattr(links.os, "symlink", racing_symlink)
        links.link_paths(ctx)
        monkeypatch.undo()
        leftovers = [n for n in os.listdir(at.parent) if n != "named.key"]
        assert leftovers == []
        if appears == "file on disk":
            assert at.read_bytes() == b"another user's file\n"
            [problem] = ctx.problems
            assert problem.file == "/etc/app/named.key"
            assert "a regular file on disk" in problem.message, problem
        else:
            assert ctx.problems == []
            assert at.read_bytes() == SECRETS["named"]
    finally:
        for fd in (ctx.generation_fd, ctx.lock_fd):
            if fd is not None:
                os.close(fd)
