"""The Ctrl-C policy (vaultpy/_internal/sigint.py), with real SIGINTs sent to this
process.  Its uses are tested end to end in tests/test_faults.py (renc, the incremental
renc) and tests/test_plugin.py (a PIN prompt)."""

from __future__ import annotations

import os
import signal
import time

import pytest

from vaultpy._internal import sigint


def ctrl_c() -> None:
    signal.raise_signal(signal.SIGINT)      # its handler runs before this returns


def test_the_first_ctrl_c_raises_and_later_ones_are_ignored() -> None:
    before = signal.getsignal(signal.SIGINT)
    cleaned = []
    with pytest.raises(KeyboardInterrupt), sigint.caught():
        try:
            ctrl_c()
            pytest.fail("not interrupted")
        finally:
            assert sigint.stopped()
            ctrl_c()                # during the clean-up: ignored
            ctrl_c()
            cleaned.append(True)
    assert cleaned
    assert signal.getsignal(signal.SIGINT) is before
    assert not sigint.stopped()


def test_a_held_block_ends_before_the_ctrl_c_is_raised() -> None:
    steps = []
    with pytest.raises(KeyboardInterrupt), sigint.caught():
        with sigint.held():
            ctrl_c()
            steps.append("outer goes on")
            with sigint.held():
                ctrl_c()                    # a second one: ignored
                steps.append("inner goes on")
            steps.append("outer still goes on")
        steps.append("never")
    assert steps == ["outer goes on", "inner goes on", "outer still goes on"]


def test_the_held_ctrl_c_wins_over_an_error_in_the_block() -> None:
    with pytest.raises(KeyboardInterrupt), sigint.caught(), sigint.held():
        ctrl_c()
        raise OSError("an error the caller would have handled and gone on after")


def test_without_a_ctrl_c_nothing_changes() -> None:
    with sigint.caught():
        with sigint.held():
            pass
        assert not sigint.stopped()


def test_a_question_ends_at_every_ctrl_c_and_none_is_asked_after_one() -> None:
    with sigint.caught(), sigint.held():
        with pytest.raises(KeyboardInterrupt), sigint.question():
            assert sigint.asking()
            ctrl_c()                    # held, yet the question ends
        assert not sigint.asking()
        with pytest.raises(KeyboardInterrupt), sigint.question():
            pytest.fail("a question asked after Ctrl-C")
        with pytest.raises(KeyboardInterrupt), sigint.question():
            pass


def test_outside_the_policy_a_held_block_is_a_plain_block() -> None:
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt), sigint.held():
        ctrl_c()
        pytest.fail("not interrupted")


def test_caught_inside_caught_keeps_the_outer_policy() -> None:
    with pytest.raises(KeyboardInterrupt), sigint.caught():
        with sigint.caught():
            pass
        assert signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ctrl_c()


@pytest.mark.parametrize("when", ["begins", "ends"])
def test_a_ctrl_c_as_the_policy_begins_or_ends_leaves_none_of_it_behind(monkeypatch,
                                                                         when) -> None:
    """A Ctrl-C that comes as caught() installs its handler, or puts the old one back,
    is raised, and afterwards the old handler is in place and no policy is: a stale
    one would make a program's next caught() install nothing and, with the Ctrl-C
    recorded, stop its next renc before its first job; a handler left behind would
    replace the program's own.  (Found by tests/test_ctrl_c_everywhere.py.)"""
    real = sigint._signal
    before = signal.getsignal(signal.SIGINT)

    class Signal:
        def __getattr__(self, name: str) -> object:
            return getattr(real, name)

        def signal(self, signum: int, handler: object) -> object:
            old = real.signal(signum, handler)
            if (handler is sigint._handler) == (when == "begins"):
                real.raise_signal(signum)       # Ctrl-C right then
            return old

    monkeypatch.setattr(sigint, "_signal", Signal())
    with pytest.raises(KeyboardInterrupt), sigint.caught():
        if when == "begins":
            pytest.fail("not interrupted")
    monkeypatch.undo()
    assert sigint._state is None and not sigint.stopped()
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(KeyboardInterrupt), sigint.caught():
        assert signal.getsignal(signal.SIGINT) is sigint._handler
        ctrl_c()


def test_a_child_keeps_a_ctrl_c_its_parent_saw() -> None:
    with pytest.raises(KeyboardInterrupt), sigint.caught(), sigint.held():
        ctrl_c()
        pid = os.fork()
        if pid == 0:                    # a worker: its own handler from now on
            sigint.forget()
            os._exit(0 if sigint.stopped() else 1)
        status = os.waitpid(pid, 0)[1]      # (an assert here would lose to the Ctrl-C)
    assert os.waitstatus_to_exitcode(status) == 0
    pid = os.fork()
    if pid == 0:
        sigint.forget()
        first = sigint.stopped()
        sigint.stop()
        os._exit(0 if (not first and sigint.stopped()) else 1)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_ignore_leaves_sigint_ignored() -> None:
    pid = os.fork()
    if pid == 0:
        sigint.ignore()
        ctrl_c()
        os._exit(0)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0


def test_a_ctrl_c_in_importlibs_module_lock_callback_is_taken_after_it() -> None:
    """A KeyboardInterrupt raised in the weakref callback importlib runs when a module
    lock dies is printed ("Exception ignored in ... cb") and dropped: the Ctrl-C was
    lost (a rare CI failure). The policy takes it again once the callback is done.
    Here the callback is a function named cb compiled under importlib's file name."""
    ns: dict[str, object] = {}
    exec(compile("import signal\n"
                 "def cb(log):\n"
                 "    signal.raise_signal(signal.SIGINT)   # the handler sees this frame\n"
                 "    log.append('cb went on')\n"
                 "    log.append('cb done')\n", "<frozen importlib._bootstrap>", "exec"), ns)
    cb = ns["cb"]
    assert callable(cb)
    log: list[str] = []
    alarm = signal.getsignal(signal.SIGALRM)
    with pytest.raises(KeyboardInterrupt), sigint.caught():
        cb(log)
        log.append("after cb")
        time.sleep(5)           # the Ctrl-C comes back within a millisecond
        pytest.fail("not interrupted")
    assert log == ["cb went on", "cb done", "after cb"]
    assert signal.getsignal(signal.SIGALRM) == alarm      # put back


@pytest.mark.parametrize("exists", [False, True], ids=["new-lock", "lock-file-exists"])
def test_a_ctrl_c_while_the_lock_is_opened_leaves_it_free(tmp_path, monkeypatch, exists):
    """renc() called from a program (not the CLI) runs under the policy.  A Ctrl-C that
    lands while the lock file is made or opened (held: its temp file must go) is raised
    as that step ends: the descriptor, already flocked for a new lock file, must be
    closed then, or the lock stays taken and the program's next renc() waits forever."""
    from vaultpy._internal import fsutil

    lock = tmp_path / ".vaultpy.lock"
    if exists:
        lock.touch()
    real_open = os.open

    def open_then_ctrl_c(path, *args, **kw):
        fd = real_open(path, *args, **kw)
        if lock.name in os.path.basename(str(path)):       # the lock, or its temp file
            os.kill(os.getpid(), signal.SIGINT)
        return fd

    before = set(os.listdir("/proc/self/fd"))
    monkeypatch.setattr(fsutil.os, "open", open_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt), sigint.caught(), fsutil.locked(lock):
        pytest.fail("the lock was taken after the Ctrl-C")
    monkeypatch.undo()
    assert set(os.listdir("/proc/self/fd")) == before
    assert [p.name for p in tmp_path.iterdir()] == [lock.name]       # no temp file left
    with fsutil.locked(lock):                   # free: taken at once, not waited for
        pass


_ENDING = """
import signal, sys
import vaultpy.__main__ as entry
from vaultpy._internal import sigint

real_ignore = sigint.ignore
calls = []

def ignore():
    calls.append(1)
    if len(calls) == 1:     # the Ctrl-C lands as the command's end ignores SIGINT
        signal.raise_signal(signal.SIGINT)
    real_ignore()

def command():
    print("done", flush=True)
    sys.exit(int(sys.argv[1]))

sigint.ignore = ignore
entry._main = command
entry.main()
"""


@pytest.mark.parametrize("code", [0, 3])
def test_a_ctrl_c_as_the_command_ends_keeps_its_exit_status(code: int) -> None:
    """A first Ctrl-C (a real SIGINT, through the real handler) in the instant between
    the command's end and the entry point's ignore(): the command had finished, so it
    exits with its own status, without a traceback or a death by SIGINT."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _ENDING, str(code)], capture_output=True,
                          timeout=60)
    assert (proc.returncode, proc.stdout, proc.stderr) == (code, b"done\n", b"")
