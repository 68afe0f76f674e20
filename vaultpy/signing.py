"""The signed cache: who wrote a host's cache files, checked without any secret.

age encrypts to a public key: anyone who can write ``secrets/cache/`` (a pull request,
a CI job) could put a value of their choice, encrypted to a host's public key, under
an existing file name, and a diff of ciphertext shows nothing to review.  With a
signing key set in hosts.toml (``[vaultpy] signing_key`` / ``signing_secret``), renc
writes beside each host's files::

    secrets/cache/<host>/SHA256SUMS       "<sha256>  <name>" per cache file (sha256sum's form)
    secrets/cache/<host>/SHA256SUMS.sig   its SSH signature (ssh-keygen -Y sign's form),
                                          namespace "vaultpy-cache:<host>"

``check`` verifies both with the public key alone (so CI refuses a forged file), and
activation refuses a cache file whose hash is not the signed one.  The private key
is an OpenSSH key held as a secret (a master file, encrypted to the master recipients
like any other, re-keyed with them), which no host may receive.  The same check by
hand, with OpenSSH and coreutils only::

    echo "vaultpy $(vaultpy signing-key --public)" > signers
    ssh-keygen -Y verify -f signers -I vaultpy -n vaultpy-cache:web1 \\
        -s SHA256SUMS.sig < SHA256SUMS && sha256sum -c SHA256SUMS

Masters are encrypted to public keys too: renc signs a master's value only if this
module's list of masters (``secrets/cache/MASTERS``, below) or the ledger of values
vaultpy wrote here (vaultpy/_internal/ledger.py) vouches for it.  The key itself is
made by vaultpy/signing_key.py.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

from vaultpy._internal import sshsig
from vaultpy._internal.fsutil import read_at_most
from vaultpy._internal.names import NAME_RE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from vaultpy.model import Config

SUMS = "SHA256SUMS"
SIGNATURE = "SHA256SUMS.sig"
FILES = (SUMS, SIGNATURE)
DEFAULT_SECRET = "cache_signing"
# A list of 100,000 files is ~11 MB; a signature ~300 bytes.
MAX_SUMS = 32 << 20
MAX_SIGNATURE = 64 << 10

UNSIGNED = ("not signed: its SHA-256 is not the one SHA256SUMS lists (altered, written "
            "without the signing key, or committed without its SHA256SUMS)")
FIX = ("run vaultpy renc with the master key: it re-encrypts what is not signed, "
       "and signs")


class Unsigned(ValueError):
    """Why a host's cache is not signed: ``path``, the file at fault, and ``reason``."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


def namespace(host: str) -> str:
    """The signature's namespace: a host's list signed for no other host."""
    return f"vaultpy-cache:{host}"


def list_text(entries: Mapping[str, str]) -> bytes:
    """A signed list's text: "<sha256>  <name>" per entry, sorted by name (a host's
    cache files, sha256sum's form; or the masters' secret ids)."""
    return "".join(f"{entries[name]}  {name}\n" for name in sorted(entries)).encode()


def _parse(data: bytes, valid: Callable[[str], bool], form: str) -> dict[str, str]:
    """Name -> SHA-256 of a list as :func:`list_text` writes it (ValueError, naming
    the line and ``form``, otherwise)."""
    out: dict[str, str] = {}
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if (not sep or len(digest) != 64 or digest.strip("0123456789abcdef")
                or not valid(name) or name in out):
            raise ValueError(f"line {n} is not '{form}'")
        out[name] = digest
    return out


def parse_sums(data: bytes) -> dict[str, str]:
    """Name -> SHA-256 of a SHA256SUMS file as renc writes it (ValueError otherwise)."""
    return _parse(data, lambda name: NAME_RE.fullmatch(name) is not None,
                  "<sha256>  <id>.<hash>.age")


def read_sums(path: Path | str) -> dict[str, str]:
    """A host's list as it is, unverified (the index verified it when it recorded its
    stat); :class:`Unsigned` or ValueError if it cannot be read as one."""
    return parse_sums(_read(path, MAX_SUMS))


def _read_verified(path: Path | str, sig_path: Path | str, key: str, space: str,
                   parse: Callable[[bytes], dict[str, str]]
                   ) -> tuple[dict[str, str], bytes, bytes]:
    """A signed list, its bytes and its signature's, read once and verified: the
    entries, or :class:`Unsigned` naming the file at fault."""
    data, sig = _read(path, MAX_SUMS), _read(sig_path, MAX_SIGNATURE)
    try:
        sshsig.verify(key, space, data, sig)
    except sshsig.BadSignature as exc:
        raise Unsigned(sig_path, f"signature {exc}") from None
    try:
        return parse(data), data, sig
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unsigned(path, str(exc)) from None


# One list to write: its path, its signature's, the signature's namespace, its entries.
Signed = tuple[Path, Path, str, Mapping[str, str]]


def write_lists(lists: Sequence[Signed], key: Ed25519PrivateKey, root: Path
                ) -> dict[Path, OSError]:
    """Replace signed lists and their signatures, all on the file system of ``root``,
    together: every temp file written, made durable at once (fsutil.sync_files: one
    syncfs for many), renamed, and the folders' entries made durable at once.  One by
    one, 20 hosts' lists cost 80 fsyncs: 27 of a one-secret renc's 120 ms.

    Each file is replaced atomically; a crash between a list's two renames leaves a list
    its signature does not match, which renc then signs anew, having re-encrypted what
    it could not verify: nothing unsigned is ever trusted.  Returns the lists (by path)
    that could not be replaced, with the error; the others are done."""
    from vaultpy._internal import fsutil, sigint

    failed: dict[Path, OSError] = {}
    temps: list[Path] = []
    done: list[Path] = []
    if not lists:
        return failed
    with sigint.held():     # a Ctrl-C cannot come between the temp files and their end
        try:
            staged: list[tuple[Path, list[tuple[Path, Path]]]] = []
            for path, sig_path, space, entries in lists:
                text = list_text(entries)
                sig = sshsig.sign(key, space, text).encode()
                moves = []
                try:
                    for data, final in ((text, path), (sig, sig_path)):
                        temps.append(tmp := fsutil.tmp_name(final))
                        with _naming(final):
                            fsutil.write_new(tmp, data, 0o644)
                        moves.append((tmp, final))
                except OSError as exc:
                    failed[path] = exc
                    continue
                staged.append((path, moves))
            try:
                if staged:
                    fsutil.sync_files(root, [str(t) for _, moves in staged for t, _ in moves])
            except OSError as exc:
                failed.update((path, exc) for path, _ in staged)
                staged = []
            for path, moves in staged:
                try:
                    for tmp, final in moves:
                        with _naming(final):
                            os.rename(tmp, final)
                except OSError as exc:
                    failed[path] = exc
                    continue
                done.append(path)
        finally:
            for tmp in temps:           # (those renamed are gone already; on a read-only
                with contextlib.suppress(OSError):  # folder, unlink says EROFS, not ENOENT)
                    os.unlink(tmp)
    if done:
        try:
            fsutil.sync_files(root, [], sorted({str(path.parent) for path in done}))
        except OSError as exc:
            failed.update((path, exc) for path in done)
    return failed


@contextlib.contextmanager
def _naming(final: Path) -> Iterator[None]:
    """An OSError raised inside names ``final``, the file being replaced, not its temp
    file: what the user can act on."""
    try:
        yield
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, str(final)) from None


def read_signed(host_dir: Path | str, host: str, key: str,
                sums_path: Path | str | None = None, sig_path: Path | str | None = None
                ) -> dict[str, str]:
    """The verified list of ``host``'s cache files (name -> SHA-256), from its
    directory (or the two paths given: a profile's); :class:`Unsigned` if it is
    missing, unreadable, or not signed by ``key``."""
    return read_signed_bytes(host_dir, host, key, sums_path, sig_path)[0]


def read_signed_bytes(host_dir: Path | str, host: str, key: str,
                      sums_path: Path | str | None = None, sig_path: Path | str | None = None
                      ) -> tuple[dict[str, str], bytes, bytes]:
    """:func:`read_signed`, and the very bytes of the list and signature verified (a
    bundle copies those, not what a second read might find)."""
    return _read_verified(sums_path or os.path.join(host_dir, SUMS),
                          sig_path or os.path.join(host_dir, SIGNATURE), key,
                          namespace(host), parse_sums)


def _read(path: Path | str, limit: int) -> bytes:
    """At most ``limit`` bytes of a regular file (not a symlink): a 6 GB list, a
    zero-filled file git stores in a few bytes, is refused before it is read."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Unsigned(path, "missing") from None
    except OSError as exc:
        reason = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise Unsigned(path, f"unreadable ({reason})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise Unsigned(path, "not a regular file")
        data = read_at_most(fd, limit)
    except OSError as exc:
        raise Unsigned(path, f"unreadable ({exc.strerror})") from None
    finally:
        os.close(fd)
    if data is None:
        raise Unsigned(path, "too big for a list of cache files")
    if data.startswith(b"<<<<<<< ") or b"\n<<<<<<< " in data:
        raise Unsigned(path, "holds git's merge conflict markers: take either side "
                       "(git checkout --theirs), run vaultpy renc with the master key, "
                       "which signs the merged cache, and git add it")
    return data


def host_list(host_dir: Path, host: str, entries: Mapping[str, str]) -> Signed:
    """``host``'s list and its signature, to :func:`write_lists`."""
    return host_dir / SUMS, host_dir / SIGNATURE, namespace(host), entries


def load_private(pem: bytes, public: str) -> Ed25519PrivateKey:
    """The signing key from its secret's plaintext (an OpenSSH private key); ValueError
    with the reason if it is none, or not the private half of ``public``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_ssh_private_key,
    )

    try:
        key = load_ssh_private_key(pem, None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"is no OpenSSH private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError("is not an Ed25519 key")
    own = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    if own.split()[:2] != public.split()[:2]:
        raise _OtherKey(own)
    return key


class _OtherKey(ValueError):
    """The key is another than ``[vaultpy] signing_key``: ``public`` is its own."""

    def __init__(self, public: str) -> None:
        super().__init__("holds another key than [vaultpy] signing_key")
        self.public = public


def private_key(cfg: Config, pem: bytes) -> Ed25519PrivateKey:
    """:func:`load_private` for the key ``cfg`` names: one problem, naming its secret,
    if ``pem`` (the secret's plaintext) is not its private half."""
    from vaultpy.errors import Problem, VaultpyError, display_path, key_path

    assert cfg.signing is not None
    sid = cfg.signing.secret
    try:
        return load_private(pem, cfg.signing.key)
    except _OtherKey as exc:
        raise VaultpyError(Problem(display_path(cfg.secret(sid).file), f"secret {sid!r} "
                                   f"{exc}", "vaultpy.signing_key",
                                   f'set signing_key = "{exc.public}" if this key is the '
                                   "one, or make a new pair: vaultpy signing-key --new")) from None
    except ValueError as exc:
        raise VaultpyError(Problem(display_path(cfg.secret(sid).file), f"secret {sid!r} "
                                   f"{exc}", key_path("secrets", sid),
                                   "make a new signing key: vaultpy signing-key --new")) from None


# ------------------------------------------------------------------ the masters' values
#
# A master file is encrypted to the master recipients, which are public too: anyone who
# can write the repository can replace one, and renc, run by whoever holds the key,
# would then encrypt and sign that value for the hosts (found in review).  So renc
# encrypts a master only if its value is one it can vouch for:
#
# - on the signed list of masters, secrets/cache/MASTERS ("<sha256>  <secret id>" per
#   master), signed with the same key (namespace "vaultpy-masters") by the last renc
#   that signed;
# - or the last value vaultpy wrote for that secret at that path on this machine: every
#   master write records it in a ledger outside the repository (no commit can bring
#   one), and rekey or a key rotation records a value it re-encrypts only if it was
#   vouched for itself;
# - or accepted by name (renc --accept ID) once its value has been looked at.

MASTERS = "MASTERS"
MASTERS_SIGNATURE = "MASTERS.sig"
MASTERS_NAMESPACE = "vaultpy-masters"


class Vouchers:
    """Which master values renc may sign: the secret's on the signed list of masters
    (``signed``: id -> SHA-256, as read), or the last vaultpy wrote for that secret at
    that path on this machine (the ledger, read once, when first needed).  One
    instance per run: renc's gate, the incremental renc, rekey and a master key
    rotation each ask it for every master, and read the list and the ledger once."""

    def __init__(self, signed: Mapping[str, str] | None) -> None:
        self.signed = signed or {}
        self._here: dict[tuple[str, str], str] | None = None

    @classmethod
    def of(cls, cfg: Config) -> Vouchers | None:
        """For ``cfg``'s signing key; None without one (every value goes)."""
        if cfg.signing is None:
            return None
        try:
            return cls(read_masters(cfg.cache_dir, cfg.signing.key))
        except Unsigned:
            return cls(None)

    def vouch(self, sid: str, file: Path | str, digest: str) -> bool:
        if self.signed.get(sid) == digest:
            return True
        if self._here is None:
            from vaultpy._internal import ledger

            self._here = ledger.written_here()
        return self._here.get((sid, os.path.realpath(file))) == digest

    def vouch_bytes(self, sid: str, file: Path | str, data: bytes) -> bool:
        return self.vouch(sid, file, hashlib.sha256(data).hexdigest())


def read_masters(cache_dir: Path, key: str) -> dict[str, str]:
    """Secret id -> SHA-256 of the signed list of masters; :class:`Unsigned` if it is
    missing, damaged or not signed by ``key``.  By id, not by path: a path given to
    another secret in hosts.toml carries no signed value with it."""
    return _read_verified(cache_dir / MASTERS, cache_dir / MASTERS_SIGNATURE, key,
                          MASTERS_NAMESPACE, lambda data: _parse(
                              data, bool, "<sha256>  <secret id>"))[0]


def write_masters(cache_dir: Path, entries: Mapping[str, str], key: Ed25519PrivateKey
                  ) -> None:
    """Replace the list of masters and its signature (:func:`write_lists`); OSError if
    it could not be."""
    signed = (cache_dir / MASTERS, cache_dir / MASTERS_SIGNATURE, MASTERS_NAMESPACE, entries)
    for exc in write_lists([signed], key, cache_dir).values():
        raise exc
