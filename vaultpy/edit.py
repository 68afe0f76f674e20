"""``vaultpy edit ID``: the $EDITOR round trip, with plaintext only in RAM.

The plaintext lives in a fresh 0700 directory on a RAM-backed filesystem
(``$XDG_RUNTIME_DIR`` or ``/dev/shm``; tmpfs or ramfs, checked in
/proc/self/mountinfo) and is removed on every exit path: success, editor
failure, an exception, SIGINT, SIGTERM or SIGHUP.  The master file is
re-encrypted only if the bytes changed, and only if nobody else wrote the master
while the editor was open (else the edit is kept beside it, encrypted).

Like git, vaultpy ignores SIGINT while the editor runs, so Ctrl-C inside vim
does not abort the edit; an editor that dies of it counts as a failed edit.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from vaultpy import age, identities, masters
from vaultpy._internal import ageformat, fsutil, nocore, writes
from vaultpy.errors import Problem, VaultpyError, display_path
from vaultpy.model import Config
from vaultpy.recovery import refuse_if_rotating


@dataclass(frozen=True)
class EditResult:
    path: Path
    changed: bool
    created: bool
    warnings: tuple[str, ...] = ()      # masters.value_warnings of the saved value


def ram_candidates() -> list[Path]:
    out = []
    if os.environ.get("XDG_RUNTIME_DIR"):
        out.append(Path(os.environ["XDG_RUNTIME_DIR"]))
    out += [Path("/dev/shm"), Path(f"/run/user/{os.getuid()}")]
    return out


PREFIX = "vaultpy-edit-"


def private_dir(allow_disk: bool = False) -> tuple[Path, int]:
    """A new 0700 directory on RAM-backed storage (or on disk if explicitly allowed),
    and an fd holding its flock (:func:`fsutil.hold_dir`) while the edit runs: a
    directory whose flock nobody holds is a killed edit's (:func:`sweep`).  It is
    made under a name :func:`sweep` passes over and renamed once locked."""
    tried = []
    for base in ram_candidates():
        why = unusable(base)
        if why is None:
            return _made(str(base))
        tried.append(f"{base} ({why})")
    if allow_disk:
        disk = Path(tempfile.gettempdir())
        why = unusable(disk, ram=False)
        if why is None:
            return _made(str(disk))
        tried.append(f"{disk} ({why})")
    raise VaultpyError(Problem("vaultpy edit", "no private RAM-backed directory for the "
                               "plaintext (tried " + ", ".join(tried) + ")", "",
                               "set XDG_RUNTIME_DIR to a tmpfs directory of your own, mount "
                               "a tmpfs on /dev/shm, or pass --allow-disk to accept plaintext "
                               "on disk"))


def unusable(base: Path, ram: bool = True) -> str | None:
    """Why ``base`` may not hold edit's private directory, or None.  It must be a
    writable directory (on tmpfs or ramfs, unless not ``ram``) that nobody else can
    change: this user's and writable by no one else, or root's and sticky (/dev/shm,
    /tmp).  Found in review: as root with another user's $XDG_RUNTIME_DIR (su without
    -, sudo -E), that user could rename the 0700 directory away and put one of theirs
    in its place, and read what root typed into the editor."""
    try:
        st = base.stat()
    except OSError:
        return "absent"
    if not stat.S_ISDIR(st.st_mode):
        return "not a directory"
    if ram:
        fstype = fsutil.mount_fstype(base)
        if fstype not in fsutil.RAM_FILESYSTEMS:
            return f"{fstype or 'unknown file system'}, not in RAM"
    if not os.access(base, os.W_OK | os.X_OK):
        return "not writable"
    if st.st_uid == os.geteuid() and not st.st_mode & 0o022:
        return None
    if st.st_uid == 0 and st.st_mode & stat.S_ISVTX:
        return None
    if st.st_uid != os.geteuid() and st.st_uid != 0:
        return f"owned by uid {st.st_uid}, not you"
    return "writable by others and not sticky"


def _made(base: str | None) -> tuple[Path, int]:
    """:func:`_locked_dir`, a failure (the RAM directory full of bytes or of inodes) one
    line."""
    try:
        return _locked_dir(base)
    except OSError as exc:
        raise VaultpyError(Problem(base or tempfile.gettempdir(), "cannot make the private "
                                   f"directory for the plaintext: {exc.strerror or exc}", "",
                                   "free some room there (or set XDG_RUNTIME_DIR to another "
                                   "tmpfs), then edit again")) from None


def _locked_dir(base: str | None) -> tuple[Path, int]:
    made = Path(tempfile.mkdtemp(prefix="." + PREFIX, dir=base))
    try:
        fd = fsutil.hold_dir(made)
    except BaseException:
        made.rmdir()
        raise
    final = made.with_name(made.name[1:])
    try:
        fsutil.rename_new(made, final)
    except BaseException:
        os.close(fd)
        made.rmdir()
        raise
    return final, fd


def sweep(remove: bool = True) -> list[Path]:
    """Remove what killed edits left (SIGKILL, the OOM killer: nothing ran their
    clean-up), the plaintext until the next reboot otherwise: this user's
    ``vaultpy-edit-*`` directories on RAM-backed storage whose flock no live process
    holds.  Returns those removed (not ``remove``: those found, for ``doctor``)."""
    removed = []
    for base in ram_candidates():
        try:
            entries = [e for e in os.scandir(base)
                       if e.name.startswith((PREFIX, "." + PREFIX))]
        except OSError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                    continue
                # Not yet renamed (:func:`private_dir`): empty, and an edit's only for
                # the instant before its flock; one a minute old was left by a kill.
                if entry.name.startswith(".") and (time.time() - st.st_mtime < 60
                                                   or os.listdir(entry.path)):
                    continue
                fd = fsutil.hold_dir(entry.path)       # BlockingIOError: a live edit's
            except OSError:
                continue
            try:
                if remove:
                    fsutil.remove_tree(Path(entry.path))
                removed.append(Path(entry.path))
            except OSError:
                pass
            finally:
                os.close(fd)
    return removed


class _Aborted(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@contextlib.contextmanager
def _signals_during_editor() -> Iterator[Callable[[], None]]:
    """Ctrl-C (and Ctrl-\\) are the editor's; SIGTERM and SIGHUP end the editor and
    run the clean-up.  Yields ``editor_done``: once the plaintext is gone, SIGTERM and
    SIGHUP act as before, while Ctrl-C stays ignored until the block ends (the edit is
    saved): a Ctrl-C just after the editor quit lost the edit, or, a moment later, said
    "interrupted" of an edit that was saved."""
    def abort(signum: int, _frame: FrameType | None) -> None:
        raise _Aborted(signum)

    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGQUIT,
                                                signal.SIGTERM, signal.SIGHUP)}

    def editor_done() -> None:
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, saved[s])

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGQUIT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, abort)
    signal.signal(signal.SIGHUP, abort)
    try:
        yield editor_done
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


DEFAULT_EDITOR = "vi"


def editor_command() -> str:
    return os.environ.get("VISUAL") or os.environ.get("EDITOR") or DEFAULT_EDITOR


def _editor_variable() -> str:
    """Where :func:`editor_command` found the editor: "$VISUAL", "$EDITOR" or ""."""
    return "$VISUAL" if os.environ.get("VISUAL") else "$EDITOR" if os.environ.get(
        "EDITOR") else ""


# A plain command line ("vim", "code --wait", "emacsclient -t") can be exec'd by
# the shell, so the editor itself is our child and gets our signals; one with
# shell syntax (";", "&&", "$(…)") keeps the wrapper shell, as git does.
_PLAIN_COMMAND = re.compile(r"""[\w\s./'"=:+,@%~-]+""")


# Vim (vi on Debian) keeps yanked and deleted lines in ~/.viminfo (Neovim: its shada
# file), and may write a swap, backup or undo file beside the one edited: the secret on
# disk, in the stock configuration.  These options come before the user's own, so a
# user's `-c wq` still runs after them; vaultpy's settings win over the vimrc.
VIM_OPTIONS = ("-i", "NONE", "-n", "-c", "set noundofile nobackup nowritebackup")
# (Not a plain "vi": on some systems that is another editor, which has no such options.)
_VIM = re.compile(r"n?vim(\.[a-z0-9]+)?")


def _with_vim_options(command: str) -> str:
    """``command`` with :data:`VIM_OPTIONS` after its program, when it is a plain command
    line whose program is Vim or Neovim (found on PATH, symlinks followed: Debian's
    vi is /usr/bin/vim.basic through /etc/alternatives); else as it is."""
    words = command.split(None, 1)
    if not words or not _PLAIN_COMMAND.fullmatch(command):
        return command
    found = shutil.which(words[0])
    if found is None or not _VIM.fullmatch(os.path.basename(os.path.realpath(found))):
        return command
    return " ".join([words[0], shlex.join(VIM_OPTIONS), *words[1:]])


# Editors that draw on the terminal (a full screen on stdout, keys from stdin).  With
# stdout not a terminal, that screen, the secret on it, goes wherever stdout goes (a CI
# log, `| tee`): found in review, `vaultpy edit ID >out` with the default vi put the
# plaintext in `out`.  Only names that are never a GUI: emacs and emacsclient count
# only with their terminal options, gvim and the like not at all.
TERMINAL_EDITORS = frozenset({"vi", "vim", "nvim", "view", "rvim", "rview", "nvi", "nano",
                              "pico", "micro", "hx", "helix", "kak", "joe", "ne", "mg",
                              "vis"})
_VI_FAMILY = frozenset({"vi", "vim", "nvim", "view", "rvim", "rview", "nvi"})
# Vi and Vim options that draw no screen: Ex mode (batch with -s: `vim -es` runs a
# script from stdin), Vim's GUI, Neovim with no UI.
_VI_NO_SCREEN = frozenset({"-e", "-E", "-es", "-Es", "-g", "--headless"})


def terminal_editor(command: str) -> str | None:
    """The program of ``command`` when it is a known terminal editor that will draw its
    screen (:data:`TERMINAL_EDITORS`), else None: a script, a GUI editor, shell syntax,
    a name vaultpy does not know (run as given).  Debian's ``editor`` alternative is
    looked through to the editor it names."""
    if not _PLAIN_COMMAND.fullmatch(command):
        return None
    try:
        words = shlex.split(command)
    except ValueError:
        return None
    if not words:
        return None
    name, args = os.path.basename(words[0]), words[1:]
    if name == "editor":
        found = shutil.which(words[0])
        if found is not None:
            name = os.path.basename(os.path.realpath(found))
    name = name.split(".", 1)[0]                # vim.basic, vim.tiny, vim.gtk3 (as vim)
    if name == "emacs":
        terminal = bool({"-nw", "--no-window-system"} & set(args))
    elif name == "emacsclient":
        terminal = bool({"-t", "-nw", "--tty"} & set(args))
    elif name in _VI_FAMILY:
        terminal = not _VI_NO_SCREEN & set(args)
    else:
        terminal = name in TERMINAL_EDITORS
    return words[0] if terminal else None


def refuse_without_terminal(secret_id: str, editor: str | None = None) -> None:
    """Refuse, before anything is decrypted, to start an editor that needs a terminal
    when stdin or stdout is none: the default vi (no $VISUAL or $EDITOR), or a
    :func:`terminal_editor`.  Its screen would put the secret on stdout, and it could
    not be driven from a pipe or /dev/null anyway.  ``editor``: as :func:`edit`'s."""
    if editor:
        command, where = editor, "the editor"
    else:
        command, where = editor_command(), _editor_variable()
    program = terminal_editor(command) or (None if where else command)
    if program is None:
        return
    lacking = [name for fd, name in ((0, "stdin"), (1, "stdout")) if not os.isatty(fd)]
    if not lacking:
        return
    which = " and ".join(lacking) + (" are not terminals" if len(lacking) > 1
                                     else " is not a terminal")
    what = (f"{program!r} is a terminal editor" if where else
            f"not set (nor $VISUAL), and the default, {program!r}, is a terminal editor")
    why = ("its screen, the secret on it, would go wherever stdout goes"
           if "stdout" in lacking else "it could not read your keys")
    variable = where if where.startswith("$") else "$EDITOR"
    raise VaultpyError(Problem(
        variable, f"{what}, and {which}: {why}; nothing was decrypted", "",
        f"run vaultpy edit in a terminal, stdin and stdout not redirected, set "
        f"{variable[1:]} to an editor that needs none (a script, code --wait), or store "
        f"the value with vaultpy encrypt {secret_id} (from stdin or --file)"))


def run_editor(path: Path, editor: str | None = None) -> None:
    """Run ``$VISUAL``/``$EDITOR`` on ``path`` (through sh, as git does).

    Call inside :func:`_signals_during_editor`.
    """
    command = editor or editor_command()
    plain = _PLAIN_COMMAND.fullmatch(command)
    script = ("exec " if plain else "") + _with_vim_options(command) + ' "$@"'
    # The child must not inherit our ignored SIGINT: restore defaults in it.
    try:        # /bin/sh, not sh from PATH: a PATH without it is no reason to fail
        proc = subprocess.Popen(["/bin/sh", "-c", script, "vaultpy-editor", str(path)],
                                preexec_fn=_child_signals)
    except OSError as exc:
        raise VaultpyError(Problem("$EDITOR", f"cannot start the editor {command!r} "
                                   f"through /bin/sh: {exc.strerror}", "",
                                   "nothing was changed; check /bin/sh")) from None
    try:
        status = proc.wait()
    except _Aborted:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        raise
    if status != 0:
        how = (f"was killed by {signal.Signals(-status).name}" if status < 0
               else f"exited with status {status}")
        raise VaultpyError(Problem("$EDITOR", f"editor {command!r} {how}", "",
                                   "nothing was changed; fix the editor or try again"))


def _child_signals() -> None:
    for s in (signal.SIGINT, signal.SIGQUIT):
        signal.signal(s, signal.SIG_DFL)


def edit(cfg: Config, secret_id: str, *, identity_files: Sequence[Path] = (),
         ask: age.PassphraseFn = age.passphrase_from_env_or_tty, editor: str | None = None,
         allow_disk: bool = False) -> EditResult:
    secret = cfg.secret(secret_id)
    refuse_without_terminal(secret_id, editor)  # before any plaintext: no screen for it
    refuse_if_rotating(cfg)     # before any typing: the save would be refused
    writes.settle(cfg)          # edit the value an interrupted write was putting there
    nocore.forbid()
    exists = secret.file.exists()
    armor = False
    old = b""
    data: bytes | None = None
    if exists:
        data = masters.read_master(cfg, secret_id)
        armor = ageformat.is_armored(data)
        old = masters.decrypt(cfg, secret_id, identities.load(cfg, identity_files, ask))
    old_umask = os.umask(0o077)
    # Signal handlers stay in place until the plaintext is gone: a SIGTERM at any
    # moment in between still runs the cleanup below.
    swept = sweep()
    cleanup: OSError | None = None
    with _signals_during_editor() as editor_done:
        workdir, held = private_dir(allow_disk)
        try:
            plain = workdir / secret_id
            try:
                fsutil.write_new(plain, old, 0o600)
            except OSError as exc:
                raise VaultpyError(Problem(str(workdir.parent), "cannot write the plaintext "
                                           f"to edit: {exc.strerror or exc}", "", "free some "
                                           "room there (or set XDG_RUNTIME_DIR to another "
                                           "tmpfs), then edit again")) from None
            run_editor(plain, editor)
            try:
                big = os.lstat(plain).st_size > masters.MAX_PLAINTEXT   # (before reading)
                got = b"" if big else fsutil.read_regular(plain, follow=False)[0]
            except OSError as exc:
                raise VaultpyError(Problem("$EDITOR", f"the edited file is gone or unreadable "
                                           f"({exc.strerror})", "",
                                           "nothing was changed; save the file in place")
                                   ) from None
            if big or len(got) > masters.MAX_PLAINTEXT:
                raise VaultpyError(Problem("$EDITOR", "the edited value is more than "
                                           f"{masters.MAX_PLAINTEXT >> 20} MiB", "",
                                           "nothing was changed; a secret is held in RAM "
                                           "on every host it goes to"))
            new = got
        except _Aborted as exc:
            raise VaultpyError(Problem("$EDITOR", f"interrupted by {exc}", "",
                                       "nothing was changed")) from None
        finally:
            os.umask(old_umask)
            try:
                fsutil.remove_tree(workdir)
            except OSError as exc:  # (the edit is in memory: it is saved all the same)
                cleanup = exc
            finally:
                os.close(held)
        editor_done()
        said = tuple(f"removed {display_path(d)}: the plaintext a killed vaultpy edit left"
                     for d in swept)
        if new == old:
            _cleaned(workdir, cleanup, "nothing was changed")
            return EditResult(secret.file, changed=False, created=False, warnings=said)
        # Another edit (or encrypt) may have written meanwhile: never overwrite it
        # silently.  (Ctrl-C is still ignored: the edit is saved, or kept beside.)
        masters.write_master(cfg, secret_id, new, armor, based_on=data, keep_unsaved=True)
    _cleaned(workdir, cleanup, f"the edit is saved in {display_path(secret.file)}")
    return EditResult(secret.file, changed=True, created=not exists,
                      warnings=said + tuple(masters.value_warnings(cfg, secret_id, new)))


def _cleaned(workdir: Path, cleanup: OSError | None, outcome: str) -> None:
    """Raise, once the edit is saved (or found unchanged), if its plaintext stayed."""
    if cleanup is not None:
        raise VaultpyError(Problem(display_path(workdir), "the plaintext could not be "
                                   f"removed ({cleanup.strerror or cleanup}); {outcome}",
                                   "", f"remove it now: rm -rf {display_path(workdir)}"))
