"""Ctrl-C: stop at once, and let the clean-up it starts finish.

A terminal's Ctrl-C is SIGINT to the whole process group.  Python's default handler
turns each one into KeyboardInterrupt wherever the main thread happens to be, so a
second Ctrl-C lands in the clean-up the first one started (removing temp files,
shutting a worker pool down) and cuts it short.  While :func:`caught` is in force:

* the first Ctrl-C raises KeyboardInterrupt, unless a :func:`held` block is under way:
  then it is raised as soon as the outermost such block ends;
* later ones are ignored: whatever the first one set in motion runs to its end;
* while a plugin's question waits on the terminal (:func:`question`), every Ctrl-C
  raises, held or not: nobody must have to answer a PIN prompt to stop vaultpy.

The CLI keeps it in force for its whole process (vaultpy/__main__.py); library calls
that write the cache (:func:`vaultpy.renc.renc`) keep it in force while they run.
Only the main thread can set a handler: elsewhere, and outside the policy, a
:func:`held` block runs as it is.

This module must stay cheap to import (the no-op path loads it): the C module behind
:mod:`signal` and :mod:`contextlib` only.
"""

from __future__ import annotations

# signal itself imports enum (~6 ms); only these functions of its C module are used.
import _signal  # type: ignore[import-not-found]
import contextlib

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any


class _State:
    def __init__(self) -> None:
        self.pressed = False    # a Ctrl-C came: it was raised, or is pending
        self.pending = False    # it came during a held block: raise it when that ends
        self.holding = 0        # held blocks under way


_state: _State | None = None
_questions = 0          # plugin questions waiting on the terminal in this process
_stopped = False        # a Ctrl-C came to this process outside the policy (a worker)


def _swallowed_here(frame: Any) -> bool:
    """Whether an exception raised in ``frame`` would be printed and dropped: the weakref
    callback importlib runs when a module lock dies ("Exception ignored in ... cb")."""
    code = getattr(frame, "f_code", None)
    return (code is not None and code.co_name == "cb"
            and code.co_filename == "<frozen importlib._bootstrap>")


_alarm_before: object = None    # SIGALRM's handler while _on_alarm stands in for it


def _retry_soon() -> None:
    """Take the Ctrl-C again in a millisecond, by SIGALRM: a signal raised here would
    be handled at once, still inside the callback."""
    global _alarm_before
    if _signal.getsignal(_signal.SIGALRM) is not _on_alarm:
        _alarm_before = _signal.signal(_signal.SIGALRM, _on_alarm)
    _signal.setitimer(_signal.ITIMER_REAL, 0.001)


def _on_alarm(_signum: int, frame: object) -> None:
    before = _alarm_before
    _signal.signal(_signal.SIGALRM, before if before is not None else _signal.SIG_DFL)
    _handler(_signal.SIGINT, frame)


def _handler(_signum: int, frame: object) -> None:
    if _swallowed_here(frame):
        _retry_soon()
        return
    state = _state
    if state is None:
        raise KeyboardInterrupt
    first, state.pressed = not state.pressed, True
    if _questions:
        raise KeyboardInterrupt
    if not first:
        return
    if state.holding:
        state.pending = True
        return
    raise KeyboardInterrupt


def install() -> bool:
    """Keep the policy in force for the rest of this process (the CLI's entry point).
    False where it cannot be (not the main thread)."""
    global _state
    if _state is not None:
        return True
    try:
        _signal.signal(_signal.SIGINT, _handler)
    except ValueError:          # not the main thread
        return False
    _state = _State()
    return True


def ignore() -> None:
    """Ignore Ctrl-C from now on (a process whose work is done)."""
    with contextlib.suppress(ValueError):       # not the main thread
        _signal.signal(_signal.SIGINT, _signal.SIG_IGN)


@contextlib.contextmanager
def caught() -> Iterator[None]:
    """The policy in force within the block (unchanged if it already is), the previous
    handler back after it, however a Ctrl-C lands.  (CPython runs a handler only once
    a call has returned: after ``_State()`` the old handler's Ctrl-C finds nothing to
    undo; after the ``signal`` call ours finds the policy set and the ``finally`` to
    undo it.)"""
    global _state
    if _state is not None:
        yield
        return
    old = _signal.getsignal(_signal.SIGINT)
    try:
        _state = _State()
        try:
            _signal.signal(_signal.SIGINT, _handler)
        except ValueError:      # not the main thread: no handler can be set
            _state = None
        yield
    finally:
        # The policy goes first, then the handler, with no call in between (a with
        # block's __enter__ would be one): nothing comes between the two, and a Ctrl-C
        # during the restore is the old handler's.  (The other way round, that Ctrl-C
        # cut this short and left the policy in force, without its handler.)
        _state = None
        try:  # noqa: SIM105 (contextlib.suppress: a call, a window for a Ctrl-C)
            _signal.signal(_signal.SIGINT,
                           old if old is not None else _signal.default_int_handler)
        except ValueError:      # not the main thread
            pass


@contextlib.contextmanager
def held() -> Iterator[None]:
    """A Ctrl-C within the block is raised when the block (the outermost one) ends.
    For what must not be cut in two: forking workers (none may be interrupted before
    its own handler is in place), a job once begun, a batch's renames, a temp file's
    life (created, then renamed or removed).  Outside the policy, the block runs as it
    is."""
    state = _state
    if state is None:
        yield
        return
    state.holding += 1
    try:
        yield
    finally:
        state.holding -= 1
        if not state.holding and state.pending:
            state.pending = False
            raise KeyboardInterrupt


def forget() -> None:
    """In a forked child that sets its own SIGINT handler: the parent's policy (and
    whatever it held) is not the child's; a Ctrl-C the parent saw still counts."""
    global _state, _stopped
    if _state is not None and _state.pressed:
        _stopped = True
    _state = None


def stop() -> None:
    """A Ctrl-C came (for a child's own handler): :func:`stopped` from now on."""
    global _stopped
    _stopped = True


def stopped() -> bool:
    """Whether a Ctrl-C came: to this run of the policy, or to this child."""
    return _stopped or (_state is not None and _state.pressed)


@contextlib.contextmanager
def question() -> Iterator[None]:
    """A plugin's question waits on the terminal within: Ctrl-C ends it, even held.
    Once a Ctrl-C came, no question is asked: KeyboardInterrupt at once."""
    global _questions
    if stopped():
        raise KeyboardInterrupt
    _questions += 1
    try:
        yield
    finally:
        _questions -= 1


def asking() -> bool:
    """Whether a plugin's question waits on the terminal here."""
    return _questions > 0
