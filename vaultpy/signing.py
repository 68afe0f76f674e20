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

import errno
import hashlib
import os
import stat
from collections.abc import Mapping
from pathlib import Path

from vaultpy._internal import sshsig
from vaultpy._internal.fsutil import atomic_write, read_at_most, read_regular
from vaultpy._internal.names import NAME_RE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from vaultpy import age
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


def sums_text(entries: Mapping[str, str]) -> bytes:
    """The SHA256SUMS file of ``entries`` (name -> SHA-256 hex), sorted by name."""
    return "".join(f"{entries[name]}  {name}\n" for name in sorted(entries)).encode()


def parse_sums(data: bytes) -> dict[str, str]:
    """Name -> SHA-256 of a SHA256SUMS file as renc writes it (ValueError otherwise)."""
    out: dict[str, str] = {}
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        digest, sep, name = line.partition("  ")
        if (not sep or len(digest) != 64 or digest.strip("0123456789abcdef")
                or NAME_RE.fullmatch(name) is None or name in out):
            raise ValueError(f"line {n} is not '<sha256>  <id>.<hash>.age'")
        out[name] = digest
    return out


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
    sums_path = sums_path or os.path.join(host_dir, SUMS)
    sig_path = sig_path or os.path.join(host_dir, SIGNATURE)
    data = _read(sums_path, MAX_SUMS)
    sig = _read(sig_path, MAX_SIGNATURE)
    try:
        sshsig.verify(key, namespace(host), data, sig)
    except sshsig.BadSignature as exc:
        raise Unsigned(sig_path, f"signature {exc}") from None
    try:
        return parse_sums(data), data, sig
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unsigned(sums_path, str(exc)) from None


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


def write_signed(host_dir: Path, host: str, entries: Mapping[str, str],
                 key: Ed25519PrivateKey) -> None:
    """Replace ``host``'s list and its signature (each file atomically: a crash between
    the two leaves a list its signature does not match, which renc then re-encrypts
    and signs anew: nothing unsigned is ever trusted)."""
    text = sums_text(entries)
    sig = sshsig.sign(key, namespace(host), text).encode()
    atomic_write(host_dir / SUMS, text, 0o644)
    atomic_write(host_dir / SIGNATURE, sig, 0o644)


def sha256_file(path: Path | str) -> str | None:
    """The SHA-256 of a regular file, None if it cannot be read."""
    try:
        return hashlib.sha256(read_regular(path, follow=False)[0]).hexdigest()
    except OSError:
        return None


def private_key(cfg: Config, identities: Sequence[age.Identity]) -> Ed25519PrivateKey:
    """The signing key, decrypted from its secret's master file with ``identities``;
    one problem if it is not the private half of ``[vaultpy] signing_key``."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        PublicFormat,
        load_ssh_private_key,
    )

    from vaultpy import masters
    from vaultpy.errors import Problem, VaultpyError, display_path, key_path

    assert cfg.signing is not None
    sid = cfg.signing.secret
    where = display_path(cfg.secret(sid).file)
    pem = masters.decrypt(cfg, sid, identities)
    try:
        key = load_ssh_private_key(pem, None)
    except (ValueError, TypeError) as exc:
        raise VaultpyError(Problem(where, f"secret {sid!r} is no OpenSSH private key "
                                   f"({exc})", key_path("secrets", sid),
                                   "make a new signing key: vaultpy signing-key --new")) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise VaultpyError(Problem(where, f"secret {sid!r} is not an Ed25519 key",
                                   key_path("secrets", sid),
                                   "make a new signing key: vaultpy signing-key --new"))
    public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    if public.split()[:2] != cfg.signing.key.split()[:2]:
        raise VaultpyError(Problem(where, f"secret {sid!r} holds another key than "
                                   "[vaultpy] signing_key", "vaultpy.signing_key",
                                   f'set signing_key = "{public}" if this key is the '
                                   "one, or make a new pair: vaultpy signing-key --new"))
    return key


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


def vouched(cfg: Config, sid: str, data: bytes) -> bool:
    """Whether renc may sign ``data`` as secret ``sid``'s master: no signing key, or
    its value is on the signed list of masters, or the last one vaultpy wrote there on
    this machine.  (rekey and a master key rotation record what they re-encrypt only
    if it was: else they would launder a forged master, found in review.)"""
    if cfg.signing is None:
        return True
    digest = hashlib.sha256(data).hexdigest()
    try:
        if read_masters(cfg.cache_dir, cfg.signing.key).get(sid) == digest:
            return True
    except Unsigned:
        pass
    from vaultpy._internal import ledger

    return ledger.written_here().get((sid, os.path.realpath(cfg.secret(sid).file))) == digest


def masters_text(entries: Mapping[str, str]) -> bytes:
    """MASTERS: "<sha256>  <secret id>" per master, sorted by id (by id, not by path: a
    path given to another secret in hosts.toml carries no signed value with it)."""
    return "".join(f"{entries[sid]}  {sid}\n" for sid in sorted(entries)).encode()


def read_masters(cache_dir: Path, key: str) -> dict[str, str]:
    """Secret id -> SHA-256 of the signed list of masters; :class:`Unsigned` if it is
    missing, damaged or not signed by ``key``."""
    path, sig_path = cache_dir / MASTERS, cache_dir / MASTERS_SIGNATURE
    data, sig = _read(path, MAX_SUMS), _read(sig_path, MAX_SIGNATURE)
    try:
        sshsig.verify(key, MASTERS_NAMESPACE, data, sig)
    except sshsig.BadSignature as exc:
        raise Unsigned(sig_path, f"signature {exc}") from None
    out: dict[str, str] = {}
    try:
        for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
            digest, sep, name = line.partition("  ")
            if not sep or len(digest) != 64 or digest.strip("0123456789abcdef") or not name:
                raise ValueError(f"line {n} is not '<sha256>  <secret id>'")
            out[name] = digest
    except (ValueError, UnicodeDecodeError) as exc:
        raise Unsigned(path, str(exc)) from None
    return out


def write_masters(cache_dir: Path, entries: Mapping[str, str], key: Ed25519PrivateKey
                  ) -> None:
    text = masters_text(entries)
    sig = sshsig.sign(key, MASTERS_NAMESPACE, text).encode()
    atomic_write(cache_dir / MASTERS, text, 0o644)
    atomic_write(cache_dir / MASTERS_SIGNATURE, sig, 0o644)
