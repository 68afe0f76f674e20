"""The age layer: the only module that imports pyrage.

* :func:`normalize_recipient` — parse ``age1…`` / ``ssh-ed25519 …`` public keys
  into their canonical ``type base64`` form (the SSH comment dropped);
* :func:`load_identities` — age identity files (plain or passphrase-encrypted),
  OpenSSH ed25519/RSA private keys (plain or passphrase-protected);
* :func:`encrypt` / :func:`decrypt` — bytes in, bytes out.  Every ciphertext is
  checked against the age specification (:mod:`vaultpy._internal.ageformat`)
  before pyrage sees it, so out-of-spec files are refused with a reason.

Secret material never appears in an error message.
"""

from __future__ import annotations

import base64
import binascii
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyrage

from vaultpy._internal import ageformat
from vaultpy.errors import Problem, VaultpyError, display_path, fail

SSH_ED25519 = "ssh-ed25519"
SSH_RSA = "ssh-rsa"
KEY_HINT = "use an age1… key or the line of an ssh-ed25519 .pub file"


# --------------------------------------------------------------------------- recipients

def _ssh_wire_fields(blob: bytes) -> list[bytes]:
    fields, pos = [], 0
    while pos < len(blob):
        if pos + 4 > len(blob):
            raise ValueError("truncated key blob")
        (n,) = struct.unpack(">I", blob[pos : pos + 4])
        pos += 4
        if pos + n > len(blob):
            raise ValueError("truncated key blob")
        fields.append(blob[pos : pos + n])
        pos += n
    return fields


def normalize_recipient(text: str, *, allow_rsa: bool = False) -> str:
    """Return ``text`` in canonical form or raise ValueError saying what is wrong."""
    text = text.strip()
    if text.startswith("age1"):
        if text != text.lower() or " " in text:
            raise ValueError("an age recipient is a single lowercase age1… word")
        try:
            pyrage.x25519.Recipient.from_str(text)
        except pyrage.RecipientError:
            if "1" in text[4:]:
                raise ValueError("plugin and post-quantum age recipients are not supported "
                                 "yet") from None
            raise ValueError("not a valid age1 X25519 public key (bad checksum or "
                             "length)") from None
        return text
    parts = text.split()
    if len(parts) < 2:
        raise ValueError("not an ssh-ed25519 or age1 public key")
    kind, b64 = parts[0], parts[1]
    if kind not in (SSH_ED25519, SSH_RSA) or (kind == SSH_RSA and not allow_rsa):
        raise ValueError(f"not an ssh-ed25519 or age1 public key (got {kind!r})")
    try:
        blob = base64.b64decode(b64, validate=True)
        fields = _ssh_wire_fields(blob)
    except (binascii.Error, ValueError):
        raise ValueError(f"damaged {kind} key: the base64 part does not decode") from None
    if not fields or fields[0] != kind.encode():
        raise ValueError(f"damaged {kind} key: its body does not say {kind}")
    if kind == SSH_ED25519 and (len(fields) != 2 or len(fields[1]) != 32):
        raise ValueError("damaged ssh-ed25519 key: wrong key length")
    return f"{kind} {b64}"


def ssh_stanza_tag(recipient: str) -> str | None:
    """The tag an ssh-ed25519/ssh-rsa stanza carries for ``recipient`` (None for age1)."""
    if recipient.startswith("age1"):
        return None
    return ageformat.ssh_tag(base64.b64decode(recipient.split()[1]))


_recipient_cache: dict[str, Any] = {}


def _recipient(text: str) -> Any:
    obj = _recipient_cache.get(text)
    if obj is None:
        if text.startswith("age1"):
            obj = pyrage.x25519.Recipient.from_str(text)
        else:
            obj = pyrage.ssh.Recipient.from_str(text)
        _recipient_cache[text] = obj
    return obj


# --------------------------------------------------------------------------- identities

@dataclass(frozen=True)
class Identity:
    """An unlocked identity held in memory, and where it came from (for messages)."""

    source: str
    kind: str
    key: Any


PassphraseFn = Callable[[str], str]


_passphrase_fd: int | None = None


def set_passphrase_fd(fd: int) -> None:
    """Read passphrases (one line each) from ``fd`` instead of the terminal."""
    global _passphrase_fd
    _passphrase_fd = fd


def _read_line_from_fd(fd: int) -> str:
    data = bytearray()
    while True:
        try:
            chunk = os.read(fd, 1)
        except OSError as exc:
            raise VaultpyError(Problem("--passphrase-fd", f"cannot read passphrase: "
                                       f"{exc.strerror}", "", "pass an open descriptor")
                               ) from None
        if not chunk or chunk == b"\n":
            break
        data += chunk
    return data.decode("utf-8").rstrip("\r")


def passphrase_from_env_or_tty(prompt: str) -> str:
    """``--passphrase-fd``, then ``VAULTPY_PASSPHRASE_FILE`` (first line), else a prompt."""
    if _passphrase_fd is not None:
        return _read_line_from_fd(_passphrase_fd)
    path = os.environ.get("VAULTPY_PASSPHRASE_FILE")
    if path:
        try:
            with open(path, encoding="utf-8") as fh:
                return fh.readline().rstrip("\r\n")
        except OSError as exc:
            raise fail(path, f"cannot read passphrase file: {exc.strerror}",
                       field="VAULTPY_PASSPHRASE_FILE") from None
    import getpass

    try:
        return getpass.getpass(prompt)
    except (EOFError, OSError):
        problem = Problem("VAULTPY_PASSPHRASE_FILE", "a passphrase is needed but there is no "
                          "terminal to ask on", "", "set VAULTPY_PASSPHRASE_FILE to a file "
                          "holding it")
        raise VaultpyError(problem) from None


def _unlock_ssh(data: bytes, source: str, ask: PassphraseFn) -> Identity:
    try:
        key = pyrage.ssh.Identity.from_buffer(data)
        return Identity(source, "ssh", key)
    except pyrage.IdentityError as exc:
        if "decrypted" not in str(exc):
            raise fail(source, f"unusable OpenSSH private key ({exc})",
                       hint="use an ed25519 or RSA key made by ssh-keygen") from None
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    password = ask(f"Passphrase for {source}: ").encode()
    try:
        loaded = serialization.load_ssh_private_key(data, password=password)
    except UnsupportedAlgorithm as exc:
        raise fail(source, f"cannot unlock this SSH key: {exc}",
                   hint="install vaultpy with its dependencies (cryptography[ssh])") from None
    except ValueError:
        raise fail(source, "wrong passphrase for this SSH key",
                   hint="check VAULTPY_PASSPHRASE_FILE or retype it") from None
    plain = loaded.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption())
    return Identity(source, "ssh", pyrage.ssh.Identity.from_buffer(plain))


def parse_identity_text(text: str, source: str) -> list[Identity]:
    found: list[Identity] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("AGE-SECRET-KEY-1"):
            try:
                found.append(Identity(source, "x25519", pyrage.x25519.Identity.from_str(line)))
            except pyrage.IdentityError:
                raise fail(source, f"line {number}: damaged AGE-SECRET-KEY (bad checksum)",
                           hint="restore the identity file from your backup") from None
        elif line.startswith("AGE-PLUGIN-"):
            raise fail(source, f"line {number}: plugin identities are not supported yet",
                       hint="use an X25519 or SSH identity")
        else:
            raise fail(source, f"line {number}: not an age identity",
                       hint="an identity file holds AGE-SECRET-KEY-1… lines (age-keygen)")
    if not found:
        raise fail(source, "no identity in this file",
                   hint="generate one with age-keygen or vaultpy init --generate-identity")
    return found


def load_identity_file(path: Path, ask: PassphraseFn = passphrase_from_env_or_tty
                       ) -> list[Identity]:
    source = display_path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VaultpyError(Problem(source, f"cannot read identity: {exc.strerror}", "",
                                   "pass -i FILE, set VAULTPY_IDENTITY, or fix "
                                   "[vaultpy] identity in hosts.toml")) from None
    if b"-----BEGIN OPENSSH PRIVATE KEY-----" in data[:200]:
        return [_unlock_ssh(data, source, ask)]
    if data.startswith(b"age-encryption.org/") or ageformat.is_armored(data):
        try:
            ageformat.parse(data)
        except ageformat.FormatError as exc:
            raise fail(source, f"damaged encrypted identity ({exc})") from None
        passphrase = ask(f"Passphrase for {source}: ")
        try:
            data = pyrage.passphrase.decrypt(data, passphrase)
        except pyrage.DecryptError:
            raise fail(source, "wrong passphrase for this encrypted identity",
                       hint="check VAULTPY_PASSPHRASE_FILE or retype it") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise fail(source, "not an identity file (binary data)",
                   hint="point -i at an age identity or an OpenSSH private key") from None
    return parse_identity_text(text, source)


def load_identities(paths: Iterable[Path], ask: PassphraseFn = passphrase_from_env_or_tty
                    ) -> list[Identity]:
    """Load every identity from ``paths``; each file is read (and unlocked) once."""
    out: list[Identity] = []
    for path in paths:
        out.extend(load_identity_file(path, ask))
    return out


def generate_x25519() -> tuple[str, str]:
    """A new X25519 identity: (secret key line, public recipient)."""
    ident = pyrage.x25519.Identity.generate()
    return str(ident), str(ident.to_public())


# --------------------------------------------------------------------------- crypto

def check_format(data: bytes, source: str) -> ageformat.Header:
    """Parse an age file strictly; raise a VaultpyError naming ``source`` if it is bad."""
    try:
        return ageformat.parse(data)
    except ageformat.FormatError as exc:
        raise fail(source, f"not a valid age file: {exc}",
                   hint="restore it from git, or recreate it (vaultpy edit / encrypt)") from None


def encrypt(plaintext: bytes, recipients: Sequence[str], armor: bool = False) -> bytes:
    """Encrypt to canonical recipient strings (see :func:`normalize_recipient`)."""
    return bytes(pyrage.encrypt(plaintext, [_recipient(r) for r in recipients], armored=armor))


def decrypt(ciphertext: bytes, identities: Sequence[Identity], source: str) -> bytes:
    header = check_format(ciphertext, source)
    if header.armored:      # the spec allows whitespace around armor; rage does not
        ciphertext = ciphertext.strip(b" \t\r\n")
    try:
        return bytes(pyrage.decrypt(ciphertext, [i.key for i in identities]))
    except pyrage.DecryptError as exc:
        if "No matching keys" in str(exc):
            used = ", ".join(sorted({i.source for i in identities})) or "none"
            raise fail(source, f"none of the identities ({used}) can decrypt it",
                       hint="pass the right key with -i FILE or VAULTPY_IDENTITY") from None
        raise fail(source, f"decryption failed: {exc} (the file is damaged)",
                   hint="restore it from git, or recreate it (vaultpy edit / encrypt)") from None
