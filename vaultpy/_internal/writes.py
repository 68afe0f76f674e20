"""The journal of a multi-file write, so that a crash cannot leave half of it.

:func:`vaultpy.masters.write_all` replaces several files together: a key pair's master
and its ``.pub`` with rotation.toml (``rotate``), several masters with
vault-versions.toml (``pull``).  Each file is replaced atomically by a rename, but a
kill or a power cut between two renames would leave, say, a new private key beside the
old public one: a pair that no longer matches, and nothing that says so.

So once every new file is durable under its temp name, the list of renames is written
durably to ``.vaultpy-writes`` beside hosts.toml before the first of them.  From then
on the write is decided: it is finished, by the writer or by the next command that
takes the lock (:func:`lock`), which renames what is left.  A temp file's name is
unique, so one that still exists was not renamed yet.  The journal goes once the
renames and their directories are durable.

The journal lives beside hosts.toml, not in ``cache_dir`` with the lock: hosts.toml is
how every command finds the repository, whatever its settings say.  A writer killed,
then ``cache_dir`` changed, would otherwise leave a journal no command looks at, and
its write half done for good (``check`` would even call its temp files leftovers).
A journal an older vaultpy left in ``<cache_dir>/.vaultpy-writes`` is finished too.

A writer that fails before its first rename, or puts back what its renames replaced
(:func:`vaultpy.masters.write_all`), removes the journal before its temp files: killed
in between, the next command finishes the write instead, which is as whole.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from vaultpy._internal import fsutil, sigint
from vaultpy.errors import Problem, VaultpyError, display_path, os_problem
from vaultpy.model import Config

JOURNAL = ".vaultpy-writes"
_FORMAT = 1


def path(cfg: Config) -> Path:
    return cfg.root / JOURNAL


def _journals(cfg: Config) -> tuple[Path, ...]:
    """Where a journal may be: beside hosts.toml, and in ``cache_dir``, where earlier
    versions of vaultpy kept it."""
    return (path(cfg), cfg.cache_dir / JOURNAL)


def begin(cfg: Config, renames: Sequence[tuple[Path, Path, bool]]) -> None:
    """Record ``renames`` ((temp file, final path, must be new)), durably, before the
    first of them.  Paths are kept relative to the repository (it may be moved), with
    where it was: a file outside it (secrets_dir = "/srv/…" or "../…") is found again
    under either (see :func:`parse`)."""
    entries = [[os.path.relpath(tmp, cfg.root), os.path.relpath(final, cfg.root), new]
               for tmp, final, new in renames]
    data = json.dumps({"format": _FORMAT, "root": os.path.abspath(cfg.root),
                       "renames": entries}, indent=1).encode() + b"\n"
    fsutil.atomic_write(path(cfg), data, 0o644)      # fsyncs the repository too


def end(cfg: Config, *, undone: bool = False) -> None:
    """The write is whole: forget it.  Not fsynced: a journal that comes back after a
    crash lists only temp files that are gone, and finishing it does nothing.

    ``undone``: the write was undone, and its temp files go next.  The journal's removal
    is then made durable first: else, after a power cut, the next command could finish
    a write the writer had reported as failed."""
    try:
        path(cfg).unlink()
    except FileNotFoundError:
        return
    if undone:
        fsutil.fsync_path(cfg.root, directory=True)


# The cache directory's .gitignore: vaultpy's local state there (the cache files
# themselves are committed).  Written by init, the importers, and the renc that fills
# a cache directory that has none (a cache_dir changed after init, say).
CACHE_GITIGNORE = """\
# Local state of vaultpy: the lock, the verification index, the no-op memo, and the
# journal of a write of several files while it runs.
.vaultpy.lock
.vaultpy-verified
.vaultpy-memo
.vaultpy-writes
"""


def ignore_own_files(cache_dir: Path) -> bool:
    """Write ``cache_dir``'s .gitignore (:data:`CACHE_GITIGNORE`) unless there is one;
    whether it was written.  Never replaces one, even one made meanwhile."""
    path = cache_dir / ".gitignore"
    if os.path.lexists(path):
        return False
    try:
        fsutil.create_new(path, CACHE_GITIGNORE.encode(), 0o644)
    except FileExistsError:
        return False
    return True


@contextlib.contextmanager
def lock(cfg: Config) -> Iterator[bool]:
    """Hold the repository's lock (:func:`fsutil.locked`, creating the cache directory
    it lives in) with any interrupted write finished first.  Yields whether this call
    created the lock file."""
    cfg.cache_dir.mkdir(parents=True, exist_ok=True)
    with fsutil.locked(cfg.lock_path) as created:
        finish(cfg)
        yield created


@contextlib.contextmanager
def held(cfg: Config, action: str = "take the lock") -> Iterator[bool]:
    """:func:`lock`, with a failure to take it (a read-only checkout, a directory in its
    place...) as one line naming the lock; what the block raises is the caller's."""
    with contextlib.ExitStack() as stack:
        try:
            created = stack.enter_context(lock(cfg))
        except OSError as exc:
            raise VaultpyError(os_problem(cfg.lock_path, exc, action)) from None
        yield created


def settle(cfg: Config) -> None:
    """Finish an interrupted write now, if there is one: for commands that decide what
    to write (generate: which masters are missing) before they take the lock."""
    if any(os.path.lexists(journal) for journal in _journals(cfg)):
        with held(cfg):
            pass


def finish(cfg: Config) -> list[Path]:
    """Finish the write a killed writer left (the caller holds the lock): rename the
    temp files it listed that are still there (or remove them, if a file that must be
    new exists by now).  Returns the paths replaced."""
    done: list[Path] = []
    for journal in reversed(_journals(cfg)):        # an older vaultpy's first
        done += _finish(cfg, journal)
    return done


def _not_a_journal(journal: Path, directory: bool) -> Problem:
    """A FIFO, device, socket or (``directory``) directory in the journal's place.
    vaultpy writes its journal as a regular file (an atomic rename), so this holds no
    write to finish: the fix is to delete it, not to put a regular file there (an empty
    one would be a damaged journal)."""
    what = "a directory" if directory else fsutil.NOT_REGULAR
    return Problem(display_path(journal), f"{what}, so no interrupted write is in it", "",
                   "delete it: vaultpy writes its journal as a regular file")


def _damaged(journal: Path) -> Problem:
    return Problem(display_path(journal), "the journal of an interrupted write is damaged",
                   "", "the temp files it lists (named .<file>.vaultpy-tmp-…) hold the new "
                   "values; move the ones you want into place by hand, then delete it")


def _finish(cfg: Config, journal: Path) -> list[Path]:
    try:
        raw = fsutil.read_regular(journal)[0]
    except FileNotFoundError:
        return []
    except IsADirectoryError:
        raise VaultpyError(_not_a_journal(journal, directory=True)) from None
    except OSError as exc:
        if exc.strerror == fsutil.NOT_REGULAR:
            raise VaultpyError(_not_a_journal(journal, directory=False)) from None
        raise VaultpyError(os_problem(journal, exc, "read")) from None
    renames = parse(raw, cfg.root)
    if renames is None or _strays(cfg, renames):
        raise VaultpyError(_damaged(journal))
    why = _tracked(journal)
    if why is not None:
        raise VaultpyError(_committed(journal, why))

    def waiting(tmp: Path) -> bool:     # else renamed before the interruption
        return os.path.isfile(tmp) and not os.path.islink(tmp)

    # A file that must be new was made since, outside vaultpy (the same secret from a
    # git pull): the write can no longer be whole, and the rest of it must not go
    # beside that file (the .pub of a key never put in place over the one that came
    # with it).  It is dropped, as write_all drops a write whose new file appeared.
    dropped = any(new and waiting(tmp) and os.path.lexists(final)
                  for tmp, final, new in renames)
    done: list[Path] = []
    current = journal
    with sigint.held():             # finished whole, or left for the next command
        try:
            for tmp, final, new in renames:
                current = final
                if not waiting(tmp):
                    continue
                if dropped:
                    os.unlink(tmp)
                    continue
                if new:
                    try:
                        fsutil.rename_new(tmp, final)
                    except FileExistsError:     # made since, outside vaultpy: it stays
                        os.unlink(tmp)
                        continue
                else:
                    os.rename(tmp, final)
                    # One file under both names (a put-back killed after it linked the
                    # new bytes back to their temp name): the rename did nothing.
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(tmp)
                done.append(final)
            for folder in sorted({final.parent for _tmp, final, _new in renames}):
                current = folder
                try:
                    fsutil.fsync_path(folder, directory=True)
                except FileNotFoundError:   # removed since: nothing of it to keep
                    continue
            current = journal
            journal.unlink()
        except OSError as exc:
            p = os_problem(current, exc, "finish an interrupted write at")
            raise VaultpyError(Problem(
                p.file, p.message, p.field, (f"{p.hint}; " if p.hint else "") +
                f"or delete {display_path(journal)} to leave the write as it is")) from None
    return done


def _committed(journal: Path, why: str) -> Problem:
    return Problem(display_path(journal), f"a write journal {why}: one in a commit (it is "
                   "git-ignored local state) would replace hosts.toml or master files where "
                   "no review sees it", "", "if it is not from a vaultpy command killed "
                   "here, git rm --cached it, delete it and the temp files it lists, and look "
                   "at the commit that added it; else move its temp files into place by hand")


def _tracked(path: Path) -> str | None:
    """Why the journal at ``path`` may have come with a commit: git tracks it, or git
    cannot say (found in review: a repository git refuses to read, say another user's,
    or a GIT_DIR from the environment, had the check pass); None when git says it does
    not track it, or there is no git work tree or no git."""
    import subprocess

    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    try:
        proc = subprocess.run(["git", "-C", str(path.parent), "ls-files", "--error-unmatch",
                               "--", path.name], capture_output=True, timeout=30,
                              stdin=subprocess.DEVNULL, env=env)
    except FileNotFoundError:
        return None                     # no git: no commit brought it
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"git could not be asked about ({exc})"
    if proc.returncode == 0:
        return "git tracks"
    said = proc.stderr.decode(errors="replace").strip().splitlines()
    if proc.returncode == 1 or (said and "not a git repository" in said[-1]):
        return None
    fatal = [line for line in said if line.startswith("fatal:")] or said
    return f"git cannot tell whether it tracks ({fatal[0] if fatal else proc.returncode})"


def parse(raw: bytes, root: Path) -> list[tuple[Path, Path, bool]] | None:
    """The journal's renames, as paths under ``root`` (the repository now).  They are
    joined as hosts.toml's paths are (``..`` taken off the path, not looked up: through
    a symlink to the repository it is the link's parent); a temp file not found there
    but found under the repository's path when the journal was written (a folder given
    by its absolute path, the repository moved since) is that one."""
    try:
        data = json.loads(raw)
    except (ValueError, RecursionError):
        return None
    if not isinstance(data, dict) or data.get("format") != _FORMAT:
        return None
    entries = data.get("renames")
    was = data.get("root", os.fspath(root))
    if not isinstance(entries, list) or not isinstance(was, str):
        return None
    out = []
    for e in entries:
        if not (isinstance(e, list) and len(e) == 3 and isinstance(e[0], str)
                and isinstance(e[1], str) and isinstance(e[2], bool)
                and _beside(e[0], e[1])):
            return None
        for base in (os.fspath(root), was):
            tmp, final = (Path(os.path.normpath(os.path.join(base, p))) for p in e[:2])
            if os.path.lexists(tmp):
                break
        else:
            tmp, final = (Path(os.path.normpath(os.path.join(root, p))) for p in e[:2])
        out.append((tmp, final, e[2]))
    return out


def _beside(tmp: str, final: str) -> bool:
    """Whether ``tmp`` is a temp name of ``final``, in its directory, as every writer
    makes them (:func:`fsutil.tmp_name`).  A journal is only a file in the repository:
    one committed to it, listing ``/root/.ssh/authorized_keys`` after a temp file of
    the repository's, would have had the next command move that file there.  Not
    enough alone (a shared /tmp): :func:`_writable` says which final names may be."""
    tmp, final = os.path.normpath(tmp), os.path.normpath(final)
    return (os.path.dirname(tmp) == os.path.dirname(final)
            and os.path.basename(tmp).startswith(fsutil.tmp_prefix(os.path.basename(final))))


def _strays(cfg: Config, renames: list[tuple[Path, Path, bool]]) -> bool:
    """Whether a rename still to do (its temp file is there) has a final name no
    multi-file write has (:func:`_writable`).  One whose temp file is gone renames
    nothing: a folder removed since (a branch switch) is no reason to refuse."""
    writable = _writable(cfg)
    return any(os.path.isfile(tmp) and not writable(final) for tmp, final, _new in renames)


def _writable(cfg: Config) -> Callable[[Path], bool]:
    """Whether a multi-file write may have a path as a final name: hosts.toml, a
    declared master file or its key pair's .pub, the rotation and Vault state files,
    or a new master (``*.age``: an import's) in secrets_dir.  A temp file beside a
    final name is not proof enough: in a directory every user may write to (/tmp), anyone
    can make one beside root's file, and a journal brought by a clone would have had it
    renamed over that file.  (The set is made once per journal, not per rename.)"""
    from vaultpy.model import ROTATION_FILE, VAULT_VERSIONS_FILE

    named = {cfg.path, cfg.secrets_dir / ROTATION_FILE, cfg.secrets_dir / VAULT_VERSIONS_FILE}
    for s in cfg.secrets.values():
        named.add(s.file)
        if s.public_file is not None:
            named.add(s.public_file)
    known = {Path(os.path.normpath(k)) for k in named}
    masters = Path(os.path.normpath(cfg.secrets_dir))

    def writable(final: Path) -> bool:
        final = Path(os.path.normpath(final))
        return final in known or (final.parent == masters and final.suffix == ".age")

    return writable


def listed(cfg: Config) -> set[str]:
    """The temp files an interrupted write lists, as :func:`display_path` names them."""
    out: set[str] = set()
    for journal in _journals(cfg):
        try:
            renames = parse(fsutil.read_regular(journal)[0], cfg.root)
        except OSError:
            continue
        out.update(display_path(tmp) for tmp, _final, _new in renames or ())
    return out


def problems(cfg: Config) -> list[Problem]:
    """For ``check``: an interrupted write waits to be finished, or a FIFO or directory
    stands where a journal would be (stat only: opening a FIFO waits for a writer)."""
    out = []
    for journal in _journals(cfg):
        if not os.path.lexists(journal):
            continue
        try:
            mode = os.stat(journal).st_mode
        except FileNotFoundError:       # a symlink to nothing: no journal, as renc reads it
            continue
        except OSError:
            mode = stat.S_IFREG         # cannot tell: as before
        if not stat.S_ISREG(mode):
            out.append(_not_a_journal(journal, directory=stat.S_ISDIR(mode)))
            continue
        with contextlib.suppress(OSError):      # (unreadable: renc says why)
            renames = parse(fsutil.read_regular(journal)[0], cfg.root)
            if renames is None or _strays(cfg, renames):
                out.append(_damaged(journal))   # renc would refuse it, not finish it
                continue
        why = _tracked(journal)
        if why is not None:
            out.append(_committed(journal, why))
            continue
        out.append(Problem(display_path(journal), "a write of several files was "
                           "interrupted before all of them were replaced", "",
                           "run vaultpy renc: any command that takes the lock finishes "
                           "it first"))
    return out
