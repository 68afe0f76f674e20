"""vaultpy-activate (the boot entry point) and `vaultpy activate` are one command."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import typer
from activate_helpers import make_host_root
from conftest import Repo, assert_one_clean_error, capped_run, fifo_writer, vaultpy_argv

from vaultpy.activate.main import parser
from vaultpy.cli import app


def typer_options() -> dict[str, tuple[str, ...]]:
    command = typer.main.get_command(app)
    activate = command.commands["activate"]  # type: ignore[attr-defined]
    return {p.name: tuple(sorted(p.opts)) for p in activate.params if p.name}


def argparse_options() -> dict[str, tuple[str, ...]]:
    return {a.dest: tuple(sorted(a.option_strings)) for a in parser()._actions
            if a.dest != "help"}


def test_both_entry_points_take_the_same_options() -> None:
    assert typer_options() == argparse_options()


def test_boot_entry_point_does_not_import_the_cli_stack() -> None:
    """Nor hosts.toml's model (a profile is all a host reads), nor subprocess (only
    needed when a unit is restarted): every boot would pay for them."""
    code = ("import sys; import vaultpy.activate.main as m; from vaultpy.activate import "
            "activate; print(' '.join(sorted(n for n in ('typer', 'rich', 'click', "
            "'vaultpy.model', 'subprocess') if n in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == ""


def test_bad_profile_is_one_clean_line(tmp_path) -> None:
    (tmp_path / "p.json").write_text('{"version": 1}')
    proc = subprocess.run([sys.executable, "-m", "vaultpy.activate.main", "--profile",
                           str(tmp_path / "p.json"), "--root", str(tmp_path), "--no-mount"],
                          capture_output=True, text=True)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert any("p.json" in line and "settings" in line for line in proc.stderr.splitlines())


def test_at_boot_paths_are_named_from_the_root(tmp_path) -> None:
    """A unit runs in /: its journal named the bundle's profile "etc/vaultpy/…", a path
    relative to nothing the reader knows.  From /, every path is named absolute."""
    (tmp_path / "p.json").write_text('{"version": 1}')
    relative = str(tmp_path / "p.json").lstrip("/")
    proc = subprocess.run([sys.executable, "-m", "vaultpy.activate.main", "--profile",
                           relative, "--root", str(tmp_path), "--no-mount"],
                          capture_output=True, text=True, cwd="/")
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines and all(line.startswith(f"{tmp_path}/p.json: ") for line in lines), lines


# What runs `--profile FILE` on a host: both activation entry points, and status.
PROFILE_READERS = {
    "vaultpy-activate": [sys.executable, "-m", "vaultpy.activate.main", "--no-mount"],
    "vaultpy activate": [sys.executable, "-m", "vaultpy", "activate", "--no-mount"],
    "vaultpy status": [sys.executable, "-m", "vaultpy", "status"],
}


@pytest.mark.parametrize("reader", PROFILE_READERS)
def test_a_device_as_the_profile_is_one_clean_line(tmp_path: Path, reader: str) -> None:
    """`--profile /dev/zero` was read until memory ran out (MemoryError, exit 70); a
    profile is now read up to 64 MiB (docs/contracts.md)."""
    argv = [*PROFILE_READERS[reader], "--profile", "/dev/zero", "--root", str(tmp_path)]
    proc = capped_run(argv, {}, tmp_path)
    assert_one_clean_error(proc, "/dev/zero: more than 64 MiB, too much for a "
                           "profile", "point --profile at the profile.json")


def test_a_regular_profile_is_capped_too(tmp_path: Path) -> None:
    """--regular-profile (the bundle's units pass it) read the file whole: a 200 MB
    one took 430 MB of memory, where without it the same file is refused at once."""
    big = tmp_path / "big.json"
    with big.open("wb") as f:
        f.truncate(200 << 20)
    argv = [*PROFILE_READERS["vaultpy-activate"], "--regular-profile", "--profile",
            str(big), "--root", str(tmp_path)]
    proc = capped_run(argv, {}, tmp_path)
    assert_one_clean_error(proc, "big.json: more than 64 MiB, too much for a profile")


def test_a_named_profile_may_still_be_a_pipe(make_repo, tmp_path: Path) -> None:
    """The cap keeps what a named path may be: a FIFO being written (activated from),
    /dev/stdin (status compares with it)."""
    repo: Repo = make_repo(hosts=1)
    repo.ok("renc")
    host = make_host_root(repo, "host0", tmp_path / "root")
    fifo = host.root / "profile.fifo"       # beside profile.json: its files are relative
    with fifo_writer(fifo, host.profile.read_bytes()):
        proc = capped_run([*PROFILE_READERS["vaultpy-activate"], "--profile", str(fifo),
                           "--root", str(host.root)], {}, tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr.decode()
    absolute = repo.ok("profile", "--host", "host0").stdout     # file paths absolute
    proc = capped_run(vaultpy_argv("status", "--profile", "/dev/stdin", "--root",
                                   str(host.root)), {}, tmp_path, input=absolute)
    assert proc.returncode == 0 and b"in sync with the profile" in proc.stdout, \
        (proc.stdout.decode(), proc.stderr.decode())


def test_a_fifo_as_the_bundles_profile_fails_its_units(make_repo, tmp_path: Path) -> None:
    """The units vaultpy bundle writes name the profile it installs, a path vaultpy
    chose: a FIFO there hung vaultpy-activate, and boot with it (the units run before
    sysinit.target).  Their command lines now pass --regular-profile: one line, and the
    unit fails.  (A profile named by hand is still read as given: the test above.)"""
    from vaultpy import bundle

    repo: Repo = make_repo(hosts=1)
    repo.ok("renc")
    out = tmp_path / "bundle"
    repo.ok("bundle", "--host", "host0", "-o", str(out))
    profile = out / "profile.json"
    settings = json.loads(profile.read_text())["settings"]
    profile.unlink()
    os.mkfifo(profile)
    units = {"normal": (out / bundle.UNIT_NAME).read_text(),     # as written to the bundle
             "early": bundle.unit_text("host0", settings, "/usr/local/bin/vaultpy", True)}
    for name, unit in units.items():
        for key in ("ExecStart", "ExecReload"):
            (line,) = [ln.split("=", 1)[1] for ln in unit.splitlines()
                       if ln.startswith(f"{key}=")]
            argv = shlex.split(line)
            assert argv[:3] == ["/usr/local/bin/vaultpy-activate", "--profile",
                                "/etc/vaultpy/profile.json"], (name, key, line)
            argv = [sys.executable, "-m", "vaultpy.activate.main", "--profile", str(profile),
                    *argv[3:], "--root", str(tmp_path / "root"), "--no-mount"]
            proc = capped_run(argv, {}, tmp_path, timeout=30)
            assert_one_clean_error(proc, "profile.json: cannot read profile: not a regular "
                                   "file", "replace it with the profile.json vaultpy bundle")


@pytest.mark.parametrize("reader", ["vaultpy-activate", "vaultpy activate"])
def test_a_root_that_does_not_exist_is_one_clean_line(make_repo, tmp_path: Path,
                                                      reader: str) -> None:
    """A typo in --root took its lock first, creating <root>/run/vaultpy.d.lock and the
    directories above it, then blamed the host key it could not find there."""
    repo: Repo = make_repo(hosts=1)
    repo.ok("renc")
    host = make_host_root(repo, "host0", tmp_path / "root")
    typo = tmp_path / "rooot"
    proc = capped_run([*PROFILE_READERS[reader], "--profile", str(host.profile),
                       "--root", str(typo)], {}, tmp_path, timeout=60)
    assert_one_clean_error(proc, f"--root: {typo}: no such directory", "/ on the host")
    assert not typo.exists()


_UNIT_DIRS = ("/usr/lib/systemd/system", "/lib/systemd/system", "/etc/systemd/system")


def _order_edges(text: str) -> tuple[set[str], set[str]]:
    """The After= and Before= names of a unit file's [Unit] section."""
    after: set[str] = set()
    before: set[str] = set()
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line
        elif section == "[Unit]" and "=" in line:
            key, value = (x.strip() for x in line.split("=", 1))
            if key in ("After", "Before"):
                (after if key == "After" else before).update(value.split())
    return after, before


def _ordering_cycle(ours: dict[str, str]) -> list[str] | None:
    """A cycle of After=/Before= through one of ``ours`` (name -> unit text), with every
    real unit file of this machine's systemd (a unit can be ordered against ours from
    its own file only: tmpfiles-setup-dev names sysusers, not the other way): the
    path, or None."""
    texts = {p.name: p for d in _UNIT_DIRS if os.path.isdir(d) for p in Path(d).iterdir()
             if p.is_file() and not p.name.endswith(".d")}
    # "x -> y": x is started before y.
    succ: dict[str, set[str]] = {}
    for name in {*texts, *ours}:
        try:
            t = ours[name] if name in ours else texts[name].read_text()
        except (OSError, UnicodeDecodeError):
            continue
        after, before = _order_edges(t)
        succ.setdefault(name, set()).update(before)
        for a in after:
            succ.setdefault(a, set()).add(name)
    for start in ours:
        stack, visited = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in sorted(succ.get(node, ())):
                if nxt == start:
                    return [*path, start]
                if nxt not in visited:
                    visited.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    return None


def test_the_bundles_units_make_no_ordering_cycle_with_systemds_own(make_repo,
                                                                     tmp_path: Path) -> None:
    """The early unit was After=local-fs.target and Before=systemd-sysusers.service,
    which systemd-tmpfiles-setup-dev.service (after sysusers, before
    local-fs-pre.target) closes into a cycle: systemd breaks it at boot by dropping a
    job.  Checked against this machine's real unit files."""
    from conftest import need

    from vaultpy import bundle

    need("systemd-analyze")
    if not Path(_UNIT_DIRS[0], "systemd-tmpfiles-setup-dev.service").is_file():
        pytest.fail("systemd's unit files are missing (make deps installs systemd)")
    settings = {"dir": "/run/vaultpy", "early_dir": "/run/vaultpy-early",
                "identities": ["/etc/ssh/ssh_host_ed25519_key"]}
    units = {"vaultpy-activate.service": bundle.unit_text("h", settings, "/usr/bin/vaultpy",
                                                          False),
             "vaultpy-activate-early.service": bundle.unit_text("h", settings,
                                                                "/usr/bin/vaultpy", True)}
    assert _ordering_cycle(units) is None, _ordering_cycle(units)
    # A bundle not where the units look fails them (systemctl --failed shows it): with
    # ConditionPathExists= they were skipped, and the host booted without its secrets
    # and without a word.
    for unit in units.values():
        assert "\nAssertPathExists=/etc/vaultpy/profile.json\n" in unit
        assert "ConditionPathExists" not in unit
    # The checker finds the cycle the early unit had.
    assert "\nAfter=systemd-remount-fs.service\n" in units["vaultpy-activate-early.service"]
    old = units["vaultpy-activate-early.service"].replace(
        "RequiresMountsFor=", "After=local-fs.target\nRequiresMountsFor=")
    cycle = _ordering_cycle({"vaultpy-activate-early.service": old})
    assert cycle is not None and "systemd-tmpfiles-setup-dev.service" in cycle, cycle
    # And systemd itself loads both.
    for name, unit in units.items():
        (tmp_path / name).write_text(unit.replace("/usr/bin/vaultpy-activate", "/bin/true"))
        proc = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
