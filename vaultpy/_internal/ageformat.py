"""A strict, crypto-free parser of the age v1 file format (c2sp.org/age).

pyrage (rage) accepts some inputs the specification says to reject, and it
cannot tell us *why* a file is bad.  Every ciphertext vaultpy reads goes
through :func:`parse` first so that a truncated, corrupt or hand-edited file is
refused with a precise reason, and so that ``vaultpy check`` can validate the
cache without any key.
"""

from __future__ import annotations

import base64
import binascii
import re

from vaultpy._internal.record import record

VERSION_LINE = b"age-encryption.org/v1\n"
ARMOR_BEGIN = b"-----BEGIN AGE ENCRYPTED FILE-----"
ARMOR_END = b"-----END AGE ENCRYPTED FILE-----"
CHUNK = 64 * 1024
TAG = 16
NONCE = 16
_B64_LINE = re.compile(rb"[A-Za-z0-9+/]*")
# Stanza arguments: one or more runs of visible ASCII, each one space apart.
_ARGS = re.compile(rb"[\x21-\x7e]+(?: [\x21-\x7e]+)*")


class FormatError(ValueError):
    """The bytes are not a well-formed age file; the message says where."""


@record
class Stanza:
    type: str
    args: tuple[str, ...]
    body: bytes


@record
class Header:
    stanzas: tuple[Stanza, ...]
    mac: bytes
    payload_size: int
    armored: bool

    def recipient_stanzas(self) -> list[Stanza]:
        """Stanzas other than rage's random "grease" ones."""
        return [s for s in self.stanzas if not s.type.endswith("-grease")]


def b64decode_raw(text: bytes, what: str) -> bytes:
    """Canonical, unpadded standard base64 (age header encoding).

    binascii directly: ``base64.b64decode(validate=True)`` is this same strict call
    behind a wrapper, and every file vaultpy reads holds five or more of these."""
    if not _B64_LINE.fullmatch(text) or len(text) % 4 == 1:
        raise FormatError(f"{what}: not unpadded base64")
    padded = text + b"=" * (-len(text) % 4)
    try:
        raw = binascii.a2b_base64(padded, strict_mode=True)
    except binascii.Error as exc:
        raise FormatError(f"{what}: not base64 ({exc})") from None
    if binascii.b2a_base64(raw, newline=False).rstrip(b"=") != text:
        raise FormatError(f"{what}: non-canonical base64")
    return raw


def dearmor(data: bytes) -> bytes:
    """Strict RFC 7468 decoding; only surrounding whitespace is tolerated."""
    text = data.strip(b" \t\r\n")
    crlf = b"\r\n" in text
    if crlf and text.count(b"\r\n") != text.count(b"\n"):
        raise FormatError("armor: mixed line endings (CRLF and LF)")
    lines = text.split(b"\r\n" if crlf else b"\n")
    if lines[0] != ARMOR_BEGIN:
        raise FormatError("armor: first line is not " + ARMOR_BEGIN.decode())
    if lines[-1] != ARMOR_END:
        raise FormatError("armor: missing or damaged END line (file truncated?)")
    body = lines[1:-1]
    if not body:
        raise FormatError("armor: no data between BEGIN and END")
    for i, line in enumerate(body):
        if b"\r" in line:
            raise FormatError("armor: mixed line endings")
        last = i == len(body) - 1
        if len(line) > 64 or (not last and len(line) != 64) or not line:
            raise FormatError(f"armor: line {i + 2} is not 64 columns")
    joined = b"".join(body)
    if len(joined) % 4:
        raise FormatError("armor: base64 length is not a multiple of 4")
    try:
        raw = base64.b64decode(joined, validate=True)
    except binascii.Error as exc:
        raise FormatError(f"armor: invalid base64 ({exc})") from None
    if base64.b64encode(raw) != joined:
        raise FormatError("armor: non-canonical base64")
    return raw


def is_armored(data: bytes) -> bool:
    return data.lstrip(b" \t\r\n").startswith(ARMOR_BEGIN)


def _parse_stanza(lines: list[bytes], pos: int) -> tuple[Stanza, int]:
    arg_line = lines[pos]
    if not _ARGS.fullmatch(arg_line, 3):
        raise FormatError(f"header line {pos + 1}: malformed stanza arguments")
    parts = arg_line[3:].split(b" ")
    body_lines: list[bytes] = []
    pos += 1
    while True:
        if pos >= len(lines):
            raise FormatError("header: stanza body not terminated (file truncated?)")
        line = lines[pos]
        if len(line) > 64:
            raise FormatError(f"header line {pos + 1}: stanza body line longer than 64 columns")
        if not _B64_LINE.fullmatch(line):
            raise FormatError(f"header line {pos + 1}: stanza body is not base64")
        body_lines.append(line)
        pos += 1
        if len(line) < 64:
            break
    body = b64decode_raw(b"".join(body_lines), f"header line {pos}: stanza body")
    text = [p.decode("ascii") for p in parts]
    return Stanza(text[0], tuple(text[1:]), body), pos


def parse(data: bytes) -> Header:
    """Parse and validate the header and payload framing of an age file.

    Checks everything that can be checked without a key: the version line,
    each stanza's syntax and canonical base64, the MAC line, and that the
    payload length is possible for age's 64 KiB STREAM chunks.  Known stanza
    types (X25519, ssh-ed25519, scrypt) are checked against their definitions.
    """
    armored = is_armored(data)
    if armored:
        data = dearmor(data)
    if not data:
        raise FormatError("empty file")
    if not data.startswith(VERSION_LINE):
        if data.startswith(b"age-encryption.org/"):
            raise FormatError("unsupported age version (only v1 is known)")
        raise FormatError("not an age file (no age-encryption.org/v1 header)")
    end = data.find(b"\n--- ")
    if end < 0:
        raise FormatError("header: no MAC line (file truncated or not an age file)")
    mac_end = data.find(b"\n", end + 5)
    if mac_end < 0:
        raise FormatError("header: MAC line not terminated (file truncated?)")
    lines = data[len(VERSION_LINE) : end].split(b"\n")
    stanzas: list[Stanza] = []
    pos = 0
    if lines == [b""]:
        lines = []
    while pos < len(lines):
        if not lines[pos].startswith(b"-> "):
            raise FormatError(f"header line {pos + 2}: expected a stanza ('-> …')")
        stanza, pos = _parse_stanza(lines, pos)
        stanzas.append(stanza)
    if not stanzas:
        raise FormatError("header: no recipient stanza")
    mac_text = data[end + 5 : mac_end]
    if len(mac_text) != 43:
        raise FormatError("header: MAC is not 32 bytes of base64")
    mac = b64decode_raw(mac_text, "header MAC")
    _check_known_stanzas(stanzas)
    payload = len(data) - (mac_end + 1)
    _check_payload_size(payload)
    return Header(tuple(stanzas), mac, payload, armored)


def _arg(stanza: Stanza, i: int, size: int) -> None:
    raw = b64decode_raw(stanza.args[i].encode(), f"{stanza.type} stanza argument")
    if len(raw) != size:
        raise FormatError(f"{stanza.type} stanza: argument {i + 1} is not {size} bytes")


def _check_known_stanzas(stanzas: list[Stanza]) -> None:
    for s in stanzas:
        if s.type == "X25519":
            if len(s.args) != 1:
                raise FormatError("X25519 stanza: wrong number of arguments")
            _arg(s, 0, 32)
        elif s.type == "ssh-ed25519":
            if len(s.args) != 2:
                raise FormatError("ssh-ed25519 stanza: wrong number of arguments")
            _arg(s, 0, 4)
            _arg(s, 1, 32)
        elif s.type == "scrypt":
            if len(stanzas) != 1:
                raise FormatError("scrypt stanza mixed with other stanzas")
            if len(s.args) != 2 or not re.fullmatch(r"[1-9][0-9]*", s.args[1]):
                raise FormatError("scrypt stanza: malformed arguments")
            _arg(s, 0, 16)
        else:
            continue
        if len(s.body) != 32:
            raise FormatError(f"{s.type} stanza: body is not 32 bytes")


def _check_payload_size(size: int) -> None:
    """16-byte nonce, then chunks of up to 64 KiB + 16-byte tag; the last one may
    be short but only the first (and only) chunk may be empty."""
    if size < NONCE + TAG:
        raise FormatError("payload truncated (shorter than nonce + one chunk)")
    rest = (size - NONCE) % (CHUNK + TAG)
    if 0 < rest <= TAG and not (rest == TAG and size == NONCE + TAG):
        raise FormatError("payload truncated (partial chunk)")


def ssh_tag(wire_key: bytes) -> str:
    """The 4-byte tag age puts in ssh-ed25519 stanzas: SHA-256 of the wire key."""
    import hashlib

    return base64.b64encode(hashlib.sha256(wire_key).digest()[:4]).rstrip(b"=").decode()
