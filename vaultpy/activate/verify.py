"""Step ``verify_signature``: the cache files are the ones renc signed.

With a signing key (vaultpy/signing.py) the profile names the host's signed list of
cache files and the public key.  The list is verified here, once; each cache file is
then installed only if its SHA-256 is on the list under the secret's own id
(:func:`check_file`): a value encrypted to this host's public key by anyone else, or
another secret's signed file put in its place, is refused before it is decrypted.
"""

from __future__ import annotations

import hashlib
import os

from vaultpy import signing
from vaultpy._internal.names import NAME_RE
from vaultpy.activate.context import Context
from vaultpy.errors import Problem, VaultpyError, display_path

AGAIN = ("run vaultpy renc with the master key (it re-encrypts what is not signed, and "
         "signs) and deploy again")


def verify_signature(ctx: Context) -> None:
    """Read and verify the signed list the profile names; nothing without one."""
    signed = ctx.profile.signed
    if signed is None:
        return
    try:
        sums = signing.read_signed("", ctx.profile.host, signed.key, signed.sums,
                                   signed.signature)
    except signing.Unsigned as exc:
        raise VaultpyError(Problem(display_path(exc.path), "the cache is not signed: "
                                   f"{exc.reason}", "signed", AGAIN)) from None
    ids: dict[str, str] = {}
    for name, digest in sums.items():
        if NAME_RE.fullmatch(name) is not None:
            ids[digest] = name
    ctx.signed_ids = ids
    ctx.log("verify_signature", f"{len(ids)} cache file(s) listed, signed by the key set")


def check_file(ctx: Context, sid: str, data: bytes, file: str) -> None:
    """Refuse ``data`` as secret ``sid``'s cache file ``file`` unless the signed list has
    it under that very name: the secret's own (a signed file of another secret put in
    its place is refused) and its current master's (an older signed list and the file
    it listed, put under today's name, are refused too).  In the Nix store a file is
    named ``<hash>-<name>``."""
    if ctx.signed_ids is None:
        return
    name = os.path.basename(file)
    listed = ctx.signed_ids.get(hashlib.sha256(data).hexdigest())
    m = NAME_RE.fullmatch(listed or "")
    if listed is None or m is None or m.group("id") != sid or not (name == listed or (
            name.endswith("-" + listed) and len(name) == len(listed) + 33)):
        raise VaultpyError(Problem(display_path(file), f"secret {sid!r}: its cache file is "
                                   "not signed (the signed list has no file of this name "
                                   "with its SHA-256: altered, or written without the "
                                   "signing key)", "file", AGAIN))
