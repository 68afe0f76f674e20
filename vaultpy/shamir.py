"""Shamir k-of-n split of the master identity (SLIP-39 mnemonics).

The 32-byte X25519 secret inside an ``AGE-SECRET-KEY-1…`` line (bech32, BIP-173,
without its 90-character limit) is the SLIP-39 master secret.  Each share is a
33-word mnemonic with its own checksum; any ``threshold`` of them rebuild the key,
fewer reveal nothing.  Shares carry no passphrase (SLIP-39's optional one would
silently yield a *different* key when mistyped).

* :func:`split` — mnemonics for an identity line;
* :func:`write_shares` — one file per share (mode 0600, atomic, never overwrites);
* :func:`combine` — mnemonics back to the identity line, with errors that say what
  is wrong with the set (never a word of a share);
* :func:`combine_from_dir` / :func:`combine_from_prompt` — what the global options
  ``--from-shares DIR`` / ``--from-shares-prompt`` call.

The rebuilt key is only ever returned as a string: nothing here writes it to disk.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from vaultpy._internal import fsutil, sigint
from vaultpy.errors import Problem, UsageError, VaultpyError, display_path, fail, os_problem

SECRET_HRP = "age-secret-key-"
PUBLIC_HRP = "age"
SHARE_HINT = "give shares written by vaultpy identity split (one per file)"
MAX_SHARE_FILE = 64 * 1024

# --------------------------------------------------------------------------- bech32
# BIP-173 bech32 (not bech32m), as age uses it; age lifts the 90-character limit.

_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GEN = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


def _polymod(values: Iterable[int]) -> int:
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= _GEN[i] if (top >> i) & 1 else 0
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _convert_bits(data: Iterable[int], frm: int, to: int, pad: bool) -> list[int]:
    acc = bits = 0
    out: list[int] = []
    maxv = (1 << to) - 1
    for value in data:
        if value < 0 or value >> frm:
            raise ValueError("invalid data value")
        acc = (acc << frm) | value
        bits += frm
        while bits >= to:
            bits -= to
            out.append((acc >> bits) & maxv)
    if pad:
        if bits:
            out.append((acc << (to - bits)) & maxv)
    elif bits >= frm or (acc << (to - bits)) & maxv:
        raise ValueError("non-zero padding")
    return out


def bech32_encode(hrp: str, data: bytes) -> str:
    """Lowercase bech32 of ``data`` under ``hrp``."""
    words = _convert_bits(data, 8, 5, True)
    values = _hrp_expand(hrp) + words
    poly = _polymod([*values, 0, 0, 0, 0, 0, 0]) ^ 1
    checksum = [(poly >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_CHARSET[d] for d in words + checksum)


def bech32_decode(text: str) -> tuple[str, bytes]:
    """(hrp, data) of a bech32 string (all upper- or all lowercase); ValueError if bad."""
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed case")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise ValueError("no separator or too short")
    hrp, rest = text[:pos], text[pos + 1 :]
    if any(not 33 <= ord(c) <= 126 for c in hrp) or any(c not in _CHARSET for c in rest):
        raise ValueError("invalid character")
    values = [_CHARSET.index(c) for c in rest]
    if _polymod(_hrp_expand(hrp) + values) != 1:
        raise ValueError("bad checksum")
    return hrp, bytes(_convert_bits(values[:-6], 5, 8, False))


def secret_from_identity(line: str) -> bytes:
    """The 32-byte X25519 scalar of an ``AGE-SECRET-KEY-1…`` line."""
    hrp, data = bech32_decode(line.strip())
    if hrp != SECRET_HRP or len(data) != 32:
        raise ValueError("not an age X25519 secret key")
    return data


def identity_from_secret(secret: bytes) -> str:
    """The ``AGE-SECRET-KEY-1…`` line (uppercase, as age-keygen writes it)."""
    if len(secret) != 32:
        raise ValueError("an X25519 secret is 32 bytes")
    return bech32_encode(SECRET_HRP, secret).upper()


def public_key(identity_line: str) -> str:
    """The ``age1…`` recipient of an identity line."""
    from vaultpy import age

    (ident,) = age.parse_identity_text(identity_line, "shamir shares")
    return str(ident.key.to_public())


# --------------------------------------------------------------------------- split

@dataclass(frozen=True)
class Share:
    """One mnemonic, its position in the set, and the set's parameters."""

    mnemonic: str
    index: int          # 1-based member index
    threshold: int
    count: int          # shares in the set (0 when read back: not in the mnemonic)
    identifier: int     # SLIP-39 set identifier (15 bits): shares of one split share it


def split(identity_line: str, threshold: int, count: int) -> list[Share]:
    """SLIP-39 shares (one group, ``threshold`` of ``count``) of an X25519 identity."""
    import shamir_mnemonic

    if not 1 <= threshold <= count <= 16:
        raise UsageError(Problem("--threshold", f"cannot split {threshold} of {count}", "",
                                 "use 1 <= THRESHOLD <= SHARES <= 16 (SLIP-39's limit)"))
    if threshold == 1 and count > 1:
        raise UsageError(Problem("--threshold", "a threshold of 1 with several shares makes "
                                 "each share a plain copy of the key", "",
                                 "use --threshold 2 or more, or --shares 1"))
    try:
        secret = secret_from_identity(identity_line)
    except ValueError:
        raise fail("identity", "not an age X25519 secret key",
                   hint="only AGE-SECRET-KEY-1… identities can be split") from None
    groups = shamir_mnemonic.generate_mnemonics(1, [(threshold, count)], secret)
    shares = [replace(_parse_share(m, f"share {i}"), count=count)
              for i, m in enumerate(groups[0], 1)]
    # Prove the split before anyone relies on it: the first `threshold` shares rebuild it.
    if combine([s.mnemonic for s in shares[:threshold]]) != identity_from_secret(secret):
        raise VaultpyError(Problem("identity", "the shares do not rebuild the key (a bug)",
                                   "", "please report it"))
    return shares


def render_share(share: Share, public: str, created: datetime | None = None) -> str:
    """The text of a share file: comments for the holder, then the mnemonic."""
    when = (created or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (f"# vaultpy master identity share {share.index} of {share.count}: any "
            f"{share.threshold} rebuild the key\n"
            f"# set: {share.identifier:04x}  public key: {public}\n"
            f"# created: {when}\n"
            f"# rebuild: vaultpy identity combine DIR (or --from-shares DIR)\n"
            f"{share.mnemonic}\n")


def share_file_name(share: Share) -> str:
    return f"share-{share.identifier:04x}-{share.index}-of-{share.count}.txt"


def write_shares(shares: Sequence[Share], public: str, directory: Path) -> list[Path]:
    """One file per share in ``directory`` (created 0700 if missing), each 0600 and
    durable; refuses if any target exists, and then writes nothing."""
    targets = [directory / share_file_name(s) for s in shares]
    taken = [p for p in targets if os.path.lexists(p)]
    left: list[Path] = []
    if directory.is_dir():      # shares of another split there would make the set ambiguous
        taken += sorted(p for p in directory.glob("share-*-of-*.txt") if p not in taken)
        # A split killed mid-write (SIGKILL, a crash) leaves a temp file: a whole share.
        left = sorted(p for p in directory.glob(".share-*-of-*.txt*") if fsutil.is_tmp(p.name))
    if taken or left:
        raise VaultpyError([Problem(display_path(p), "a share file is already there", "",
                                    "use an empty -o DIR: shares are never overwritten or "
                                    "mixed with another split's (files an interrupted split "
                                    "left can still rebuild the key with others: delete "
                                    "them, shred -u)")
                            for p in taken] + [
                            Problem(display_path(p), "a share a killed split left half "
                                    "placed (it holds a whole share)", "", "delete it "
                                    "(shred -u), and the rest of that split's files")
                            for p in left])
    try:
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True)
    except OSError as exc:
        raise VaultpyError(os_problem(directory, exc, "create the share directory")) from None
    created = datetime.now(UTC)
    written: list[Path] = []
    try:
        for share, path in zip(shares, targets, strict=True):
            _write_exclusive(path, render_share(share, public, created).encode())
            written.append(path)
    except BaseException as exc:        # a full disk, or Ctrl-C: all shares or none
        if len(written) < len(targets) and (
                not isinstance(exc, OSError)
                or (not isinstance(exc, FileExistsError)    # (that one: another's)
                    and os.path.lexists(targets[len(written)]))):
            # A Ctrl-C during a file's write is raised once it is complete (held), and
            # an error after its link (the directory's fsync) once it is in place:
            # that file is this run's too (the directory was empty of shares).
            written.append(targets[len(written)])
        with sigint.held():             # (a second Ctrl-C must not cut this short)
            for p in written:
                with contextlib.suppress(OSError):
                    p.unlink()
            with contextlib.suppress(OSError):
                fsutil.fsync_path(directory, directory=True)
        if isinstance(exc, OSError):
            raise VaultpyError(os_problem(directory, exc, "write the share files")) from None
        raise
    return written


def _write_exclusive(path: Path, data: bytes) -> None:
    """``path`` created 0600 whatever the umask, complete or absent, never replacing."""
    from vaultpy._internal import fsutil

    fsutil.create_new(path, data, 0o600, exact_mode=True)


def write_identity_file(path: Path, identity_line: str) -> None:
    """Write a rebuilt identity as age-keygen does (mode 0600, never overwriting)."""
    public = public_key(identity_line)
    text = (f"# created: {datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')} (rebuilt from "
            f"Shamir shares)\n# public key: {public}\n{identity_line}\n")
    if os.path.lexists(path):
        raise fail(path, "already exists", hint="choose another --output FILE; an identity "
                   "is never overwritten")
    try:
        _write_exclusive(path, text.encode())
    except OSError as exc:
        raise VaultpyError(os_problem(path, exc, "write the identity")) from None


# --------------------------------------------------------------------------- combine

def _parse_share(mnemonic: str, source: str) -> Share:
    import shamir_mnemonic

    words = " ".join(mnemonic.lower().split())
    try:
        s = shamir_mnemonic.Share.from_mnemonic(words)
    except (shamir_mnemonic.MnemonicError, ValueError, KeyError) as exc:
        reason = str(exc).rstrip(".")
        if isinstance(exc, KeyError) or "Invalid mnemonic word" in reason:
            reason = "a word is not in the SLIP-39 word list (mistyped?)"
        elif "checksum" in reason.lower():
            reason = "its checksum does not match (a mistyped or damaged share)"
        elif "length" in reason.lower():
            reason = "wrong number of words (a share has 20 or 33 words)"
        raise fail(source, f"not a valid share: {reason}", hint=SHARE_HINT) from None
    if s.group_count != 1:
        raise fail(source, "a multi-group SLIP-39 share", hint="vaultpy uses one group of "
                   "shares; give shares written by vaultpy identity split")
    return Share(words, s.index + 1, s.member_threshold, 0, s.identifier)


def _check_set(shares: Sequence[tuple[Share, str]], complete: bool = True) -> list[Share]:
    """Distinct shares of one set (with ``complete``: at least ``threshold`` of them);
    else a clear error."""
    if not shares:
        raise VaultpyError(Problem("shares", "no share given", "", SHARE_HINT))
    first, first_src = shares[0]
    for s, src in shares[1:]:
        if s.identifier != first.identifier or s.threshold != first.threshold:
            raise VaultpyError(Problem(
                src, f"belongs to another share set ({s.identifier:04x}, {s.threshold} "
                f"needed) than {first_src} ({first.identifier:04x}, {first.threshold} needed)",
                "", "use shares of one split only (the 'set:' line of each share file)"))
    distinct: dict[int, Share] = {}
    for s, src in shares:
        other = distinct.get(s.index)
        if other is not None and other.mnemonic != s.mnemonic:
            raise VaultpyError(Problem(src, f"two different shares claim number {s.index}",
                                       "", "one of them is damaged; leave it out"))
        distinct[s.index] = s
    if complete and len(distinct) < first.threshold:
        dup = len(shares) - len(distinct)
        extra = f" ({dup} duplicate(s) ignored)" if dup else ""
        raise VaultpyError(Problem(
            "shares", f"{len(distinct)} distinct share(s) given{extra}, but this set needs "
            f"{first.threshold}", "", f"add {first.threshold - len(distinct)} more share(s) "
            "of the same set"))
    return list(distinct.values())


def combine(mnemonics: Sequence[str], sources: Sequence[str] | None = None) -> str:
    """Rebuild the ``AGE-SECRET-KEY-1…`` line from SLIP-39 mnemonics.

    More shares than needed are fine: every one of them is checked against the others
    (each combination of ``threshold`` shares that includes it must give the same key).
    """
    import shamir_mnemonic

    srcs = list(sources) if sources is not None else [f"share {i}"
                                                      for i in range(1, len(mnemonics) + 1)]
    parsed = [(_parse_share(m, src), src) for m, src in zip(mnemonics, srcs, strict=True)]
    shares = _check_set(parsed)
    k = shares[0].threshold
    # Windows of k shares that together use every share: all must agree.
    subsets = [[shares[(start + j) % len(shares)] for j in range(k)]
               for start in range(0, len(shares), k)] if len(shares) > k else [shares]
    results: set[bytes] = set()
    for subset in subsets:
        try:
            results.add(shamir_mnemonic.combine_mnemonics([s.mnemonic for s in subset]))
        except (shamir_mnemonic.MnemonicError, ValueError):
            raise VaultpyError(Problem(
                "shares", "these shares do not fit together (their digest check fails)",
                "", "one share is damaged or comes from another split; try another "
                "combination")) from None
    if len(results) != 1:
        raise VaultpyError(Problem("shares", "different combinations of these shares give "
                                   "different keys", "", "one share is damaged; leave it "
                                   "out and try again"))
    secret = results.pop()
    if len(secret) != 32:
        raise VaultpyError(Problem("shares", f"the shares hold a {len(secret)}-byte secret, "
                                   "not an X25519 key", "", SHARE_HINT))
    return identity_from_secret(secret)


def read_share_file(path: Path) -> str:
    """The mnemonic in a share file (``#`` comment lines ignored)."""
    try:            # (a device's size is 0: the cap is on what is read)
        raw = fsutil.read_named(path, MAX_SHARE_FILE)
        if raw is None:
            raise fail(path, "too large to be a share file", hint=SHARE_HINT)
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise fail(path, "not a share file (binary data)", hint=SHARE_HINT) from None
    except OSError as exc:
        raise VaultpyError(os_problem(path, exc, "read share file")) from None
    words = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not words:
        raise fail(path, "no share in this file", hint=SHARE_HINT)
    return " ".join(words)


def share_files(paths: Sequence[Path]) -> list[Path]:
    """Share files named directly, or every non-hidden file of a named directory."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            try:
                entries = sorted(e for e in p.iterdir() if not e.name.startswith("."))
            except OSError as exc:
                raise VaultpyError(os_problem(p, exc, "list the share directory")) from None
            files = [e for e in entries if e.is_file()]
            if not files:
                raise fail(p, "no share files in this directory", hint=SHARE_HINT)
            out.extend(files)
        elif p.exists():
            out.append(p)
        else:
            raise fail(p, "no such file or directory", hint="give the directory holding "
                       "the share files, or the files themselves")
    return out


def combine_files(paths: Sequence[Path]) -> str:
    files = share_files(paths)
    return combine([read_share_file(f) for f in files], [display_path(f) for f in files])


def combine_from_dir(directory: Path) -> str:
    """``--from-shares DIR``: the identity rebuilt from the share files in DIR."""
    return combine_files([directory])


PromptFn = Callable[[str], str]


def _getpass(prompt: str) -> str:
    """Hidden input; piped shares without getpass's "Password input may be echoed"."""
    from vaultpy.age import ask_hidden

    return ask_hidden(prompt)


def combine_from_prompt(ask: PromptFn = _getpass,
                        say: Callable[[str], None] | None = None) -> str:
    """``--from-shares-prompt``: ask for shares (hidden input) until the set is complete.

    A mistyped share is reported and asked again; an empty answer or end of input stops.
    """
    import sys

    def tell(msg: str) -> None:
        if say is not None:
            say(msg)
        else:
            sys.stderr.write(msg + "\n")
            sys.stderr.flush()

    # Shares by set (identifier, threshold): one of an old split typed first must not
    # turn away every right one after it.  The first set to be complete is used (a
    # wrong key is then named as no recipient of the repository).
    sets: dict[tuple[int, int], list[tuple[Share, str]]] = {}
    got: list[tuple[Share, str]] = []
    failures = number = 0
    while not got or len({s.index for s, _ in got}) < got[0][0].threshold:
        number += 1
        need = got[0][0].threshold if got else None
        prompt = (f"Share {number}" + (f" ({len(got)} of {need} given)" if need else "")
                  + " (33 words, hidden; empty to stop): ")
        try:
            text = ask(prompt)
        except (EOFError, OSError):
            text = ""
        if not text.strip():
            break
        try:
            share = _parse_share(text, f"share {number}")
            same = sets.get((share.identifier, share.threshold), [])
            _check_set([*same, (share, f"share {number}")], complete=False)
        except VaultpyError as exc:
            tell(str(exc.problems[0]))
            failures += 1
            if failures >= 5:
                raise VaultpyError(Problem("--from-shares-prompt", "too many invalid shares",
                                           "", SHARE_HINT)) from None
            continue
        if any(s.index == share.index for s, _ in same):
            tell(f"share number {share.index} was already given; give another one")
            continue
        if not same and sets:
            tell(f"share {number} belongs to another split ({share.identifier:04x}) than "
                 "the share(s) before it: kept apart; the first split complete is used")
        same = sets[(share.identifier, share.threshold)] = [*same, (share, f"share {number}")]
        # The set closest to its threshold is the one counted in the prompt.
        got = max(sets.values(), key=lambda g: len(g) / g[0][0].threshold)
        tell(f"share {number} accepted ({len(same)} of {share.threshold} of its set)")
    return combine([s.mnemonic for s, _ in got], [src for _, src in got])
