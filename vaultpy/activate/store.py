"""Steps ``lock``, ``load_identities`` and ``mount_store``."""

from __future__ import annotations

import fcntl
import os
import stat
from pathlib import Path

from vaultpy import age
from vaultpy._internal import fsutil
from vaultpy.activate.context import Context
from vaultpy.errors import Problem, VaultpyError
from vaultpy.output import lock_path


def lock(ctx: Context) -> None:
    """flock ``<store>.lock`` beside the store (the ramfs is mounted over the store
    itself), so two activations never interleave.  The kernel drops the lock if
    the process dies.  (The profile's places are checked first, :func:`_places`.)"""
    _places(ctx)
    if ctx.opts.dry_run:
        return
    path = Path(lock_path(str(ctx.store)))      # a profile path never overlaps it
    fsutil.makedirs(path.parent)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise VaultpyError(Problem(str(path), f"cannot open the lock file: {exc.strerror}",
                                   "store", "remove it if it is a symlink or not a regular "
                                   "file; vaultpy creates it")) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_nlink != 1:
        # Another user's file (made first, in a shared sticky directory) would let them
        # hold the lock, and so every activation, for as long as they like.
        os.close(fd)
        whose = ("not a regular file" if not stat.S_ISREG(st.st_mode) else
                 f"owned by uid {st.st_uid}, not " + ("root" if os.geteuid() == 0 else "you")
                 if st.st_uid != os.geteuid() else "a hard link to another name")
        raise VaultpyError(Problem(str(path), f"the lock file is {whose}", "store",
                                   "remove it (vaultpy creates it), or give the store a "
                                   "place of its own"))
    fcntl.flock(fd, fcntl.LOCK_EX)
    ctx.lock_fd = fd
    ctx.log("lock", f"holding {path}")


def _no_prompt(path: Path, user: bool) -> age.PassphraseFn:
    def refuse(prompt: str) -> str:
        if user:
            raise VaultpyError(Problem(str(path), "your key is passphrase-protected, but "
                                       "activation runs unattended", "settings.identities",
                                       "give vaultpy a key of its own, without a "
                                       "passphrase (ssh-keygen -t ed25519 -N '' -f "
                                       "~/.ssh/vaultpy_ed25519): its .pub as your entry's "
                                       "pubkey in hosts.toml, its path in identities"))
        raise VaultpyError(Problem(str(path), "host key is passphrase-protected, but "
                                   "activation runs unattended", "settings.identities",
                                   "use an unencrypted host key (ssh-keygen -A makes them)"))
    return refuse


def load_identities(ctx: Context) -> None:
    """Read the host's key(s) once; a missing key is fatal, clearly."""
    for raw in ctx.profile.settings.identities:
        path = ctx.host_path(raw)
        if not path.exists():
            raise VaultpyError(Problem(
                str(path), "your key not found" if ctx.user else "host key not found",
                "settings.identities",
                "restore it from a backup (a new key cannot decrypt what renc wrote for "
                "the old one), or name where it is in settings.identities" if ctx.user else
                "is this the right host? restore its key from a backup: a new key "
                "(ssh-keygen -A) cannot decrypt what renc wrote for the old one"))
        unreadable = _UNREADABLE_USER if ctx.user else _UNREADABLE
        try:
            ctx.identities.extend(age.load_identity_file(path, _no_prompt(path, ctx.user),
                                                         unreadable_hint=unreadable,
                                                         regular_only=True))
        except VaultpyError as exc:     # the hints speak to an operator (-i, hosts.toml)
            wrong = _NOT_YOUR_KEY if ctx.user else _NOT_A_KEY
            raise VaultpyError([p if p.field == _FIELD else
                                Problem(p.file, p.message, _FIELD,
                                        unreadable if p.hint == unreadable else wrong)
                                for p in exc.problems]) from None
    ctx.log("load_identities", f"{len(ctx.identities)} key(s)")


_FIELD = "settings.identities"
_UNREADABLE = "root must be able to read the host key: check the file and its permissions"
_UNREADABLE_USER = "you must be able to read your key: check the file and its permissions"
_NOT_YOUR_KEY = ("settings.identities must name your private key (~/.ssh/id_ed25519), whose "
                 "public key hosts.toml gives: restore it from a backup")
_NOT_A_KEY = ("settings.identities must name the host's private key, its OpenSSH host key "
              "(/etc/ssh/ssh_host_ed25519_key) or, for an age1 pubkey, its age identity "
              "file: restore it from a backup")


def mount_store(ctx: Context) -> None:
    """The store must be a ramfs: never swapped, never on disk.  Mount one if the
    store is not a mountpoint; refuse tmpfs and disk filesystems.  (A user's
    profile: :func:`_user_store`.)"""
    if ctx.user:
        _user_store(ctx)
        return
    store = ctx.store
    if not store.exists():
        if ctx.opts.dry_run:
            ctx.log("mount_store", f"would create and mount ramfs on {store}")
            return
        fsutil.makedirs(store.parent)
        fsutil.mkdir_exact(store, 0o751)
    st = store.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise VaultpyError(Problem(str(store), "store is not a directory", "store",
                                   "remove it; vaultpy creates the store itself"))
    fstype = fsutil.mountpoint_fstype(store)
    if fstype is not None and fstype != "ramfs":
        raise VaultpyError(Problem(str(store), f"store is a {fstype} mount, not "
                                   "ramfs (tmpfs can be swapped to disk)", "store",
                                   f"unmount it (umount {store}) and let vaultpy mount a "
                                   "ramfs"))
    if fstype is None:
        if ctx.opts.no_mount:
            ctx.log("mount_store", f"--no-mount: using {store} as it is (NOT ramfs)")
        elif ctx.opts.dry_run:
            ctx.log("mount_store", f"would mount ramfs on {store}")
            return
        else:
            try:
                fsutil.mount_ramfs(store)
            except OSError as exc:
                raise VaultpyError(Problem(str(store), f"cannot mount ramfs: "
                                           f"{exc.strerror}", "store",
                                           "run as root (or pass --no-mount for a test "
                                           "--root)")) from None
            ctx.log("mount_store", f"mounted ramfs on {store}")
    st = store.stat()
    if st.st_uid != 0 or st.st_mode & 0o022:
        if ctx.opts.dry_run:
            return
        if fstype is None and not ctx.opts.no_mount:
            os.chown(store, 0, 0)
            os.chmod(store, 0o751)
        else:
            raise VaultpyError(Problem(str(store), "store is not owned by root or "
                                       "is writable by others", "store",
                                       f"chown root:root {store} && chmod 0751 {store}"))


def _places(ctx: Context) -> None:
    """The directories above the store, the live link (and a host's early link) must be
    root's (a user's profile: root's or the user's), and not writable by others unless
    sticky (:func:`links.open_parent`, which makes what is missing, but for a dry run):
    else another user could swap one for a place of theirs between the checks and the
    writes that follow, which use plain paths, and have the plaintext written, a
    service read their files through the live link, or the user's own files removed."""
    from vaultpy.activate import links

    s = ctx.profile.settings
    only_root = "in a directory only root can write to (as /run)"
    places = ((("store", s.store, "under %r, your runtime directory (is "
                "$XDG_RUNTIME_DIR yours?)"), ("dir", s.dir, "in your home"))
              if ctx.user else
              (("store", s.store, only_root), ("dir", s.dir, only_root),
               ("early_dir", s.early_dir, only_root)))
    for field, place, where in places:
        try:
            fd = links.open_parent(ctx, place, create=not ctx.opts.dry_run)
            everyone = os.fstat(fd).st_mode & stat.S_IWOTH
            os.close(fd)
        except OSError as exc:
            if ctx.opts.dry_run and isinstance(exc, FileNotFoundError):
                continue                    # (a real run makes it)
            raise VaultpyError(Problem(place, f"cannot reach its directory: {exc.strerror}",
                                       f"settings.{field}", f"keep it {where}")) from None
        except VaultpyError as exc:
            raise VaultpyError([Problem(p.file, p.message, f"settings.{field}",
                                        p.hint if p.hint == links.GROUP_HINT
                                        else f"keep it {where}; " + p.hint)
                                for p in exc.problems]) from None
        if everyone:        # sticky (else refused above), but anyone may take its names
            raise VaultpyError(Problem(place, "lies in a directory every user may write "
                                       "to: another could make its name (or the lock's) "
                                       "first", f"settings.{field}", f"keep it {where}"))


def _user_store(ctx: Context) -> None:
    """A user's store: a directory of theirs, 0700, in RAM.  A user cannot mount a
    ramfs; their runtime directory ($XDG_RUNTIME_DIR, ``%r``: a tmpfs systemd makes
    for them, 0700) is where it belongs, as agenix's and sops-nix's home-manager
    modules keep theirs.  A store on disk is refused (``--no-mount`` takes it as it is,
    for tests)."""
    store = ctx.store
    fstype = fsutil.mount_fstype(store)     # (of where it would be, before it is made)
    if fstype not in fsutil.RAM_FILESYSTEMS:
        if not ctx.opts.no_mount:
            where = fstype or "a file system of unknown type"
            raise VaultpyError(Problem(str(store), f"store is on {where}, not in RAM: "
                                       "plaintext would be written to disk", "store",
                                       "keep it under %r, your runtime directory (a tmpfs "
                                       "systemd makes at login); is $XDG_RUNTIME_DIR set?"))
        ctx.log("mount_store", f"--no-mount: using {store} as it is (NOT in RAM)")
    if not os.path.lexists(store):
        if ctx.opts.dry_run:
            ctx.log("mount_store", f"would create {store}")
            return
        fsutil.mkdir_exact(store, 0o700)        # (its parent: made by _user_places)
    st = store.lstat()
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise VaultpyError(Problem(str(store), "store is not a directory", "store",
                                   "remove it; vaultpy creates the store itself"))
    if st.st_uid != ctx.uid:
        raise VaultpyError(Problem(str(store), f"store is not yours (owned by uid "
                                   f"{st.st_uid})", "store",
                                   "remove it, or set settings.store to a place of your "
                                   "own under %r (your runtime directory)"))
    if stat.S_IMODE(st.st_mode) != 0o700 and not ctx.opts.dry_run:
        os.chmod(store, 0o700)      # (ours: no one else's files are in it)
