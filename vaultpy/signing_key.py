"""``vaultpy signing-key``: make the cache signing key (vaultpy/signing.py).

Its private half becomes a secret's master file, its public half ``[vaultpy]
signing_key`` in hosts.toml, and the masters' values as they are the first signed
list of masters: one journaled write under the repository lock.
"""

from __future__ import annotations

import hashlib
import os
import re

from vaultpy._internal import sshsig
from vaultpy._internal.fsutil import read_regular
from vaultpy.signing import (
    DEFAULT_SECRET,
    MASTERS,
    MASTERS_NAMESPACE,
    MASTERS_SIGNATURE,
    Unsigned,
    list_text,
    read_masters,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from vaultpy.model import Config


def generate(comment: str = "vaultpy cache signing") -> tuple[bytes, str]:
    """A new key: (its OpenSSH private key file, its ``ssh-ed25519 …`` public line)."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
        PublicFormat,
    )

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
    public = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return private, f"{public} {comment}"


_VAULTPY_HEADER = re.compile(r"^[ \t]*\[[ \t]*vaultpy[ \t]*\][ \t]*(#.*)?(\r?\n|$)", re.M)
_KEY_LINE = re.compile(r'^([ \t]*signing_key[ \t]*=[ \t]*)"[^"\n]*"', re.M)


def _edited(text: str, public: str, secret: str, *, replace: bool, declare: bool) -> str:
    """hosts.toml's text with the signing key set (ValueError when it cannot be done
    by a plain insertion: the result is parsed and compared by the caller too)."""
    if replace:
        found = list(_KEY_LINE.finditer(text))
        if len(found) != 1:
            raise ValueError("its signing_key is not one plain 'signing_key = \"…\"' line")
        m = found[0]
        return text[:m.start()] + f'{m.group(1)}"{public}"' + text[m.end():]
    found = list(_VAULTPY_HEADER.finditer(text))
    if len(found) != 1:
        raise ValueError("it has no [vaultpy] table header line to add the key under")
    end = found[0].end()
    nl = "\r\n" if "\r\n" in text else "\n"
    if not text[:end].endswith("\n"):
        text, end = text[:end] + nl + text[end:], end + len(nl)
    added = (f'signing_key = "{public}"{nl}signing_secret = "{secret}"   # vaultpy '
             f"signing-key: renc signs each host's cache, check and hosts verify it{nl}")
    text = text[:end] + added + text[end:]
    if declare:
        if text and not text.endswith("\n"):
            text += nl
        text += (f"{nl}[secrets.{secret}]   # the cache signing key "
                 f"([vaultpy] signing_secret): no host may list it{nl}")
    return text


def set_up(cfg: Config, secret: str = DEFAULT_SECRET, *, replace: bool = False) -> str:
    """Make a signing key: its private half as the master file of ``secret`` (declared
    in hosts.toml if it is not), its public half as ``[vaultpy] signing_key``, both
    written in one step under the repository lock.  ``replace``: a new key in place of
    the one set.  Returns the public key line."""
    from vaultpy import age, masters, model
    from vaultpy.errors import Problem, VaultpyError, display_path, os_problem

    shown = display_path(cfg.path)
    if cfg.signing is not None and not replace:
        raise VaultpyError(Problem(shown, "a signing key is set already",
                                   "vaultpy.signing_key", "vaultpy signing-key --public "
                                   "prints it; --new makes another (renc then "
                                   "re-encrypts and signs every host's cache)"))
    if cfg.signing is None and replace:
        raise VaultpyError(Problem(shown, "no signing key is set to replace",
                                   "vaultpy.signing_key", "run vaultpy signing-key "
                                   "without --new"))
    if cfg.signing is not None:
        secret = cfg.signing.secret
    elif not model.ID_RE.fullmatch(secret) or len(secret) > model.ID_MAX:
        raise VaultpyError(Problem("--secret", f"invalid secret id {secret!r}", "",
                                   "ids are letters, digits, _ . - (starting with a letter "
                                   f"or digit, at most {model.ID_MAX})"))
    elif given := sorted(h.name for h in cfg.hosts.values() if secret in h.needed):
        raise VaultpyError(Problem("--secret", f"secret {secret!r} goes to {given[0]}: the "
                                   "signing key must go to no host", "",
                                   "choose another id: vaultpy signing-key --secret ID"))
    elif secret in cfg.secrets and os.path.lexists(cfg.secrets[secret].file):
        raise VaultpyError(Problem(display_path(cfg.secrets[secret].file), f"secret "
                                   f"{secret!r} exists already: its value would be replaced "
                                   "by the signing key", "", "choose another id: vaultpy "
                                   "signing-key --secret ID"))
    try:
        raw = cfg.path.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, OSError):
            raise VaultpyError(os_problem(cfg.path, exc, "read")) from None
        raise VaultpyError(Problem(shown, "not UTF-8 text", "", "save it as UTF-8")) from None
    private, public = generate()
    try:
        new_text = _edited(text, public, secret, replace=replace,
                           declare=secret not in cfg.secrets)
    except ValueError as exc:
        raise VaultpyError(Problem(shown, f"cannot edit this hosts.toml automatically: "
                                   f"{exc}", "vaultpy", f'add signing_key = "{public}" and '
                                   f'signing_secret = "{secret}" under [vaultpy], declare '
                                   f"[secrets.{secret}], then run vaultpy signing-key "
                                   "--new")) from None
    try:
        new_cfg = model.reparse(new_text, cfg.path)
    except VaultpyError as exc:     # what the edit made of it, not what the file holds
        raise VaultpyError(Problem(shown, "cannot edit this hosts.toml automatically: "
                                   f"the edited text would not load ({exc.problems[0].message})",
                                   "vaultpy", f'add signing_key = "{public}" and '
                                   f'signing_secret = "{secret}" under [vaultpy] and declare '
                                   f"[secrets.{secret}] by hand")) from None
    if new_cfg.signing is None or new_cfg.signing.key.split()[:2] != public.split()[:2]:
        raise VaultpyError(Problem(shown, "cannot edit this hosts.toml automatically: the "
                                   "edit did not read back as the key set", "vaultpy",
                                   f'add signing_key = "{public}" under [vaultpy] by hand'))
    ciphertext = age.encrypt(private, new_cfg.recipients)
    mode = os.stat(cfg.path).st_mode & 0o7777
    # The signed list of masters: on a first key, every master as it is now (the values
    # you turn signing on with: run it on a checkout you trust); on a new one, the list
    # the old key signed, as far as it verifies.
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key

    key = load_ssh_private_key(private, None)
    assert isinstance(key, Ed25519PrivateKey)
    entries: dict[str, str] = {}
    if cfg.signing is not None:
        try:
            entries = read_masters(cfg.cache_dir, cfg.signing.key)
        except Unsigned:
            entries = {}
    else:
        for sid, s in new_cfg.secrets.items():
            if sid != secret:
                try:
                    entries[sid] = hashlib.sha256(read_regular(s.file)[0]).hexdigest()
                except OSError:
                    continue        # (missing: check says so)
    entries[secret] = hashlib.sha256(ciphertext).hexdigest()
    listed = list_text(entries)
    masters.write_all(new_cfg, [(new_cfg.secret(secret).file, ciphertext, 0o644),
                                (cfg.path.resolve(), new_text.encode(), mode),
                                (new_cfg.cache_dir / MASTERS, listed, 0o644),
                                (new_cfg.cache_dir / MASTERS_SIGNATURE,
                                 sshsig.sign(key, MASTERS_NAMESPACE, listed).encode(), 0o644)],
                      based_on={cfg.path.resolve(): raw})
    return public
