"""A user's profile (``vaultpy profile --user``): activated by the user, for their own
programs, as agenix's and sops-nix's home-manager modules do.

Real throughout: the repository from the real CLI, the user's key from ``ssh-keygen``,
activation run by a process of a real non-root uid (tests/user_session.py: setuid for
good, no capability left) in a private mount namespace whose runtime directory is a
real tmpfs of the user's, as pam_systemd makes /run/user/<uid>.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from activate_helpers import (
    activate_cmd,
    activate_ok,
    host_table,
    make_host_root,
    new_repo,
    toml_str,
    vaultpy_env,
)
from conftest import ROOT, Repo, age_keygen, assert_one_clean_error

from vaultpy import profile as profile_mod
from vaultpy._internal import fsutil
from vaultpy.errors import VaultpyError

if os.geteuid() != 0:
    pytest.skip("runs activation as another user (setuid) in a mount namespace: run as "
                "root", allow_module_level=True)

UID, GID = 1201, 1201          # the user: no account the tests' other users have
OTHER = 1202
SECRETS = {"token": b"api-token-1\n", "db": b"db-password"}


@dataclass
class User:
    outer: Path         # 0755, below /tmp: the user can reach what is below it
    repo: Repo
    home: Path
    runtime: Path       # a tmpfs once a session starts (user_session.py)
    bin: Path           # the user's: a fake systemctl writes its calls here

    @property
    def state(self) -> Path:
        return self.home / ".local/state/vaultpy"

    def write_hosts(self, secrets: Mapping[str, Mapping[str, object]],
                    templates: Mapping[str, Mapping[str, object]] | None = None,
                    **extra: object) -> None:
        """hosts.toml with alice's entry; ``extra``: its own keys (``user=True``)."""
        text = (f"[vaultpy]\nrecipients = [{toml_str(self.repo.recipient)}]\n\n"
                + "".join(f"[secrets.{sid}]\n" for sid in SECRETS) + "\n"
                + host_table("alice", self.repo.hosts["alice"].pubkey, secrets,
                             templates or {}, extra))
        self.repo.write_hosts(text)

    def profile(self, name: str) -> Path:
        """``vaultpy renc`` then ``vaultpy profile -H alice --user -o <outer>/<name>``."""
        self.repo.ok("renc")
        out = self.outer / name
        self.repo.ok("profile", "-H", "alice", "--user", "-o", str(out))
        return out

    def link_dropped(self) -> tuple[Path, Path, Path]:
        """(link, a, b): profile a links ~/token to the token; b, else the same, does not."""
        link = self.home / "token"
        self.write_hosts({"token": {"path": str(link)}})
        a = self.profile("a.json")
        self.write_hosts({"token": {}})
        return link, a, self.profile("b.json")

    def session(self, *steps: list[str], runtime: bool = True,
                env: Mapping[str, str] | None = None,
                binds: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Run ``steps`` as the user in one login session (one tmpfs runtime directory:
        gone when it ends, as at a logout or a reboot); ``binds``: system files seen
        through another in that session alone (user_session.py)."""
        spec = {"uid": UID, "gid": GID, "home": str(self.home),
                "runtime": str(self.runtime) if runtime else "", "env": dict(env or {}),
                "binds": dict(binds or {}), "steps": [list(s) for s in steps]}
        proc = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable,
                               str(ROOT / "tests" / "user_session.py"), json.dumps(spec)],
                              capture_output=True, text=True, env=vaultpy_env(), cwd=ROOT,
                              timeout=120)
        assert proc.returncode == 0, proc.stderr
        return [json.loads(line) for line in proc.stdout.splitlines()]

    def activate(self, profile: Path, *extra: str) -> list[str]:
        return ["activate", "--profile", str(profile), "--systemctl",
                str(self.bin / "systemctl"), *extra]

    def calls(self) -> list[str]:
        log = self.bin / "calls.log"
        return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def user() -> Iterator[User]:
    outer = Path(tempfile.mkdtemp(prefix="vaultpy-user-"))     # tmp_path is 0700: root's
    try:
        os.chmod(outer, 0o755)
        repo = new_repo(outer / "repo", SECRETS, hosts=("alice",))
        for d in [outer / "repo", *(p for p in (outer / "repo").rglob("*") if p.is_dir())]:
            d.chmod(0o755)              # the cache files are read by the user
        home = outer / "home" / "alice"
        (home / ".ssh").mkdir(parents=True)
        shutil.copyfile(repo.hosts["alice"].key, home / ".ssh" / "id_ed25519")
        (home / ".ssh" / "id_ed25519").chmod(0o600)
        bin_dir = outer / "bin"
        bin_dir.mkdir()
        (bin_dir / "systemctl").write_text(
            f'#!/bin/sh\necho "$*" >> {bin_dir}/calls.log\n')
        (bin_dir / "systemctl").chmod(0o755)
        for path in [home, *home.rglob("*"), bin_dir, bin_dir / "systemctl"]:
            os.lchown(path, UID, GID)
        home.chmod(0o700)
        (outer / "run" / "user").mkdir(parents=True)
        yield User(outer, repo, home, outer / "run" / "user" / str(UID), bin_dir)
    finally:
        shutil.rmtree(outer)


def _ok(row: dict[str, Any]) -> dict[str, Any]:
    assert row["rc"] == 0, row
    return row


def test_user_activation_installs_their_files_in_their_runtime_dir(user: User) -> None:
    link = user.home / ".config" / "app" / "token"
    user.write_hosts({"token": {"mode": "0600", "path": str(link),
                                "restart_units": ["app.service"]}, "db": {}},
                     {"app.env": {"content": "DB={{ secrets.db }}\n", "mode": "0440"}})
    a = user.profile("a.json")
    # B: token's mode changes and its extra path goes; db is no longer installed.
    user.write_hosts({"token": {"mode": "0400", "restart_units": ["app.service"]}},
                     {"app.env": {"content": "DB={{ secrets.db }}\n", "mode": "0440"}})
    b = user.profile("b.json")
    live = user.state / "secrets"
    look = (f'stat -c "%u %g %a %F" "$XDG_RUNTIME_DIR/vaultpy.d" '
            f'"$XDG_RUNTIME_DIR"/vaultpy.d/*/token "{live}/app.env"; '
            f'cat "{live}/token" "{live}/app.env"; readlink "{link}"; cat "{link}"; '
            f'ls "{live}/"; ls "{user.state}"')
    rows = user.session(user.activate(a), ["sh", look], user.activate(b),
                        ["sh", look + f'; ls "{link}" || echo gone'])
    _ok(rows[0])
    assert "live:" in rows[0]["err"]
    out = _ok(rows[1])["out"].splitlines()
    assert out[0] == f"{UID} {GID} 700 directory"           # the store: theirs alone
    assert out[1] == f"{UID} {GID} 600 regular file"        # installed as the user
    assert out[2] == f"{UID} {GID} 440 regular file"
    assert out[3:5] == ["api-token-1", "DB=db-password"]
    assert out[5].endswith("/secrets/token") and out[6] == "api-token-1"   # extra path
    assert out[7:10] == ["app.env", "db", "token"]
    assert [n for n in out[10:] if n.startswith("links-")], out   # the record, in XDG state
    _ok(rows[2])
    out = _ok(rows[3])["out"].splitlines()
    assert out[-1] == "gone" and "app.env" in out and "db" not in out
    # their own manager's unit (systemctl --user): token added, then its mode changed
    assert user.calls() == ["--user --no-block try-restart -- app.service"] * 2
    # nothing of theirs is root's, and no plaintext was left outside the session's RAM
    assert not (user.outer / "run" / "user" / str(UID)).exists() or not any(
        (user.outer / "run" / "user" / str(UID)).iterdir())
    for path in [user.state, *user.state.rglob("*")]:
        assert path.lstat().st_uid == UID, path
    assert all(b"api-token" not in p.read_bytes() for p in user.home.rglob("*")
               if p.is_file() and not p.is_symlink() and p.name != "id_ed25519")


def test_a_user_manager_out_of_reach_is_a_warning_that_says_what_to_do(user: User) -> None:
    """systemctl --user without a manager to talk to (su, ssh without lingering): the
    files are installed, and the warning names the call as made and the way out."""
    user.write_hosts({"token": {"restart_units": ["app.service"]}}, {})
    profile = user.profile("a.json")
    (user.bin / "systemctl").write_text(
        "#!/bin/sh\necho 'Failed to connect to bus: No medium found' >&2\nexit 1\n")
    rows = user.session(user.activate(profile), ["sh", f'cat "{user.state}/secrets/token"'])
    err = _ok(rows[0])["err"]
    assert ("warning: systemctl --user try-restart app.service failed: Failed to connect to "
            "bus: No medium found; no systemd --user manager of yours answers") in err, err
    assert "loginctl enable-linger" in err
    assert _ok(rows[1])["out"] == "api-token-1\n"


def test_a_new_session_rebuilds_and_drops_the_links_the_profile_no_longer_wants(
        user: User) -> None:
    """After a logout (or a reboot) the runtime directory is empty: the record of links
    in the user's state directory still says which link to remove."""
    link, a, b = user.link_dropped()
    _ok(user.session(user.activate(a))[0])
    assert link.is_symlink()
    rows = user.session(user.activate(b), ["sh", f'cat "{user.state}/secrets/token"'])
    _ok(rows[0])
    assert _ok(rows[1])["out"] == "api-token-1\n"
    assert not os.path.lexists(link)


def test_a_home_reached_through_a_symlink(user: User) -> None:
    """$HOME is a symlink (/home -> /data/home, say): the live link in it points across
    into the runtime directory, and its ".." are taken where it really is.  The profile
    is written into the home through the symlink too, its cache paths relative to where
    it really is."""
    real = user.outer / "data" / "deep" / "alice"
    real.parent.mkdir(parents=True)
    user.home.rename(real)
    user.home.symlink_to(os.path.relpath(real, user.home.parent))
    link = user.home / ".config" / "app" / "token"
    user.write_hosts({"token": {"path": str(link)}})
    user.repo.ok("renc")
    prof = user.home / "profile.json"
    user.repo.ok("profile", "-H", "alice", "--user", "-o", str(prof))
    live = user.state / "secrets"
    rows = user.session(user.activate(prof), ["sh", f'cat "{live}/token" "{link}"'],
                        ["activate", "--profile", str(prof), "--dry-run"])
    assert "live:" in _ok(rows[0])["err"]
    assert _ok(rows[1])["out"] == "api-token-1\n" * 2
    assert "would change: nothing" in _ok(rows[2])["err"]     # the live one is found


def test_status_shows_a_link_the_profile_no_longer_wants(user: User) -> None:
    link, a, b = user.link_dropped()
    rows = user.session(user.activate(a), ["vaultpy", "status", "--profile", str(b)])
    _ok(rows[0])
    row = rows[1]
    assert row["rc"] == 1, row
    assert f"{link} is no item's any more: activation removes it" in row["out"], row
    live = [ln for ln in row["out"].splitlines() if ln.startswith("live generation: ")]
    assert live == [f"live generation: {user.runtime}/vaultpy.d/1"], row   # no "../"


def test_root_may_not_activate_a_users_profile(user: User) -> None:
    user.write_hosts({"token": {}})
    a = user.profile("a.json")
    proc = subprocess.run([sys.executable, "-m", "vaultpy.activate.main", "--profile", str(a)],
                          capture_output=True, cwd=ROOT,
                          env=vaultpy_env({"HOME": str(user.home),
                                           "XDG_RUNTIME_DIR": str(user.runtime)}))
    assert_one_clean_error(proc, "settings.user", "run as root", "as the user")
    # root's environment (sudo, a system unit: no $XDG_RUNTIME_DIR) is not the problem
    env = vaultpy_env()
    env.pop("XDG_RUNTIME_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "vaultpy.activate.main", "--profile", str(a)],
                          capture_output=True, cwd=ROOT, env=env)
    assert_one_clean_error(proc, "settings.user", "run as root")
    assert not (user.state / "secrets").exists() and not user.runtime.exists()


def test_a_store_on_disk_is_refused(user: User) -> None:
    user.write_hosts({"token": {}})
    a = user.profile("a.json")
    disk = user.home / "rt"         # the user's, 0700, but on the disk's file system
    if fsutil.mount_fstype(user.home) in fsutil.RAM_FILESYSTEMS:
        pytest.skip("/tmp is in RAM here: no disk to put the store on")
    rows = user.session(["sh", f'mkdir -m 700 "{disk}"'], user.activate(a), runtime=False,
                        env={"XDG_RUNTIME_DIR": str(disk)})
    row = rows[1]
    errors = [ln for ln in row["err"].splitlines() if not ln.startswith("vaultpy activate: ")]
    assert row["rc"] == 1 and len(errors) == 1, row       # after the steps' own log lines
    assert "not in RAM" in errors[0] and "%r" in errors[0], row
    assert not (disk / "vaultpy.d").exists()            # no store, no generation on disk


def test_without_a_runtime_dir_the_one_line_says_which_variable(user: User) -> None:
    user.write_hosts({"token": {}})
    a = user.profile("a.json")
    row = user.session(user.activate(a), runtime=False)[0]
    assert row["rc"] == 1 and len(row["err"].splitlines()) == 1, row
    assert "settings.store" in row["err"] and "$XDG_RUNTIME_DIR" in row["err"], row


def test_a_missing_key_is_theirs_to_restore(user: User) -> None:
    user.write_hosts({"token": {}})
    a = user.profile("a.json")
    (user.home / ".ssh" / "id_ed25519").unlink()
    row = user.session(user.activate(a))[0]
    errors = [ln for ln in row["err"].splitlines() if not ln.startswith("vaultpy activate: ")]
    assert row["rc"] == 1 and len(errors) == 1, row
    assert "id_ed25519: settings.identities: your key not found" in errors[0], row
    assert "ssh-keygen -A" not in errors[0]      # a host's advice, not hers


def test_dry_run_and_early(user: User) -> None:
    user.write_hosts({"token": {"path": str(user.home / "token")}})
    a = user.profile("a.json")
    rows = user.session(user.activate(a, "--dry-run"), user.activate(a, "--early"),
                        ["sh", f'ls -A "$XDG_RUNTIME_DIR"; echo --; ls -A "{user.home}"'])
    assert _ok(rows[0])["err"].count("would") >= 2, rows[0]
    assert rows[1]["rc"] == 1 and "--early: a user's profile has no early files" in \
        rows[1]["err"], rows[1]
    # nothing made: no store or lock in the runtime dir, no link or state in the home
    assert _ok(rows[2])["out"] == "--\n.ssh\n"


def test_a_link_below_another_users_directory_is_refused(user: User) -> None:
    theirs = user.outer / "theirs"
    theirs.mkdir()
    os.chown(theirs, OTHER, OTHER)
    theirs.chmod(0o777)         # even one the user may write
    user.write_hosts({"token": {"path": str(theirs / "token")}})
    a = user.profile("a.json")
    row = user.session(user.activate(a))[0]
    assert row["rc"] == 1 and "owned by another user" in row["err"], row
    assert "yours (or root's)" in row["err"]
    assert not os.path.lexists(theirs / "token")


def test_the_users_own_symlink_in_their_home_is_followed(user: User) -> None:
    """~/.config a symlink of theirs (dotfiles kept elsewhere): theirs to follow."""
    elsewhere = user.home / "dotfiles" / "config"
    rows = user.session(["sh", f'mkdir -p "{elsewhere}" && ln -s "{elsewhere}" '
                               f'"{user.home}/.config"'])
    _ok(rows[0])
    user.write_hosts({"token": {"path": str(user.home / ".config" / "token")}})
    a = user.profile("a.json")
    rows = user.session(user.activate(a), ["sh", f'cat "{elsewhere}/token"'])
    _ok(rows[0])
    assert _ok(rows[1])["out"] == "api-token-1\n"


def test_a_percent_in_a_hosts_toml_path_means_itself(user: User) -> None:
    """hosts.toml's paths are literal: profile --user writes a % as %%, which activation
    reads back as it was (it was refused as "unknown specifier %o")."""
    link = user.home / "50%off" / "token"
    user.write_hosts({"token": {"path": str(link)}})
    a = user.profile("a.json")
    assert json.loads(a.read_text())["secrets"][0]["path"] == str(link).replace("%", "%%")
    rows = user.session(user.activate(a), ["sh", f'cat "{link}"'])
    _ok(rows[0])
    assert _ok(rows[1])["out"] == "api-token-1\n"


def test_a_passphrase_protected_key_gets_a_users_advice(user: User) -> None:
    user.write_hosts({"token": {}})
    a = user.profile("a.json")
    key = user.home / ".ssh" / "id_ed25519"
    subprocess.run(["ssh-keygen", "-p", "-q", "-N", "secret-pass", "-P", "", "-f", str(key)],
                   check=True, capture_output=True)
    row = user.session(user.activate(a))[0]
    assert row["rc"] == 1 and "your key is passphrase-protected" in row["err"], row
    assert "ssh-keygen -t ed25519 -N ''" in row["err"] and "ssh-keygen -A" not in row["err"]


def test_a_key_that_is_not_the_entrys_gets_a_users_advice(user: User) -> None:
    user.write_hosts({"token": {}})
    a = user.profile("a.json")
    key = user.home / ".ssh" / "id_ed25519"
    key.unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)],
                   check=True, capture_output=True)
    os.chown(key, UID, GID)
    row = user.session(user.activate(a))[0]
    assert row["rc"] == 1 and "was it encrypted to your key?" in row["err"], row
    assert "ssh-keygen -lf" in row["err"]
    # what a person does after a renc: their profile comes with the cache files
    assert "run vaultpy renc and deploy again (home-manager switch, or a new vaultpy " \
        "bundle)" in row["err"], row


def test_a_hosts_profile_activated_by_a_user_says_what_to_do(user: User) -> None:
    """Forgetting --user: the host's profile failed on the lock file in /run, which
    said nothing of what was wrong."""
    user.write_hosts({"token": {}})
    user.repo.ok("renc")
    host_profile = user.outer / "host.json"
    user.repo.ok("profile", "-H", "alice", "-o", str(host_profile))
    row = user.session(["activate", "--profile", str(host_profile)])[0]
    assert row["rc"] == 1 and len(row["err"].splitlines()) == 1, row
    assert "a host's profile, run by a user who is not root" in row["err"]
    assert "vaultpy profile --host alice --user" in row["err"]


def test_removing_a_path_is_said(user: User) -> None:
    link, a, b = user.link_dropped()
    rows = user.session(user.activate(a), user.activate(b, "--dry-run"), user.activate(b))
    assert f"would remove {link} (no item wants it)" in _ok(rows[1])["err"]
    assert f"removed {link} (no item wants it)" in _ok(rows[2])["err"]
    assert not os.path.lexists(link)


def test_a_users_bundle_is_activated_from_their_config_dir(user: User) -> None:
    """vaultpy bundle --user: the profile, copies of the cache files and vaultpy.service,
    installed in ~/.config/vaultpy as the README says: a later renc (which prunes the
    cache files the profile names) leaves it working until the next bundle."""
    user.write_hosts({"token": {"mode": "0600"}})
    user.repo.ok("renc")
    out = user.outer / "alice-bundle"
    proc = user.repo.ok("bundle", "--host", "alice", "--user", "-o", str(out),
                        "--vaultpy", "%h/.local/bin/vaultpy")
    assert "~/.config/vaultpy" in proc.stderr.decode()
    unit = (out / "vaultpy.service").read_text()
    assert ("ExecStart=%h/.local/bin/vaultpy-activate --profile "
            "%h/.config/vaultpy/profile.json --regular-profile") in unit
    assert "WantedBy=default.target" in unit and "sysinit" not in unit
    assert sorted(p.name for p in out.iterdir()) == ["cache", "profile.json", "vaultpy.service"]
    user.repo.ok("encrypt", "token", input=b"api-token-2\n")
    user.repo.ok("renc")                # prunes the cache file the bundle copied
    for p in [out, *out.rglob("*")]:
        os.lchown(p, UID, GID)
    conf = user.home / ".config" / "vaultpy"
    rows = user.session(["sh", f'mkdir -p "{conf.parent}" && cp -r "{out}" "{conf}"'],
                        ["activate", "--profile", str(conf / "profile.json"),
                         "--regular-profile"],
                        ["sh", f'cat "{user.state}/secrets/token"'])
    _ok(rows[0])
    _ok(rows[1])
    assert _ok(rows[2])["out"] == "api-token-1\n"


def test_a_users_bundle_takes_only_home_as_a_specifier(user: User) -> None:
    user.write_hosts({"token": {}})
    user.repo.ok("renc")
    proc = user.repo.run("bundle", "--host", "alice", "--user", "-o",
                         str(user.outer / "b"), "--vaultpy", "%u/bin/vaultpy")
    assert_one_clean_error(proc, "--vaultpy", "%h/.local/bin/vaultpy")


def _with_settings(profile: Path, **settings: object) -> Path:
    data = json.loads(profile.read_text())
    data["settings"].update(settings)
    profile.write_text(json.dumps(data))
    return profile


@pytest.mark.parametrize("field", ["store", "dir"])
def test_a_place_below_another_users_directory_is_refused(user: User, field: str) -> None:
    """A store or live link below a directory another user controls: they could swap it
    for a place of theirs between activation's checks and its writes (plaintext on their
    disk, the user's own directories removed as "unfinished generations")."""
    shared = user.outer / "shared"
    shared.mkdir()
    os.chown(shared, OTHER, OTHER)
    shared.chmod(0o777)
    user.write_hosts({"token": {}})
    a = _with_settings(user.profile("a.json"), **{field: f"{shared}/alice/{field}"})
    row = user.session(user.activate(a))[0]
    assert row["rc"] == 1 and len(row["err"].splitlines()) == 1, row
    assert f"settings.{field}" in row["err"] and "owned by another user" in row["err"], row
    assert list(shared.iterdir()) == []          # nothing made there


def test_a_live_link_another_user_made_first_is_refused(user: User) -> None:
    """settings.dir where another user made the link first, pointing at a "generation"
    of theirs: its manifest would choose the units to restart and the links to remove.
    (The directory: root's, writable by the user's own group, which that user could
    have been in before they left it; one every user may write to, or whose group has
    another member, is refused before, as a place.)"""
    sticky = user.outer / "shared-group"
    sticky.mkdir()
    os.chown(sticky, 0, GID)
    sticky.chmod(0o775)
    fake = user.outer / "fake-gen"
    fake.mkdir()
    (fake / ".vaultpy-manifest.json").write_text(json.dumps(
        {"version": 1, "host": "alice", "items": [], "unlink": [],
         "pending": [["try-restart", "evil.service"]]}))
    live = sticky / "alice-live"
    live.symlink_to(fake)
    os.lchown(live, OTHER, OTHER)
    user.write_hosts({"token": {}})
    a = _with_settings(user.profile("a.json"), dir=str(live))
    row = user.session(user.activate(a), binds=_accounts(
        user, "", lambda t: t + f"alice:x:{GID}:alice\n"))[0]
    errors = [ln for ln in row["err"].splitlines() if not ln.startswith("vaultpy activate: ")]
    assert row["rc"] == 1 and len(errors) == 1, row
    assert f"is a symlink of another user (uid {OTHER})" in errors[0], row
    assert user.calls() == []


def test_the_users_symlink_into_another_users_directory_is_refused(user: User) -> None:
    """~/.local/state a symlink of the user's, into a directory of theirs that lies in
    another user's: the kernel follows the whole chain, so what is above where it leads
    is checked too (that user could swap it, and the live link in it)."""
    theirs = user.outer / "pi"
    (theirs / "alice").mkdir(parents=True)
    os.chown(theirs, OTHER, OTHER)
    theirs.chmod(0o755)
    os.chown(theirs / "alice", UID, GID)
    rows = user.session(["sh", f'mkdir -p "{user.home}/.local" && ln -s "{theirs}/alice" '
                               f'"{user.home}/.local/state"'])
    _ok(rows[0])
    user.write_hosts({"token": {}})
    a = user.profile("a.json")
    row = user.session(user.activate(a))[0]
    assert row["rc"] == 1 and "settings.dir" in row["err"], row
    assert "owned by another user" in row["err"] and str(theirs) in row["err"], row
    assert list((theirs / "alice").iterdir()) == []


def test_a_home_writable_by_another_group_is_refused(user: User) -> None:
    os.chown(user.home, UID, OTHER)
    user.home.chmod(0o775)
    user.write_hosts({"token": {}})
    row = user.session(user.activate(user.profile("a.json")))[0]
    assert row["rc"] == 1 and f"writable by group {OTHER}, not yours" in row["err"], row


def _accounts(user: User, passwd: str, group: Callable[[str], str]) -> dict[str, str]:
    """Copies of /etc/passwd (alice's entry and ``passwd`` added) and /etc/group
    (``group`` applied), for user_session.py to bind-mount over the real ones."""
    binds = {}
    for name, edit in (("passwd", lambda t: t + f"alice:x:{UID}:{GID}::{user.home}:/bin/sh\n"
                        + passwd), ("group", group)):
        copy = user.outer / name
        copy.write_text(edit(Path(f"/etc/{name}").read_text()))
        binds[f"/etc/{name}"] = str(copy)
    return binds


def _root_group(members: str) -> Callable[[str], str]:
    return lambda t: re.sub(r"(?m)^root:([^:]*):0:.*$", rf"root:\1:0:{members}", t)


@pytest.mark.parametrize(("gid", "passwd", "group", "refused"), [
    (GID, "", lambda t: t + f"alice:x:{GID}:alice\n", None),             # hers alone
    (GID, "", lambda t: t + f"alice:x:{GID}:alice,bob\n", "which bob is in too"),
    (GID, f"bob:x:{OTHER}:{GID}::/home/bob:/bin/sh\n",                    # bob's primary
     lambda t: t + f"alice:x:{GID}:\n", "which bob is in too"),
    (GID, "", lambda t: t, "which the group database does not know"),    # no entry
    (0, "", _root_group(""), None),                                       # root's alone
    (0, "", _root_group("bob"), "which bob is in too"),
])
def test_a_group_writable_home_is_the_users_only_while_no_one_else_is_in_it(
        user: User, gid: int, passwd: str, group: Callable[[str], str],
        refused: str | None) -> None:
    """A home writable by the user's own group (or root's): another account in that
    group (a member in /etc/group, or one whose primary group it is in /etc/passwd)
    could swap its entries; a group the database does not know is not vouched for.
    Seen through the system's account files (NSS), bind-mounted in the session alone."""
    os.chown(user.home, UID, gid)
    user.home.chmod(0o775)
    user.write_hosts({"token": {}})
    row = user.session(user.activate(user.profile("a.json")),
                       binds=_accounts(user, passwd, group))[0]
    if refused is None:
        _ok(row)
        return
    assert row["rc"] == 1 and f"writable by {'your' if gid else 'root' + chr(39) + 's'} " \
        f"group {gid}, {refused}" in row["err"], row
    assert row["err"].rstrip().endswith("make that directory writable by its owner alone "
                                        "(chmod g-w), or choose a place elsewhere"), row


def test_a_link_at_early_dir_keeps_no_generation(user: User) -> None:
    """A user's profile has no early run: its early_dir is never read as a live link
    (another user's link there, to generation 1, kept it from being pruned and sealed
    for good)."""
    sticky = user.outer / "sticky-early"
    sticky.mkdir()
    sticky.chmod(0o1777)
    early = sticky / "alice-early"
    early.symlink_to(user.runtime / "vaultpy.d" / "1")      # resolves once it is built
    os.lchown(early, OTHER, OTHER)
    user.write_hosts({"token": {}})
    a = _with_settings(user.profile("a.json"), early_dir=str(early), keep=1)
    rows = user.session(user.activate(a), user.activate(a), user.activate(a),
                        ["sh", 'ls "$XDG_RUNTIME_DIR/vaultpy.d"'])
    assert [r["rc"] for r in rows] == [0] * 4, rows
    assert rows[3]["out"].split() == ["3"]


def test_a_runtime_dir_of_another_user_is_refused(user: User) -> None:
    theirs = user.outer / "rt-theirs"
    theirs.mkdir()
    os.chown(theirs, OTHER, OTHER)
    theirs.chmod(0o777)
    user.write_hosts({"token": {}})
    a = user.profile("a.json")
    row = user.session(user.activate(a), runtime=False,
                       env={"XDG_RUNTIME_DIR": str(theirs)})[0]
    assert row["rc"] == 1 and "settings.store" in row["err"], row
    assert "owned by another user" in row["err"] and list(theirs.iterdir()) == []


def test_a_store_in_a_directory_everyone_may_write_is_refused(user: User) -> None:
    """In a shared sticky directory another user may make the store's name, or the
    lock's, first (and hold its flock for ever)."""
    sticky = user.outer / "sticky"
    sticky.mkdir()
    sticky.chmod(0o1777)
    user.write_hosts({"token": {}})
    a = _with_settings(user.profile("a.json"), store=f"{sticky}/alice.d")
    row = user.session(user.activate(a))[0]
    assert row["rc"] == 1 and len(row["err"].splitlines()) == 1, row
    assert "settings.store" in row["err"] and "every user may write" in row["err"], row
    assert list(sticky.iterdir()) == []


@pytest.mark.parametrize("kind", ["theirs", "hard link"])
def test_a_hosts_lock_file_must_be_roots_own(make_repo: Any, tmp_path: Path,
                                            kind: str) -> None:
    repo = make_repo(hosts=1)
    repo.ok("renc")
    host = make_host_root(repo, "host0", tmp_path / "root")
    lock = host.root / "run" / "vaultpy.d.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    if kind == "theirs":
        lock.touch()
        os.chown(lock, OTHER, OTHER)
        needle = f"the lock file is owned by uid {OTHER}, not root"
    else:
        (host.root / "notes").touch()
        os.link(host.root / "notes", lock)
        needle = "the lock file is a hard link to another name"
    proc = subprocess.run(activate_cmd(host.profile, host.root), capture_output=True,
                          env=vaultpy_env(), cwd=ROOT)
    assert_one_clean_error(proc, needle)
    assert host.generations() == []


def test_dry_run_after_a_new_session_names_the_links_the_record_owes(user: User) -> None:
    """A new session starts with an empty runtime dir: only the record says which link
    an earlier one placed."""
    link, a, b = user.link_dropped()
    _ok(user.session(user.activate(a))[0])
    rows = user.session(user.activate(b, "--dry-run"))
    assert f"would remove {link} (no item wants it)" in _ok(rows[0])["err"]
    assert link.is_symlink()


def _age_entry(user: User, person: bool) -> tuple[Path, str]:
    """hosts.toml with alice's entry keyed by a new age key (no identities), written;
    the key's identity file, and the text."""
    identity, recipient = age_keygen(user.outer, "alice-age.txt")
    text = (f"[vaultpy]\nrecipients = [{toml_str(user.repo.recipient)}]\n\n[secrets.token]\n"
            "[secrets.db]\n\n[hosts.alice]\n" + ("user = true\n" if person else "")
            + f"pubkey = {toml_str(recipient)}\nsecrets = [\"token\"]\n")
    user.repo.write_hosts(text)
    return identity, text


def test_an_age_key_entry_without_identities_gets_a_users_advice(user: User) -> None:
    _age_entry(user, person=False)
    proc = user.repo.run("profile", "-H", "alice", "--user")
    assert_one_clean_error(proc, "hosts.alice.identities", "~/.ssh/id_ed25519",
                           "/home/<you>/.config/age/keys.txt")


@pytest.mark.parametrize(("opts", "field"), [
    ({"owner": "app"}, "hosts.alice.secrets.token.owner"),
    ({"group": "wheel"}, "hosts.alice.secrets.token.group"),
    ({"early": True}, "hosts.alice.secrets.token.early"),
])
def test_profile_user_refuses_what_only_a_host_has(user: User, opts: dict[str, object],
                                                   field: str) -> None:
    user.write_hosts({"token": opts})
    proc = user.repo.run("profile", "-H", "alice", "--user")
    assert_one_clean_error(proc, field, "--user")


def test_profile_user_names_every_such_field_at_once(user: User) -> None:
    user.write_hosts({"token": {"owner": "app"}, "db": {"group": "1", "early": True}})
    proc = user.repo.run("profile", "-H", "alice", "--user")
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in err
    for field in ("secrets.token.owner", "secrets.db.group", "secrets.db.early"):
        assert f"hosts.alice.{field}" in err, err


def test_the_profile_names_the_users_places(user: User) -> None:
    user.write_hosts({"token": {"mode": "0600"}})
    data = json.loads(user.repo.ok("profile", "-H", "alice", "--user").stdout)
    assert data["settings"] == {"user": True, "identities": ["%h/.ssh/id_ed25519"],
                                "dir": "%h/.local/state/vaultpy/secrets",
                                "early_dir": "%h/.local/state/vaultpy/early",
                                "store": "%r/vaultpy.d", "keep": 3}
    assert {"owner", "group", "early"}.isdisjoint(data["secrets"][0])


# ------------------------------------------------- a person's entry: user = true

def test_a_persons_entry_is_a_users_profile_whose_paths_say_home(user: User) -> None:
    """``user = true``: profile and activation need no --user, and the entry's paths
    are a user's profile's own (%h is the home; hosts.toml does not spell it out)."""
    user.write_hosts({"token": {"path": "%h/app/token", "mode": "0600"}},
                     {"app.env": {"content": "T={{ secrets.token }}", "path": "%h/app/env"}},
                     user=True)
    user.repo.ok("renc")
    user.repo.ok("check")
    out = user.outer / "p.json"
    user.repo.ok("profile", "-H", "alice", "-o", str(out))
    data = json.loads(out.read_text())
    assert data["settings"]["user"] is True
    assert [s["path"] for s in data["secrets"] if s["install"]] == ["%h/app/token"]
    assert data["templates"][0]["path"] == "%h/app/env"
    rows = user.session(user.activate(out), ["sh", 'cat "$HOME/app/token" "$HOME/app/env"; '
                                             'stat -c "%u %a" "$(readlink -f "$HOME/app/token")"'])
    _ok(rows[0])
    assert _ok(rows[1])["out"] == f"api-token-1\nT=api-token-1\n{UID} 600\n"


@pytest.mark.parametrize(("opts", "field", "needle"), [
    ({"owner": "app"}, "owner", "remove owner"),
    ({"group": "wheel"}, "group", "remove group"),
    ({"early": True}, "early", "remove early"),
    ({"path": "%x/token"}, "path", "unknown specifier %x"),
    ({"path": "token"}, "path", "begins with %h/"),
    ({"path": "~/.config/token"}, "path", "write %h/.config/token (%h is their home)"),
    ({"path": "$HOME/token"}, "path", "write %h/token"),
    ({"path": "%htoken"}, "path", "a % other than a leading %h/ or %r/"),
    ({"path": "%h/.local/state/vaultpy/secrets/other"}, "path",
     "overlaps '%h/.local/state/vaultpy/secrets'"),
])
def test_check_refuses_in_a_persons_entry_what_a_users_profile_cannot_do(
        user: User, opts: dict[str, object], field: str, needle: str) -> None:
    user.write_hosts({"token": opts}, user=True)
    for command in (["check"], ["profile", "-H", "alice"]):
        assert_one_clean_error(user.repo.run(*command), f"hosts.alice.secrets.token.{field}",
                               needle)


def test_a_non_boolean_user_is_one_line(user: User) -> None:
    """user = "yes": said once, and the entry's %h paths are not also called a host's."""
    user.write_hosts({"token": {"path": "%h/token"}}, user="yes")
    assert_one_clean_error(user.repo.run("check"), "hosts.alice.user: expected true or false")


def test_a_persons_missing_key_asks_for_theirs(user: User) -> None:
    user.repo.write_hosts(f"[vaultpy]\nrecipients = [{toml_str(user.repo.recipient)}]\n\n"
                          "[secrets.token]\n[secrets.db]\n\n[hosts.alice]\nuser = true\n")
    assert_one_clean_error(user.repo.run("check"), "hosts.alice.pubkey: missing",
                           "the person's ~/.ssh/id_ed25519.pub")


def test_a_hosts_entry_keeps_its_paths_literal(user: User) -> None:
    """Without ``user = true`` a path is a host's: absolute, so %h/… is refused, saying
    what a person's entry would need."""
    user.write_hosts({"token": {"path": "%h/token"}})
    assert_one_clean_error(user.repo.run("check"), "hosts.alice.secrets.token.path",
                           "absolute", "a person's entry says user = true")


def test_a_persons_bundle_needs_no_user_flag(user: User) -> None:
    user.write_hosts({"token": {"path": "%h/token"}}, user=True)
    user.repo.ok("renc")
    out = user.outer / "bundle"
    proc = user.repo.ok("bundle", "-H", "alice", "-o", str(out))
    assert "~/.config/vaultpy" in proc.stderr.decode()
    # where pipx installs it, unless --vaultpy says otherwise
    assert "ExecStart=%h/.local/bin/vaultpy-activate " in (out / "vaultpy.service").read_text()
    assert sorted(p.name for p in out.iterdir()) == ["cache", "profile.json",
                                                     "vaultpy.service"]
    data = json.loads((out / "profile.json").read_text())
    assert data["settings"]["user"] is True and data["secrets"][0]["path"] == "%h/token"


def test_a_persons_age_key_names_its_identity_with_home(user: User) -> None:
    identity, text = _age_entry(user, person=True)
    proc = user.repo.run("profile", "-H", "alice")
    assert_one_clean_error(proc, "hosts.alice.identities", "~/.ssh/id_ed25519",
                           "%h/.config/age/keys.txt")
    user.repo.write_hosts(text.replace("user = true\n", "user = true\nidentities = "
                                       "[\"%h/.config/age/keys.txt\"]\n"))
    user.repo.ok("renc")
    out = user.outer / "p.json"
    user.repo.ok("profile", "-H", "alice", "-o", str(out))
    assert json.loads(out.read_text())["settings"]["identities"] == [
        "%h/.config/age/keys.txt"]
    keys = user.home / ".config" / "age"
    keys.mkdir(parents=True)
    shutil.copyfile(identity, keys / "keys.txt")
    for p in (user.home / ".config", keys, keys / "keys.txt"):
        os.lchown(p, UID, GID)
    rows = user.session(user.activate(out), ["sh", 'cat "$HOME/.local/state/vaultpy/'
                                             'secrets/token"'])
    _ok(rows[0])
    assert _ok(rows[1])["out"] == "api-token-1\n"


# ------------------------------------------------- paths through symlinks (hosts too)

def test_a_hosts_live_link_stays_inside_a_symlinked_root(make_repo: Any, tmp_path: Path
                                                         ) -> None:
    """--root reached through a symlink (an image mounted at a link): the live link's
    target is relative inside the root, as before, not through the link's name."""
    repo = make_repo(hosts=1)
    repo.ok("renc")
    host = make_host_root(repo, "host0", tmp_path / "real")
    (tmp_path / "rootlink").symlink_to("real")
    activate_ok(host.profile, tmp_path / "rootlink", systemctl="/bin/true")
    assert os.readlink(host.live) == "vaultpy.d/1"


def test_profile_o_in_a_symlinked_repo_stays_relative_inside_it(make_repo: Any,
                                                                tmp_path: Path) -> None:
    repo = make_repo(hosts=1)
    repo.ok("renc")
    (tmp_path / "repolink").symlink_to(repo.root)
    out = tmp_path / "repolink" / "out" / "p.json"
    out.parent.mkdir()
    repo.ok("-C", str(tmp_path / "repolink"), "profile", "-H", "host0", "-o", str(out))
    files = [s["file"] for s in json.loads(out.read_text())["secrets"]]
    assert files and all(f.startswith("../secrets/cache/host0/") for f in files), files


# ------------------------------------------------------------- the profile's reader

def _user_profile(**over: object) -> dict[str, Any]:
    data: dict[str, Any] = {
        "version": 1, "host": "alice",
        "settings": {"user": True, "identities": ["%h/.ssh/id_ed25519"],
                     "dir": "%h/.local/state/vaultpy/secrets",
                     "early_dir": "%h/.local/state/vaultpy/early", "store": "%r/vaultpy.d",
                     "keep": 3},
        "secrets": [{"id": "token", "name": "token", "file": "/c/token.age", "install": True,
                     "mode": "0400", "path": "%h/.config/gh/token",
                     "restart_units": [], "reload_units": []}],
        "templates": []}
    data["secrets"][0].update(over)
    return data


ENV = {"HOME": "/home/alice", "XDG_RUNTIME_DIR": "/run/user/1201"}


def test_reader_expands_home_and_runtime_dir() -> None:
    p = profile_mod.parse(_user_profile(), "p.json", Path("/"), ENV)
    assert p.settings.user and p.settings.store == "/run/user/1201/vaultpy.d"
    assert p.settings.identities == ("/home/alice/.ssh/id_ed25519",)
    assert p.settings.dir == "/home/alice/.local/state/vaultpy/secrets"
    assert p.secrets[0].out.path == "/home/alice/.config/gh/token"
    assert (p.secrets[0].out.owner, p.secrets[0].out.group) == ("", "")


def test_reader_keeps_a_percent_in_a_hosts_profile() -> None:
    data = _user_profile(path="/etc/100%h", owner="root", group="root", early=False)
    data["settings"] = {k: v for k, v in data["settings"].items() if k != "user"}
    data["settings"].update({"identities": ["/k"], "dir": "/run/a", "early_dir": "/run/b",
                             "store": "/run/c"})
    assert profile_mod.parse(data, "p.json", Path("/"), ENV).secrets[0].out.path == "/etc/100%h"


@pytest.mark.parametrize(("over", "env", "needle"), [
    ({"path": "%x/a"}, ENV, "unknown specifier %x"),
    ({"path": "/a/100%"}, ENV, "a lone %"),
    ({"owner": "root"}, ENV, "secrets[0].owner"),
    ({"early": True}, ENV, "secrets[0].early"),
    ({}, {"HOME": "/home/alice"}, "%r needs $XDG_RUNTIME_DIR, which is not set"),
    ({}, {**ENV, "HOME": "home"}, "%h needs $HOME to be an absolute, normalised path, not 'home'"),
    ({}, {**ENV, "HOME": "//x/alice"}, "%h needs $HOME to be an absolute, normalised path"),
    ({}, {**ENV, "HOME": "/home/../alice"}, "%h needs $HOME to be an absolute, normalised"),
])
def test_reader_refuses(over: dict[str, object], env: dict[str, str], needle: str) -> None:
    with pytest.raises(VaultpyError) as err:
        profile_mod.parse(_user_profile(**over), "p.json", Path("/"), env)
    assert needle in "\n".join(str(p) for p in err.value.problems)


@pytest.mark.parametrize("env", [{"XDG_RUNTIME_DIR": "/run/user/1201"},
                                 {**ENV, "HOME": "home"}])
def test_a_wrong_home_is_said_once(env: dict[str, str]) -> None:
    """Not once per path that says %h (five lines, each blaming the profile)."""
    with pytest.raises(VaultpyError) as err:
        profile_mod.parse(_user_profile(), "p.json", Path("/"), env)
    assert len(err.value.problems) == 1, err.value.problems
    assert "$HOME" in str(err.value.problems[0]) and "systemd --user" in str(
        err.value.problems[0])


def test_percent_percent_is_a_percent() -> None:
    assert profile_mod.expand("%h/100%%", ENV) == "/home/alice/100%"
    assert profile_mod.expand("%%h", ENV) == "%h"


def test_group_members_under_root_come_from_its_account_files(tmp_path: Path) -> None:
    """With --root the members are the root's (its /etc/group and /etc/passwd), as owner
    names are, not the running system's."""
    from types import SimpleNamespace

    from vaultpy.activate import users

    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text(f"root:x:0:0::/root:/bin/sh\nalice:x:{UID}:{GID}::/h:/bin/sh\n"
                                f"carol:x:{OTHER}:{GID}::/c:/bin/sh\n")
    ctx: Any = SimpleNamespace(uid=UID, opts=SimpleNamespace(root=tmp_path))
    for group, gid, said in ((f"alice:x:{GID}:alice,bob\n", GID, "which bob is in too"),
                             (f"alice:x:{GID}:\n", GID, "which carol is in too"),
                             ("root:x:0:alice\n", 0, None),
                             ("root:x:0:\n", GID, "which the group database does not know")):
        (etc / "group").write_text(group)
        users._MEMBERS.clear()
        assert users.other_member(ctx, gid) == said, group
    users._MEMBERS.clear()
