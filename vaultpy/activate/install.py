"""Steps ``decrypt_secrets`` and ``render_templates``: the generation's files.

Each file is created with O_CREAT|O_EXCL|O_NOFOLLOW relative to the generation
directory's descriptor, and gets its owner, group and mode (fchown, fchmod)
while it is still empty and mode 0000: no byte is ever readable by anyone the
profile did not name.

Decryption is most of an activation's time, and pyrage holds the GIL: with many
secrets, forked helpers decrypt a share each (:func:`_decrypt_shares`) while this
process decrypts its own.  A helper only reads cache files and hands plaintexts
back in shared anonymous memory; every file is still created here, and whatever
a helper did not deliver (an error, a crash, a kill) is decrypted again here, in
order, so that a failure reads exactly as it would without helpers.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import signal
import struct
import time
from collections.abc import Iterator

from vaultpy import age, templates
from vaultpy._internal import fsutil
from vaultpy.activate import verify
from vaultpy.activate.context import Context
from vaultpy.activate.users import Accounts, owner_ids
from vaultpy.errors import Problem, VaultpyError, display_path
from vaultpy.profile import Item


def _needed_ids(ctx: Context) -> list[str]:
    ids: dict[str, None] = {}
    for item in ctx.items():
        if item.is_template:
            for ref in templates.references(item.content or ""):
                ids.setdefault(ref)
        elif item.id is not None:
            ids.setdefault(item.id)
    return list(ids)


def create_file(dir_fd: int, name: str, data: bytes, uid: int, gid: int, mode: int) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o000, dir_fd=dir_fd)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _install(ctx: Context, item: Item, data: bytes, accounts: Accounts) -> None:
    uid, gid = owner_ids(ctx, accounts, item)   # unknown users fail before any write
    if ctx.opts.dry_run:
        return
    assert ctx.generation_fd is not None
    create_file(ctx.generation_fd, item.name, data, uid, gid, int(item.out.mode, 8))


def _decrypt_one(ctx: Context, sid: str) -> bytes:
    item = ctx.profile.secret(sid)
    if item is None or item.file is None:
        raise VaultpyError(Problem(ctx.profile.source, f"secret {sid!r} is used but not "
                                   "in the profile", "secrets",
                                   "regenerate the profile with vaultpy profile"))
    try:
        data = fsutil.read_regular(item.file)[0]     # a FIFO there must not hang a boot
    except OSError as exc:
        raise VaultpyError(Problem(display_path(item.file), f"secret {sid!r}: cannot "
                                   f"read its cache file: {exc.strerror}", "file",
                                   "run vaultpy renc and deploy again")) from None
    verify.check_file(ctx, sid, data, os.fspath(item.file))
    # The hint fits the failure: no key of ours opens it, or it is damaged (cut short,
    # altered), which no key would change (found in review: a truncated file was asked
    # whether it was encrypted to this host's key).
    wrong_key = ("was it encrypted to your key? compare your entry's pubkey in hosts.toml "
                 "with your key's .pub (ssh-keygen -lf), run vaultpy renc and deploy "
                 "again (home-manager switch, or a new vaultpy bundle)" if ctx.user else
                 "was it encrypted to this host's key? run vaultpy renc and deploy again")
    again = ("home-manager switch, or a new vaultpy bundle" if ctx.user else
             "nixos-rebuild switch, or a new vaultpy bundle")
    damaged = ("the cache file is damaged (cut short or altered): run vaultpy renc, which "
               f"rewrites it, and deploy again ({again})")
    try:
        return age.decrypt(data, ctx.identities, str(item.file), wrong_key_hint=wrong_key,
                           damaged_hint=damaged)
    except VaultpyError as exc:
        p = exc.problems[0]
        raise VaultpyError(Problem(p.file, f"secret {sid!r}: {p.message}", p.field,
                                   p.hint)) from None


# Below this many secrets a helper process costs more than it saves (a fork of this
# process is ~2 ms, one decryption ~0.1-0.3 ms).
PARALLEL_MIN = 32
_MAX_JOBS = 4


def _jobs(ctx: Context, count: int) -> int:
    if count < PARALLEL_MIN or any(i.kind == "plugin" for i in ctx.identities):
        return 1        # a plugin (a hardware key) may prompt: one process talks to it
    jobs = ctx.opts.jobs or min(len(os.sched_getaffinity(0)), _MAX_JOBS)
    return max(1, min(jobs, count // (PARALLEL_MIN // 2)))


def decrypt_secrets(ctx: Context) -> None:
    """Decrypt every secret this run needs (installed or used by a template) with the
    host's key, and install the secret files."""
    ids = _needed_ids(ctx)
    jobs = _jobs(ctx, len(ids))
    if jobs > 1:
        jobs = _decrypt_shares(ctx, ids, jobs)
    for sid in ids:          # in order: the first failure is the one a serial run meets
        if sid not in ctx.plaintext:
            ctx.plaintext[sid] = _decrypt_one(ctx, sid)
    accounts = Accounts(ctx.opts.root)
    count = 0
    for item in ctx.items():
        if not item.is_template and item.id is not None:
            _install(ctx, item, ctx.plaintext[item.id], accounts)
            count += 1
    ctx.log("decrypt_secrets", f"{count} secret file(s), {len(ctx.plaintext)} decrypted"
            + (f" in {jobs} processes" if jobs > 1 else ""))


_LEN = struct.Struct("<q")
# Signals that must not land between a fork and the bookkeeping of its pid: in the
# helper they would unwind into the caller's code, in the parent lose the pid.
_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _decrypt_shares(ctx: Context, ids: list[str], jobs: int) -> int:
    """Decrypt ``ids`` in ``jobs`` processes, into ``ctx.plaintext``; return how many
    processes took part.  What fails or is not delivered is left out: the caller
    decrypts it again, in order, and reports it.

    Once any failure is known (here, or a helper that stopped early) the helpers
    still running are killed: from there on the caller's in-order pass is exactly
    the one-process run, which stops at the first failure (and so never waits for,
    say, a later file that blocks)."""
    sizes = {sid: _size(ctx, sid) for sid in ids}
    shares = _split(ids, sizes, jobs)
    helpers: dict[int, tuple[mmap.mmap, list[str]]] = {}     # pid -> region, share
    regions: list[mmap.mmap] = []
    started = 1
    try:
        for share in shares[1:]:
            # Room for every plaintext (each shorter than its ciphertext) and a length
            # per item, after the count of items delivered so far.
            size = _LEN.size * (len(share) + 1) + sum(sizes[sid] for sid in share)
            with _signals_held():
                try:
                    region = mmap.mmap(-1, size)        # MAP_SHARED | MAP_ANONYMOUS
                    regions.append(region)
                    pid = os.fork()
                except OSError:
                    break           # no memory or no process to spare: decrypt here
                if pid == 0:
                    try:
                        _helper(ctx, share, region)
                    finally:
                        os._exit(1)             # never back into the caller's code
                helpers[pid] = (region, share)
                started += 1
        failed = False
        for sid in shares[0]:
            try:
                ctx.plaintext[sid] = _decrypt_one(ctx, sid)
            except Exception:
                failed = True       # the caller meets it again, in order
                break
        while helpers:
            for pid in list(helpers):
                if failed:
                    os.kill(pid, signal.SIGKILL)    # not reaped yet: still our child
                with _signals_held():
                    if os.waitpid(pid, 0 if failed else os.WNOHANG)[0] == 0:
                        continue
                    region, share = helpers.pop(pid)
                if _collect(ctx, region, share) < len(share):
                    failed = True
            if helpers and not failed:
                time.sleep(0.001)
        return started
    finally:
        with _signals_held():
            for pid in helpers:     # interrupted: no helper outlives this step
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
            for region in regions:  # no plaintext left behind in the shared pages
                try:
                    region.madvise(mmap.MADV_REMOVE)     # frees them: reads as zeros
                except (AttributeError, OSError):
                    region[:] = bytes(len(region))
                region.close()


def _collect(ctx: Context, region: mmap.mmap, share: list[str]) -> int:
    """Take what a finished helper delivered; return how many items that was."""
    count: int = max(0, min(_LEN.unpack_from(region, 0)[0], len(share)))
    offset = _LEN.size
    for sid in share[:count]:
        n = _LEN.unpack_from(region, offset)[0]
        ctx.plaintext[sid] = region[offset + _LEN.size:offset + _LEN.size + n]
        offset += _LEN.size + n
    return count


# What one decryption costs, in bytes' worth of decrypting (measured: ~0.25 ms to
# unwrap the file key with X25519, ~2.2 ns a byte of payload).
_ITEM_COST = 110_000


def _split(ids: list[str], sizes: dict[str, int], jobs: int) -> list[list[str]]:
    """``jobs`` shares of about equal work, each in the order of ``ids``: each secret in
    turn goes to the share with the least work so far, work counted in whole
    decryptions (a file's size rounded down to them, plus one).  Small secrets (all
    alike, whatever a random grease stanza adds to a file) alternate; a big one is
    made up by the next few small ones, so no share runs more than one secret's work
    behind.  Dealt every other secret, the five 1 MiB secrets of a 500-secret profile
    could all land in one share."""
    load = [0] * jobs
    shares: list[list[str]] = [[] for _ in range(jobs)]
    for sid in ids:
        k = load.index(min(load))
        shares[k].append(sid)
        load[k] += 1 + sizes[sid] // _ITEM_COST
    return shares


def _size(ctx: Context, sid: str) -> int:
    item = ctx.profile.secret(sid)
    try:
        return os.stat(item.file).st_size if item and item.file else 0
    except OSError:
        return 0                # the helper cannot deliver it: the caller reports it


def _helper(ctx: Context, share: list[str], region: mmap.mmap) -> None:
    """In a forked helper: decrypt ``share`` in order into ``region``, and stop at the
    first secret that fails or does not fit (the file grew since its stat)."""
    try:
        for sig in _SIGNALS:
            signal.signal(sig, signal.SIG_DFL)      # a signal ends the helper, at once
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)
        # Hold nothing the parent's death should release: the activation lock, the
        # caller's stdout and stderr (a helper never writes to either).
        null = os.open(os.devnull, os.O_RDWR)
        for std in (1, 2):
            os.dup2(null, std)
        for held in (ctx.lock_fd, ctx.generation_fd):
            if held is not None:
                os.close(held)
        offset = _LEN.size
        for done, sid in enumerate(share, 1):
            plaintext = _decrypt_one(ctx, sid)
            end = offset + _LEN.size + len(plaintext)
            if end > len(region):
                break
            _LEN.pack_into(region, offset, len(plaintext))
            region[offset + _LEN.size:end] = plaintext
            _LEN.pack_into(region, 0, done)
            offset = end
    except BaseException:       # an error, an interrupt: the parent decrypts it again
        pass
    finally:
        os._exit(0)


def render_templates(ctx: Context) -> None:
    """Fill each template's placeholders; a placeholder left over is an error."""
    accounts = Accounts(ctx.opts.root)
    count = 0
    for item in ctx.items():
        if not item.is_template:
            continue
        try:
            data = templates.render(item.content or "", ctx.plaintext, item.trim)
        except KeyError as exc:
            raise VaultpyError(Problem(ctx.profile.source, f"template {item.name!r}: "
                                       f"placeholder for secret {exc.args[0]!r} left "
                                       "unfilled: this host does not receive it",
                                       "templates",
                                       "regenerate the profile with vaultpy profile")) from None
        except templates.TemplateError as exc:
            raise VaultpyError(Problem(ctx.profile.source, f"template {item.name!r}: {exc}",
                                       "templates", "fix the template in hosts.toml")) from None
        ctx.rendered[item.name] = data
        _install(ctx, item, data, accounts)
        count += 1
    ctx.log("render_templates", f"{count} template(s)")
