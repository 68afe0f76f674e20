"""How a full command starts and ends (vaultpy/cli.py ``_app_for``, vaultpy/__main__.py
``_leave``): typer is given only the command that runs, and the process exits without
the interpreter's teardown when nothing needs it.  Everything else must not change:
help, typos, groups, completion, exit statuses, atexit functions, threads, output."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Repo

from vaultpy import cli


@pytest.mark.parametrize(("argv", "name"), [
    (["renc"], "renc"),
    (["renc", "--jobs", "2"], "renc"),
    (["-C", "dir", "check"], "check"),
    (["--repo", "dir", "check"], "check"),
    (["--repo=dir", "status"], "status"),
    (["-Cdir", "-i", "key", "-ikey2", "--identity=k3", "decrypt", "x"], "decrypt"),
    (["--from-shares", "d", "--passphrase-fd", "3", "rekey"], "rekey"),
    (["--from-shares-prompt", "host", "add", "web1"], "host"),
    (["--help"], None),
    (["--help", "renc"], None),        # the whole app's help, not renc's
    (["-h", "renc"], None),
    (["--version", "renc"], None),
    (["--install-completion"], None),
    (["-C"], None),                    # a value missing: typer says so
    (["--bogus", "check"], None),
    ([], None),
])
def test_the_command_is_found_only_after_global_options(argv: list[str],
                                                         name: str | None) -> None:
    assert cli._command_name(argv) == name


def test_typer_builds_only_the_command_that_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    whole = len(cli.app.registered_commands) + len(cli.app.registered_groups)
    assert whole > 20
    one = cli._app_for(["-C", "x", "renc", "--jobs", "2"])
    assert [c.callback.__name__ for c in one.registered_commands if c.callback] == ["renc"]
    assert one.registered_groups == []
    [group] = cli._app_for(["identity", "split", "--help"]).registered_groups
    assert group.name == "identity"
    assert cli._app_for(["rnec"]) is cli.app                    # a typo: suggestions
    assert cli._app_for(["--help", "renc"]) is cli.app
    assert len(cli.app.registered_commands) + len(cli.app.registered_groups) == whole
    monkeypatch.setenv("_VAULTPY_COMPLETE", "complete_bash")   # completion lists them all
    assert cli._app_for(["renc"]) is cli.app


def test_help_typos_and_groups_answer_as_before(make_repo) -> None:
    repo: Repo = make_repo(hosts=1, secrets={"alpha": b"a"})
    top = repo.ok("--help").stdout.decode()
    for command in ("renc", "check", "status", "host", "identity", "import", "completion"):
        assert f" {command} " in top, command
    assert repo.ok("-C", str(repo.root), "--help", "renc").stdout.decode() == top
    renc_help = repo.ok("-C", str(repo.root), "renc", "--help").stdout.decode()
    assert "Usage: vaultpy renc [OPTIONS]" in renc_help and "--timings" in renc_help
    assert "Usage: vaultpy host add" in repo.ok("host", "add", "--help").stdout.decode()
    typo = repo.run("rnec")
    assert typo.returncode == 2
    assert "No such command 'rnec'. Did you mean 'renc'?" in typo.stderr.decode()
    assert repo.ok("-C", str(repo.root), "renc").stdout.decode().startswith("host ")


def _program(body: str) -> str:
    """Python code that sets things up for the exit, then runs ``vaultpy --version``."""
    return (f"import sys\n{body}\nsys.argv = ['vaultpy', '--version']\n"
            "from vaultpy.__main__ import main\nmain()\n")


def test_atexit_functions_still_run_and_threads_are_still_waited_for(tmp_path: Path) -> None:
    """The fast exit skips only the teardown: an atexit function (a weakref.finalize,
    coverage's data file) runs, and a thread still running is waited for."""
    ran, waited = tmp_path / "atexit-ran", tmp_path / "thread-done"
    code = _program(f"""
import atexit, threading, time
atexit.register(lambda: open({str(ran)!r}, "w").close())
def late():
    time.sleep(0.3)
    open({str(waited)!r}, "w").close()
threading.Thread(target=late).start()
""")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout.startswith(b"vaultpy "), proc
    assert ran.exists() and waited.exists()


@pytest.mark.parametrize(("args", "status"), [(("--version",), 0), (("check",), 1),
                                              (("renc", "--bogus"), 2)])
def test_exit_statuses_and_every_byte_of_output_survive_the_fast_exit(
        make_repo, args: tuple[str, ...], status: int) -> None:
    repo: Repo = make_repo(hosts=2, secrets={"alpha": b"a", "beta": b"b"})
    if status == 1:
        (repo.root / "secrets" / "beta.age").unlink()
    proc = repo.run(*args)
    assert proc.returncode == status, proc.stderr.decode()
    assert (proc.stdout or proc.stderr).endswith(b"\n")
    # A big stdout is written whole before the exit (a pipe: stdout is block-buffered).
    status_json = repo.run("status", "--json", env={"VAULTPY_NO_MEMO": "1"})
    assert status_json.stdout.rstrip().endswith(b"}")


def test_check_says_ok_on_a_terminal_as_rich_would_and_as_the_memo_does(make_repo) -> None:
    """The full check prints its last line without rich; on a terminal, in colour, it
    is byte for byte what rich printed, and what the memo's answer prints."""
    repo: Repo = make_repo(hosts=1, secrets={"alpha": b"a"})
    repo.ok("renc")

    def on_a_terminal(*env: tuple[str, str]) -> bytes:
        leader, follower = pty.openpty()
        try:
            proc = subprocess.run([sys.executable, "-m", "vaultpy", "check"], cwd=repo.root,
                                  env={**os.environ, **repo.env, "TERM": "xterm",
                                       "NO_COLOR": "", **dict(env)},
                                  stdout=subprocess.PIPE, stderr=follower, timeout=60)
            assert proc.returncode == 0
            return os.read(leader, 4096)
        finally:
            os.close(leader)
            os.close(follower)

    full = on_a_terminal(("VAULTPY_NO_MEMO", "1"))
    from rich.console import Console

    console = Console(force_terminal=True, color_system="standard", highlight=False,
                      soft_wrap=True, width=80)
    with console.capture() as captured:
        console.print("[green]ok[/]: every host has every secret; nothing stale")
    assert full == captured.get().encode().replace(b"\n", b"\r\n")
    assert full.startswith(b"\x1b[32mok\x1b[0m: every host")
    assert on_a_terminal() == full                      # the memo's answer


ACTIVATE = "from vaultpy.activate.main import entry\nentry()\n"


@pytest.mark.parametrize(("closed", "args", "status"), [
    ("1", ("-m", "vaultpy", "--version"), 0),
    ("1", ("-c", ACTIVATE, "--help"), 0),
    ("2", ("-m", "vaultpy", "renc", "--bogus"), 2),
    ("2", ("-c", ACTIVATE, "--keep", "0", "--profile", "p.json"), 2),
], ids=["version-no-stdout", "activate-help-no-stdout", "usage-no-stderr",
        "activate-usage-no-stderr"])
def test_a_closed_stdout_or_stderr_changes_no_exit_status(
        make_repo, closed: str, args: tuple[str, ...], status: int) -> None:
    """Started with descriptor 1 or 2 closed (a daemon's child, ``>&-``), Python has no
    sys.stdout or sys.stderr (None): the exit must still be the command's own, with
    no traceback, as it was before the fast exit."""
    repo: Repo = make_repo(hosts=1, secrets={"alpha": b"a"})
    log = repo.root / "log"
    other = "2" if closed == "1" else "1"
    proc = subprocess.run(["sh", "-c", f'exec "$@" {closed}>&- {other}>"$LOG"', "sh",
                           sys.executable, *args], cwd=repo.root, timeout=60,
                          env={**os.environ, **repo.env, "LOG": str(log)})
    assert proc.returncode == status, log.read_text()
    assert "Traceback" not in log.read_text()
