"""Shared helpers for the on-host activation tests (DESIGN §5, §6).

Everything is real: the repository is made with the real CLI (``vaultpy encrypt``,
``renc``, ``profile``), the host key with ``ssh-keygen``, and activation runs as
``python -m vaultpy activate`` in a subprocess against a temporary ``--root``.

Typical use::

    repo = make_repo(hosts=1, secrets={...})
    write_deploy_hosts(repo, {"host0": HOST_TABLE_TEXT})   # optional: owners, modes, ...
    repo.ok("renc")
    host = make_host_root(repo, "host0", tmp_path / "root")
    rec = make_recorder(tmp_path)
    proc = activate(host.profile, host.root, systemctl=rec.script)
    assert proc.returncode == 0
    assert rec.calls() == [...]
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from conftest import LOCAL_STATE, ROOT, Repo, toml_key, toml_str

# name -> (uid, gid); every user has a same-named group.  Distinct numbers, so a
# wrong lookup (user table used for a group, or the running system's files) shows.
DEFAULT_USERS: dict[str, tuple[int, int]] = {
    "app": (1101, 2101),
    "svc": (1102, 2102),
    "nginx": (1103, 2103),
    "postgres": (1104, 2104),
}
# extra groups (name -> gid) that are not the primary group of a user
DEFAULT_GROUPS: dict[str, int] = {"secrets": 2199}


@dataclass
class HostRoot:
    root: Path          # the --root directory
    profile: Path       # the profile.json (written with -o, so its file paths are relative)
    host: str
    users: dict[str, tuple[int, int]]
    groups: dict[str, int]

    @property
    def live(self) -> Path:
        return self.root / "run" / "vaultpy"

    @property
    def early(self) -> Path:
        return self.root / "run" / "vaultpy-early"

    @property
    def store(self) -> Path:
        return self.root / "run" / "vaultpy.d"

    def uid(self, name: str) -> int:
        return self.users[name][0]

    def gid(self, name: str) -> int:
        if name in self.groups:
            return self.groups[name]
        return self.users[name][1]

    def generations(self) -> list[int]:
        if not self.store.is_dir():
            return []
        return sorted(int(p.name) for p in self.store.iterdir()
                      if p.name.isdigit() and p.is_dir() and not p.is_symlink())


def write_accounts(root: Path, users: Mapping[str, tuple[int, int]],
                   groups: Mapping[str, int] | None = None) -> None:
    """root/etc/passwd and root/etc/group with ``users`` (and root, nobody)."""
    etc = root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    passwd = ["root:x:0:0:root:/root:/bin/sh"]
    group = ["root:x:0:"]
    for name, (uid, gid) in users.items():
        passwd.append(f"{name}:x:{uid}:{gid}:{name}:/var/lib/{name}:/usr/sbin/nologin")
        group.append(f"{name}:x:{gid}:")
    for name, gid in (groups or {}).items():
        group.append(f"{name}:x:{gid}:")
    passwd.append("nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin")
    group.append("nogroup:x:65534:")
    (etc / "passwd").write_text("\n".join(passwd) + "\n")
    (etc / "group").write_text("\n".join(group) + "\n")


def install_host_key(root: Path, key: Path) -> Path:
    """Copy a private SSH host key to root/etc/ssh/ssh_host_ed25519_key (0600)."""
    dest = root / "etc" / "ssh" / "ssh_host_ed25519_key"
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(key, dest)
    dest.chmod(0o600)
    return dest


def write_profile(repo: Repo, host: str, out: Path) -> Path:
    """``vaultpy profile --host H -o OUT`` (file paths relative to OUT's directory)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    repo.ok("profile", "--host", host, "-o", str(out))
    return out


def make_host_root(repo: Repo, host: str, root: Path,
                   users: Mapping[str, tuple[int, int]] | None = None,
                   groups: Mapping[str, int] | None = None,
                   key: Path | None = None,
                   profile: Path | None = None) -> HostRoot:
    """A host root dir: etc/passwd, etc/group, etc/ssh/ssh_host_ed25519_key (copied
    from the repo's host key, or ``key``), and a profile written with
    ``vaultpy profile --host H -o root/profile.json`` (or ``profile``).

    The repository's cache must be current (run ``repo.ok("renc")`` first)."""
    prof = profile if profile is not None else root / "profile.json"
    h = prepare_root(root, key if key is not None else repo.hosts[host].key, prof, host,
                     users, groups)
    write_profile(repo, host, prof)
    return h


def prepare_root(root: Path, key: Path, profile: Path, host: str = "host0",
                 users: Mapping[str, tuple[int, int]] | None = None,
                 groups: Mapping[str, int] | None = None) -> HostRoot:
    """The host root of :func:`make_host_root` without writing a profile (for a
    profile that comes from elsewhere, e.g. a bundle)."""
    users = dict(DEFAULT_USERS if users is None else users)
    groups = dict(DEFAULT_GROUPS if groups is None else groups)
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    write_accounts(root, users, groups)
    install_host_key(root, key)
    return HostRoot(root, profile, host, users, groups)


@dataclass
class Recorder:
    """A fake systemctl: appends its arguments ("$*") as one line to ``log``.

    Every call must pass ``--no-block`` (checked here, then left out of the lines):
    activation runs inside a unit, and waiting for the restart of a unit ordered after
    it would wait forever.  And ``--`` before the unit (also left out): "-.mount" is a
    unit, not an option."""

    script: Path
    log: Path

    def calls(self) -> list[str]:
        if not self.log.exists():
            return []
        calls = [ln.split(" ") for ln in self.log.read_text().splitlines()]
        assert all(len(c) == 4 and c[0] == "--no-block" and c[2] == "--" for c in calls), calls
        return [f"{verb} {unit}" for _no_block, verb, _end, unit in calls]

    def clear(self) -> None:
        if self.log.exists():
            self.log.unlink()

    def take(self) -> list[str]:
        """The calls so far, then forget them (for the next activation)."""
        out = self.calls()
        self.clear()
        return out


def make_recorder(directory: Path, name: str = "systemctl") -> Recorder:
    directory.mkdir(parents=True, exist_ok=True)
    log = directory / f"{name}.log"
    script = directory / name
    script.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(log))}\nexit 0\n')
    script.chmod(0o755)
    return Recorder(script, log)


def activate_cmd(profile: Path, root: Path, *extra: str, no_mount: bool = True,
                 systemctl: Path | str | None = None) -> list[str]:
    """The argv of ``python -m vaultpy activate`` (for subprocess or unshare)."""
    cmd = [sys.executable, "-m", "vaultpy", "activate", "--profile", str(profile),
           "--root", str(root)]
    if no_mount:
        cmd.append("--no-mount")
    if systemctl is not None:
        cmd += ["--systemctl", str(systemctl)]
    return cmd + list(extra)


def vaultpy_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **(extra or {})}
    env.pop("VAULTPY_DEBUG", None)
    env.pop("VAULTPY_IDENTITY", None)
    return env


def activate(profile: Path, root: Path, *extra: str, no_mount: bool = True,
             systemctl: Path | str | None = None, cwd: Path | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Run ``python -m vaultpy activate --profile P --root R [--no-mount]
    [--systemctl S] *extra``; never raises on a non-zero exit."""
    return subprocess.run(activate_cmd(profile, root, *extra, no_mount=no_mount,
                                       systemctl=systemctl),
                          capture_output=True, env=vaultpy_env(), cwd=cwd or ROOT,
                          timeout=timeout)


activate_run = activate        # (for modules where "activate" names something else)


def activate_ok(profile: Path, root: Path, *extra: str, **kw: object
                ) -> subprocess.CompletedProcess[bytes]:
    proc = activate(profile, root, *extra, **kw)  # type: ignore[arg-type]
    assert proc.returncode == 0, (proc.stdout.decode(), proc.stderr.decode())
    assert b"Traceback" not in proc.stderr
    return proc


def run_vaultpy(*args: str, cwd: Path | None = None, input: bytes | None = None,
                timeout: float = 120) -> subprocess.CompletedProcess[bytes]:
    """Any vaultpy command without a repository (e.g. ``status --profile``)."""
    return subprocess.run([sys.executable, "-m", "vaultpy", *args], capture_output=True,
                          env=vaultpy_env(), cwd=cwd or ROOT, input=input, timeout=timeout)


def snapshot_tree(root: Path) -> dict[str, tuple]:
    """Every entry under ``root`` (and root itself): type, mode, uid, gid and bytes or
    symlink target.  Two equal snapshots mean nothing was created, removed or changed."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [".", *dirnames, *filenames] if dirpath == str(root) else [*dirnames,
                                                                                 *filenames]:
            p = Path(dirpath) / name if name != "." else Path(dirpath)
            st = p.lstat()
            rel = str(p.relative_to(root)) if p != root else "."
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p), st.st_uid, st.st_gid)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid,
                            p.read_bytes())
            else:                   # a FIFO (a fault planted by a test): never opened
                out[rel] = ("special", st.st_mode, st.st_uid, st.st_gid)
    return out


def file_state(path: Path) -> tuple[bytes, int, int, int]:
    """(bytes, uid, gid, mode) of a regular file, never following a symlink at ``path``."""
    st = path.lstat()
    assert stat.S_ISREG(st.st_mode), f"{path} is not a regular file"
    return path.read_bytes(), st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


# ------------------------------------------------------------- hosts.toml for deployments

def host_table(host: str, pubkey: str, secrets: Mapping[str, Mapping[str, object]] = {},
               templates: Mapping[str, Mapping[str, object]] = {},
               extra: Mapping[str, object] = {}) -> str:
    """TOML for one host with per-secret / per-template options, e.g.
    ``host_table("h", pub, {"db": {"owner": "app", "mode": "0440"}},
    {"app.env": {"content": "X={{ secrets.db }}"}})``; ``extra``: the host's own keys
    besides pubkey (``{"user": True}``)."""
    lines = [f"[hosts.{toml_key(host)}]", f"pubkey = {toml_str(pubkey)}"]
    lines += [f"{k} = {toml_value(v)}" for k, v in extra.items()]
    for sid, opts in secrets.items():
        lines += ["", f"[hosts.{toml_key(host)}.secrets.{toml_key(sid)}]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in opts.items()]
    for name, opts in templates.items():
        lines += ["", f"[hosts.{toml_key(host)}.templates.{toml_key(name)}]"]
        lines += [f"{k} = {toml_value(v)}" for k, v in opts.items()]
    return "\n".join(lines) + "\n"


def toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)     # a valid TOML basic string (\\n etc.)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(v)


def write_deploy_hosts(repo: Repo, secret_ids: Iterable[str],
                       hosts: Mapping[str, tuple[Mapping[str, Mapping[str, object]],
                                                 Mapping[str, Mapping[str, object]]]]
                       ) -> None:
    """Rewrite repo's hosts.toml: master recipient, ``[secrets.<id>]`` for each id,
    and for each host name (a key of ``repo.hosts``) its (secrets, templates) options."""
    lines = ["[vaultpy]", f"recipients = [{toml_str(repo.recipient)}]", ""]
    lines += [f"[secrets.{toml_key(s)}]" for s in secret_ids]
    text = "\n".join(lines) + "\n"
    for name, (secrets, templates) in hosts.items():
        text += "\n" + host_table(name, repo.hosts[name].pubkey, secrets, templates)
    repo.write_hosts(text)


def demo_repo(tmp_path: Path) -> Repo:
    """A copy of the repository's own demo (as tests/test_demo.py makes it), with its
    three host keys registered as ``repo.hosts`` (web1, db1, mail1)."""
    from conftest import Host

    root = tmp_path / "demo-repo"
    root.mkdir()
    shutil.copy(ROOT / "hosts.toml", root)
    shutil.copytree(ROOT / "secrets", root / "secrets",
                    ignore=shutil.ignore_patterns(*LOCAL_STATE))
    shutil.copytree(ROOT / "demo", root / "demo")
    identity = root / "demo" / "master-identity.demo-only.txt"
    repo = Repo(root, identity, "", env={"VAULTPY_IDENTITY": ""})
    for host in ("web1", "db1", "mail1"):
        key = root / "demo" / "hosts" / f"{host}.ssh_host_ed25519_key.demo-only"
        key.chmod(0o600)
        pub = (key.parent / f"{key.name}.pub").read_text().strip()
        repo.hosts[host] = Host(host, key, pub)
    return repo


def unshare_sh(script: str, env: Mapping[str, str] | None = None, timeout: float = 120,
               args: Sequence[str] = ()) -> subprocess.CompletedProcess[bytes]:
    """Run ``script`` in ``unshare -m --propagation private sh -c SCRIPT sh ARGS...``:
    a private mount namespace, so mounts made there (by the script or by vaultpy)
    are seen by the rest of the script and vanish when it ends."""
    unshare = shutil.which("unshare")
    if unshare is None:
        import pytest
        pytest.skip("unshare not installed")
    return subprocess.run([unshare, "-m", "--propagation", "private", "sh", "-c", script,
                           "sh", *args], capture_output=True, env=vaultpy_env(env),
                          cwd=ROOT, timeout=timeout)


def copy_repo(repo: Repo, dest: Path) -> Repo:
    """A copy of ``repo`` at ``dest`` (keys, hosts.toml, masters and cache), with the
    identity and host-key paths pointing into the copy.  Cheaper than a new repo for
    each test: build one per module, copy it per test."""
    from conftest import Host

    shutil.copytree(repo.root, dest, symlinks=True,
                    ignore=shutil.ignore_patterns(*LOCAL_STATE))

    def moved(p: Path) -> Path:
        try:
            return dest / p.relative_to(repo.root)
        except ValueError:
            return p

    env = dict(repo.env)
    if env.get("VAULTPY_IDENTITY"):
        env["VAULTPY_IDENTITY"] = str(moved(Path(env["VAULTPY_IDENTITY"])))
    new = Repo(dest, moved(repo.identity), repo.recipient, env=env)
    for name, h in repo.hosts.items():
        new.hosts[name] = Host(name, moved(h.key), h.pubkey)
    return new


def new_repo(root: Path, secrets: Mapping[str, bytes], hosts: Sequence[str] = ("host0",)
             ) -> Repo:
    """Like conftest's ``make_repo`` but usable from module-scoped fixtures: a master
    identity, one ssh-keygen host key per name, every secret on every host (with
    defaults) and the masters written with ``vaultpy encrypt``.  No renc yet."""
    from conftest import Host, age_keygen, hosts_toml, ssh_keygen

    (root / "keys").mkdir(parents=True)
    identity, recipient = age_keygen(root / "keys", "master.txt")
    repo = Repo(root, identity, recipient, env={"VAULTPY_IDENTITY": str(identity)})
    for name in hosts:
        key, pub = ssh_keygen(root / "keys", name, comment=f"root@{name}")
        repo.hosts[name] = Host(name, key, pub)
    repo.write_hosts(hosts_toml([recipient], list(secrets),
                                {h: (repo.hosts[h].pubkey, list(secrets)) for h in hosts}))
    (root / "secrets").mkdir()
    for sid, plaintext in secrets.items():
        repo.ok("encrypt", sid, input=plaintext)
    return repo
