"""vaultpy-activate (the boot entry point) and `vaultpy activate` are one command."""

from __future__ import annotations

import subprocess
import sys

import typer

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
