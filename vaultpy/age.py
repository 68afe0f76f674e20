"""The age layer: the only module that imports pyrage.

* :func:`normalize_recipient` — parse ``age1…`` / ``ssh-ed25519 …`` public keys
  into their canonical ``type base64`` form (the SSH comment dropped);
* :func:`load_identities` — age identity files (plain or passphrase-encrypted),
  OpenSSH ed25519/RSA private keys (plain or passphrase-protected), plugin
  identities (``AGE-PLUGIN-…``, run by pyrage through ``age-plugin-<name>``);
* :func:`encrypt` / :func:`decrypt` — bytes in, bytes out.  Every ciphertext is
  checked against the age specification (:mod:`vaultpy._internal.ageformat`)
  before pyrage sees it, so out-of-spec files are refused with a reason.

Secret material never appears in an error message.
"""

from __future__ import annotations

import base64
import binascii
import mmap
import os
import struct
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import pyrage

from vaultpy._internal import ageformat, forksafe, fsutil, sigint
from vaultpy._internal.record import record
from vaultpy.errors import Problem, VaultpyError, display_path, fail, shown, too_big

TYPE_CHECKING = False       # typing costs ~5 ms to import; annotations only
if TYPE_CHECKING:
    from typing import Any

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


# Native age 1.3+ types that look like plugin recipients (age1<name>1…) but are not.
_NOT_PLUGINS = frozenset({"pq", "tag", "tagpq"})


def _plugin_recipient(text: str, allow_plugin: bool) -> str:
    try:
        name = pyrage.plugin.Recipient.from_str(text).plugin()
    except pyrage.RecipientError:
        raise ValueError("not a valid age1 key (bad checksum)") from None
    if name in _NOT_PLUGINS:
        raise ValueError("post-quantum and tag age recipients are not supported yet")
    if not allow_plugin:
        raise ValueError(f"a plugin recipient (age-plugin-{name}) can only be a master "
                         "recipient in [vaultpy] recipients")
    return text


def plugin_name(recipient: str) -> str | None:
    """The plugin a canonical ``age1<name>1…`` recipient needs (None for native keys)."""
    if not recipient.startswith("age1"):
        return None
    head, sep, _ = recipient[4:].rpartition("1")    # Bech32 data never holds a "1"
    return head if sep and head and head not in _NOT_PLUGINS else None


def normalize_recipient(text: str, *, allow_rsa: bool = False, allow_plugin: bool = False
                        ) -> str:
    """Return ``text`` in canonical form or raise ValueError saying what is wrong.

    ``allow_plugin``: accept ``age1<name>1…`` plugin recipients (age-plugin-<name> must be
    on PATH when encrypting) — for master recipients only, never for hosts."""
    text = text.strip()
    if any(c in text for c in "\n\r\0"):
        # "K1\nK2": the second key was taken as the first's comment, without a word.
        raise ValueError("a line break or NUL is in it: one key, on one line")
    if text.startswith("age1"):
        if text != text.lower() or " " in text:
            raise ValueError("an age recipient is a single lowercase age1… word")
        try:
            pyrage.x25519.Recipient.from_str(text)
        except pyrage.RecipientError:
            if "1" in text[4:]:
                return _plugin_recipient(text, allow_plugin)
            raise ValueError("not a valid age1 X25519 public key (bad checksum or "
                             "length)") from None
        return text
    parts = text.split()
    if len(parts) < 2:
        raise ValueError("not an ssh-ed25519 or age1 public key")
    kind, b64 = parts[0], parts[1]
    if kind not in (SSH_ED25519, SSH_RSA) or (kind == SSH_RSA and not allow_rsa):
        raise ValueError(f"not an ssh-ed25519 or age1 public key (got {shown(kind)})")
    try:
        blob = base64.b64decode(b64, validate=True)
        fields = _ssh_wire_fields(blob)
    except (binascii.Error, ValueError):
        raise ValueError(f"damaged {kind} key: the base64 part does not decode") from None
    if not fields or fields[0] != kind.encode():
        raise ValueError(f"damaged {kind} key: its body does not say {kind}")
    if kind == SSH_ED25519 and (len(fields) != 2 or len(fields[1]) != 32):
        raise ValueError("damaged ssh-ed25519 key: wrong key length")
    canonical = f"{kind} {b64}"
    try:        # what age itself accepts (an ed25519 point on the curve, an RSA modulus)
        _recipient_cache[canonical] = pyrage.ssh.Recipient.from_str(canonical)
    except pyrage.RecipientError:
        raise ValueError(f"damaged {kind} key: not a valid public key") from None
    return canonical


def fingerprint(recipient: str) -> str:
    """OpenSSH's SHA256 fingerprint of an ssh key, as ``ssh-keygen -l`` shows it, after
    its type (an age1… key is its own name).  ValueError if its base64 is not."""
    if recipient.startswith("age1"):
        return recipient
    import hashlib  # (OpenSSL: not at import, activation's start-up)

    kind, body = recipient.split()[:2]
    blob = base64.b64decode(body, validate=True)
    return f"{kind} SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def key_name(key: str) -> str:
    """A recipient as people tell keys apart: an ssh key by its :func:`fingerprint` (the
    start of the base64 is the same for every key of a type), with its comment if it
    has one; an age1... key shortened."""
    kind, _, rest = key.partition(" ")
    if not rest:
        return key[:20] + "…" if len(key) > 24 else key
    parts = key.split(None, 2)
    comment = parts[2].strip() if len(parts) == 3 else ""
    try:
        name = fingerprint(key)
    except ValueError:
        name = f"{kind} {rest.split()[0][:12]}…"
    return name + (f" ({comment})" if comment else "")


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

@record
class Identity:
    """An unlocked identity held in memory, and where it came from (for messages)."""

    source: str
    kind: str
    key: Any


PassphraseFn = Callable[[str], str]

# Caps on what is read from a file the user names (docs/contracts.md): far beyond any
# real one, so that /dev/zero or an endless pipe ends in one line, not a MemoryError.
MAX_IDENTITY_FILE = 16 << 20    # ~190 bytes an age-keygen key: 80,000 keys; RSA-16384 ~12 KiB
MAX_PASSPHRASE = 1 << 20        # the first line of VAULTPY_PASSPHRASE_FILE / --passphrase-fd
_NO_LINE = " without a line break, too much for a passphrase"


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
        except (OSError, OverflowError) as exc:     # OverflowError: fd beyond a C int
            reason = exc.strerror if isinstance(exc, OSError) else "no such descriptor"
            raise VaultpyError(Problem("--passphrase-fd", f"cannot read passphrase: "
                                       f"{reason}", "", "pass an open descriptor")
                               ) from None
        if not chunk or chunk == b"\n":
            break
        data += chunk
        if len(data) > MAX_PASSPHRASE:
            raise VaultpyError(too_big("--passphrase-fd", MAX_PASSPHRASE, _NO_LINE,
                                       "write the passphrase and a line break to it"))
    try:
        return data.decode("utf-8").rstrip("\r")
    except UnicodeDecodeError:
        raise VaultpyError(Problem("--passphrase-fd", "the passphrase is not UTF-8 text", "",
                                   "pass the passphrase as UTF-8")) from None


class Damaged(VaultpyError):
    """:func:`decrypt`'s failure when a key opened the file but its payload does not
    check out (cut short, altered): the file's fault, not the key's."""


def passphrase_from_env_or_tty(prompt: str) -> str:
    """``--passphrase-fd``, then ``VAULTPY_PASSPHRASE_FILE`` (first line), else a prompt."""
    if _passphrase_fd is not None:
        return _read_line_from_fd(_passphrase_fd)
    path = os.environ.get("VAULTPY_PASSPHRASE_FILE")
    if path:
        try:
            raw = fsutil.read_named(path, MAX_PASSPHRASE, line=True)
        except OSError as exc:
            raise fail(path, f"cannot read passphrase file: {exc.strerror}",
                       field="VAULTPY_PASSPHRASE_FILE",
                       hint="point VAULTPY_PASSPHRASE_FILE at a file whose first line is "
                       "the passphrase, or unset it to be asked") from None
        if raw is None:
            raise VaultpyError(too_big(path, MAX_PASSPHRASE, _NO_LINE,
                                       "point it at a file whose first line is the passphrase",
                                       field="VAULTPY_PASSPHRASE_FILE"))
        try:        # the first line, ended as readline would end it (\n, \r\n or \r)
            return (raw.splitlines() or [b""])[0].decode("utf-8")
        except UnicodeDecodeError:
            raise fail(path, "the passphrase file is not UTF-8 text",
                       field="VAULTPY_PASSPHRASE_FILE",
                       hint="save the passphrase as UTF-8") from None
    try:
        return ask_hidden(prompt)
    except (EOFError, OSError, UnicodeDecodeError):
        # The prompt names what needs it ("Passphrase for keys/ops.age: ").
        what = prompt.strip().rstrip(":").removeprefix("Passphrase for ").strip()
        problem = Problem(what or "vaultpy", "a passphrase is needed, but there is no "
                          "terminal to ask on and standard input gave none", "",
                          "set VAULTPY_PASSPHRASE_FILE to a file holding it, or pass "
                          "--passphrase-fd N before the command")
        raise VaultpyError(problem) from None


# The private key formats age reads as SSH identities: OpenSSH's own, and the PEM
# (PKCS#1) RSA keys ssh-keygen wrote before OpenSSH 7.8 (-m PEM), passphrase or not.
_OPENSSH_KEY = b"-----BEGIN OPENSSH PRIVATE KEY-----"
_PEM_RSA_KEY = b"-----BEGIN RSA PRIVATE KEY-----"


def _unlock_ssh(data: bytes, source: str, ask: PassphraseFn) -> Identity:
    try:
        key = pyrage.ssh.Identity.from_buffer(data)
        return Identity(source, "ssh", key)
    except pyrage.IdentityError as exc:
        if "decrypted" not in str(exc) and "EncryptedPem" not in str(exc):
            raise fail(source, f"unusable OpenSSH private key ({exc})",
                       hint="use an ed25519 or RSA key made by ssh-keygen") from None
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization

    password = ask(f"Passphrase for {source}: ").encode()
    try:
        loaded = (serialization.load_pem_private_key(data, password=password)
                  if _PEM_RSA_KEY in data[:200] else
                  serialization.load_ssh_private_key(data, password=password))
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


def parse_identity_text(text: str, source: str,
                        ask: PassphraseFn = passphrase_from_env_or_tty) -> list[Identity]:
    """The identities in an identity file's text.  Plugin identities come last, one
    :class:`Identity` per plugin (holding all of that plugin's lines): a plugin, and
    its PIN or touch, is only used for a file no plain key in the list opens."""
    found: list[Identity] = []
    plugins: dict[str, tuple[int, list[Any]]] = {}     # name -> (first line, identities)
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
            try:
                ident = pyrage.plugin.Identity.from_str(line)
            except pyrage.IdentityError:
                raise fail(source, f"line {number}: damaged AGE-PLUGIN identity (bad "
                           "checksum)", hint="regenerate it with the plugin (e.g. "
                           "age-plugin-yubikey --identity)") from None
            plugins.setdefault(ident.plugin(), (number, []))[1].append(ident)
        elif line.startswith(("ssh-", "age1", "ecdsa-sha2-", "sk-")):
            # A .pub given for its private key (-i ~/.ssh/id_ed25519.pub, age-keygen -y's
            # output): say so, not just what an identity file holds.
            private = (source[:-4] if source.endswith(".pub")
                       and os.path.isfile(os.path.expanduser(source[:-4]))
                       else "the private key file")
            raise fail(source, f"line {number}: a public key, not a private one",
                       hint=f"give {private} instead (a public key decrypts nothing)")
        else:
            raise fail(source, f"line {number}: not an age identity",
                       hint="an identity file holds AGE-SECRET-KEY-1… lines (age-keygen)")
    for name, (number, idents) in plugins.items():
        found.append(_plugin_identity(name, idents, source, number, ask))
    if not found:
        raise fail(source, "no identity in this file",
                   hint="generate one with age-keygen or vaultpy init --generate-identity")
    return found


UNREADABLE_IDENTITY_HINT = ("pass -i FILE, set VAULTPY_IDENTITY, or fix [vaultpy] identity "
                            "in hosts.toml")
WRONG_KEY_HINT = "pass the right key with -i FILE or VAULTPY_IDENTITY"


def damaged_fix(secret_id: str = "") -> str:
    """How to fix a damaged master file: its id in the command when it is known."""
    return ("restore it from git, or give it a new value (vaultpy encrypt "
            f"{secret_id or 'ID'} < FILE)")


DAMAGED_HINT = damaged_fix()


def load_identity_file(path: Path, ask: PassphraseFn = passphrase_from_env_or_tty, *,
                       unreadable_hint: str = UNREADABLE_IDENTITY_HINT,
                       regular_only: bool = False) -> list[Identity]:
    """The identities in ``path``.  ``regular_only``: refuse anything but a regular file
    (a key read unattended, at boot, where a FIFO would block forever); a key named on
    the command line may be a pipe, like ``-i <(pass show age-key)``."""
    source = display_path(path)
    try:
        found = (fsutil.read_regular(path)[0] if regular_only
                 else fsutil.read_named(path, MAX_IDENTITY_FILE))
    except OSError as exc:
        hint = ("replace it with the key file" if exc.strerror == fsutil.NOT_REGULAR
                else unreadable_hint)
        raise VaultpyError(Problem(source, f"cannot read identity: {exc.strerror}", "",
                                   hint)) from None
    if found is None:
        raise VaultpyError(too_big(path, MAX_IDENTITY_FILE, ", too much for an identity file",
                                   unreadable_hint))
    data = found
    if _OPENSSH_KEY in data[:200] or _PEM_RSA_KEY in data[:200]:
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
    return parse_identity_text(text, source, ask)


def load_identities(paths: Iterable[Path], ask: PassphraseFn = passphrase_from_env_or_tty,
                    *, unreadable_hint: str = UNREADABLE_IDENTITY_HINT,
                    regular_only: bool = False) -> list[Identity]:
    """Load every identity from ``paths``; each file is read (and unlocked) once.
    ``regular_only``: as for :func:`load_identity_file` (a default path, not named)."""
    out: list[Identity] = []
    for path in paths:
        out.extend(load_identity_file(path, ask, unreadable_hint=unreadable_hint,
                                      regular_only=regular_only))
    out.sort(key=lambda i: i.kind == "plugin")     # stable: plain keys first, in order
    return out


def generate_x25519() -> tuple[str, str]:
    """A new X25519 identity: (secret key line, public recipient)."""
    ident = pyrage.x25519.Identity.generate()
    return str(ident), str(ident.to_public())


def x25519_recipient(secret_key: str) -> str:
    """The ``age1…`` recipient of an ``AGE-SECRET-KEY-1…`` line; ValueError if it is
    not one."""
    try:
        return str(pyrage.x25519.Identity.from_str(secret_key.strip()).to_public())
    except pyrage.IdentityError:
        raise ValueError("damaged AGE-SECRET-KEY (bad checksum)") from None


# --------------------------------------------------------------------------- plugins
#
# pyrage drives a plugin one file at a time: every decryption starts
# ``age-plugin-<name> --age-plugin=identity-v1`` afresh (once per stanza tried, until one
# unwraps), and every start asks again for whatever the plugin needs from the user (a
# PIN, a confirmation).  The first request of a run goes to the user; the same request
# later in the run, in this process or in a renc worker forked after the identities were
# loaded, is answered from :class:`_Answers`.

_ANSWERS_SIZE = 1 << 16
_PENDING_POLL = 0.02


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class _SharedLock:
    """A lock for this process and the workers it forks that the kernel releases when
    its holder dies: a POSIX record lock on an anonymous file (inherited, but owned per
    process), with a thread lock to order this process's own threads.

    Not a multiprocessing lock: a renc worker that dies (the OOM killer, a signal)
    while it holds one (it asks the user under it) would leave the other workers
    waiting for it for good, and the run with them (renc's pool lets the other workers
    go on once one died; ProcessPoolExecutor used to terminate them)."""

    def __init__(self) -> None:
        import threading  # plugins only: not on every run's import path

        self._fd = os.memfd_create("vaultpy-answers", os.MFD_CLOEXEC)
        self._pid = os.getpid()
        self._threads = threading.Lock()

    def __enter__(self) -> None:
        import fcntl

        if self._pid != os.getpid():    # a forked worker: a thread lock of its own
            import threading

            self._pid, self._threads = os.getpid(), threading.Lock()
        self._threads.acquire()
        try:
            fcntl.lockf(self._fd, fcntl.LOCK_EX)
        except BaseException:
            self._threads.release()
            raise

    def __exit__(self, *_exc: object) -> None:
        import fcntl

        try:
            fcntl.lockf(self._fd, fcntl.LOCK_UN)
        finally:
            self._threads.release()


class _Answers:
    """What the user told plugins during this run, shared with forked workers: an
    anonymous shared mapping (JSON) and a lock, both inherited across ``fork``.

    A secret (PIN, passphrase) stays *pending* until the decryption that first used it
    ends; meanwhile other processes wait instead of trying it in parallel.  Once it
    failed it is never offered again in this run: a hardware key locks itself after a
    few wrong PINs."""

    def __init__(self) -> None:
        self._mem = mmap.mmap(-1, _ANSWERS_SIZE)    # MAP_SHARED | MAP_ANONYMOUS
        self._lock = _SharedLock()
        self._mine: set[str] = set()                 # pending secrets this process gave

    def _read(self) -> dict[str, dict[str, Any]]:
        (n,) = struct.unpack_from(">I", self._mem, 0)
        import json  # plugins only: not on every run's import path

        loaded: dict[str, dict[str, Any]] = json.loads(self._mem[4 : 4 + n]) if n else {}
        return loaded

    def _write(self, table: dict[str, dict[str, Any]]) -> None:
        import json

        data = json.dumps(table).encode()
        if 4 + len(data) <= _ANSWERS_SIZE:          # else: not remembered, asked again
            self._mem[4 : 4 + len(data)] = data
            struct.pack_into(">I", self._mem, 0, len(data))

    def answer(self, key: str, ask: Callable[[], Any], *, secret: bool) -> Any:
        """The answer for ``key``: remembered, or ``ask()``-ed (once; prompts are
        serialized by the lock).  None when there is none to give."""
        while True:
            with self._lock:
                table = self._read()
                entry = table.get(key)
                if (entry is not None and entry["state"] == "pending"
                        and entry["pid"] != os.getpid() and not _alive(entry["pid"])):
                    entry = None            # its process died before it could say
                if entry is None:
                    value = ask()
                    if value is None or value == "":
                        table[key] = {"state": "failed", "why": "none was given"}
                        value = None
                    elif secret:
                        table[key] = {"state": "pending", "pid": os.getpid(), "value": value}
                        self._mine.add(key)
                    else:
                        table[key] = {"state": "ok", "value": value}
                    self._write(table)
                    return value
                if entry["state"] == "failed":
                    _plugin_notes.append(f"not asked again: {entry['why']} earlier in "
                                         "this run")
                    return None
                if entry["state"] == "ok" or entry["pid"] == os.getpid():
                    return entry["value"]
            time.sleep(_PENDING_POLL)           # another process is trying it right now

    def clear(self) -> None:
        with self._lock:
            self._mem[:] = bytes(_ANSWERS_SIZE)    # overwrite the secrets too
            self._mine.clear()

    def settle(self, worked: bool) -> None:
        """The decryption that used this process's pending secrets ended."""
        if not self._mine:
            return
        with self._lock:
            table = self._read()
            for key in self._mine:
                entry = table.get(key)
                if entry and entry["state"] == "pending" and entry["pid"] == os.getpid():
                    table[key] = ({"state": "ok", "value": entry["value"]} if worked else
                                  {"state": "failed", "why": "it was rejected"})
            self._write(table)
            self._mine.clear()


_answers: _Answers | None = None
_plugin_errors: list[BaseException] = []    # raised in a callback, re-raised after pyrage
_plugin_notes: list[str] = []               # why a callback gave no answer


def forget_plugin_answers() -> None:
    """Forget what the user told plugins (PINs, confirmations) so far: the next request
    is put to the user again.  (A CLI run never needs this: its answers die with it.)"""
    if _answers is not None:
        _answers.clear()


def _shared_answers() -> _Answers:
    global _answers
    if _answers is None:
        _answers = _Answers()
    return _answers


def _tty_line(prompt: str) -> str | None:
    """A line typed on the controlling terminal (echoed), or None without one."""
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None
    try:
        os.write(fd, prompt.encode())
        line = _read_tty_line(fd)
    except (OSError, EOFError):
        return None
    finally:
        os.close(fd)
    return line.decode("utf-8", "replace").rstrip("\r")


def ask_hidden(prompt: str) -> str:
    """getpass without its warning lines: on the terminal, echo off; without one, a line
    from stdin (EOFError at its end)."""
    secret = _tty_secret(prompt)
    return _stdin_line(prompt) if secret is None else secret


def _tty_secret(prompt: str) -> str | None:
    """What getpass does on the terminal (echo off, then a newline), read with
    :func:`_read_tty_line`; None without a terminal.  EOFError on Ctrl-D."""
    import termios

    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None
    try:
        old = termios.tcgetattr(fd)
        quiet = termios.tcgetattr(fd)
        quiet[3] &= ~termios.ECHO
        termios.tcsetattr(fd, termios.TCSAFLUSH, quiet)
        try:
            os.write(fd, prompt.encode())
            line = _read_tty_line(fd)
        finally:
            termios.tcsetattr(fd, termios.TCSAFLUSH, old)
            os.write(fd, b"\n")
    finally:
        os.close(fd)
    return line.decode("utf-8", "replace").rstrip("\r")


def _stdin_line(prompt: str) -> str:
    """getpass's fallback without a terminal, minus its warning lines: the prompt on
    stderr (when someone can see it there: not in a log, where it only came before the
    error, a second line), a line from stdin (EOFError when there is none)."""
    import sys

    shown = sys.stderr.isatty()
    if shown:
        sys.stderr.write(prompt)
        sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        if shown:
            sys.stderr.write("\n")     # the error that follows starts a line of its own
        raise EOFError
    return line.rstrip("\r\n")


def _read_tty_line(fd: int) -> bytes:
    """A line from the terminal ``fd`` (EOFError at its end), read so that a Ctrl-C
    always ends the wait.  A signal that lands after the prompt is written but before
    a blocking read() begins (or in another thread) leaves its Python handler pending
    behind that read for good; renc hung so at a PIN prompt about once in 400 runs.
    So the wait is select() for at most 0.1 s at a time, and pending handlers run
    between waits."""
    import select

    line = bytearray()
    while True:
        if not select.select([fd], [], [], 0.1)[0]:
            continue
        byte = os.read(fd, 1)
        if byte == b"\n":
            return bytes(line)
        if not byte:
            if line:
                return bytes(line)
            raise EOFError
        line += byte


class _PluginCallbacks:
    """pyrage's plugin callbacks (display_message, confirm, request_public_string,
    request_passphrase).  They must never raise (pyrage would panic): an exception is
    kept and re-raised by :func:`decrypt` / :func:`encrypt` once pyrage returns."""

    def __init__(self, plugin: str, ask: PassphraseFn) -> None:
        self.plugin = plugin
        self.ask = ask

    def _guard(self, key: str, ask: Callable[[], Any], secret: bool) -> Any:
        # A Ctrl-C ends the question even where it is otherwise held back (renc).
        try:
            with sigint.question():
                return _shared_answers().answer(f"{self.plugin}\0{key}", ask, secret=secret)
        except BaseException as exc:        # handed back once pyrage returns
            _plugin_errors.append(exc)
            return None

    def display_message(self, message: str) -> None:
        def show() -> str:
            os.write(2, f"age-plugin-{self.plugin}: {_clean(message)}\n".encode())
            return "shown"

        self._guard(f"msg\0{message}", show, False)     # each distinct message once

    def confirm(self, message: str, yes_string: str, no_string: str | None) -> bool | None:
        def ask() -> bool | None:
            choices = f"{yes_string}/{no_string}" if no_string else yes_string
            reply = _tty_line(f"age-plugin-{self.plugin}: {_clean(message)} "
                              f"[{choices}, Enter = {yes_string}] ")
            if reply is None:
                return None
            reply = reply.strip().lower()
            if reply in ("", "y", "yes", yes_string.lower()):
                return True
            return False if no_string is not None else None

        answer: bool | None = self._guard(f"confirm\0{message}", ask, False)
        return answer

    def request_public_string(self, description: str) -> str | None:
        def ask() -> str | None:
            return _tty_line(f"age-plugin-{self.plugin}: {_clean(description)}: ")

        answer: str | None = self._guard(f"public\0{description}", ask, False)
        return answer

    def request_passphrase(self, description: str) -> str | None:
        text = _clean(description).rstrip().rstrip(":")
        answer: str | None = self._guard(
            f"secret\0{description}", lambda: self.ask(f"{text} [age-plugin-{self.plugin}]: "),
            True)
        return answer


def _clean(message: str) -> str:
    """A pyrage message on one line, without the Unicode isolates (U+2068, U+2069) it
    wraps names in."""
    return " ".join(message.replace("\u2068", "").replace("\u2069", "").split())


def _plugin_identity(name: str, idents: list[Any], source: str, number: int,
                     ask: PassphraseFn) -> Identity:
    _shared_answers()                   # before renc forks its workers
    forksafe.mark()                     # before the plugin ever runs
    try:
        key = pyrage.plugin.IdentityPluginV1(name, idents, _PluginCallbacks(name, ask))
    except pyrage.DecryptError:
        raise fail(source, f"line {number}: this identity needs age-plugin-{name}, which is "
                   "not on PATH", hint=f"install age-plugin-{name}") from None
    return Identity(source, "plugin", key)


def _take_plugin_error() -> BaseException | None:
    error = _plugin_errors[0] if _plugin_errors else None
    _plugin_errors.clear()
    return error


def _take_plugin_notes() -> str:
    notes = "; ".join(dict.fromkeys(_plugin_notes))
    _plugin_notes.clear()
    return f" ({notes})" if notes else ""


# --------------------------------------------------------------------------- crypto

def check_format(data: bytes, source: str, damaged_hint: str | None = None, *,
                 secret_id: str = "") -> ageformat.Header:
    """Parse an age file strictly; raise a VaultpyError naming ``source`` if it is bad
    (the fix: ``damaged_hint``, else :func:`damaged_fix` of ``secret_id``)."""
    try:
        return ageformat.parse(data)
    except ageformat.FormatError as exc:
        raise fail(source, f"not a valid age file: {exc}", hint=damaged_hint
                   if damaged_hint is not None else damaged_fix(secret_id)) from None


def encrypt(plaintext: bytes, recipients: Sequence[str], armor: bool = False) -> bytes:
    """Encrypt to canonical recipient strings (see :func:`normalize_recipient`).

    Plugin recipients are wrapped by ``age-plugin-<name> --age-plugin=recipient-v1``,
    one plugin process per plugin (all its recipients at once), stanzas in the order
    of ``recipients``."""
    objs: list[Any] = []
    plugins: dict[str, list[Any]] = {}
    for r in recipients:
        name = plugin_name(r)
        if name is None:
            objs.append(_recipient(r))
        else:
            if name not in plugins:
                objs.append(name)               # replaced below, keeping the order
            plugins.setdefault(name, []).append(pyrage.plugin.Recipient.from_str(r))
    if not plugins:
        return bytes(pyrage.encrypt(plaintext, objs, armored=armor))
    worked = False
    forksafe.mark()
    try:
        objs = [pyrage.plugin.RecipientPluginV1(o, plugins[o], [], _PluginCallbacks(
                    o, passphrase_from_env_or_tty)) if isinstance(o, str) else o
                for o in objs]
        ciphertext = bytes(pyrage.encrypt(plaintext, objs, armored=armor))
        worked = True
        return ciphertext
    except pyrage.EncryptError as exc:
        error = _take_plugin_error()
        if error is not None:
            raise error from None
        names = ", ".join(f"age-plugin-{n}" for n in plugins)
        raise VaultpyError(Problem(
            names, f"cannot encrypt to the plugin recipient: {_clean(str(exc))}"
            f"{_take_plugin_notes()}", "vaultpy.recipients",
            f"install {names} on PATH, or check its key")) from None
    finally:
        if _answers is not None:
            _answers.settle(worked)
        _plugin_errors.clear()
        _plugin_notes.clear()


def decrypt(ciphertext: bytes, identities: Sequence[Identity], source: str, *,
            wrong_key_hint: str = WRONG_KEY_HINT, damaged_hint: str | None = None,
            secret_id: str = "") -> bytes:
    """The plaintext; one problem naming ``source`` if no identity opens it (the fix:
    ``wrong_key_hint``) or it is damaged (``damaged_hint``, else :func:`damaged_fix`
    of ``secret_id``, the master's id when it is one)."""
    header = check_format(ciphertext, source, damaged_hint, secret_id=secret_id)
    if header.armored:      # the spec allows whitespace around armor; rage does not
        ciphertext = ciphertext.strip(b" \t\r\n")
    worked = False
    try:
        plaintext = bytes(pyrage.decrypt(ciphertext, [i.key for i in identities]))
        worked = True
        return plaintext
    except pyrage.DecryptError as exc:
        message = _clean(str(exc))
        plugin_failed = "No matching keys" in message or "age-plugin-" in message
        worked = not plugin_failed      # e.g. a damaged payload: the PIN itself was right
        error = _take_plugin_error()
        if error is not None:
            raise error from None
        notes = _take_plugin_notes()
        if "No matching keys" in message:
            used = ", ".join(sorted({i.source for i in identities})) or "none"
            raise fail(source, f"none of the identities ({used}) can decrypt it{notes}",
                       hint=wrong_key_hint) from None
        if "age-plugin-" in message:
            raise fail(source, f"{message}{notes}", hint="check the PIN, and that the "
                       "plugin's key is present") from None
        raise Damaged(Problem(display_path(source), f"decryption failed: {exc} (the file "
                              "is damaged)", "", damaged_hint if damaged_hint is not None
                              else damaged_fix(secret_id))) from None
    finally:
        if _answers is not None:
            _answers.settle(worked)
        _plugin_errors.clear()
        _plugin_notes.clear()
