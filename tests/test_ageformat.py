"""vaultpy._internal.ageformat: the strict, crypto-free age v1 parser.

Valid files come from the real ``age`` CLI and from pyrage.  Out-of-spec files
are made by mutating those, or by a minimal age encryptor below (X25519 only,
built on ``cryptography``) so that header mutations still carry a correct MAC
and reach the point where a lenient implementation would accept them.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
from pathlib import Path

import pyrage
import pytest
from conftest import age_keygen, hosts_toml, need, ssh_keygen
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from vaultpy import age
from vaultpy._internal import ageformat
from vaultpy._internal.ageformat import FormatError, parse
from vaultpy.errors import VaultpyError

SIZES = [0, 1, 65535, 65536, 65537, 200000]
CHUNK = 64 * 1024
B64 = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def payload_size(n: int) -> int:
    """nonce + one 16-byte tag per 64 KiB chunk (at least one chunk) + the plaintext."""
    chunks = max(1, -(-n // CHUNK))
    return 16 + 16 * chunks + n


def flip_low_bit(char: bytes) -> bytes:
    i = B64.index(char)
    return B64[i ^ 1 : (i ^ 1) + 1]


# --------------------------------------------------------------------------- a tiny age encryptor

_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def _polymod(values: list[int]) -> int:
    gen = [0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3]
    chk = 1
    for v in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ v
        for i in range(5):
            chk ^= gen[i] if (top >> i) & 1 else 0
    return chk


def bech32(hrp: str, data: bytes) -> str:
    acc = bits = 0
    five: list[int] = []
    for byte in data:
        acc, bits = (acc << 8) | byte, bits + 8
        while bits >= 5:
            bits -= 5
            five.append((acc >> bits) & 31)
    if bits:
        five.append((acc << (5 - bits)) & 31)
    expanded = [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]
    poly = _polymod(expanded + five + [0] * 6) ^ 1
    check = [(poly >> 5 * (5 - i)) & 31 for i in range(6)]
    return hrp + "1" + "".join(_BECH32[d] for d in five + check)


def b64(data: bytes) -> bytes:
    return base64.b64encode(data).rstrip(b"=")


def _hkdf(ikm: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt, info).derive(ikm)


def _raw(pub: X25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


class Key:
    """An X25519 key pair with its age encodings."""

    def __init__(self) -> None:
        sk = X25519PrivateKey.generate()
        raw_sk = sk.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                  serialization.NoEncryption())
        self.secret = bech32("age-secret-key-", raw_sk).upper()
        self.pub = _raw(sk.public_key())
        self.recipient = bech32("age", self.pub)
        self.identity = pyrage.x25519.Identity.from_str(self.secret)


def x25519_stanza(file_key: bytes, pub: bytes) -> tuple[list[bytes], bytes]:
    eph = X25519PrivateKey.generate()
    share = _raw(eph.public_key())
    shared = eph.exchange(X25519PublicKey.from_public_bytes(pub))
    wrap = _hkdf(shared, share + pub, b"age-encryption.org/v1/X25519")
    return [b"X25519", b64(share)], ChaCha20Poly1305(wrap).encrypt(b"\0" * 12, file_key, None)


def stanza(args: list[bytes], body: bytes) -> bytes:
    enc = b64(body)
    lines = [enc[i : i + 64] for i in range(0, len(enc), 64)]
    if not lines or len(lines[-1]) == 64:
        lines.append(b"")
    return b"-> " + b" ".join(args) + b"\n" + b"".join(line + b"\n" for line in lines)


def build(stanzas: list[bytes], file_key: bytes, chunks: list[bytes]) -> bytes:
    """An age file with a correct header MAC and STREAM payload for ``chunks``."""
    header = b"age-encryption.org/v1\n" + b"".join(stanzas) + b"---"
    mac = hmac.new(_hkdf(file_key, b"", b"header"), header, hashlib.sha256).digest()
    nonce = os.urandom(16)
    aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
    body = [nonce]
    for i, chunk in enumerate(chunks):
        last = b"\x01" if i == len(chunks) - 1 else b"\x00"
        body.append(aead.encrypt(i.to_bytes(11, "big") + last, chunk, None))
    return header + b" " + b64(mac) + b"\n" + b"".join(body)


def armor(data: bytes, width: int = 64) -> bytes:
    enc = base64.b64encode(data)
    lines = [enc[i : i + width] for i in range(0, len(enc), width)]
    return b"\n".join([ageformat.ARMOR_BEGIN, *lines, ageformat.ARMOR_END]) + b"\n"


@pytest.fixture(scope="module")
def key() -> Key:
    return Key()


@pytest.fixture(scope="module")
def file_key() -> bytes:
    return os.urandom(16)


@pytest.fixture(scope="module")
def good_stanza(key: Key, file_key: bytes) -> bytes:
    return stanza(*x25519_stanza(file_key, key.pub))


def mini_file(key: Key, file_key: bytes, good_stanza: bytes, extra: list[bytes] | None = None,
              plaintext: bytes = b"hello", chunks: list[bytes] | None = None) -> bytes:
    return build([good_stanza, *(extra or [])], file_key, chunks or [plaintext])


def test_mini_encryptor_makes_files_age_and_pyrage_accept(key, file_key, good_stanza, tmp_path):
    data = mini_file(key, file_key, good_stanza)
    assert bytes(pyrage.decrypt(data, [key.identity])) == b"hello"
    (tmp_path / "k").write_text(key.secret + "\n")
    (tmp_path / "f.age").write_bytes(data)
    out = subprocess.run([need("age"), "-d", "-i", str(tmp_path / "k"), str(tmp_path / "f.age")],
                         capture_output=True)
    assert out.returncode == 0 and out.stdout == b"hello", out.stderr
    assert parse(data).payload_size == payload_size(5)


# --------------------------------------------------------------------------- valid files


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = tmp_path_factory.mktemp("keys")
    x_ident, x_pub = age_keygen(d, "x.txt")
    s_key, s_pub = ssh_keygen(d, "ssh", comment="me@host")
    return {"X25519": (x_ident, x_pub), "ssh-ed25519": (s_key, s_pub)}


@pytest.fixture(scope="module")
def plaintexts():
    return {n: os.urandom(n) for n in SIZES}


@pytest.fixture(scope="module")
def age_cli_files(keys, plaintexts):
    """(kind, size, armored) -> bytes, each made by the real age CLI."""
    out = {}
    for kind, (_, pub) in keys.items():
        for n, text in plaintexts.items():
            for armored in (False, True):
                args = [need("age"), "-r", pub] + (["-a"] if armored else [])
                proc = subprocess.run(args, input=text, capture_output=True, check=True)
                out[kind, n, armored] = proc.stdout
    return out


@pytest.mark.parametrize("armored", [False, True], ids=["binary", "armored"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["X25519", "ssh-ed25519"])
def test_files_from_the_age_cli_parse(age_cli_files, keys, kind, size, armored):
    data = age_cli_files[kind, size, armored]
    header = parse(data)
    assert header.armored is armored
    assert header.payload_size == payload_size(size)
    assert len(header.mac) == 32
    stanzas = header.recipient_stanzas()
    assert [s.type for s in stanzas] == [kind]
    assert len(stanzas[0].body) == 32
    if kind == "ssh-ed25519":
        assert stanzas[0].args[0] == age.ssh_stanza_tag(age.normalize_recipient(keys[kind][1]))
        assert len(stanzas[0].args) == 2
    else:
        assert len(stanzas[0].args) == 1
    if armored:
        # the age CLI writes canonical armor: exactly what the strict decoder expects
        assert armor(ageformat.dearmor(data)) == data


@pytest.mark.parametrize("armored", [False, True], ids=["binary", "armored"])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("kind", ["X25519", "ssh-ed25519"])
def test_files_from_pyrage_parse_and_decrypt(keys, plaintexts, kind, size, armored):
    ident_path, pub = keys[kind]
    data = age.encrypt(plaintexts[size], [age.normalize_recipient(pub)], armor=armored)
    header = parse(data)
    assert header.armored is armored
    assert header.payload_size == payload_size(size)
    assert [s.type for s in header.recipient_stanzas()] == [kind]
    # rage adds random "grease" stanzas; they must parse too
    assert all(s.type == kind or s.type.endswith("-grease") for s in header.stanzas)
    ids = age.load_identity_file(ident_path)
    assert age.decrypt(data, ids, "x.age") == plaintexts[size]


def test_several_recipients_and_unknown_stanzas_parse(key, file_key, good_stanza):
    unknown = stanza([b"some-plugin", b"arg1", b"!#$%&"], os.urandom(100))
    exactly_48 = stanza([b"other"], os.urandom(48))        # 64 columns + empty final line
    empty_body = b"-> empty\n\n"
    data = mini_file(key, file_key, good_stanza, [unknown, exactly_48, empty_body])
    header = parse(data)
    assert [s.type for s in header.stanzas] == ["X25519", "some-plugin", "other", "empty"]
    assert header.stanzas[1].args == ("arg1", "!#$%&")
    assert [len(s.body) for s in header.stanzas] == [32, 100, 48, 0]
    assert bytes(pyrage.decrypt(data, [key.identity])) == b"hello"


def test_scrypt_stanza_alone_parses(file_key):
    """(pyrage.passphrase.encrypt output is parsed in test_identities.py; scrypt at
    work factor 18 is too slow to repeat here.)"""
    data = build([stanza([b"scrypt", b64(os.urandom(16)), b"18"], os.urandom(32))], file_key,
                 [b"x"])
    header = parse(data)
    assert [(s.type, s.args[1]) for s in header.stanzas] == [("scrypt", "18")]


@pytest.mark.parametrize("args", [[b"scrypt", b"AAAA", b"18"], [b"scrypt", None, b"018"],
                                  [b"scrypt", None], [b"scrypt", None, b"18", b"1"],
                                  [b"scrypt", None, b"-1"], [b"scrypt", None, b"x"]])
def test_malformed_scrypt_stanza(file_key, args):
    args = [a if a is not None else b64(os.urandom(16)) for a in args]
    with pytest.raises(FormatError, match="scrypt"):
        parse(build([stanza(args, os.urandom(32))], file_key, [b"x"]))


# --------------------------------------------------------------------------- invalid files


@pytest.fixture(scope="module")
def small(age_cli_files):
    """A 1-byte binary age file to an X25519 key, from the age CLI."""
    return age_cli_files["X25519", 1, False]


def _header_lines(data: bytes) -> tuple[list[bytes], bytes]:
    end = data.index(b"\n--- ")
    return data[:end].split(b"\n"), data[end:]


def rejects(data: bytes, *needles: str) -> str:
    with pytest.raises(FormatError) as exc:
        parse(data)
    message = str(exc.value)
    for needle in needles:
        assert needle in message, message
    return message


def test_empty_file():
    rejects(b"", "empty")


def test_whitespace_only_and_random_bytes():
    with pytest.raises(FormatError):
        parse(b"\n")
    rejects(os.urandom(64) + b"x", "not an age file")
    rejects(b"age-encryption.org/v1", "")   # version line without its newline


def test_wrong_version_line(small):
    rejects(small.replace(b"age-encryption.org/v1\n", b"age-encryption.org/v2\n", 1),
            "version")
    rejects(small.replace(b"age-encryption.org/v1\n", b"age-encryption.org/v1 \n", 1))
    rejects(small.replace(b"age-encryption.org/v1\n", b"rage-encryption.org/v1\n", 1))


def test_missing_mac_line(small):
    lines, rest = _header_lines(small)
    rejects(b"\n".join(lines) + b"\n", "MAC")
    # a header with no stanza at all
    rejects(b"age-encryption.org/v1\n" + rest.lstrip(b"\n"))


def test_mac_line_not_terminated(small):
    end = small.index(b"\n--- ")
    rejects(small[: end + 5 + 43], "MAC")


@pytest.mark.parametrize("mac_len", [0, 42, 44, 64])
def test_mac_of_wrong_length(small, mac_len):
    end = small.index(b"\n--- ")
    mac_end = small.index(b"\n", end + 5)
    rejects(small[: end + 5] + b"A" * mac_len + small[mac_end:], "MAC")


def test_mac_non_canonical_or_not_base64(small):
    end = small.index(b"\n--- ")
    mac_end = small.index(b"\n", end + 5)
    mac = small[end + 5 : mac_end]
    rejects(small[: end + 5] + mac[:-1] + flip_low_bit(mac[-1:]) + small[mac_end:],
            "non-canonical")
    rejects(small[: end + 5] + mac[:-1] + b"=" + small[mac_end:])
    rejects(small[: end + 5] + b"*" + mac[1:] + small[mac_end:])


def test_stanza_body_line_longer_than_64_columns(key, file_key, good_stanza):
    too_long = b"-> foo\n" + b"A" * 65 + b"\n"
    rejects(mini_file(key, file_key, good_stanza, [too_long]), "64 columns")


def test_stanza_body_last_line_must_be_short(key, file_key, good_stanza):
    """A body of exactly 64 columns needs a following (empty) final line."""
    rejects(mini_file(key, file_key, good_stanza, [b"-> foo\n" + b"A" * 64 + b"\n"]),
            "not terminated")


def test_non_canonical_base64_in_stanza_body(small):
    lines, rest = _header_lines(small)
    assert lines[1].startswith(b"-> X25519 ") and len(lines[2]) == 43
    lines[2] = lines[2][:-1] + flip_low_bit(lines[2][-1:])
    rejects(b"\n".join(lines) + rest, "non-canonical")


def test_stanza_body_with_padding_or_bad_chars(small):
    lines, rest = _header_lines(small)
    for bad in (lines[2][:-2] + b"==", lines[2][:-1] + b"*", lines[2][:-1] + b" "):
        rejects(b"\n".join([*lines[:2], bad]) + rest)


def test_stanza_body_of_impossible_length(key, file_key, good_stanza):
    rejects(mini_file(key, file_key, good_stanza, [b"-> foo\nA\n"]), "base64")


@pytest.mark.parametrize("arg_line", [b"->", b"-> ", b"->  foo", b"-> foo ", b"-> foo  bar",
                                      b"-> fo\xc3\xa9", b"-> foo\tbar"])
def test_malformed_stanza_argument_line(key, file_key, good_stanza, arg_line):
    rejects(mini_file(key, file_key, good_stanza, [arg_line + b"\n\n"]))


def test_line_that_is_not_a_stanza(key, file_key, good_stanza):
    rejects(mini_file(key, file_key, good_stanza, [b"foo\n"]), "stanza")


@pytest.mark.parametrize("args", [[b"X25519"], [b"X25519", b"a", b"b"]])
def test_x25519_stanza_with_wrong_argument_count(key, file_key, good_stanza, args):
    share = x25519_stanza(file_key, Key().pub)[0][1]
    full = [args[0], share, *args[2:]] if len(args) > 1 else args
    rejects(mini_file(key, file_key, good_stanza, [stanza(full, os.urandom(32))]),
            "wrong number of arguments")


@pytest.mark.parametrize("size", [0, 16, 31, 33, 48])
def test_x25519_stanza_body_not_32_bytes(key, file_key, good_stanza, size):
    args, _ = x25519_stanza(file_key, Key().pub)
    rejects(mini_file(key, file_key, good_stanza, [stanza(args, os.urandom(size))]),
            "not 32 bytes")


@pytest.mark.parametrize("share_len", [31, 33])
def test_x25519_share_of_wrong_length(key, file_key, good_stanza, share_len):
    bad = stanza([b"X25519", b64(os.urandom(share_len))], os.urandom(32))
    rejects(mini_file(key, file_key, good_stanza, [bad]), "not 32 bytes")


def test_ssh_ed25519_stanza_checks(key, file_key, good_stanza):
    for args in ([b"ssh-ed25519", b64(os.urandom(5)), b64(os.urandom(32))],
                 [b"ssh-ed25519", b64(os.urandom(4))],
                 [b"ssh-ed25519", b64(os.urandom(4)), b64(os.urandom(31))]):
        rejects(mini_file(key, file_key, good_stanza, [stanza(args, os.urandom(32))]))
    ok = stanza([b"ssh-ed25519", b64(os.urandom(4)), b64(os.urandom(32))], os.urandom(32))
    parse(mini_file(key, file_key, good_stanza, [ok]))


def test_scrypt_stanza_mixed_with_others(key, file_key, good_stanza):
    scrypt = stanza([b"scrypt", b64(os.urandom(16)), b"10"], os.urandom(32))
    rejects(mini_file(key, file_key, good_stanza, [scrypt]), "scrypt")


@pytest.mark.parametrize(("size", "cut"), [(0, 1), (0, 17), (1, 17), (1, 18), (65537, 1),
                                           (65553, 17), (200000, 200000 - 65536 * 3),
                                           (200000, 200000 - 65536 * 3 + 15)])
def test_truncated_payload(age_cli_files, plaintexts, keys, size, cut):
    data = age_cli_files.get(("X25519", size, False))
    if data is None:
        data = subprocess.run([need("age"), "-r", keys["X25519"][1]], input=os.urandom(size),
                              capture_output=True, check=True).stdout
    rejects(data[:-cut], "truncated")


def test_truncation_inside_the_last_chunk_is_caught_by_decryption(age_cli_files, keys):
    """The format alone cannot see a shorter last chunk; vaultpy's decrypt must still
    refuse it, with a clean error."""
    data = age_cli_files["X25519", 65535, False][:-1]
    parse(data)
    with pytest.raises(VaultpyError, match="damaged"):
        age.decrypt(data, age.load_identity_file(keys["X25519"][0]), "x.age")


def test_header_only_file(small):
    end = small.index(b"\n", small.index(b"\n--- ") + 5)
    rejects(small[: end + 1], "truncated")


def test_extra_empty_chunk_after_a_full_chunk(age_cli_files, key, file_key, good_stanza):
    full = age_cli_files["X25519", 65536, False]
    rejects(full + os.urandom(16), "chunk")
    # the same, correctly encrypted: a full 64 KiB chunk, then an empty last chunk
    text = os.urandom(CHUNK)
    rejects(mini_file(key, file_key, good_stanza, chunks=[text, b""]), "chunk")


def test_only_chunk_may_be_empty(key, file_key, good_stanza):
    assert parse(mini_file(key, file_key, good_stanza, chunks=[b""])).payload_size == 32


# --------------------------------------------------------------------------- armor


@pytest.fixture(scope="module")
def armored(age_cli_files):
    """An armored file with several full 64-column lines and a short padded last one."""
    data = age_cli_files["X25519", 1, True]
    body = data.split(b"\n")[1:-2]
    assert len(body) >= 3 and all(len(line) == 64 for line in body[:-1])
    return data


def _armor_lines(data: bytes) -> list[bytes]:
    lines = data.split(b"\n")
    assert lines[-1] == b""
    return lines[:-1]


def test_armor_with_a_63_column_line_in_the_middle(armored):
    lines = _armor_lines(armored)
    joined = b"".join(lines[1:-1])
    rewrapped = [joined[:63]] + [joined[i : i + 64] for i in range(63, len(joined), 64)]
    assert b"".join(rewrapped) == joined
    rejects(b"\n".join([lines[0], *rewrapped, lines[-1]]) + b"\n", "64 columns")


def test_armor_lines_longer_than_64(armored):
    raw = ageformat.dearmor(armored)
    rejects(armor(raw, width=76), "64 columns")
    rejects(armor(raw, width=48), "64 columns")


def test_armor_with_trailing_garbage_after_end(armored):
    rejects(armored + b"garbage\n")
    rejects(armored + b"-----BEGIN AGE ENCRYPTED FILE-----\n")
    rejects(armored.rstrip(b"\n") + b"x\n")


def test_armor_with_garbage_before_begin(armored):
    rejects(b"hello\n" + armored)


def test_armor_missing_end_line(armored):
    lines = _armor_lines(armored)
    rejects(b"\n".join(lines[:-1]) + b"\n", "END")
    rejects(b"\n".join(lines[:-2]) + b"\n", "END")
    rejects(b"\n".join([*lines[:-1], b"-----END AGE ENCRYPTED FILE----"]) + b"\n", "END")


def test_armor_missing_body(armored):
    lines = _armor_lines(armored)
    rejects(lines[0] + b"\n" + lines[-1] + b"\n")


def test_armor_with_wrong_label():
    rejects(armor(b"x").replace(b"BEGIN AGE ENCRYPTED", b"BEGIN AGE ENCRYPTED X"))


def _armor_for_padding(key: Key, file_key: bytes, good_stanza: bytes, pad: int) -> bytes:
    """An armored mini file whose base64 ends in ``pad`` '=' characters."""
    for size in range(1, 10):
        raw = mini_file(key, file_key, good_stanza, plaintext=b"x" * size)
        if (-len(raw)) % 3 == pad:
            return armor(raw)
    raise AssertionError("unreachable")


@pytest.mark.parametrize("pad", [1, 2])
def test_armor_non_canonical_padding(key, file_key, good_stanza, pad):
    data = _armor_for_padding(key, file_key, good_stanza, pad)
    parse(data)
    lines = _armor_lines(data)
    last = lines[-2]
    assert last.endswith(b"=" * pad) and not last.endswith(b"=" * (pad + 1))
    i = len(last) - pad - 1                   # the char that holds the unused bits
    bad = last[:i] + flip_low_bit(last[i : i + 1]) + last[i + 1 :]
    rejects(b"\n".join([*lines[:-2], bad, lines[-1]]) + b"\n", "non-canonical")
    # padding left off is not accepted either
    rejects(b"\n".join([*lines[:-2], last.rstrip(b"="), lines[-1]]) + b"\n")
    # nor is extra padding
    rejects(b"\n".join([*lines[:-2], last + b"==", lines[-1]]) + b"\n")


def test_armor_invalid_base64_character(armored):
    lines = _armor_lines(armored)
    lines[1] = b"*" + lines[1][1:]
    rejects(b"\n".join(lines) + b"\n", "base64")


def test_armor_crlf_is_accepted_but_not_mixed(armored):
    crlf = armored.replace(b"\n", b"\r\n")
    assert parse(crlf).armored
    rejects(armored.replace(b"\n", b"\r\n", 2))
    rejects(crlf.replace(b"\r\n", b"\n", 2))


def test_armor_with_surrounding_whitespace_parses(armored):
    assert parse(b"\n\n" + armored + b"\n \t\n").armored


def test_armored_binary_garbage_inside_armor(armored):
    """Valid armor around a damaged age file: the inner checks still apply."""
    raw = ageformat.dearmor(armored)
    rejects(armor(raw[:-2]), "truncated")
    rejects(armor(raw.replace(b"v1\n", b"v2\n", 1)), "version")


# --------------------------------------------------------------------------- vs. pyrage / age


def _age_cli_accepts(data: bytes, key: Key, tmp_path: Path) -> bool:
    (tmp_path / "k.txt").write_text(key.secret + "\n")
    (tmp_path / "probe.age").write_bytes(data)
    proc = subprocess.run([need("age"), "-d", "-i", str(tmp_path / "k.txt"),
                           str(tmp_path / "probe.age")], capture_output=True)
    return proc.returncode == 0


def _pyrage_accepts(data: bytes, key: Key) -> bool:
    try:
        pyrage.decrypt(data, [key.identity])
    except pyrage.DecryptError:
        return False
    return True


def test_vaultpy_rejects_an_unterminated_stanza_body_that_pyrage_accepts(
        key, file_key, good_stanza, tmp_path):
    """A stanza whose body ends with a full 64-column line and no short final line is
    malformed (c2sp.org/age: the last body line is always shorter than 64 columns).
    pyrage 1.4 decrypts such a file, the Go age CLI refuses it; vaultpy must refuse it."""
    data = mini_file(key, file_key, good_stanza, [b"-> foo\n" + b"A" * 64 + b"\n"])
    findings = {"pyrage": _pyrage_accepts(data, key), "age": _age_cli_accepts(data, key, tmp_path)}
    print("accepted by:", findings)
    ident = age.Identity("k", "x25519", key.identity)
    with pytest.raises(VaultpyError, match="not a valid age file"):
        age.decrypt(data, [ident], "bad.age")


@pytest.mark.parametrize("mutation", ["3 args", "body 31", "share 31", "non-canonical share"])
def test_vaultpy_rejects_malformed_x25519_stanzas_age_and_pyrage_skip(
        key, file_key, good_stanza, mutation):
    """The spec says an X25519 identity MUST reject a malformed X25519 stanza; age 1.1 and
    pyrage both skip it when another stanza matches.  vaultpy rejects the file."""
    args, body = x25519_stanza(file_key, Key().pub)
    if mutation == "3 args":
        args = [*args, b"AAAA"]
    elif mutation == "body 31":
        body = body[:31]
    elif mutation == "share 31":
        args = [args[0], b64(os.urandom(31))]
    else:
        args = [args[0], args[1][:-1] + flip_low_bit(args[1][-1:])]
    data = mini_file(key, file_key, good_stanza, [stanza(args, body)])
    ident = age.Identity("k", "x25519", key.identity)
    with pytest.raises(VaultpyError, match="not a valid age file"):
        age.decrypt(data, [ident], "bad.age")


def test_vaultpy_rejects_mixed_line_endings_in_armor(armored, keys):
    """pyrage and the age CLI both accept armor whose line endings mix CRLF and LF; the
    spec only allows choosing LF or CRLF, and vaultpy refuses the mixture."""
    data = armored.replace(b"\n", b"\r\n", 2)
    ids = age.load_identity_file(keys["X25519"][0])
    with pytest.raises(VaultpyError, match="not a valid age file"):
        age.decrypt(data, ids, "bad.age")


@pytest.mark.parametrize(("before", "after"), [(b"", b"\n\n"), (b"\n", b""), (b"  \n", b""),
                                               (b"\r\n", b"\r\n")],
                         ids=["trailing-newlines", "leading-newline", "leading-spaces",
                              "crlf-around"])
def test_parse_and_decrypt_agree_on_whitespace_around_armor(armored, keys, plaintexts,
                                                             before, after):
    """Whatever the strict parser accepts, vaultpy's decrypt must be able to open
    (otherwise `vaultpy check` passes a file that activation cannot decrypt)."""
    data = before + armored + after
    try:
        parse(data)
    except FormatError:
        return
    ids = age.load_identity_file(keys["X25519"][0])
    assert age.decrypt(data, ids, "x.age") == plaintexts[1]


def test_cli_decrypt_refuses_out_of_spec_master_cleanly(make_repo, key, file_key, good_stanza):
    from conftest import assert_one_clean_error

    repo = make_repo(hosts=0, secrets={"s": b""}, encrypt=False)
    repo.write_hosts(hosts_toml([key.recipient], ["s"], {}))
    ident = repo.root / "keys" / "mini.txt"
    ident.write_text(key.secret + "\n")
    (repo.root / "secrets" / "s.age").write_bytes(
        mini_file(key, file_key, good_stanza, [b"-> foo\n" + b"A" * 64 + b"\n"]))
    proc = repo.run("decrypt", "s", "-i", str(ident))
    assert proc.stdout == b""
    assert_one_clean_error(proc, "secrets/s.age", "not a valid age file")
    # the well-formed version decrypts
    (repo.root / "secrets" / "s.age").write_bytes(mini_file(key, file_key, good_stanza))
    assert repo.ok("decrypt", "s", "-i", str(ident)).stdout == b"hello"
