"""Crash-safe file operations.

Rules every writer in vaultpy follows:

* data goes to a temporary file in the target's directory, under a name that
  never ends in ``.age`` (:data:`TMP_MARK`), so a killed run can never leave a
  partial file under a final name;
* the data is made durable (fsync, or one ``syncfs`` for a batch) *before*
  the rename, and the directory is fsynced after it;
* temporary files a killed run left behind are recognised by name and removed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import time
from collections.abc import Iterable, Iterator, Sequence

from vaultpy._internal import sigint

TYPE_CHECKING = False       # pathlib costs ~10 ms to import; only callers need it
if TYPE_CHECKING:
    from pathlib import Path
    from typing import BinaryIO

TMP_MARK = ".vaultpy-tmp-"


def tmp_prefix(name: str) -> str:
    """How every temp file for final name ``name`` begins (a killed run's leftovers)."""
    return f".{name}{TMP_MARK}"


def remove_leftovers(paths: Iterable[Path], older_than: float = 0) -> None:
    """Remove the temp files a killed writer of ``paths`` left beside them (named by
    :func:`tmp_basename`): regular files only, never through a symlink; each folder is
    listed once, and a folder that is missing has none.  ``older_than``: only those
    last changed that many seconds ago or more (a writer at work keeps its own)."""
    prefixes: dict[Path, list[str]] = {}
    for path in paths:
        prefixes.setdefault(path.parent, []).append(tmp_prefix(path.name))
    for folder, mine in prefixes.items():
        try:
            entries = os.listdir(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            left = folder / entry
            if entry.startswith(tuple(mine)) and left.is_file() and not left.is_symlink():
                if older_than and time.time() - left.lstat().st_mtime < older_than:
                    continue
                left.unlink()


def tmp_basename(name: str) -> str:
    """The name of a temp file for final name ``name``, beside it: a dot (hidden), the
    name, the mark (:func:`is_tmp`), and 48 random bits (os.urandom, as
    ``secrets.token_hex``; ``secrets`` itself would load hmac)."""
    return f"{tmp_prefix(name)}{os.urandom(6).hex()}"


def tmp_name(final: Path) -> Path:
    return final.with_name(tmp_basename(final.name))


def is_tmp(name: str) -> bool:
    """Whether ``name`` is a temp file's (see :func:`tmp_basename`)."""
    return name.startswith(".") and TMP_MARK in name


def write_new(path: Path | str, data: bytes | Iterable[bytes], mode: int = 0o644, *,
              dir_fd: int | None = None) -> os.stat_result:
    """Create ``path`` exclusively (relative to the directory open as ``dir_fd``, if
    given) and write ``data`` (bytes, or chunks of them: a large file need not be whole
    in memory), no fsync, no rename; return the stat of the file as written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 mode, dir_fd=dir_fd)
    try:
        for chunk in (data,) if isinstance(data, (bytes, bytearray, memoryview)) else data:
            view = memoryview(chunk)
            while view:
                view = view[os.write(fd, view):]
        return os.fstat(fd)
    finally:
        os.close(fd)


def create_new(path: Path, data: bytes, mode: int = 0o644, *, exact_mode: bool = False
               ) -> None:
    """Create ``path`` with ``data``, never replacing anything: the bytes go to a temp
    file, are fsynced, and the temp file is hard-linked to ``path`` (FileExistsError if
    it exists), so ``path`` is complete or absent.  ``exact_mode``: ``mode`` whatever
    the umask."""
    tmp = tmp_name(path)
    with sigint.held():             # a Ctrl-C cannot come between the temp file and its end
        # A writer of ``path`` killed before it unlinked its temp file left it (a whole
        # private key, for an identity), which nothing else would ever remove.  Not a
        # recent one: another writer of the same path may be at work on it.
        remove_leftovers([path], older_than=60)
        try:
            write_new(tmp, data, mode)
            if exact_mode:
                os.chmod(tmp, mode)
            fsync_path(tmp)
            os.link(tmp, path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    fsync_path(path.parent, directory=True)


def fsync_path(path: Path | str, directory: bool = False) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes | Iterable[bytes], mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new bytes, never a mix."""
    tmp = tmp_name(path)
    with sigint.held():             # a Ctrl-C cannot come between the temp file and its end
        try:
            write_new(tmp, data, mode)
            fsync_path(tmp)
            os.rename(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    fsync_path(path.parent, directory=True)


def libc_call(name: str, *args: object) -> None:
    """Call libc's ``name`` (no Python wrapper exists); OSError if it fails."""
    _libc_call("", name, *args)


def _libc_call(path: Path | str, name: str, *args: object) -> None:
    """Call libc's ``name`` (no Python wrapper exists); raise OSError naming ``path``.

    ctypes is imported only here: most commands never need it, and its
    ``util.find_library`` alone took 13 ms to import and spawned ldconfig when called.
    The symbols are looked up in the running process (``CDLL(None)``), which has libc
    loaded whatever its file is called (glibc, musl)."""
    import ctypes

    fn = getattr(ctypes.CDLL(None, use_errno=True), name)
    if fn(*args) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(path))


_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2


def _renameat2(src: Path | str, dst: Path | str, flags: int, dir_fd: int = _AT_FDCWD
               ) -> bool:
    """renameat2(2) with ``flags`` (relative paths from ``dir_fd``); False where it
    cannot be asked (a libc without it, such as musl before 1.2.4, or a file system
    refusing the flag: EINVAL, ENOSYS), for the caller's fallback.  Any other failure
    raises OSError naming ``dst``."""
    try:
        _libc_call(dst, "renameat2", dir_fd, os.fsencode(src), dir_fd,
                   os.fsencode(dst), flags)
    except AttributeError:
        return False
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOSYS):
            raise
        return False
    return True


def exchange(a: Path | str, b: Path | str) -> None:
    """Swap ``a`` and ``b`` in one step (renameat2 RENAME_EXCHANGE): a directory is
    replaced without a moment where its name is absent.  Where that cannot be done,
    ``b`` is moved to ``a``'s name through a temp name instead."""
    if _renameat2(a, b, _RENAME_EXCHANGE):
        return
    aside = os.path.join(os.path.dirname(a), tmp_basename(os.path.basename(a)))
    os.rename(b, aside)
    os.rename(a, b)
    os.rename(aside, a)


def rename_in(dir_fd: int, src: str, dst: str, *, exchange: bool) -> bool:
    """In the directory open as ``dir_fd``: rename ``src`` to ``dst`` unless ``dst``
    exists (FileExistsError), or, ``exchange``, swap the two (FileNotFoundError when
    ``dst`` is gone).  False where renameat2 cannot be asked: the caller falls back."""
    return _renameat2(src, dst, _RENAME_EXCHANGE if exchange else _RENAME_NOREPLACE,
                      dir_fd)


def rename_new(src: Path | str, dst: Path | str) -> None:
    """Rename ``src`` to ``dst`` unless ``dst`` exists: FileExistsError then, and ``src``
    stays (renameat2 RENAME_NOREPLACE).  Where that cannot be done, a check then a
    rename: callers hold the repository lock, so only a writer that does not take it
    could come between the two."""
    if _renameat2(src, dst, _RENAME_NOREPLACE):
        return
    if os.path.lexists(dst):
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


def syncfs(path: Path | str) -> None:
    """Flush the whole filesystem holding ``path``: one call instead of an fsync per file."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _libc_call(path, "syncfs", fd)
    finally:
        os.close(fd)


# A few files are flushed one by one when other data waits to be written: ``syncfs``
# writes every dirty page of the file system, whoever wrote it, and waits for all of
# it (3 cache files behind 1.5 GB a download left: 1.1 s, against 1 ms for their own
# fdatasync calls).  With nothing else waiting, one syncfs is the cheaper: ~1 ms for
# 20 files, against ~5 ms for 20 fdatasync calls; and for many files, always.
FEW_FILES = 64
OTHERS_WAITING = 16 << 20       # bytes of dirty or in-flight page cache (all systems)


def sync_files(root: Path | str, files: Sequence[str], dirs: Sequence[str] = ()) -> None:
    """Make durable the bytes of ``files`` and the entries of ``dirs``, all on the file
    system holding ``root``: an fdatasync of each file and an fsync of each directory
    when they are few and other data is waiting to be written, else one ``syncfs``."""
    if len(files) + len(dirs) > FEW_FILES or unwritten_bytes() <= OTHERS_WAITING:
        syncfs(root)
        return
    for path in files:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
    for d in dirs:
        fsync_path(d, directory=True)


def unwritten_bytes() -> int:
    """Dirty and in-flight page cache, all file systems together (``/proc/meminfo``'s
    Dirty + Writeback); 0 when it cannot be read (then syncfs: as before)."""
    try:
        with open("/proc/meminfo", "rb") as f:
            text = f.read()
    except OSError:
        return 0
    total = 0
    for line in text.splitlines():
        if line.startswith((b"Dirty:", b"Writeback:")):
            with contextlib.suppress(IndexError, ValueError):
                total += int(line.split()[1]) * 1024
    return total


def hold_dir(path: Path | str) -> int:
    """An fd holding an exclusive flock on the directory ``path``, which this process
    is building: :func:`in_use` then tells it from a leftover of a killed run (the
    kernel drops the lock with the last process holding the fd).  Close it when done."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def make_room(fds: int) -> None:
    """Raise the soft limit on open files toward the hard one by ``fds``: a run that
    holds a descriptor per host directory it builds (:func:`hold_dir`, until it ends)
    would otherwise fail a big first run at the common soft limit of 1024."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if fds <= 0 or soft == resource.RLIM_INFINITY:
        return
    new = soft + fds if hard == resource.RLIM_INFINITY else min(hard, soft + fds)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def in_use(path: Path | str) -> bool:
    """Whether a live process holds ``path``'s flock (:func:`hold_dir`): a directory it
    is still building, not a leftover.  False for anything that is not a directory."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False


@contextlib.contextmanager
def locked(lock_path: Path | str) -> Iterator[bool]:
    """Hold an exclusive flock on ``lock_path`` (created once, never rewritten).

    flock is released by the kernel when the process dies, so a killed run never
    leaves a lock that blocks the next one.  Yields True when this call created the
    lock file: then no other process can ever have held the lock before this one.
    """
    fd, created = -1, False
    try:
        # Held (none of it blocks): a Ctrl-C waits for the temp file to be gone, and
        # for the descriptor to be bound here, where the finally closes it.  Lost, it
        # would keep a new lock file's flock: a program's next renc() would wait forever.
        with sigint.held():
            if not os.path.lexists(lock_path):
                fd, created = _link_new_lock(lock_path)
            if fd < 0:
                fd = os.open(lock_path,
                             os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)          # the wait for the lock: Ctrl-C ends it
        yield created
    finally:
        if fd >= 0:
            os.close(fd)


def _link_new_lock(lock_path: Path | str) -> tuple[int, bool]:
    """Create ``lock_path`` already locked: a temp file is flocked before it is linked
    to the lock's name, so nobody can take the lock between creation and flock.
    (-1, False) when the name exists by now, or the filesystem has no hard links."""
    tmp = os.path.join(os.path.dirname(lock_path), tmp_basename(os.path.basename(lock_path)))
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.link(tmp, lock_path)
    except OSError:
        os.close(fd)
        return -1, False
    except BaseException:
        os.close(fd)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return fd, True


def mount_fstype(path: Path) -> str | None:
    """The filesystem type of the mount that holds ``path`` (from /proc/self/mountinfo)."""
    try:
        target = os.path.realpath(path)
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            rows = fh.read().splitlines()
    except OSError:
        return None
    best, best_type = "", None
    for row in rows:
        left, _, right = row.partition(" - ")
        fields = left.split()
        if len(fields) < 5 or not right:
            continue
        mnt = fields[4].replace("\\040", " ")
        inside = target == mnt or target.startswith(mnt.rstrip("/") + "/")
        if inside and len(mnt) >= len(best):
            best, best_type = mnt, right.split()[0]
    return best_type


RAM_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})
# read_regular's OSError (EINVAL) for anything but a regular file.
NOT_REGULAR = "not a regular file (a FIFO, socket or device)"
LINK = "a symbolic link, not a file"


def git_top(start: Path) -> Path | None:
    """The top of the git repository ``start`` is in (``.git`` there: a directory, or a
    file in a worktree), or None."""
    for d in (start, *start.parents):
        if os.path.lexists(d / ".git"):
            return d
    return None


def file_key(path: Path | str) -> tuple[int, int] | None:
    """What makes ``path`` the same file as another (device, inode); None: no file."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def read_regular(path: Path | str, *, follow: bool = True
                 ) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file (a symlink to one included, unless not ``follow``:
    then a symlink raises OSError(ELOOP, :data:`LINK`)), and the stat of what was
    read.  Anything else raises OSError before a byte is read: a FIFO planted where a
    file is expected would block ``open`` or ``read`` forever (it is opened
    non-blocking, and never read), a device could stream without end."""
    fd, st = _open_regular(path, follow)
    try:
        chunks = []
        while chunk := os.read(fd, max(st.st_size + 1, 1 << 16)):
            chunks.append(chunk)
        return b"".join(chunks), st
    finally:
        os.close(fd)


def open_regular(path: Path | str) -> BinaryIO:
    """:func:`read_regular`'s file, open, to be read a line or a block at a time."""
    return os.fdopen(_open_regular(path)[0], "rb")


def _open_regular(path: Path | str, follow: bool = True) -> tuple[int, os.stat_result]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC
                     | (0 if follow else os.O_NOFOLLOW))
    except OSError as exc:
        if follow or exc.errno != errno.ELOOP or not os.path.islink(path):
            raise
        raise OSError(errno.ELOOP, LINK, str(path)) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, NOT_REGULAR, str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_at_most(fd: int, limit: int, *, line: bool = False) -> bytes | None:
    """Everything readable from ``fd`` (a file, pipe or terminal), or None once it
    holds more than ``limit`` bytes: ``--file /dev/zero`` must end, not fill RAM.
    ``line``: stop at the first line break (the bytes read with it are kept), as
    ``readline`` would: a writer that keeps a pipe open after its line is not waited on."""
    chunks: list[bytes] = []
    size = 0
    while chunk := os.read(fd, 1 << 16):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if line and b"\n" in chunk:
            break
    return b"".join(chunks)


def read_named(path: Path | str, limit: int, *, line: bool = False) -> bytes | None:
    """:func:`read_at_most` of a file the user named (``-i``, ``--profile``,
    ``--file``, ``VAULTPY_PASSPHRASE_FILE``): opened as given, so ``/dev/stdin``, a
    FIFO or ``<(…)`` is read once its writer writes; None past ``limit`` bytes, so a
    device such as ``/dev/zero`` ends in an error, not a MemoryError."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return read_at_most(fd, limit, line=line)
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """``rm -r`` that never follows symlinks (shutil's fd-based rmtree) and tolerates
    absence.  Anything that is not a directory (a FIFO, a socket, a device node too)
    is unlinked, never opened: opening a FIFO would wait for a writer forever."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISDIR(st.st_mode):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    import shutil  # on first use: activation at boot never removes a tree

    shutil.rmtree(path)


def mountpoint_fstype(path: Path) -> str | None:
    """The filesystem type mounted exactly at ``path`` (None if it is not a mountpoint)."""
    target = os.path.realpath(path)
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as fh:
            rows = fh.read().splitlines()
    except OSError:
        return None
    found = None
    for row in rows:                      # later rows are mounted on top: the last wins
        left, _, right = row.partition(" - ")
        fields = left.split()
        if len(fields) >= 5 and right and fields[4].replace("\\040", " ") == target:
            found = right.split()[0]
    return found


MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8


def mount_ramfs(path: Path, mode: str = "0751") -> None:
    """mount -t ramfs -o nosuid,nodev,noexec,mode=MODE ramfs PATH (via mount(2))."""
    import ctypes

    _libc_call(path, "mount", b"ramfs", os.fsencode(path), b"ramfs",
               ctypes.c_ulong(MS_NOSUID | MS_NODEV | MS_NOEXEC), f"mode={mode}".encode())


def mkdir_p(path: Path, mode: int = 0o777) -> None:
    """``path.mkdir(parents=True, exist_ok=True)``, but a part of ``path`` that exists and
    is no directory is named, as ENOTDIR (mkdir says EEXIST of it: "File exists", of a
    path the user never meant to create)."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
    except FileExistsError:
        blocker = not_a_directory(path) or path
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR),
                                 str(blocker)) from None


def not_a_directory(path: Path) -> Path | None:
    """The part of ``path`` (itself or a parent) that exists and is no directory, if
    one does: what keeps ``path`` from being created as a directory."""
    for p in (*reversed(path.parents), path):
        if os.path.lexists(p) and not p.is_dir():
            return p
    return None


def makedirs(path: Path, mode: int = 0o755) -> None:
    """mkdir -p whose new directories get exactly ``mode`` whatever the umask."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            mkdir_exact(d, mode)


def mkdir_exact(path: Path | str, mode: int, dir_fd: int | None = None) -> None:
    """mkdir with exactly ``mode`` from the start, whatever the umask: with a chmod
    after it, a process killed in between would leave the directory with the umask's
    mode for good (the next run finds it there and goes on).  The umask is cleared for
    the one call: only for processes with no other thread creating files (activation)."""
    old = os.umask(0)
    try:
        os.mkdir(path, mode, dir_fd=dir_fd)
    finally:
        os.umask(old)
