"""OpenSSH's signature format (SSHSIG, PROTOCOL.sshsig), Ed25519 only.

What ``ssh-keygen -Y sign`` writes and ``ssh-keygen -Y verify`` checks, so a signed
cache can be verified without vaultpy::

    blob   = "SSHSIG" u32(1) string(public key) string(namespace) string("")
             string("sha512") string(signature)
    signed = "SSHSIG" string(namespace) string("") string("sha512")
             string(sha512(message))

armored between ``-----BEGIN SSH SIGNATURE-----`` and ``-----END SSH SIGNATURE-----``.
The namespace keeps a signature made for one purpose (here: one host's cache) from
passing for another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

MAGIC = b"SSHSIG"
BEGIN = "-----BEGIN SSH SIGNATURE-----"
END = "-----END SSH SIGNATURE-----"
_ED25519 = b"ssh-ed25519"
_HASHES = {b"sha512": hashlib.sha512, b"sha256": hashlib.sha256}


class BadSignature(ValueError):
    """Why a signature does not verify (its message is the reason, for people)."""


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _fields(data: bytes, count: int) -> list[bytes]:
    """``count`` length-prefixed strings from ``data``, which must hold nothing else."""
    out, at = [], 0
    for _ in range(count):
        if at + 4 > len(data):
            raise BadSignature("damaged: cut short")
        (n,) = struct.unpack_from(">I", data, at)
        at += 4
        if at + n > len(data):
            raise BadSignature("damaged: cut short")
        out.append(data[at:at + n])
        at += n
    if at != len(data):
        raise BadSignature("damaged: bytes after its end")
    return out


def public_blob(line: str) -> bytes:
    """The wire form of an ``ssh-ed25519 AAAA…`` public key line (ValueError if it is
    not one)."""
    parts = line.split()
    if len(parts) < 2 or parts[0] != _ED25519.decode():
        raise ValueError("not an ssh-ed25519 public key")
    try:
        blob = base64.b64decode(parts[1], validate=True)
    except binascii.Error:
        raise ValueError("not an ssh-ed25519 public key: its base64 does not decode") from None
    kind, raw = _fields(blob, 2)
    if kind != _ED25519 or len(raw) != 32:
        raise ValueError("not an ssh-ed25519 public key")
    return blob


def _signed_data(namespace: str, hash_name: bytes, message: bytes) -> bytes:
    digest = _HASHES[hash_name](message).digest()
    return (MAGIC + _string(namespace.encode()) + _string(b"") + _string(hash_name)
            + _string(digest))


def sign(key: Ed25519PrivateKey, namespace: str, message: bytes) -> str:
    """The armored signature of ``message`` under ``namespace``."""
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    signature = key.sign(_signed_data(namespace, b"sha512", message))
    blob = (MAGIC + struct.pack(">I", 1) + _string(_string(_ED25519) + _string(raw))
            + _string(namespace.encode()) + _string(b"") + _string(b"sha512")
            + _string(_string(_ED25519) + _string(signature)))
    text = base64.b64encode(blob).decode()
    lines = [text[i:i + 70] for i in range(0, len(text), 70)]    # as ssh-keygen wraps
    return "\n".join([BEGIN, *lines, END]) + "\n"


def verify(public_key: str, namespace: str, message: bytes, armored: bytes) -> None:
    """Raise :class:`BadSignature` unless ``armored`` is a signature of ``message``
    under ``namespace`` by ``public_key`` (an ``ssh-ed25519`` line)."""
    lines = armored.decode("ascii", "replace").strip().splitlines()
    if len(lines) < 3 or lines[0].strip() != BEGIN or lines[-1].strip() != END:
        raise BadSignature("not an SSH signature (no BEGIN/END SSH SIGNATURE lines)")
    try:
        blob = base64.b64decode("".join(x.strip() for x in lines[1:-1]), validate=True)
    except binascii.Error:
        raise BadSignature("damaged: its base64 does not decode") from None
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + 4:
        raise BadSignature("not an SSH signature")
    (version,) = struct.unpack_from(">I", blob, len(MAGIC))
    if version != 1:
        raise BadSignature(f"unsupported SSH signature version {version}")
    key, space, _reserved, hash_name, sig = _fields(blob[len(MAGIC) + 4:], 5)
    if key != public_blob(public_key):
        raise BadSignature("made with another key than [vaultpy] signing_key")
    if space != namespace.encode():
        raise BadSignature(f"made for {space.decode(errors='replace')!r}, not {namespace!r} "
                           "(another host's?)")
    if hash_name not in _HASHES:
        raise BadSignature(f"unsupported hash {hash_name.decode(errors='replace')!r}")
    kind, raw_sig = _fields(sig, 2)
    if kind != _ED25519 or len(raw_sig) != 64:
        raise BadSignature("not an Ed25519 signature")
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(_fields(key, 2)[1]).verify(
            raw_sig, _signed_data(namespace, hash_name, message))
    except InvalidSignature:
        raise BadSignature("does not match: the signed list was altered, or the "
                           "signature made for another one") from None
