"""Master identities: age-keygen files, OpenSSH ed25519 keys (plain or with a
passphrase), passphrase-encrypted (``age -p``) identity files, clean errors that
never echo key material, and the -i > VAULTPY_IDENTITY > hosts.toml precedence."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pyrage
import pytest
from conftest import age_keygen, assert_one_clean_error, need, ssh_keygen, toml_str
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from test_ageformat import armor, b64, build, stanza

from vaultpy import age
from vaultpy.errors import VaultpyError

SECRET = b"the master secret \x00\xff\n"


def write_hosts(repo, recipients: list[str], identity: str | None = None) -> None:
    lines = ["[vaultpy]", "recipients = [" + ", ".join(map(toml_str, recipients)) + "]"]
    if identity is not None:
        lines.append(f"identity = {toml_str(identity)}")
    lines += ["", "[secrets.s]", ""]
    repo.write_hosts("\n".join(lines))


def new_repo(make_repo, recipients: list[str], identity: str | None = None):
    """A repository whose secret ``s`` is encrypted to ``recipients`` (and nothing else)."""
    repo = make_repo(hosts=0, secrets={}, encrypt=False)
    write_hosts(repo, recipients, identity)
    repo.env = {"HOME": str(repo.root / "home")}        # no ~/.config/vaultpy/master.txt
    repo.ok("encrypt", "s", input=SECRET)
    return repo


def no_tty_run(repo, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    """Run the CLI with no controlling terminal at all (a new session) and stdin closed,
    so a passphrase prompt cannot hang the test."""
    full = {**os.environ, "NO_COLOR": "1", **repo.env, **env}
    full.pop("VAULTPY_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "vaultpy", *args], cwd=repo.root, env=full,
                          stdin=subprocess.DEVNULL, capture_output=True, start_new_session=True,
                          timeout=60)


def assert_no_leak(proc: subprocess.CompletedProcess[bytes], secret: bytes, min_len: int = 10
                   ) -> None:
    """No chunk of ``secret`` (``min_len`` bytes or more) appears in stdout or stderr;
    the fixed, public markers of the key formats are not counted."""
    out = proc.stdout + proc.stderr
    for piece in re.split(rb"AGE-SECRET-KEY-1|# created: |# public key: ", secret):
        for i in range(0, len(piece) - min_len + 1):
            chunk = piece[i : i + min_len]
            assert chunk not in out, f"leaked {chunk!r}: {out!r}"


@pytest.fixture(scope="module")
def keydir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("idkeys")


@pytest.fixture(scope="module")
def age_pw_identity(keydir):
    """An ``age -p``-style identity file (made with pyrage.passphrase.encrypt, since the
    age CLI needs a terminal for -p): returns (file, recipient, passphrase)."""
    ident, recipient = age_keygen(keydir, "inner.txt")
    text = ident.read_bytes()
    ident.unlink()
    path = keydir / "master.age"
    path.write_bytes(bytes(pyrage.passphrase.encrypt(text, "correct horse")))
    return path, recipient, "correct horse"


# --------------------------------------------------------------------------- age-keygen files


def test_several_age_keys_with_comments_in_one_file(tmp_path):
    a, a_pub = age_keygen(tmp_path, "a.txt")
    b, b_pub = age_keygen(tmp_path, "b.txt")
    combined = tmp_path / "both.txt"
    combined.write_text("# my keys\n\n" + a.read_text() + "\n   \n# second one\n"
                        + "  " + b.read_text().replace("\n", "\n  ") + "\n")
    ids = age.load_identity_file(combined)
    assert [i.kind for i in ids] == ["x25519", "x25519"]
    for pub in (a_pub, b_pub):
        ct = age.encrypt(SECRET, [pub])
        assert age.decrypt(ct, ids, "x.age") == SECRET


def test_age_keygen_file_with_crlf_line_endings(tmp_path):
    a, a_pub = age_keygen(tmp_path, "a.txt")
    a.write_bytes(a.read_bytes().replace(b"\n", b"\r\n"))
    assert age.decrypt(age.encrypt(b"x", [a_pub]), age.load_identity_file(a), "x") == b"x"


def test_cli_decrypts_with_a_multi_key_file(make_repo, tmp_path):
    other, _ = age_keygen(tmp_path, "other.txt")
    repo = make_repo(hosts=0, secrets={"s": SECRET})
    multi = tmp_path / "multi.txt"
    multi.write_text(other.read_text() + "\n" + repo.identity.read_text())
    assert repo.ok("decrypt", "s", "-i", str(multi)).stdout == SECRET
    # the other key alone cannot: a clean error naming the identity file that was tried
    proc = repo.run("decrypt", "s", "-i", str(other))
    assert proc.stdout == b""
    assert_one_clean_error(proc, "secrets/s.age", "other.txt")


# --------------------------------------------------------------------------- OpenSSH keys


def test_openssh_ed25519_unencrypted_key(tmp_path):
    key, pub = ssh_keygen(tmp_path, "id_ed25519", comment="me@laptop")
    ids = age.load_identity_file(key, ask=lambda prompt: pytest.fail("asked for a passphrase"))
    assert [i.kind for i in ids] == ["ssh"]
    # a file made by the real age CLI to the .pub line
    ct = subprocess.run([need("age"), "-R", str(tmp_path / "id_ed25519.pub")], input=SECRET,
                        capture_output=True, check=True).stdout
    assert age.decrypt(ct, ids, "x.age") == SECRET
    assert age.decrypt(age.encrypt(SECRET, [age.normalize_recipient(pub)]), ids, "y") == SECRET


def test_openssh_ed25519_key_with_passphrase_library(tmp_path):
    key, pub = ssh_keygen(tmp_path, "id_ed25519", passphrase="s3cret pass")
    prompts: list[str] = []

    def ask(prompt: str) -> str:
        prompts.append(prompt)
        return "s3cret pass"

    ids = age.load_identity_file(key, ask=ask)
    assert len(prompts) == 1 and "id_ed25519" in prompts[0]
    assert age.decrypt(age.encrypt(SECRET, [age.normalize_recipient(pub)]), ids, "x") == SECRET
    with pytest.raises(VaultpyError, match="wrong passphrase") as exc:
        age.load_identity_file(key, ask=lambda _p: "s3cret pas")
    assert "s3cret" not in str(exc.value)


def test_cli_openssh_key_with_passphrase_file(make_repo, tmp_path):
    key, pub = ssh_keygen(tmp_path, "id_ed25519", passphrase="pw with spaces")
    repo = new_repo(make_repo, [pub])
    pwfile = tmp_path / "pw"
    pwfile.write_text("pw with spaces\nsecond line is ignored\n")
    proc = repo.ok("decrypt", "s", "-i", str(key), env={"VAULTPY_PASSPHRASE_FILE": str(pwfile)})
    assert proc.stdout == SECRET

    pwfile.write_text("wrong pw\n")
    proc = repo.run("decrypt", "s", "-i", str(key), env={"VAULTPY_PASSPHRASE_FILE": str(pwfile)})
    assert proc.stdout == b""
    assert_one_clean_error(proc, "id_ed25519", "wrong passphrase")
    assert b"wrong pw" not in proc.stderr


def test_cli_passphrase_needed_without_terminal_or_file(make_repo, tmp_path):
    key, pub = ssh_keygen(tmp_path, "id_ed25519", passphrase="pw")
    repo = new_repo(make_repo, [pub])
    proc = no_tty_run(repo, "decrypt", "s", "-i", str(key), env={})
    assert proc.stdout == b""
    assert_one_clean_error(proc, "VAULTPY_PASSPHRASE_FILE")
    proc = no_tty_run(repo, "decrypt", "s", "-i", str(key),
                      env={"VAULTPY_PASSPHRASE_FILE": str(tmp_path / "missing")})
    assert_one_clean_error(proc, "missing", "passphrase file")


# --------------------------------------------------------------------------- age -p identities


def test_cli_passphrase_encrypted_identity(make_repo, age_pw_identity, tmp_path):
    path, recipient, passphrase = age_pw_identity
    assert path.read_bytes().startswith(b"age-encryption.org/v1\n-> scrypt ")
    repo = new_repo(make_repo, [recipient])
    pwfile = tmp_path / "pw"
    pwfile.write_text(passphrase + "\n")
    proc = repo.ok("decrypt", "s", "-i", str(path), env={"VAULTPY_PASSPHRASE_FILE": str(pwfile)})
    assert proc.stdout == SECRET


def scrypt_encrypt(plaintext: bytes, passphrase: str, log_n: int = 10) -> bytes:
    """``age -p`` encryption at a low work factor (the real one, 18, costs seconds per
    attempt); the file format is the same as pyrage.passphrase.encrypt's."""
    salt, file_key = os.urandom(16), os.urandom(16)
    wrap = Scrypt(salt=b"age-encryption.org/v1/scrypt" + salt, length=32, n=2**log_n, r=8,
                  p=1).derive(passphrase.encode())
    body = ChaCha20Poly1305(wrap).encrypt(b"\0" * 12, file_key, None)
    return build([stanza([b"scrypt", b64(salt), str(log_n).encode()], body)], file_key,
                 [plaintext])


def test_cli_passphrase_encrypted_identity_wrong_passphrase(make_repo, tmp_path):
    ident, recipient = age_keygen(tmp_path, "inner.txt")
    path = tmp_path / "master.age"
    path.write_bytes(scrypt_encrypt(ident.read_bytes(), "the passphrase"))
    ident.unlink()
    repo = new_repo(make_repo, [recipient])
    pwfile = tmp_path / "pw"
    pwfile.write_text("the passphrase\n")
    env = {"VAULTPY_PASSPHRASE_FILE": str(pwfile)}
    assert repo.ok("decrypt", "s", "-i", str(path), env=env).stdout == SECRET
    pwfile.write_text("not the passphrase\n")
    proc = repo.run("decrypt", "s", "-i", str(path), env=env)
    assert proc.stdout == b""
    assert_one_clean_error(proc, "master.age", "wrong passphrase")
    assert b"not the passphrase" not in proc.stderr


def test_armored_passphrase_encrypted_identity_library(age_pw_identity, tmp_path):
    """``age -p -a``: the same file in ASCII armor."""
    binary, recipient, passphrase = age_pw_identity
    path = tmp_path / "master.age.asc"
    path.write_bytes(armor(binary.read_bytes()))
    asked: list[str] = []
    ids = age.load_identity_file(path, ask=lambda p: asked.append(p) or passphrase)
    assert len(asked) == 1 and "master.age.asc" in asked[0]
    assert age.decrypt(age.encrypt(SECRET, [recipient]), ids, "x") == SECRET
    # a wrong passphrase, cheaply (low work factor), armored as well
    cheap = tmp_path / "cheap.age.asc"
    cheap.write_bytes(armor(scrypt_encrypt(b"AGE-SECRET-KEY-1XYZ\n", "right")))
    with pytest.raises(VaultpyError, match="wrong passphrase") as exc:
        age.load_identity_file(cheap, ask=lambda _p: "wrong")
    assert "XYZ" not in str(exc.value)


def test_damaged_passphrase_encrypted_identity(tmp_path, age_pw_identity):
    path, _, _ = age_pw_identity
    """A damaged header is refused before any passphrase prompt (the format check needs
    no key).  (A cut inside the payload cannot be told from a wrong passphrase.)"""
    data = path.read_bytes()
    bad = tmp_path / "bad.age"
    for cut in (data[:60], data[: data.index(b"\n--- ") + 20], data[: data.index(b"\n--- ")]):
        bad.write_bytes(cut)
        with pytest.raises(VaultpyError, match="damaged encrypted identity"):
            age.load_identity_file(bad, ask=lambda _p: pytest.fail("asked for a passphrase"))


# --------------------------------------------------------------------------- secret hygiene


def _damaged_age_key(tmp_path: Path) -> bytes:
    ident, _ = age_keygen(tmp_path, "gen.txt")
    line = next(ln for ln in ident.read_text().splitlines() if ln.startswith("AGE-SECRET"))
    i = len(line) - 10
    swapped = "Q" if line[i] != "Q" else "P"
    return (line[:i] + swapped + line[i + 1 :] + "\n").encode()


def _damaged_ssh_key(tmp_path: Path) -> bytes:
    key, _ = ssh_keygen(tmp_path, "broken")
    lines = key.read_bytes().split(b"\n")
    lines[3] = lines[3][:10] + bytes(reversed(lines[3][10:30])) + lines[3][30:]
    return b"\n".join(lines)


GARBAGE = {
    "text": lambda _d: b"hunter2-very-secret-password-value\nsecond-line-also-secret-xyz\n",
    "one-long-line": lambda _d: b"x" * 5000,
    "binary": lambda _d: bytes(range(256)) * 4,
    "damaged-age-key": _damaged_age_key,
    "damaged-ssh-key": _damaged_ssh_key,
    "pub-key-by-mistake": lambda _d: b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHsecretcomment x\n",
    "secret-after-key": lambda d: (age_keygen(d, "k.txt")[0].read_bytes()
                                   + b"password=hunter2-very-secret\n"),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
def test_garbage_identity_file_is_a_clean_error_without_its_content(make_repo, tmp_path, kind):
    content = GARBAGE[kind](tmp_path)
    bad = tmp_path / "garbage.txt"
    bad.write_bytes(content)
    with pytest.raises(VaultpyError) as exc:
        age.load_identity_file(bad, ask=lambda _p: pytest.fail("asked for a passphrase"))
    message = str(exc.value)
    assert "garbage.txt" in message and "\n" not in message
    assert_no_leak(subprocess.CompletedProcess([], 1, message.encode(), b""), content)


def test_cli_garbage_identity(make_repo, tmp_path):
    repo = make_repo(hosts=0, secrets={"s": SECRET})
    bad = tmp_path / "garbage.txt"
    content = b"AGE-SECRET-KEY-1THISISNOTAREALKEYBUTITLOOKSSECRETQQQQQQQQQQQQQQQQQQQQQQQQQQ\n"
    bad.write_bytes(content)
    proc = repo.run("decrypt", "s", "-i", str(bad))
    assert proc.stdout == b""
    assert_one_clean_error(proc, "garbage.txt")
    assert_no_leak(proc, content)
    for target in (tmp_path / "missing.txt", tmp_path):
        proc = repo.run("decrypt", "s", "-i", str(target))
        assert_one_clean_error(proc, str(target.name), "cannot read identity")


def test_empty_identity_file(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(VaultpyError, match="no identity"):
        age.load_identity_file(empty)


# --------------------------------------------------------------------------- precedence


@pytest.fixture
def three(make_repo, tmp_path):
    """A repo whose secret is encrypted to keys A, B and C, hosts.toml naming C (relative
    path), and a garbage file that makes any load of it fail."""
    keys = {n: age_keygen(tmp_path, f"{n}.txt") for n in "ABC"}
    repo = make_repo(hosts=0, secrets={}, encrypt=False)
    (repo.root / "keys" / "C.txt").write_bytes(keys["C"][0].read_bytes())
    write_hosts(repo, [k[1] for k in keys.values()], identity="keys/C.txt")
    repo.env = {"HOME": str(tmp_path / "home")}
    repo.ok("encrypt", "s", input=SECRET)
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("not a key\n")
    return repo, {n: k[0] for n, k in keys.items()}, garbage


def test_dash_i_beats_env_and_hosts_toml(three, make_repo, tmp_path):
    repo, keys, garbage = three
    write_hosts(repo, [age_keygen(tmp_path, "x.txt")[1]], identity=str(garbage))
    # (the secret is still encrypted to A, B, C; hosts.toml now names a garbage identity)
    env = {"VAULTPY_IDENTITY": str(garbage)}
    assert repo.ok("decrypt", "s", "-i", str(keys["A"]), env=env).stdout == SECRET
    assert repo.ok("-i", str(keys["A"]), "decrypt", "s", env=env).stdout == SECRET
    # repeated -i: every file is used
    other, _ = age_keygen(tmp_path, "other.txt")
    assert repo.ok("decrypt", "s", "-i", str(other), "-i", str(keys["B"]),
                   env=env).stdout == SECRET


def test_dash_i_with_a_wrong_key_does_not_fall_back(three, tmp_path):
    repo, keys, _ = three
    other, _ = age_keygen(tmp_path, "other.txt")
    proc = repo.run("decrypt", "s", "-i", str(other), env={"VAULTPY_IDENTITY": str(keys["A"])})
    line = assert_one_clean_error(proc, "none of the identities")
    assert "other.txt" in line and "A.txt" not in line and "C.txt" not in line


def test_env_beats_hosts_toml(three, tmp_path):
    repo, keys, garbage = three
    assert repo.ok("decrypt", "s", env={"VAULTPY_IDENTITY": str(keys["B"])}).stdout == SECRET
    # a ':'-separated list
    other, _ = age_keygen(tmp_path, "other.txt")
    assert repo.ok("decrypt", "s", env={"VAULTPY_IDENTITY": f"{other}:{keys['B']}"}
                   ).stdout == SECRET
    # hosts.toml's key is not consulted when VAULTPY_IDENTITY is set
    proc = repo.run("decrypt", "s", env={"VAULTPY_IDENTITY": str(other)})
    line = assert_one_clean_error(proc, "none of the identities")
    assert "C.txt" not in line
    proc = repo.run("decrypt", "s", env={"VAULTPY_IDENTITY": str(garbage)})
    assert_one_clean_error(proc, "garbage.txt")


def test_hosts_toml_identity_relative_to_hosts_toml(three, tmp_path):
    repo, _, _ = three
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = repo.ok("-C", str(repo.root), "decrypt", "s", env={"VAULTPY_IDENTITY": ""},
                   cwd=elsewhere)
    assert proc.stdout == SECRET


def test_no_identity_anywhere(make_repo, tmp_path):
    repo = new_repo(make_repo, [age_keygen(tmp_path, "k.txt")[1]])
    proc = repo.run("decrypt", "s", env={"VAULTPY_IDENTITY": ""})
    assert_one_clean_error(proc, "no master identity")


def test_default_identity_in_home(make_repo, tmp_path):
    home = tmp_path / "home"
    (home / ".config" / "vaultpy").mkdir(parents=True)
    _, pub = age_keygen(home / ".config" / "vaultpy", "master.txt")
    repo = new_repo(make_repo, [pub])
    proc = repo.ok("decrypt", "s", env={"VAULTPY_IDENTITY": "", "HOME": str(home)})
    assert proc.stdout == SECRET


def test_a_public_key_given_as_the_identity_says_so(make_repo, tmp_path):
    """-i ~/.ssh/id_ed25519.pub was told "an identity file holds AGE-SECRET-KEY-1…
    lines", which sent an SSH user looking for an age key (a migration review)."""
    repo = make_repo(hosts=1, secrets={"alpha": b"a"})
    key, _pub = ssh_keygen(tmp_path, "id_ed25519")
    _ident, age_pub = age_keygen(tmp_path, "m.txt")
    (tmp_path / "age.pub").write_text(age_pub + "\n")
    for given, private in ((f"{key}.pub", str(key)),
                           (str(tmp_path / "age.pub"), "the private key file")):
        proc = repo.run("-i", given, "decrypt", "alpha")
        assert_one_clean_error(proc, given, "line 1: a public key, not a private one",
                               f"give {private} instead")
