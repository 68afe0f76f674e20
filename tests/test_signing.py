"""The signed cache (vaultpy/signing.py): renc signs each host's list of cache files,
check verifies it with no secret, activation installs only listed files.

Real peers: OpenSSH's ``ssh-keygen -Y verify`` accepts vaultpy's signatures and
vaultpy accepts ``ssh-keygen -Y sign``'s; coreutils' ``sha256sum -c`` accepts the
list; forged files are made with the real ``age`` CLI from the host's public key,
as anyone who can write the repository could.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from activate_helpers import activate, activate_ok, make_host_root
from conftest import Repo, assert_one_clean_error, need

SECRETS = {"alpha": b"alpha-value-1", "beta": b"beta--value-2"}    # one length: swappable


def signed_repo(make_repo: object) -> Repo:
    repo: Repo = make_repo(hosts=2, secrets=SECRETS)  # type: ignore[operator]
    repo.ok("renc")
    proc = repo.ok("signing-key")
    assert b"run vaultpy renc" in proc.stderr
    return repo


def file_of(repo: Repo, host: str, sid: str) -> Path:
    (found,) = (repo.cache / host).glob(f"{sid}.*.age")
    return found


def check_fails(repo: Repo, *needles: str) -> str:
    """check fails cleanly, with every needle on one line of its report (stdout)."""
    proc = repo.run("check")
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 1 and "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if all(n in ln for n in needles)]
    assert lines, f"no line with {needles!r} in:\n{out}"
    return lines[0]


def forge(repo: Repo, host: str, sid: str, value: bytes) -> Path:
    """What anyone with write access could do: encrypt to the host's public key."""
    path = file_of(repo, host, sid)
    pub = repo.hosts[host].pubkey
    path.write_bytes(subprocess.run([need("age"), "-r", pub], input=value,
                                    capture_output=True, check=True).stdout)
    return path


def test_signing_key_then_renc_signs_each_host_once(make_repo: object) -> None:
    repo = signed_repo(make_repo)
    text = (repo.root / "hosts.toml").read_text()
    assert re.search(r'^signing_key = "ssh-ed25519 AAAA\S+ vaultpy cache signing"$', text, re.M)
    assert 'signing_secret = "cache_signing"' in text and "[secrets.cache_signing]" in text
    assert (repo.root / "secrets" / "cache_signing.age").is_file()
    # The files renc wrote before the key are signed by nobody: check says so per host.
    check_fails(repo, "host 'host0'", "is not signed: missing")
    before = repo.cache_files()
    proc = repo.ok("renc")
    assert b"signed the list of host0, host1" in proc.stdout
    # The "repaired" column, explained: no list vouched for the files found.
    assert proc.stdout.decode().splitlines()[-1] == (
        "re-encrypted every file of host0, host1: no signed list vouched for them "
        "(SHA256SUMS missing)")
    after = repo.cache_files()
    # Every file re-encrypted once (a file nobody signed is not trusted as found).
    assert {k for k in before if k in after and before[k] == after[k]} == {
        "MASTERS", "MASTERS.sig"}       # (signing-key signed the masters' values)
    assert {"host0/SHA256SUMS", "host0/SHA256SUMS.sig"} <= set(after)
    repo.ok("check")
    # Nothing changed: nothing is written, the lists included (no git churn).
    proc = repo.ok("renc")
    assert b"nothing to do" in proc.stdout and b"signed" not in proc.stdout
    assert repo.cache_files() == after
    # The list names exactly the host's files, with their SHA-256.
    sums = (repo.cache / "host0" / "SHA256SUMS").read_text().splitlines()
    assert sorted(line.split("  ")[1] for line in sums) == sorted(
        p.name for p in (repo.cache / "host0").glob("*.age"))


def test_openssh_and_coreutils_verify_what_renc_signed(make_repo: object, tmp_path: Path
                                                       ) -> None:
    repo = signed_repo(make_repo)
    repo.ok("renc")
    public = repo.ok("signing-key", "--public").stdout.decode().strip()
    signers = tmp_path / "signers"
    signers.write_text(f"vaultpy {public}\n")
    host_dir = repo.cache / "host0"
    sums = (host_dir / "SHA256SUMS").read_bytes()

    def verify(namespace: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([need("ssh-keygen"), "-Y", "verify", "-f", str(signers), "-I",
                               "vaultpy", "-n", namespace, "-s", "SHA256SUMS.sig"],
                              input=sums, capture_output=True, cwd=host_dir)

    assert verify("vaultpy-cache:host0").returncode == 0
    assert verify("vaultpy-cache:host1").returncode != 0     # bound to its host
    subprocess.run(["sha256sum", "--strict", "-c", "SHA256SUMS"], cwd=host_dir, check=True,
                   capture_output=True)


def test_check_accepts_a_signature_ssh_keygen_made(make_repo: object, tmp_path: Path) -> None:
    repo = signed_repo(make_repo)
    repo.ok("renc")
    key = tmp_path / "signing_key"
    key.write_bytes(subprocess.run([need("age"), "-d", "-i", str(repo.identity),
                                    str(repo.root / "secrets" / "cache_signing.age")],
                                   capture_output=True, check=True).stdout)
    key.chmod(0o600)
    host_dir = repo.cache / "host1"
    (host_dir / "SHA256SUMS.sig").unlink()
    subprocess.run([need("ssh-keygen"), "-Y", "sign", "-f", str(key), "-n",
                    "vaultpy-cache:host1", "SHA256SUMS"], cwd=host_dir, check=True,
                   capture_output=True)
    repo.ok("check")
    # Signed for the wrong host: refused, naming the namespace.
    (host_dir / "SHA256SUMS.sig").unlink()
    subprocess.run([need("ssh-keygen"), "-Y", "sign", "-f", str(key), "-n",
                    "vaultpy-cache:host0", "SHA256SUMS"], cwd=host_dir, check=True,
                   capture_output=True)
    line = check_fails(repo, "SHA256SUMS.sig", "host1")
    assert "made for 'vaultpy-cache:host0'" in line


def test_a_forged_file_fails_check_and_renc_replaces_it(make_repo: object) -> None:
    repo = signed_repo(make_repo)
    repo.ok("renc")
    repo.ok("check")
    path = forge(repo, "host0", "alpha", b"evil-value-XX")     # same length as alpha's
    line = check_fails(repo, path.name, "hosts.host0.secrets.alpha")
    assert "not signed" in line
    proc = repo.ok("renc")
    assert b"signed the list of host0" in proc.stdout
    repo.ok("check")
    assert subprocess.run([need("age"), "-d", "-i", str(repo.hosts["host0"].key), str(path)],
                          capture_output=True, check=True).stdout == SECRETS["alpha"]


def test_without_the_signing_key_check_fails_but_nothing_is_signed(make_repo: object
                                                                   ) -> None:
    """renc without the master key cannot sign: a forged file stays refused."""
    repo = signed_repo(make_repo)
    repo.ok("renc")
    forge(repo, "host0", "alpha", b"evil-value-XX")
    proc = repo.run("renc", env={"VAULTPY_IDENTITY": str(repo.root / "nowhere.txt")})
    assert proc.returncode != 0 and b"Traceback" not in proc.stderr
    assert repo.run("check").returncode == 1


def test_activation_refuses_forged_and_swapped_files(make_repo: object, tmp_path: Path
                                                     ) -> None:
    repo = signed_repo(make_repo)
    repo.ok("renc")
    host = make_host_root(repo, "host0", tmp_path / "root")
    assert '"signed"' in host.profile.read_text()
    proc = activate_ok(host.profile, host.root)
    assert b"verify_signature: 2 cache file(s) listed" in proc.stderr
    assert (host.live / "alpha").read_bytes() == SECRETS["alpha"]
    # A file encrypted to the host's key by someone else: refused before the switch.
    alpha = file_of(repo, "host0", "alpha")
    genuine = alpha.read_bytes()
    forge(repo, "host0", "alpha", b"evil-value-XX")
    proc = activate(host.profile, host.root)
    assert proc.returncode == 1
    err = proc.stderr.decode()
    assert "secret 'alpha': its cache file is not signed" in err and "Traceback" not in err
    assert (host.live / "alpha").read_bytes() == SECRETS["alpha"]     # the old one stays
    # Another secret's genuine, signed file in its place: refused too (bound to the id).
    alpha.write_bytes(file_of(repo, "host0", "beta").read_bytes())
    proc = activate(host.profile, host.root)
    assert proc.returncode == 1 and b"secret 'alpha'" in proc.stderr
    alpha.write_bytes(genuine)
    activate_ok(host.profile, host.root)
    # The list altered (say, to a forged file's hash): its signature fails.
    sums = repo.cache / "host0" / "SHA256SUMS"
    sums.write_text(sums.read_text().replace("a", "b", 1))
    proc = activate(host.profile, host.root)
    assert proc.returncode == 1
    line = assert_one_clean_error(proc, "SHA256SUMS.sig", "the cache is not signed")
    assert "does not match" in line


def test_another_hosts_list_is_refused(make_repo: object) -> None:
    repo = signed_repo(make_repo)
    repo.ok("renc")
    for name in ("SHA256SUMS", "SHA256SUMS.sig"):
        shutil.copy(repo.cache / "host1" / name, repo.cache / "host0" / name)
    line = check_fails(repo, "host0")
    assert "made for 'vaultpy-cache:host1'" in line
    repo.ok("renc")
    repo.ok("check")


def test_a_new_key_resigns_everything(make_repo: object) -> None:
    repo = signed_repo(make_repo)
    repo.ok("renc")
    old = repo.ok("signing-key", "--public").stdout
    repo.ok("signing-key", "--new")
    assert repo.ok("signing-key", "--public").stdout != old
    line = check_fails(repo, "host0")
    assert "made with another key" in line
    out = repo.ok("renc").stdout.decode()
    assert ("re-encrypted every file of host0, host1: no signed list vouched for them "
            "(SHA256SUMS.sig signature made with another key") in out
    repo.ok("check")
    assert b"re-encrypted" not in repo.ok("renc", env={"VAULTPY_NO_MEMO": "1"}).stdout
    proc = repo.run("signing-key")
    assert proc.returncode == 1 and b"already" in proc.stderr


def test_removing_the_key_prunes_the_lists(make_repo: object) -> None:
    repo = signed_repo(make_repo)
    repo.ok("renc")
    path = repo.root / "hosts.toml"
    path.write_text(re.sub(r"^signing_(key|secret) = .*\n", "", path.read_text(), flags=re.M))
    check_fails(repo, "SHA256SUMS: stale cache file")
    repo.ok("renc")
    assert not list(repo.cache.glob("*/SHA256SUMS*"))
    repo.ok("check")


@pytest.mark.parametrize(("settings", "field", "needle"), [
    ('signing_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGqkayYyM7xri8xE+HoH3wJ87FEpSjrvj0VV'
     'mRJql5xs"', "vaultpy.signing_secret", "go together"),
    ('signing_key = "age1lkw9q5tsu7e5rkchdwhqyprkclvg4ege422qmz86pa90rt8jg55qaz6zqc"\n'
     'signing_secret = "alpha"', "vaultpy.signing_key", "not an ssh-ed25519 public key"),
    ('signing_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGqkayYyM7xri8xE+HoH3wJ87FEpSjrvj0VV'
     'mRJql5xs"\nsigning_secret = "nope"', "vaultpy.signing_secret", "is not declared"),
    ('signing_key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGqkayYyM7xri8xE+HoH3wJ87FEpSjrvj0VV'
     'mRJql5xs"\nsigning_secret = "alpha"', "hosts.host0.secrets", "no host may hold it"),
])
def test_bad_signing_settings_are_one_line(make_repo: object, settings: str, field: str,
                                           needle: str) -> None:
    repo: Repo = make_repo(hosts=1, secrets=SECRETS)  # type: ignore[operator]
    path = repo.root / "hosts.toml"
    path.write_text(path.read_text().replace("[vaultpy]\n", f"[vaultpy]\n{settings}\n", 1))
    line = check_fails(repo, field)
    assert needle in line


def test_a_bundle_carries_the_signed_list(make_repo: object, tmp_path: Path) -> None:
    repo = signed_repo(make_repo)
    repo.ok("renc")
    out = tmp_path / "bundle"
    repo.ok("bundle", "--host", "host0", "-o", str(out))
    assert (out / "cache" / "SHA256SUMS").read_bytes() == (
        repo.cache / "host0" / "SHA256SUMS").read_bytes()
    assert '"signed"' in (out / "profile.json").read_text()


def test_a_changed_master_is_signed_by_the_incremental_renc(make_repo: object,
                                                            tmp_path: Path) -> None:
    """A changed master after a clean run: the incremental renc (no CLI, no model)
    writes, lists and signs as the full pipeline does, with the same output and the
    same lists; a value it cannot vouch for is handed to the full run, which asks."""
    import json
    import shutil as sh

    from memo_helpers import from_memo, full, outputs, settled, trusted

    repo = signed_repo(make_repo)
    repo.ok("renc")
    settled(repo)
    twin_root = tmp_path / "twin"
    sh.copytree(repo.root, twin_root, symlinks=True)
    twin = Repo(twin_root, repo.identity, repo.recipient, repo.hosts, dict(repo.env))
    for sid, value in (("alpha", b"alpha-value-9"), ("beta", b"beta--value-9")):
        repo.ok("encrypt", sid, input=value)
        sh.copyfile(repo.root / "secrets" / f"{sid}.age",
                    twin_root / "secrets" / f"{sid}.age")
    assert from_memo(repo, "renc", "--json")
    assert trusted(repo, "renc")                # the incremental run recorded its state
    mine = json.loads(repo.run("check", "--json").stdout)
    assert mine["ok"] is True
    # (the twin's ledger knows other paths: its full run is told to accept the values)
    theirs = outputs(twin.run("renc", "--json", "--accept-all", env={"VAULTPY_NO_MEMO": "1"}))
    assert theirs[0] == 0 and json.loads(theirs[1])["signed"] == ["host0", "host1"]
    def listed(root: Path, host: str) -> list[str]:      # (ciphertexts differ: names)
        return [line.split("  ")[1] for line in
                (root / "secrets" / "cache" / host / "SHA256SUMS").read_text().splitlines()]

    for host in ("host0", "host1"):
        assert listed(repo.root, host) == listed(twin_root, host)
    assert (repo.cache / "MASTERS").read_bytes() == (
        twin_root / "secrets" / "cache" / "MASTERS").read_bytes()
    assert full(repo, "renc")[1].startswith("nothing to do")
    # Text output: the table, then the signed line, as the full run prints them.
    repo.ok("encrypt", "alpha", input=b"alpha-value-8")
    proc = repo.ok("renc")
    assert proc.stdout.decode().splitlines()[-1] == "signed the list of host0, host1"
    # A value from elsewhere: handed over, and the full run asks.
    settled(repo)
    repo.ok("encrypt", "alpha", input=b"alpha-value-7",
            env={"XDG_STATE_HOME": str(tmp_path / "elsewhere")})
    assert_one_clean_error(repo.run("renc"), "--accept alpha")


def test_signing_key_never_takes_an_existing_secret(make_repo: object) -> None:
    repo: Repo = make_repo(hosts=1, secrets=SECRETS)  # type: ignore[operator]
    path = repo.root / "hosts.toml"
    path.write_text(path.read_text().replace("[secrets.alpha]", "[secrets.spare]\n[secrets.alpha]"))
    repo.ok("encrypt", "spare", input=b"kept")
    before = repo.snapshot()
    line = assert_one_clean_error(repo.run("signing-key", "--secret", "spare"), "spare")
    assert "exists already" in line and "--secret ID" in line
    line = assert_one_clean_error(repo.run("signing-key", "--secret", "alpha"), "--secret")
    assert "goes to host0" in line and "no host" in line
    line = assert_one_clean_error(repo.run("signing-key", "--secret", "bad id"), "--secret")
    assert "invalid secret id 'bad id'" in line and "not valid TOML" not in line
    proc = repo.run("signing-key", "--new")
    assert proc.returncode == 1 and b"no signing key is set" in proc.stderr
    assert repo.snapshot() == before
    repo.ok("signing-key", "--secret", "sig")
    proc = repo.run("signing-key", "--new", "--secret", "other")
    assert proc.returncode == 2 and b"--new keeps the secret" in proc.stderr


def test_a_missing_signing_secret_says_how_to_make_a_new_key(make_repo: object) -> None:
    repo = signed_repo(make_repo)
    (repo.root / "secrets" / "cache_signing.age").unlink()
    line = check_fails(repo, "cache_signing.age", "master file is missing")
    assert "vaultpy signing-key --new" in line
    repo.ok("signing-key", "--new")
    repo.ok("renc")
    repo.ok("check")


def test_verify_signature_alone(make_repo: object, tmp_path: Path) -> None:
    """The step by itself: the signed list read once, each file's hash -> its id."""
    import hashlib

    from vaultpy import profile as profile_mod
    from vaultpy.activate import STEPS, Context, Options
    from vaultpy.errors import VaultpyError

    repo = signed_repo(make_repo)
    repo.ok("renc")
    host = make_host_root(repo, "host0", tmp_path / "root")
    step = dict(STEPS)["verify_signature"]
    ctx = Context(Options(profile=host.profile, root=host.root, quiet=True),
                  profile_mod.load(host.profile))
    step(ctx)
    assert ctx.signed_ids == {hashlib.sha256(file_of(repo, "host0", sid).read_bytes())
                              .hexdigest(): file_of(repo, "host0", sid).name for sid in SECRETS}
    assert not (host.root / "run").exists()             # reads only
    (repo.cache / "host0" / "SHA256SUMS.sig").write_text("not a signature\n")
    with pytest.raises(VaultpyError, match="not an SSH signature"):
        step(Context(ctx.opts, ctx.profile))


def test_a_host_left_with_no_secret_needs_no_list(make_repo: object) -> None:
    """Its directory stays (renc prunes files, not a host's directory): no list is
    asked of it, and its old one goes as a stale file."""
    repo = signed_repo(make_repo)
    repo.ok("renc")
    path = repo.root / "hosts.toml"
    text = path.read_text()
    path.write_text(re.sub(r'(\[hosts\.host1\]\npubkey = "[^"]*"\n)secrets = \[[^\]]*\]',
                           r"\1secrets = []", text))
    assert path.read_text() != text
    repo.ok("renc")
    assert (repo.cache / "host1").is_dir() and not list((repo.cache / "host1").iterdir())
    repo.ok("check")


def test_renc_that_cannot_sign_changes_nothing(make_repo: object, tmp_path: Path) -> None:
    """A teammate without the master key removes a secret from a host: the list must
    change, so renc needs the signing key, and stops before it prunes or writes."""
    from conftest import age_keygen

    repo = signed_repo(make_repo)
    repo.ok("renc")
    mate, _ = age_keygen(tmp_path, "mate.txt")
    path = repo.root / "hosts.toml"
    text = path.read_text()
    path.write_text(re.sub(r'(\[hosts\.host0\]\npubkey = "[^"]*"\n)secrets = \[[^\]]*\]',
                           r'\1secrets = ["beta"]', text))
    assert path.read_text() != text
    before = repo.snapshot()
    proc = repo.run("renc", env={"VAULTPY_IDENTITY": str(mate)})
    line = assert_one_clean_error(proc, "cache_signing.age", "vaultpy.signing_secret")
    assert "renc signs each host's cache" in line and "nothing was written" in line
    assert repo.snapshot() == before
    proc = repo.run("renc", "--json", env={"VAULTPY_IDENTITY": str(mate)})
    assert proc.returncode == 1 and repo.snapshot() == before
    proc = repo.ok("renc", "--json")
    data = __import__("json").loads(proc.stdout)
    assert data["signed"] == ["host0"] and len(data["pruned"]) == 1
    repo.ok("check")


def test_status_says_unsigned_and_why(make_repo: object) -> None:
    repo = signed_repo(make_repo)
    proc = repo.run("status", "--json")
    data = __import__("json").loads(proc.stdout)
    states = {(e["host"], e["id"]): (e["state"], e["detail"]) for e in data["entries"]}
    assert states[("host0", "alpha")][0] == "unsigned"
    assert "SHA256SUMS: missing" not in states[("host0", "alpha")][1]
    assert states[("host0", "alpha")][1] == "not signed: missing"
    assert b"unsigned" in repo.run("status").stdout


def test_a_merge_conflict_in_a_list_says_what_to_do(make_repo: object) -> None:
    repo = signed_repo(make_repo)
    repo.ok("renc")
    sums = repo.cache / "host0" / "SHA256SUMS"
    text = sums.read_text()
    sums.write_text(f"<<<<<<< HEAD\n{text}=======\n{text}>>>>>>> other\n")
    line = check_fails(repo, "SHA256SUMS", "host0")
    assert "merge conflict markers" in line and "vaultpy renc" in line


def test_an_older_list_and_its_file_under_todays_name_are_refused(make_repo: object,
                                                                  tmp_path: Path) -> None:
    """A replay: the list signed before a secret changed, and the file it listed put
    under the name of the current master's file.  Its hash is on that (genuine) list,
    but under another name: activation refuses it."""
    repo = signed_repo(make_repo)
    repo.ok("renc")
    host_dir = repo.cache / "host0"
    old = {n: (host_dir / n).read_bytes() for n in ("SHA256SUMS", "SHA256SUMS.sig")}
    old_alpha = file_of(repo, "host0", "alpha").read_bytes()
    repo.ok("encrypt", "alpha", input=b"alpha-value-2")      # rotated: a new value
    repo.ok("renc")
    host = make_host_root(repo, "host0", tmp_path / "root")
    for name, data in old.items():
        (host_dir / name).write_bytes(data)
    file_of(repo, "host0", "alpha").write_bytes(old_alpha)
    proc = activate(host.profile, host.root)
    line = assert_one_clean_error(proc, "secret 'alpha'", "not signed")
    assert "no file of this name" in line
    assert not host.live.exists()


def test_a_huge_list_is_refused_before_it_is_read(make_repo: object) -> None:
    repo = signed_repo(make_repo)
    repo.ok("renc")
    import os
    import resource
    import sys

    with open(repo.cache / "host0" / "SHA256SUMS", "r+b") as f:
        f.truncate(6 << 30)                     # sparse: 6 GB, no disk used

    def cap() -> None:                          # read whole, it would need 6 GB
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))

    proc = subprocess.run([sys.executable, "-m", "vaultpy", "check"], cwd=repo.root,
                          env={**os.environ, **repo.env, "VAULTPY_NO_MEMO": "1"},
                          capture_output=True, preexec_fn=cap, timeout=120)
    out = proc.stdout.decode() + proc.stderr.decode()
    assert proc.returncode == 1 and "too big for a list of cache files" in out, out


def test_a_write_journal_from_a_commit_is_never_finished(make_repo: object) -> None:
    """Found in review: a force-added .vaultpy-writes (with its temp files) swapped
    hosts.toml's signing_key during a renc, where no review of the commit's diff saw a
    change to hosts.toml.  A journal git tracks is refused, and nothing is renamed."""
    import json

    repo = signed_repo(make_repo)
    repo.ok("renc")
    hosts = repo.root / "hosts.toml"
    evil = hosts.read_text().replace("signing_secret", "# swapped\nsigning_secret")
    (repo.root / ".hosts.toml.vaultpy-tmp-x1").write_text(evil)
    (repo.root / ".vaultpy-writes").write_text(json.dumps({
        "format": 1, "root": "/x", "renames": [[".hosts.toml.vaultpy-tmp-x1", "hosts.toml",
                                                False]]}))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    for args in (["init", "-q"], ["add", "-A"], ["add", "-f", ".vaultpy-writes",
                                                  ".hosts.toml.vaultpy-tmp-x1"],
                 ["commit", "-qm", "innocuous"]):
        subprocess.run(git + args, cwd=repo.root, check=True, capture_output=True)
    before = hosts.read_text()
    for command in ("renc", "check"):
        proc = repo.run(command)
        out = proc.stdout.decode() + proc.stderr.decode()
        assert proc.returncode == 1 and "a write journal git tracks" in out, out
    assert hosts.read_text() == before


def test_a_forged_master_is_never_signed_unasked(make_repo: object, tmp_path: Path) -> None:
    """Found in review: a master replaced with the age CLI (master recipients are public)
    made check say "out of date, run vaultpy renc", and renc signed the forged value.
    renc now encrypts only values it can vouch for: on the signed list of masters,
    written by vaultpy on this machine, or accepted by name."""
    repo = signed_repo(make_repo)
    repo.ok("renc")
    master = repo.root / "secrets" / "alpha.age"
    master.write_bytes(subprocess.run([need("age"), "-r", repo.recipient],
                                      input=b"evil-value-XX", capture_output=True,
                                      check=True).stdout)
    check_fails(repo, "out of date")
    before = repo.snapshot()
    proc = repo.run("renc")
    line = assert_one_clean_error(proc, "secrets/alpha.age", "secrets.alpha")
    assert "changed since the last signed renc, and not by vaultpy on this machine" in line
    assert "host0, host1" in line and "vaultpy renc --accept alpha" in line
    assert repo.snapshot() == before
    assert_one_clean_error(repo.run("renc", "--accept", "alphx"), "unknown secret id")
    proc = repo.ok("renc", "--accept", "alpha")
    assert b"signed the list of host0, host1" in proc.stdout
    repo.ok("check")
    repo.ok("renc")                 # accepted once: now on the signed list


def test_a_teammates_value_needs_accepting_on_another_machine(make_repo: object,
                                                              tmp_path: Path) -> None:
    """A value written by vaultpy elsewhere (another ledger), not renc'd with the key,
    is no value this machine's vaultpy wrote: renc asks; the same on the writer's
    machine goes through."""
    repo = signed_repo(make_repo)
    repo.ok("renc")
    elsewhere = {"XDG_STATE_HOME": str(tmp_path / "teammate")}
    repo.ok("encrypt", "beta", input=b"beta--value-3", env=elsewhere)
    assert_one_clean_error(repo.run("renc"), "secrets/beta.age", "--accept beta")
    repo.ok("renc", env=elsewhere)
    repo.ok("check")


def test_openssh_verifies_the_list_of_masters(make_repo: object,
                                                          tmp_path: Path) -> None:
    import hashlib

    repo = signed_repo(make_repo)
    repo.ok("renc")
    listed = dict(reversed(line.split("  ")) for line in
                  (repo.cache / "MASTERS").read_text().splitlines())
    assert listed == {sid: hashlib.sha256((repo.root / "secrets" / f"{sid}.age").read_bytes())
                      .hexdigest() for sid in [*SECRETS, "cache_signing"]}
    signers = tmp_path / "signers"
    signers.write_text("vaultpy " + repo.ok("signing-key", "--public").stdout.decode())
    subprocess.run([need("ssh-keygen"), "-Y", "verify", "-f", str(signers), "-I", "vaultpy",
                    "-n", "vaultpy-masters", "-s", "secrets/cache/MASTERS.sig"],
                   input=(repo.cache / "MASTERS").read_bytes(), cwd=repo.root, check=True,
                   capture_output=True)
    (repo.cache / "MASTERS.sig").unlink()
    check_fails(repo, "MASTERS.sig", "the signed list of masters: missing")
    repo.ok("renc")
    repo.ok("check")


def test_a_value_vaultpy_wrote_for_one_secret_is_not_vouched_for_another(
        make_repo: object) -> None:
    """Found in review: the ledger held bare hashes, so the signing key's own master (or
    any master vaultpy wrote here) copied over another secret's was signed for that
    secret's hosts unasked.  A value is vouched for as the secret and path it was
    written for, and only the last one written there."""
    import shutil as sh

    repo = signed_repo(make_repo)
    repo.ok("renc")
    sh.copy(repo.root / "secrets" / "cache_signing.age", repo.root / "secrets" / "alpha.age")
    line = assert_one_clean_error(repo.run("renc"), "secrets/alpha.age", "--accept alpha")
    assert "not by vaultpy on this machine" in line
    # An older value vaultpy wrote there (a rollback of the master alone): refused too.
    repo.ok("encrypt", "beta", input=b"beta--value-4")
    old = (repo.root / "secrets" / "beta.age").read_bytes()
    repo.ok("encrypt", "beta", input=b"beta--value-5")
    (repo.root / "secrets" / "beta.age").write_bytes(old)
    proc = repo.run("renc", "--accept", "alpha")
    assert proc.returncode == 1 and b"--accept beta" in proc.stderr


def test_rekey_does_not_launder_a_forged_master(make_repo: object) -> None:
    """Found in review: rekey re-encrypted a forged master and recorded the result as a
    value vaultpy wrote here, so renc signed it.  What rekey re-encrypts is recorded
    only if it was vouched for."""
    repo = signed_repo(make_repo)
    repo.ok("renc")
    (repo.root / "secrets" / "alpha.age").write_bytes(subprocess.run(
        [need("age"), "-r", repo.recipient], input=b"evil-value-XX", capture_output=True,
        check=True).stdout)
    repo.ok("rekey")
    line = assert_one_clean_error(repo.run("renc"), "secrets/alpha.age", "--accept alpha")
    assert "not by vaultpy on this machine" in line
    assert b"--accept beta" not in repo.run("renc").stderr      # beta: vouched, rekeyed


def test_a_path_given_to_another_secret_carries_no_signed_value(make_repo: object) -> None:
    """Found in review: the list of masters was keyed by path, so swapping two secrets'
    files in hosts.toml signed one's value for the other's hosts unasked."""
    repo = signed_repo(make_repo)
    repo.ok("renc")
    path = repo.root / "hosts.toml"
    path.write_text(path.read_text().replace(
        "[secrets.alpha]", '[secrets.alpha]\nfile = "secrets/beta.age"').replace(
        "[secrets.beta]", '[secrets.beta]\nfile = "secrets/alpha.age"'))
    proc = repo.run("renc", env={"XDG_STATE_HOME": str(repo.root / "other-machine")})
    err = proc.stderr.decode()
    assert proc.returncode == 1 and "--accept alpha" in err and "--accept beta" in err, err


def test_a_journal_git_cannot_vouch_for_is_refused(make_repo: object) -> None:
    """Found in review: in a repository git refuses to read (another user's: "dubious
    ownership"), the check of a committed journal passed.  It fails closed."""
    import json
    import os

    repo = signed_repo(make_repo)
    repo.ok("renc")
    subprocess.run(["git", "init", "-q"], cwd=repo.root, check=True)
    (repo.root / ".vaultpy-writes").write_text(json.dumps(
        {"format": 1, "root": "/x", "renames": []}))
    for p in [repo.root, *repo.root.rglob("*")]:
        os.lchown(p, 4321, 4321)
    line = check_fails(repo, ".vaultpy-writes", "git cannot tell whether it tracks")
    assert "dubious" in line


def test_lists_are_written_together_and_one_that_fails_fails_alone(tmp_path: Path) -> None:
    """write_lists: every list that can be replaced is, durably, with its signature; one
    that cannot is returned with an error naming its file, and no temp file is left."""
    from vaultpy import signing, signing_key

    pem, public = signing_key.generate()
    key = signing.load_private(pem, public)
    digest = "ab" * 32
    folders = [tmp_path / h for h in ("web", "db", "mail")]
    for folder in folders:
        folder.mkdir()
    blocked = folders[1] / signing.SIGNATURE
    blocked.mkdir()
    (blocked / "x").write_text("a directory where the signature goes")
    lists = [signing.host_list(f, f.name, {f"s.{'0' * 32}.age": digest}) for f in folders]
    failed = signing.write_lists(lists, key, tmp_path)
    assert list(failed) == [folders[1] / signing.SUMS]
    assert failed[folders[1] / signing.SUMS].filename == str(blocked)
    for folder in (folders[0], folders[2]):
        assert signing.read_signed(folder, folder.name, public) == {f"s.{'0' * 32}.age": digest}
        with pytest.raises(signing.Unsigned):               # signed for its host alone
            signing.read_signed(folder, "db", public)
    assert not [p for p in tmp_path.rglob("*") if ".vaultpy-tmp-" in p.name]


def test_renc_reports_a_list_it_cannot_replace_and_signs_the_others(make_repo: object
                                                                     ) -> None:
    repo = signed_repo(make_repo)
    repo.ok("renc")
    sig = repo.cache / "host1" / "SHA256SUMS.sig"
    sig.unlink()
    sig.mkdir()
    (sig / "x").write_text("in the way")
    repo.ok("encrypt", "alpha", input=b"alpha-value-9")
    proc = repo.run("renc")
    line = assert_one_clean_error(proc, "secrets/cache/host1/SHA256SUMS.sig: cannot sign")
    assert "Is a directory" in line
    assert b"signed the list of host0\n" in proc.stdout
    assert not [p for p in repo.cache.rglob("*") if ".vaultpy-tmp-" in p.name]
    shutil.rmtree(sig)
    repo.ok("renc")
    repo.ok("check")


def test_a_read_only_host_folder_fails_its_list_alone(make_repo: object) -> None:
    """host1's folder read-only (a private read-only bind mount): its file and its list
    fail, each in one line, the other host is signed, nothing is left behind, and once
    the folder is writable again renc and check converge.  (The clean-up unlinked a temp
    file that was never created, and on a read-only folder that says EROFS, not ENOENT:
    an internal error, exit 70, lost the whole report.)"""
    import os
    import sys

    need("unshare")
    repo = signed_repo(make_repo)
    repo.ok("renc")
    repo.ok("encrypt", "alpha", input=b"alpha-value-9")
    folder = repo.cache / "host1"
    script = (f"mount --bind -o ro {folder} {folder} && exec {sys.executable} -m vaultpy "
              "renc --jobs 2")
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          capture_output=True, cwd=repo.root, timeout=120,
                          env={**os.environ, "NO_COLOR": "1", **repo.env})
    assert_one_clean_error(proc, "secrets/cache/host1/SHA256SUMS: cannot sign the cache",
                           "Read-only file system")
    assert_one_clean_error(proc, "secrets/cache/host1/alpha.")
    assert b"signed the list of host0\n" in proc.stdout
    assert not [p for p in repo.cache.rglob("*") if ".vaultpy-tmp-" in p.name]
    repo.ok("renc")
    repo.ok("check")


def test_one_failed_sync_of_the_lists_is_one_problem(make_repo: object,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A sync of the lists' temp files fails every host's list with the same error:
    renc reports it once, as the incremental renc does, not once per host."""
    import errno

    from vaultpy import model
    from vaultpy import renc as pipeline
    from vaultpy._internal import fsutil

    repo = signed_repo(make_repo)
    repo.ok("renc")
    repo.ok("encrypt", "alpha", input=b"alpha-value-9")
    real = fsutil.sync_files

    def sync_files(root: Path, files: list[str], dirs: list[str] = []) -> None:  # noqa: B006
        if any(Path(f).name.startswith(".SHA256SUMS") for f in files):
            raise OSError(errno.EIO, "Input/output error", str(root))
        real(root, files, dirs)

    monkeypatch.setattr(fsutil, "sync_files", sync_files)
    result = pipeline.renc(model.load(repo.root), jobs=1, identity_files=[repo.identity])
    assert [p.message for p in result.failed] == [
        "cannot sign the cache: Input/output error"], result.failed
    assert result.signed == []
    monkeypatch.undo()
    repo.ok("renc")
    repo.ok("check")
