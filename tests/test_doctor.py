"""``vaultpy doctor`` and the CLI niceties: shell completion, ``--json`` on every read
command, ``NO_COLOR`` and non-TTY output without escape codes.

Doctor runs against real repositories (real age keys), with real tools on PATH or a
PATH without them; NO_COLOR is tested on a real pseudo-terminal.
"""

from __future__ import annotations

import json
import os
import pty
import select
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import tomli_w
import typer
from conftest import Repo, age_keygen, need

from vaultpy import doctor
from vaultpy.cli import app

CHECKS = ["vaultpy", "hosts.toml", "recipients", "masters", "identity", "git-ignore",
          "clock", "signing", "ram-dir", "ramfs",
          "tool:age", "tool:age-keygen", "tool:ssh-keygen", "tool:ssh-keyscan",
          "tool:nix-instantiate"]


def doctor_json(repo: Repo, *args: str, env: dict[str, str] | None = None,
                cwd: Path | None = None, timeout: float = 120) -> tuple[int, dict]:
    proc = repo.run("doctor", "--json", *args, env=env, cwd=cwd, timeout=timeout)
    assert "Traceback" not in proc.stderr.decode()
    data = json.loads(proc.stdout)
    assert proc.returncode == (0 if data["ok"] else 1), proc.stderr.decode()
    return proc.returncode, {c["name"]: c for c in data["checks"]}


def test_healthy_repository(make_repo) -> None:
    repo = make_repo(hosts=2)
    before = repo.snapshot()
    rc, checks = doctor_json(repo)
    assert rc == 0
    assert list(checks) == CHECKS
    assert checks["hosts.toml"]["status"] == "ok"
    assert "2 host(s), 2 secret(s)" in checks["hosts.toml"]["detail"]
    assert checks["identity"]["status"] == "ok"
    assert "decrypts all 2 master file(s)" in checks["identity"]["detail"]
    assert checks["masters"] == {"name": "masters", "status": "ok", "fix": "",
                                 "detail": "2 master file(s) are well-formed age files, "
                                 "each addressed to the [vaultpy] recipients"}
    assert checks["recipients"]["status"] == "warning"      # one master recipient only
    assert "backup recipient" in checks["recipients"]["fix"]
    for c in checks.values():
        assert set(c) == {"name", "status", "detail", "fix"}
        assert c["status"] in ("ok", "warning", "problem", "skipped")
    age_check = checks["tool:age"]
    assert age_check["status"] == "ok" and "/age" in age_check["detail"]
    text = repo.ok("doctor")
    lines = text.stdout.decode().splitlines()
    assert any(ln.startswith("ok") and "identity" in ln for ln in lines)
    assert any(ln.strip().startswith("fix: add a backup recipient") for ln in lines)
    assert "no problems found" in text.stderr.decode()
    assert repo.snapshot() == before                       # doctor writes nothing


def test_files_dated_in_the_future_are_named_with_the_fix(make_repo) -> None:
    """A clock set back (or files unpacked from a machine whose clock ran ahead): renc
    and check cannot use their memo, and only doctor says why."""
    import time

    from memo_helpers import trusted

    repo = make_repo(hosts=2)
    repo.ok("renc")
    rc, checks = doctor_json(repo)
    assert checks["clock"]["status"] == "ok" and "dated in the past" in checks["clock"]["detail"]
    master = repo.root / "secrets" / "alpha.age"
    cached = next((repo.cache / "host0").glob("beta.*.age"))
    later = time.time_ns() + (3 * 3600 + 5 * 60 + 50) * 10**9
    os.utime(master, ns=(later, later))
    os.utime(cached, ns=(later - 10**12, later - 10**12))
    repo.ok("renc")
    repo.ok("renc")
    assert not trusted(repo, "renc")           # the full run every time
    rc, checks = doctor_json(repo)
    clock = checks["clock"]
    assert rc == 0 and clock["status"] == "warning", clock
    assert clock["detail"].startswith("2 file(s) are dated in the future, up to 3 h 5 min "
                                      "ahead of this machine's clock (secrets/alpha.age, "
                                      "secrets/cache/host0/beta.")
    assert clock["fix"].startswith("if the clock is right, touch them (touch -h -c -- "
                                   "secrets/alpha.age secrets/cache/host0/beta.")
    subprocess.run(["touch", "-h", "-c", "--", str(master), str(cached)], check=True)
    time.sleep(0.05)
    repo.ok("renc")
    assert trusted(repo, "renc")               # the fix works
    assert doctor_json(repo)[1]["clock"]["status"] == "ok"


def test_clock_spans_read_as_people_say_them() -> None:
    s = 10**9
    assert [doctor._span(n * s) for n in (3, 119, 120, 7199, 7200, 7260, 2 * 86400,
                                          3 * 86400 - 3600)] == \
        ["3 s", "119 s", "2 min", "119 min", "2 h 0 min", "2 h 1 min", "2 days", "3 days"]


def test_masters_as_check_sees_them(make_repo, tmp_path: Path) -> None:
    """doctor said "no problems found" of a missing master and of one not encrypted to a
    backup recipient (check fails both), and blamed a cut or altered master on the key
    ("cannot decrypt … pass the right key")."""
    repo = make_repo(hosts=1, secrets={"alpha": b"a" * 100, "beta": b"b"})
    alpha = repo.root / "secrets" / "alpha.age"
    good = alpha.read_bytes()
    alpha.write_bytes(good[:-1])                                    # cut by one byte
    rc, checks = doctor_json(repo)
    assert rc == 1 and checks["masters"]["status"] == "ok"         # its header is whole
    assert checks["identity"]["status"] == "problem"
    assert "opens every master file, but 1 of them are damaged (first: secrets/alpha.age)" \
        in checks["identity"]["detail"]
    assert "restore it from git" in checks["identity"]["fix"]
    # the secret's own id in the command, not a literal "ID"
    assert "vaultpy encrypt alpha < FILE" in checks["identity"]["fix"], checks["identity"]
    alpha.unlink()                                                  # missing
    rc, checks = doctor_json(repo)
    assert rc == 1 and checks["masters"]["status"] == "problem"
    assert checks["masters"]["detail"] == "secrets/alpha.age: missing"
    assert "vaultpy edit alpha" in checks["masters"]["fix"]
    alpha.write_bytes(good)
    _key, backup = age_keygen(tmp_path, "backup.txt")               # added, no rekey
    text = (repo.root / "hosts.toml").read_text()
    (repo.root / "hosts.toml").write_text(text.replace(
        f'recipients = ["{repo.recipient}"]', f'recipients = ["{repo.recipient}", "{backup}"]'))
    rc, checks = doctor_json(repo)
    assert rc == 1 and checks["masters"]["status"] == "problem"
    assert "but [vaultpy] recipients list 2 age1 key(s)" in checks["masters"]["detail"]
    assert "(and 1 more)" in checks["masters"]["detail"]
    assert checks["masters"]["fix"].startswith("run vaultpy rekey")


def test_a_wrong_key_and_a_damaged_master_are_both_said(make_repo, tmp_path: Path) -> None:
    """One master encrypted to another key, another whose payload is damaged: doctor
    said only "cannot decrypt 1 of 3 (first: …)", the damaged one dropped, and its
    masters line called every master "addressed to the [vaultpy] recipients", which an
    age1 stanza cannot show (the one the key cannot open is the doubt)."""
    repo = make_repo(hosts=1, secrets={"alpha": b"a" * 100, "beta": b"b", "gamma": b"c"})
    _other, stranger = age_keygen(tmp_path, "other.txt")
    beta = repo.root / "secrets" / "beta.age"
    beta.write_bytes(subprocess.run([need("age"), "-r", stranger], input=b"b", check=True,
                                    capture_output=True).stdout)    # one X25519 stanza
    alpha = repo.root / "secrets" / "alpha.age"
    data = bytearray(alpha.read_bytes())
    data[-5] ^= 1                                                   # payload flipped
    alpha.write_bytes(bytes(data))
    rc, checks = doctor_json(repo)
    assert rc == 1
    identity = checks["identity"]
    assert identity["status"] == "problem"
    assert "cannot decrypt 1 of 3 master file(s) (first: secrets/beta.age); of those it " \
        "opens, 1 is damaged (first: secrets/alpha.age)" in identity["detail"], identity
    assert identity["fix"] == ("secrets/beta.age: pass the right key with -i FILE, or "
                               "re-encrypt them with a key that can (vaultpy rekey); "
                               "secrets/alpha.age: restore it from git, or give it a new "
                               "value: vaultpy encrypt alpha < FILE"), identity
    masters = checks["masters"]
    assert masters["status"] == "ok", masters
    assert "each addressed to" not in masters["detail"]
    assert "the identity cannot open 1 of them (see identity)" in masters["detail"]
    proc = repo.run("doctor")
    out = proc.stdout.decode()
    assert proc.returncode == 1 and "Traceback" not in out + proc.stderr.decode()
    assert out.index("masters") < out.index("identity")         # the order stays


def test_an_unreadable_master_gets_the_permissions_fix(make_repo) -> None:
    """A master this user cannot read (Permission denied) was told "restore it from
    git, or recreate it with vaultpy edit", where check's "check the file's
    permissions" is right; and a missing master beside it went unsaid.  Each kind is
    said, each with its fix.  (As root, run without the capabilities that override
    permissions: setpriv, as another user would.)"""
    repo = make_repo(hosts=1, secrets={"alpha": b"a", "beta": b"b", "gamma": b"c"})
    secrets = repo.root / "secrets"
    (secrets / "alpha.age").chmod(0)
    beta = secrets / "beta.age"
    beta.write_bytes(beta.read_bytes()[:40])                        # no age file
    (secrets / "gamma.age").unlink()
    drop = []
    if os.geteuid() == 0:
        drop = [need("setpriv"), "--bounding-set=-dac_override,-dac_read_search"]
    env = {**os.environ, "NO_COLOR": "1", **repo.env}
    proc = subprocess.run([*drop, sys.executable, "-m", "vaultpy", "doctor", "--json"],
                          cwd=repo.root, env=env, capture_output=True, timeout=120)
    assert "Traceback" not in proc.stderr.decode()
    assert proc.returncode == 1, proc.stderr.decode()
    masters = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}["masters"]
    assert masters["status"] == "problem"
    assert masters["detail"] == (
        "secrets/alpha.age: cannot read: Permission denied; secrets/beta.age: not a valid "
        "age file: header: no MAC line (file truncated or not an age file); "
        "secrets/gamma.age: missing"), masters
    assert masters["fix"] == (
        "secrets/alpha.age: check the file's permissions or run as a user who can read "
        "it; secrets/beta.age: restore it from git, or recreate it with vaultpy edit; "
        "secrets/gamma.age: create it with vaultpy edit gamma (or vaultpy encrypt gamma); "
        "vaultpy check lists every one"), masters


def test_missing_and_wrong_identity(make_repo, tmp_path: Path) -> None:
    repo = make_repo(hosts=1)
    rc, checks = doctor_json(repo, env={"VAULTPY_IDENTITY": str(tmp_path / "gone.txt")})
    assert rc == 1
    assert checks["identity"]["status"] == "problem"
    assert "gone.txt: no such file" in checks["identity"]["detail"]
    assert "-i FILE" in checks["identity"]["fix"]
    other, _ = age_keygen(tmp_path, "other.txt")
    rc, checks = doctor_json(repo, env={"VAULTPY_IDENTITY": str(other)})
    assert rc == 1
    assert "cannot decrypt 2 of 2 master file(s)" in checks["identity"]["detail"]
    proc = repo.run("doctor", env={"VAULTPY_IDENTITY": str(other)})
    out = proc.stdout.decode()
    assert proc.returncode == 1 and "Traceback" not in out + proc.stderr.decode()
    assert any(ln.startswith("problem") and "identity" in ln for ln in out.splitlines())
    assert "fix: pass the right key with -i FILE" in out
    assert "1 problem(s)" in proc.stderr.decode()


def test_identity_readable_by_others_is_a_warning(make_repo) -> None:
    repo = make_repo(hosts=1)
    repo.identity.chmod(0o644)
    rc, checks = doctor_json(repo)
    assert rc == 0
    assert checks["identity"]["status"] == "warning"
    assert "readable by others (mode 0644)" in checks["identity"]["detail"]
    assert checks["identity"]["fix"] == f"chmod 600 {repo.identity}"


def test_fifo_master_is_one_line_not_a_hang(make_repo) -> None:
    """A FIFO where a master belongs: doctor must not block opening or reading it."""
    repo = make_repo(hosts=1)
    master = repo.root / "secrets" / "alpha.age"
    master.unlink()
    os.mkfifo(master)
    rc, checks = doctor_json(repo, timeout=60)      # a hang fails with TimeoutExpired
    assert rc == 1
    assert checks["masters"]["status"] == "problem"
    assert checks["masters"]["detail"] == ("secrets/alpha.age: cannot read: not a regular "
                                           "file (a FIFO, socket or device)")
    assert "restore it from git" in checks["masters"]["fix"]
    assert checks["identity"]["status"] == "ok"
    assert "decrypts all 1 well-formed master file(s)" in checks["identity"]["detail"]
    proc = repo.run("doctor", timeout=60)
    assert proc.returncode == 1
    lines = proc.stdout.decode().splitlines()
    assert [ln.split()[:2] for ln in lines if "alpha.age" in ln] == [["problem", "masters"]]


def test_damaged_master_is_not_an_identity_problem(make_repo) -> None:
    repo = make_repo(hosts=1)
    (repo.root / "secrets" / "alpha.age").write_bytes(os.urandom(100))
    rc, checks = doctor_json(repo)
    assert rc == 1
    assert checks["masters"]["status"] == "problem"
    assert checks["masters"]["detail"].startswith("secrets/alpha.age: not a valid age file")
    assert checks["masters"]["fix"].startswith("restore it from git")
    assert checks["identity"]["status"] == "ok", checks["identity"]
    assert "rekey" not in checks["identity"]["fix"]


def test_no_master_recipients_is_not_ok(make_repo) -> None:
    repo = make_repo(hosts=1)
    text = (repo.root / "hosts.toml").read_text()
    (repo.root / "hosts.toml").write_text(text.replace(f'"{repo.recipient}"', ""))
    rc, checks = doctor_json(repo)
    assert rc == 1
    assert "no recipients" in checks["hosts.toml"]["detail"]
    assert checks["recipients"]["status"] == "problem"
    assert "no master recipients" in checks["recipients"]["detail"]
    assert checks["masters"]["status"] == "skipped"


def test_invalid_hosts_toml_and_no_repository(make_repo, tmp_path: Path) -> None:
    repo = make_repo(hosts=1)
    text = (repo.root / "hosts.toml").read_text()
    (repo.root / "hosts.toml").write_text(text.replace(repo.recipient, "age1broken"))
    rc, checks = doctor_json(repo)
    assert rc == 1
    assert checks["hosts.toml"]["status"] == "problem"
    assert checks["recipients"]["status"] == "problem"
    assert "recipients[0]" in checks["recipients"]["detail"]
    assert checks["identity"]["status"] == "skipped"
    empty = tmp_path / "empty"
    empty.mkdir()
    rc, checks = doctor_json(repo, cwd=empty)
    assert rc == 1 and "no hosts.toml" in checks["hosts.toml"]["detail"]
    assert checks["hosts.toml"]["fix"] == "run vaultpy init, or pass -C DIR"


def _git(repo: Repo, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo.root), *args], check=True, capture_output=True)


def test_git_ignore_names_each_local_file_git_would_show(make_repo) -> None:
    """A repository made by hand (no vaultpy init): git would show the journal a kill
    leaves, and the cache's lock, index and memo.  Doctor names each, and the
    .gitignore each goes in; with the lines init writes, it is ok.  Outside a git work
    tree it is skipped."""
    from vaultpy.init import GITIGNORE, TOP_GITIGNORE

    repo = make_repo(hosts=1)
    _rc, checks = doctor_json(repo)
    assert checks["git-ignore"]["status"] == "skipped"
    assert checks["git-ignore"]["detail"] == "not in a git work tree"

    _git(repo, "init", "-q")
    _rc, checks = doctor_json(repo)
    c = checks["git-ignore"]
    assert c["status"] == "warning", c
    assert c["detail"].startswith("git does not ignore .vaultpy-writes, "
                                  "secrets/cache/.vaultpy.lock, secrets/cache/.vaultpy-"
                                  "verified, secrets/cache/.vaultpy-memo (")
    assert c["fix"] == ("add /.vaultpy-writes to .gitignore; add /.vaultpy.lock, "
                        "/.vaultpy-verified, /.vaultpy-memo to secrets/cache/.gitignore")

    (repo.cache / ".gitignore").write_text(GITIGNORE)          # half done: one left
    _rc, checks = doctor_json(repo)
    assert checks["git-ignore"]["fix"] == "add /.vaultpy-writes to .gitignore"

    (repo.root / ".gitignore").write_text(TOP_GITIGNORE)
    rc, checks = doctor_json(repo)
    assert rc == 0 and checks["git-ignore"]["status"] == "ok", checks["git-ignore"]


def test_git_ignore_counts_a_committed_lock_file_as_shown(make_repo) -> None:
    """A lock file committed before the .gitignore was written stays tracked: git
    shows its changes whatever the .gitignore says, so doctor warns, and says how to
    untrack it."""
    from vaultpy.init import GITIGNORE, TOP_GITIGNORE

    repo = make_repo(hosts=1)
    repo.ok("renc")
    _git(repo, "init", "-q")
    _git(repo, "add", "-f", "secrets/cache/.vaultpy.lock")   # (as before it was ignored)
    (repo.cache / ".gitignore").write_text(GITIGNORE)
    (repo.root / ".gitignore").write_text(TOP_GITIGNORE)
    _rc, checks = doctor_json(repo)
    c = checks["git-ignore"]
    assert c["status"] == "warning"
    assert c["detail"].startswith("git does not ignore secrets/cache/.vaultpy.lock (")
    assert c["fix"] == "git rm --cached secrets/cache/.vaultpy.lock"


def test_tools_missing_are_warnings(make_repo, tmp_path: Path) -> None:
    repo = make_repo(hosts=1)
    bare = tmp_path / "bin"
    bare.mkdir()
    rc, checks = doctor_json(repo, env={"PATH": str(bare)})
    assert rc == 0
    for name in [n for n in CHECKS if n.startswith("tool:")]:
        assert checks[name]["status"] == "warning", checks[name]
        assert "not installed" in checks[name]["detail"]
        assert checks[name]["fix"].startswith("apt-get install ")


def test_old_tool_version_is_a_warning(tmp_path: Path) -> None:
    fake = tmp_path / "age"
    fake.write_text("#!/bin/sh\necho v0.9.0\n")
    fake.chmod(0o755)
    tool = doctor.Tool(str(fake), ("--version",), "tests", "age", (1, 0))
    check = doctor.check_tool(tool)
    assert check.status == "warning" and "older than 1.0" in check.detail


def test_ram_dir_problem_when_only_disk(monkeypatch, disk_path: Path) -> None:
    from vaultpy import edit

    monkeypatch.setattr(edit, "ram_candidates", lambda: [disk_path])
    check = doctor.check_ram_dir()
    assert check.status == "problem"
    assert str(disk_path) in check.detail and "--allow-disk" in check.fix


def test_ramfs_check() -> None:
    check = doctor.check_ramfs()
    if os.geteuid() != 0:
        assert check.status == "skipped"
    else:
        assert check.status in ("ok", "warning"), check
        assert check.name == "ramfs"


# --------------------------------------------------------------------------- completion

def _vaultpy(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "vaultpy", *args], capture_output=True,
                          text=True, env=full, timeout=60)


@pytest.mark.parametrize(("shell", "mark"), [("bash", "complete -o default -F"),
                                           ("zsh", "#compdef vaultpy"),
                                           ("fish", "complete --command vaultpy")])
def test_completion_prints_the_named_shells_script(shell: str, mark: str) -> None:
    """The script of the shell asked for, whatever shell runs vaultpy (typer's own
    --show-completion ignores its argument and guesses from the process tree)."""
    proc = _vaultpy("completion", shell, env={"SHELL": "/bin/sh",
                                              "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"})
    assert proc.returncode == 0, proc.stderr
    assert mark in proc.stdout and "_VAULTPY_COMPLETE" in proc.stdout
    assert proc.stdout.endswith("\n")      # a file of lines (fish's had no last newline)


def test_completion_for_an_unknown_shell_is_one_clean_error() -> None:
    proc = _vaultpy("completion", "tcsh")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr     # a usage error
    assert "no completion for 'tcsh'" in proc.stderr and "bash, zsh, fish" in proc.stderr


def test_completion_completes_commands_and_subcommands() -> None:
    def complete(words: str) -> list[str]:
        proc = _vaultpy(env={"_VAULTPY_COMPLETE": "complete_bash", "COMP_WORDS": words,
                             "COMP_CWORD": str(len(words.split()) - 1)})
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.split()

    assert "host" in complete("vaultpy ho")
    assert {"rm", "rotate"} <= set(complete("vaultpy host r"))
    assert "--json" in complete("vaultpy doctor --j")


def test_completion_offers_the_ids_and_hosts_hosts_toml_declares(make_repo,
                                                                 tmp_path: Path) -> None:
    """Ids and host names were not completed: `vaultpy edit <TAB>` offered files."""
    repo: Repo = make_repo(hosts=2, secrets={"alpha": b"a", "beta": b"b", "api": b"c"})

    def complete(words: str, cwd: Path) -> list[str]:
        cword = len(words.split()) - (0 if words.endswith(" ") else 1)
        proc = subprocess.run([sys.executable, "-m", "vaultpy"], capture_output=True,
                              text=True, cwd=cwd, timeout=60,
                              env={**os.environ, "_VAULTPY_COMPLETE": "complete_bash",
                                   "COMP_WORDS": words, "COMP_CWORD": str(cword)})
        assert proc.returncode == 0 and proc.stderr == "", proc.stderr
        return proc.stdout.split()

    root = repo.root
    data = tomllib.loads((root / "hosts.toml").read_text())
    data["secrets"]["beta"]["generate"] = "alnum:16"
    data["secrets"]["api"]["vault"] = "secret/app#api"
    data["secrets"]["alpha"]["vault"] = "secret/app#alpha"
    (root / "hosts.toml").write_text(tomli_w.dumps(data))
    assert complete("vaultpy edit ", root) == ["alpha", "api", "beta"]
    assert complete("vaultpy decrypt a", root / "secrets") == ["alpha", "api"]  # found upwards
    for cmd in ("encrypt", "rekey", "rotate"):
        assert complete(f"vaultpy {cmd} b", root) == ["beta"], cmd
    # generate offers the secrets with `generate =`; pull and push those with `vault =`
    assert complete("vaultpy generate ", root) == ["beta"]
    assert complete("vaultpy pull ", root) == ["alpha", "api"]
    assert complete("vaultpy push a", root) == ["alpha", "api"]
    assert complete("vaultpy renc --host ", root) == ["host0", "host1"]
    # what is already given is not offered again
    assert complete("vaultpy renc --host host0 --host ", root) == ["host1"]
    assert complete("vaultpy rekey api ", root) == ["alpha", "beta"]
    assert complete("vaultpy push alpha ", root) == ["api"]
    for cmd in ("profile", "bundle", "access", "host rm", "host rotate"):
        flag = "--host " if cmd in ("profile", "bundle", "access") else ""
        assert complete(f"vaultpy {cmd} {flag}host1", root) == ["host1"], cmd
    assert complete("vaultpy host add web --secrets alpha,", root) == ["alpha,api",
                                                                        "alpha,beta"]
    # -C before or after the command, a directory or the file itself
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert complete(f"vaultpy -C {root} edit al", elsewhere) == ["alpha"]
    assert complete(f"vaultpy edit --repo {root / 'hosts.toml'} ap", elsewhere) == ["api"]
    # bash passes ~ and $HOME as typed
    home = os.environ["HOME"]
    os.environ["HOME"] = str(root.parent)
    try:
        assert complete(f"vaultpy -C ~/{root.name} edit al", elsewhere) == ["alpha"]
        assert complete(f"vaultpy -C $HOME/{root.name} edit al", elsewhere) == ["alpha"]
    finally:
        os.environ["HOME"] = home
    # Nothing to offer, and never an error on the prompt: no hosts.toml, a broken one.
    assert complete("vaultpy edit ", elsewhere) == []
    os.mkfifo(elsewhere / "hosts.toml")                     # never opened for reading
    assert complete(f"vaultpy -C {elsewhere} edit ", root) == []
    (root / "hosts.toml").write_text("[secrets.alpha\n")
    assert complete("vaultpy edit ", root) == []


# --------------------------------------------------------------------------- --json

# Every command is classified here; a new command must be added to one of the lists.
READ_COMMANDS = {"status", "check", "renc", "access", "doctor", "pull"}
ALSO_JSON = {"push", "generate", "rotate", "host add", "host rm", "host rotate",
             "identity combine"}
NO_JSON = {
    "init": "writes files; prints their paths",
    "encrypt": "writes one master file",
    "decrypt": "its output is the secret itself",
    "edit": "interactive",
    "rekey": "rewrites master files",
    "profile": "its output is JSON already",
    "activate": "host side, logs steps",
    "bundle": "writes a directory",
    "identity split": "writes share files",
    "import agenix": "writes hosts.toml and master files",
    "import vaultix": "writes hosts.toml and master files",
    "import sops": "writes hosts.toml and master files",
    "completion": "its output is a shell script",
    "signing-key": "writes hosts.toml and a master file; --public prints one key line",
}


def _commands() -> dict[str, list[str]]:
    """Every leaf command of the CLI → its option names."""
    out: dict[str, list[str]] = {}

    def walk(cmd: object, prefix: str) -> None:
        for name, sub in getattr(cmd, "commands", {}).items():
            full = f"{prefix} {name}".strip()
            if getattr(sub, "commands", None) is not None:
                walk(sub, full)
            else:
                out[full] = [o for p in sub.params for o in getattr(p, "opts", [])]

    walk(typer.main.get_command(app), "")
    return out


def test_every_read_command_has_json() -> None:
    commands = _commands()
    unclassified = set(commands) - READ_COMMANDS - ALSO_JSON - set(NO_JSON)
    assert not unclassified, (f"classify {sorted(unclassified)} in tests/test_doctor.py: "
                              "read commands need --json")
    for name in READ_COMMANDS | ALSO_JSON:
        assert name in commands, f"{name} is gone: update the lists"
        assert "--json" in commands[name], f"vaultpy {name} has no --json"


def test_read_commands_print_json(make_repo) -> None:
    repo = make_repo(hosts=2)
    for args in (("renc",), ("status",), ("check",), ("access",), ("doctor",)):
        proc = repo.run(*args, "--json")
        assert proc.returncode == 0, (args, proc.stderr.decode())
        data = json.loads(proc.stdout)
        assert data["ok"] is True, args
    (repo.root / "hosts.toml").write_text("[vaultpy]\nrecipients = 3\n")
    for args in (("renc",), ("status",), ("check",), ("access",), ("doctor",)):
        proc = repo.run(*args, "--json")
        assert proc.returncode == 1, args
        data = json.loads(proc.stdout)                   # still one JSON document
        assert data["ok"] is False, args


# --------------------------------------------------------------------------- colour

def _run_on_pty(args: list[str], env: dict[str, str], cwd: Path) -> bytes:
    """Run the CLI with stdin/stdout/stderr on a real pseudo-terminal; return all output."""
    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "vaultpy", *args], stdin=slave,
                            stdout=slave, stderr=slave, env=env, cwd=cwd, close_fds=True)
    os.close(slave)
    out = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(master, 65536)
            except OSError:                   # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(master)
        proc.wait(timeout=30)
    return out


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("NO_COLOR", "FORCE_COLOR", "PY_COLORS", "GITHUB_ACTIONS", "TERM",
                        "_TYPER_FORCE_DISABLE_TERMINAL")}
    return {**env, "TERM": "xterm-256color", "COLUMNS": "100", **extra}


ERRORS = [["-C", "/nonexistent", "renc"],      # a problem line (red on a terminal)
          ["renc", "--bogus"],                 # a usage error (one line)
          ["host", "add", "x"]]                # a usage error of a sub-command


@pytest.mark.parametrize("args", ERRORS)
def test_no_color_means_no_escape_codes(args: list[str], tmp_path: Path) -> None:
    coloured = _run_on_pty(args, _env(), tmp_path)
    assert b"\x1b[" in coloured, coloured           # the pty is a terminal: colour is on
    plain = _run_on_pty(args, _env(NO_COLOR="1"), tmp_path)
    assert b"\x1b" not in plain, plain
    assert plain.strip()


@pytest.mark.parametrize("args", ERRORS)
def test_no_escape_codes_when_not_a_terminal(args: list[str], tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "vaultpy", *args], capture_output=True,
                          env=_env(), cwd=tmp_path, timeout=60)
    assert proc.returncode in (1, 2)
    assert proc.stderr.strip() and b"\x1b" not in proc.stderr + proc.stdout


def _fake_git(tmp_path: Path, body: str) -> str:
    """A PATH whose first git is a shell script running ``body``."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "git"
    fake.write_text("#!/bin/sh\n" + body)
    fake.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


def test_git_ignore_says_why_git_failed(make_repo, tmp_path: Path) -> None:
    """git's own reason (its fatal: line) is what doctor shows, not the last line of a
    longer message, here the command git suggests for a repository owned by another
    user (a real git says this when the repository is chowned away)."""
    repo = make_repo(hosts=1)
    path = _fake_git(tmp_path, "printf \"fatal: detected dubious ownership in repository at "
                     "'/r'\\nTo add an exception for this directory, call:\\n\\n"
                     "\\tgit config --global --add safe.directory /r\\n\" >&2\nexit 128\n")
    _rc, checks = doctor_json(repo, env={"PATH": path})
    assert checks["git-ignore"]["detail"] == (
        "git check-ignore failed: fatal: detected dubious ownership in repository at '/r'")


def test_git_ignore_reads_git_in_english_whatever_the_locale(make_repo, tmp_path: Path) -> None:
    """Outside a work tree git says "not a git repository" - in the user's language
    unless told otherwise.  Doctor runs it with LC_ALL=C, so a German git still reads
    as "not in a git work tree", not as a failure of git.  (A stand-in git that
    answers in German unless LC_ALL=C: this machine has no git translations.)"""
    repo = make_repo(hosts=1)
    path = _fake_git(tmp_path, "if [ \"$LC_ALL\" = C ]; then\n"
                     "  echo 'fatal: not a git repository (or any of the parent directories): "
                     ".git' >&2\nelse\n"
                     "  echo 'Schwerwiegend: Kein Git-Repository (oder irgendeines der "
                     "Elternverzeichnisse): .git' >&2\nfi\nexit 128\n")
    _rc, checks = doctor_json(repo, env={"PATH": path, "LC_ALL": "de_DE.UTF-8",
                                         "LANG": "de_DE.UTF-8"})
    assert checks["git-ignore"]["status"] == "skipped"
    assert checks["git-ignore"]["detail"] == "not in a git work tree"


@pytest.mark.parametrize("where", ["found", "-C dir"])
def test_fifo_hosts_toml_is_one_problem_not_a_hang(make_repo, where: str) -> None:
    """Named with -C, doctor reported it, then read it again for the recipients, and
    that read waited forever."""
    repo = make_repo(hosts=1)
    config = repo.root / "hosts.toml"
    config.unlink()
    os.mkfifo(config)
    args = ("-C", str(repo.root)) if where == "-C dir" else ()
    proc = repo.run(*args, "doctor", "--json", timeout=60)
    assert proc.returncode == 1, proc.stderr.decode()
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["hosts.toml"]["status"] == "problem"
    assert "not a regular file" in checks["hosts.toml"]["detail"]
