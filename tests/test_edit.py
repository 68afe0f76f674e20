"""``vaultpy edit ID`` through the real CLI with a scripted $EDITOR.

The editor is a small sh script; what it sees (path, modes, filesystem type) is
written to an info file so the test can check it after the run.  The text it
appends comes from the environment, never from a file, so the plaintext bytes
exist on disk only if vaultpy puts them there; every test ends by scanning
XDG_RUNTIME_DIR, /dev/shm, /tmp and the repository for them.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import age_decrypt, assert_one_clean_error, hosts_toml, need, read_if_regular

from vaultpy import edit as edit_mod
from vaultpy._internal import fsutil
from vaultpy.errors import VaultpyError

RECORD = r'''
f="$1"; d=$(dirname "$f")
{
  echo "path=$f"
  echo "mode=$(stat -c %a "$f")"
  echo "dirmode=$(stat -c %a "$d")"
  echo "fstype=$(stat -f -c %T "$d")"
  echo "entries=$(ls -A "$d" | tr '\n' ' ')"
  echo "pid=$$"
} > "$INFO"
'''


@pytest.fixture
def runtime() -> Iterator[Path]:
    """A fresh XDG_RUNTIME_DIR on tmpfs."""
    d = Path(tempfile.mkdtemp(prefix="vaultpy-test-rt-", dir="/dev/shm"))
    yield d
    fsutil.remove_tree(d)


@pytest.fixture
def marker() -> bytes:
    """A distinctive plaintext: it must never reach a file anywhere."""
    return f"plaintext-marker-{secrets.token_hex(16)}".encode()


@pytest.fixture
def case(make_repo, tmp_path, runtime, marker):
    """A repo with secret ``s`` = marker, and helpers to run ``vaultpy edit``."""
    return EditCase(make_repo(hosts=0, secrets={"s": marker + b"\n"}), tmp_path, runtime,
                    marker)


class EditCase:
    def __init__(self, repo, tmp: Path, runtime: Path, marker: bytes) -> None:
        self.repo, self.tmp, self.runtime, self.marker = repo, tmp, runtime, marker
        self.info = tmp / "editor-info"
        self.append = f"appended-{secrets.token_hex(12)}\n"
        self.started = time.time()

    def editor(self, body: str) -> str:
        script = self.tmp / f"editor-{secrets.token_hex(4)}.sh"
        script.write_text("#!/bin/sh\n" + body)
        script.chmod(0o755)
        return str(script)

    def env(self, editor: str, **extra: str) -> dict[str, str]:
        return {"EDITOR": editor, "VISUAL": "", "XDG_RUNTIME_DIR": str(self.runtime),
                "APPEND": self.append, "INFO": str(self.info), **extra}

    def edit(self, editor: str, sid: str = "s", **extra: str) -> subprocess.CompletedProcess:
        return self.repo.run("edit", sid, env=self.env(editor, **extra), input=b"")

    def popen(self, editor: str, sid: str = "s") -> subprocess.Popen[bytes]:
        full = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **self.repo.env,
                **self.env(editor)}
        full.pop("VAULTPY_DEBUG", None)
        # output goes to files, not pipes: an editor that outlives vaultpy would keep a
        # pipe open and hang the test instead of failing it
        with open(self.tmp / "out", "wb") as out, open(self.tmp / "err", "wb") as err:
            return subprocess.Popen([sys.executable, "-m", "vaultpy", "edit", sid],
                                    cwd=self.repo.root, env=full, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=err, start_new_session=True)

    def finish(self, proc: subprocess.Popen[bytes]) -> tuple[str, str]:
        """Wait for vaultpy (not for its children) and return (stdout, stderr)."""
        proc.wait(timeout=30)
        return ((self.tmp / "out").read_text(errors="replace"),
                (self.tmp / "err").read_text(errors="replace"))

    def seen(self) -> dict[str, str]:
        out = {}
        for line in self.info.read_text().splitlines():
            k, _, v = line.partition("=")
            out[k] = v
        return out

    @property
    def master(self) -> Path:
        return self.repo.root / "secrets" / "s.age"

    def assert_clean(self) -> None:
        """The private dir is gone and no file anywhere holds the plaintext."""
        if self.info.exists():
            assert not Path(self.seen()["path"]).parent.exists(), "private dir left behind"
        assert list(self.runtime.iterdir()) == []
        needles = [self.marker, self.append.encode().strip()]
        for root in (self.runtime, Path("/dev/shm"), Path("/tmp"), self.repo.root):
            for path in _recent_files(root, self.started - 2):
                data = read_if_regular(path)
                if data is None:
                    continue
                for needle in needles:
                    assert needle not in data, f"plaintext found in {path}"


def _recent_files(root: Path, since: float) -> Iterator[Path]:
    """Regular files under ``root`` changed since ``since`` (symlinks not followed)."""
    for dirpath, dirnames, filenames in os.walk(root, onerror=lambda _e: None):
        for name in filenames:
            path = Path(dirpath, name)
            try:
                st = path.lstat()
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode) and st.st_ctime >= since and st.st_size < 64 << 20:
                yield path
        dirnames[:] = [d for d in dirnames if not Path(dirpath, d).is_symlink()]


def test_the_leak_scan_is_not_vacuous(case):
    leak = case.tmp / "sub" / "leak.bin"
    leak.parent.mkdir()
    leak.write_bytes(b"xx" + case.marker + b"yy")
    with pytest.raises(AssertionError, match="plaintext found"):
        case.assert_clean()
    leak.unlink()
    case.assert_clean()


# --------------------------------------------------------------------------- round trips


def test_round_trip_in_a_private_ram_directory(case):
    before = case.master.read_bytes()
    editor = case.editor(RECORD + 'printf "%s" "$APPEND" >> "$f"\n'
                         'echo swap > "$d/.s.swp"\n')          # like vim's swap file
    proc = case.edit(editor)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"s: updated" in proc.stderr and b"Traceback" not in proc.stderr
    seen = case.seen()
    path = Path(seen["path"])
    # the plaintext lived in a fresh 0700 directory on tmpfs, inside XDG_RUNTIME_DIR
    assert path.parent.parent == case.runtime
    assert path.name == "s"
    assert seen["fstype"] in ("tmpfs", "ramfs")
    assert seen["mode"] == "600" and seen["dirmode"] == "700"
    assert seen["entries"].split() == ["s"]
    assert not path.parent.exists()
    expected = case.marker + b"\n" + case.append.encode()
    assert case.repo.ok("decrypt", "s").stdout == expected
    assert age_decrypt(case.master, case.repo.identity) == expected
    assert case.master.read_bytes() != before
    assert not case.master.read_bytes().startswith(b"-----BEGIN")
    assert not [p for p in case.master.parent.iterdir() if fsutil.is_tmp(p.name)]
    case.assert_clean()


def test_armored_master_stays_armored(case):
    case.repo.ok("encrypt", "s", "--armor", input=case.marker)
    proc = case.edit(case.editor('printf "%s" "$APPEND" >> "$1"\n'))
    assert proc.returncode == 0, proc.stderr.decode()
    assert case.master.read_bytes().startswith(b"-----BEGIN AGE ENCRYPTED FILE-----")
    assert age_decrypt(case.master, case.repo.identity) == case.marker + case.append.encode()
    case.assert_clean()


def test_editor_that_replaces_the_file_by_rename(case):
    """Editors that write a new file and rename it over the old one (vim with
    backupcopy=no, many GUI editors) are a normal case."""
    editor = case.editor(RECORD + '{ cat "$f"; printf "%s" "$APPEND"; } > "$d/.new"\n'
                         'mv "$d/.new" "$f"\n')
    proc = case.edit(editor)
    assert proc.returncode == 0, proc.stderr.decode()
    assert case.repo.ok("decrypt", "s").stdout == case.marker + b"\n" + case.append.encode()
    case.assert_clean()


def test_unchanged_file_is_not_rewritten(case):
    snap = case.repo.snapshot()
    proc = case.edit(case.editor(RECORD + 'touch "$f"\n'))
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"unchanged" in proc.stderr
    assert case.repo.snapshot() == snap            # bytes and mtime of every file
    assert not Path(case.seen()["path"]).parent.exists()
    case.assert_clean()


def test_new_id_is_created(case):
    repo = case.repo
    repo.write_hosts(hosts_toml([repo.recipient], ["s", "fresh", "empty"], {}))
    # creating needs no identity at all
    no_id = {"VAULTPY_IDENTITY": "", "HOME": str(case.tmp / "home")}
    proc = case.edit(case.editor(RECORD + 'printf "%s" "$APPEND" >> "$f"\n'), "fresh", **no_id)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"fresh: created" in proc.stderr
    assert case.seen()["mode"] == "600"
    fresh = repo.root / "secrets" / "fresh.age"
    assert age_decrypt(fresh, repo.identity) == case.append.encode()
    assert repo.ok("decrypt", "fresh").stdout == case.append.encode()

    # an untouched empty new file creates nothing
    snap = repo.snapshot()
    proc = case.edit(case.editor(":\n"), "empty", **no_id)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"unchanged" in proc.stderr
    assert not (repo.root / "secrets" / "empty.age").exists()
    assert repo.snapshot() == snap
    case.assert_clean()


def test_a_master_written_during_the_edit_is_not_overwritten(case):
    """Two people editing one secret: the second save must not silently discard the
    first.  The editor itself runs ``vaultpy encrypt`` on the same id mid-edit."""
    other = f"written-meanwhile-{secrets.token_hex(8)}\n"
    editor = case.editor('printf "%s" "$APPEND" >> "$1"\n'
                         'printf "%s" "$OTHER" | "$PY" -m vaultpy encrypt s\n')
    proc = case.edit(editor, OTHER=other, PY=sys.executable)
    line = assert_one_clean_error(proc, "secrets/s.age", "changed by another writer")
    assert proc.returncode == 1
    assert case.repo.ok("decrypt", "s").stdout == other.encode()      # theirs stays
    (kept,) = case.master.parent.glob("s.age.conflict-*")               # ours is kept
    assert kept.name in line
    assert age_decrypt(kept, case.repo.identity) == (case.marker + b"\n"
                                                     + case.append.encode())
    # The hint's way to read ours (`vaultpy decrypt ID` prints theirs) works as given.
    shown = line.split("read it with vaultpy decrypt --file ", 1)[1].split(",", 1)[0]
    assert case.repo.ok("decrypt", "--file", shown).stdout == (case.marker + b"\n"
                                                               + case.append.encode())
    for args in ((), ("s", "--file", shown)):
        assert case.repo.run("decrypt", *args).returncode == 2
        assert_one_clean_error(case.repo.run("decrypt", *args), "give a secret ID or --file")
    assert not [p for p in case.master.parent.iterdir() if fsutil.is_tmp(p.name)]
    case.assert_clean()


@pytest.mark.parametrize("where", ["beside", "ram"])
def test_an_edit_the_disk_cannot_take_is_kept_encrypted(case, where):
    """The master cannot be replaced (ENOSPC injected into rename(2)): the text typed
    exists nowhere else, so its ciphertext is kept - beside the master, or in RAM when
    nothing can be created there either (link(2) fails too) - and the one error line
    says where.  The master is unchanged and no plaintext is left anywhere."""
    need("strace")
    before = case.master.read_bytes()
    editor = case.editor('printf "%s" "$APPEND" >> "$1"\n')
    faults = ["-e", "inject=rename:error=ENOSPC"]
    if where == "ram":
        faults += ["-e", "inject=link,linkat:error=ENOSPC"]
    full = {**os.environ, "NO_COLOR": "1", "COLUMNS": "300", **case.repo.env,
            **case.env(editor)}
    full.pop("VAULTPY_DEBUG", None)
    proc = subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, *faults,
                           sys.executable, "-m", "vaultpy", "edit", "s"],
                          cwd=case.repo.root, env=full, stdin=subprocess.DEVNULL,
                          capture_output=True)
    if proc.returncode != 0 and b"ptrace" in proc.stderr:
        pytest.skip("ptrace not permitted here")
    line = assert_one_clean_error(proc, "secrets/s.age", "No space left on device",
                                  "your edit is kept, encrypted")
    kept = Path(re.search(r"kept, encrypted, in (\S+):", line).group(1))
    kept = kept if kept.is_absolute() else case.repo.root / kept
    if where == "beside":
        assert kept.parent == case.master.parent and kept.name.startswith("s.age.unsaved-")
    else:
        assert str(kept).startswith("/dev/shm/vaultpy-unsaved-")
    try:
        assert age_decrypt(kept, case.repo.identity) == (case.marker + b"\n"
                                                         + case.append.encode())
        assert case.master.read_bytes() == before
        case.assert_clean()
    finally:
        if where == "ram":
            fsutil.remove_tree(kept.parent)


def test_an_edit_is_kept_when_an_interrupted_write_cannot_be_finished(case):
    """While the editor runs, another writer is killed and leaves the journal of its
    write (vaultpy/_internal/writes.py); the save finishes it first, and that fails
    (ENOSPC injected into rename(2)): the text typed exists nowhere else, so its
    ciphertext is kept as when the master itself cannot be replaced."""
    need("strace")
    tmp = ".s.age" + fsutil.TMP_MARK + "0123456789ab"
    journal = json.dumps({"format": 1, "renames": [[f"secrets/{tmp}", "secrets/s.age",
                                                    False]]})
    editor = case.editor('printf "%s" "$APPEND" >> "$1"\n'
                         'cp "$REPO/secrets/s.age" "$REPO/secrets/$TMP"\n'
                         'printf "%s" "$JOURNAL" > "$REPO/secrets/cache/.vaultpy-writes"\n')
    full = {**os.environ, "NO_COLOR": "1", "COLUMNS": "300", **case.repo.env,
            **case.env(editor, REPO=str(case.repo.root), TMP=tmp, JOURNAL=journal)}
    full.pop("VAULTPY_DEBUG", None)
    proc = subprocess.run(["strace", "-f", "-qq", "-o", os.devnull, "-e",
                           "inject=rename:error=ENOSPC", sys.executable, "-m", "vaultpy",
                           "edit", "s"], cwd=case.repo.root, env=full,
                          stdin=subprocess.DEVNULL, capture_output=True)
    if proc.returncode != 0 and b"ptrace" in proc.stderr:
        pytest.skip("ptrace not permitted here")
    line = assert_one_clean_error(proc, "No space left on device",
                                  "your edit is kept, encrypted")
    assert "old recipients" not in line
    (kept,) = case.master.parent.glob("s.age.unsaved-*")
    assert age_decrypt(kept, case.repo.identity) == (case.marker + b"\n"
                                                     + case.append.encode())
    case.assert_clean()


def test_unknown_id_touches_nothing(case):
    snap = case.repo.snapshot()
    proc = case.edit(case.editor("echo ran > \"$INFO\"\n"), "nope")
    assert_one_clean_error(proc, "unknown secret id 'nope'")
    assert not case.info.exists()
    assert case.repo.snapshot() == snap
    case.assert_clean()


# --------------------------------------------------------------------------- failures


def test_editor_failure_changes_nothing(case):
    snap = case.repo.snapshot()
    editor = case.editor(RECORD + 'printf "%s" "$APPEND" >> "$f"\nexit 3\n')
    proc = case.edit(editor)
    assert proc.returncode != 0
    assert_one_clean_error(proc, "exited with status 3")
    assert len(proc.stderr.decode().strip().splitlines()) == 1
    assert case.repo.snapshot() == snap
    assert not Path(case.seen()["path"]).parent.exists()
    case.assert_clean()


def test_editor_that_deletes_the_file_is_a_clean_error(case):
    snap = case.repo.snapshot()
    proc = case.edit(case.editor(RECORD + 'rm -f "$f"\n'))
    assert_one_clean_error(proc)
    assert proc.returncode == 1, proc.stderr.decode()       # not an internal error (70)
    assert case.repo.snapshot() == snap
    case.assert_clean()


def test_an_edited_value_over_the_limit_changes_nothing(case):
    """encrypt refuses more than 64 MiB of plaintext (held in RAM on every host); edit
    saved it (and read it whole, whatever its size)."""
    snap = case.repo.snapshot()
    proc = case.edit(case.editor(RECORD + 'head -c 67108865 /dev/zero >> "$f"\n'))
    assert_one_clean_error(proc, "$EDITOR", "the edited value is more than 64 MiB",
                           "nothing was changed")
    assert proc.returncode == 1
    assert case.repo.snapshot() == snap
    case.assert_clean()


def test_wrong_identity_fails_before_any_plaintext_dir(case):
    from conftest import age_keygen

    other, _ = age_keygen(case.tmp, "other.txt")
    snap = case.repo.snapshot()
    proc = case.edit(case.editor("echo ran > \"$INFO\"\n"), VAULTPY_IDENTITY=str(other))
    assert_one_clean_error(proc, "none of the identities")
    assert not case.info.exists()
    assert case.repo.snapshot() == snap
    case.assert_clean()


# --------------------------------------------------------------------------- signals


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"vaultpy exited early with {proc.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError("the editor never started")
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@contextlib.contextmanager
def _group_reaped(proc: subprocess.Popen[bytes]) -> Iterator[None]:
    """Whatever happens, nothing of the session we started survives the test."""
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


SLEEPER = (RECORD + 'printf "%s" "$APPEND" >> "$f"\n'
           'echo "$f" > "$INFO.tmp" && mv "$INFO.tmp" "$INFO.started"\n'
           'exec sleep 60\n')


def test_ctrl_c_to_the_process_group_aborts_cleanly(case):
    snap = case.repo.snapshot()
    proc = case.popen(case.editor(SLEEPER))
    with _group_reaped(proc):
        _wait_for(Path(str(case.info) + ".started"), proc)
        os.killpg(proc.pid, signal.SIGINT)                # a terminal's Ctrl-C
        out, text = case.finish(proc)
    assert proc.returncode not in (0, 70), text
    assert "Traceback" not in text + out
    assert len(text.strip().splitlines()) == 1, text
    assert "SIGINT" in text or "interrupted" in text or "status 130" in text, text
    assert case.repo.snapshot() == snap
    assert not _alive(int(case.seen()["pid"]))
    case.assert_clean()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP], ids=["TERM", "HUP"])
def test_signal_to_vaultpy_alone_ends_the_editor_and_cleans_up(case, signum):
    snap = case.repo.snapshot()
    proc = case.popen(case.editor(SLEEPER))
    with _group_reaped(proc):
        _wait_for(Path(str(case.info) + ".started"), proc)
        editor_pid = int(case.seen()["pid"])
        os.kill(proc.pid, signum)
        out, text = case.finish(proc)
        assert proc.returncode not in (0, 70), text
        assert "Traceback" not in text + out
        assert signal.Signals(signum).name in text, text
        assert case.repo.snapshot() == snap
        assert not Path(case.seen()["path"]).parent.exists()
        case.assert_clean()
        # the editor itself (not only the `sh -c` wrapper around it) must be gone
        deadline = time.monotonic() + 2
        while _alive(editor_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(editor_pid), "the editor outlived vaultpy edit"


def test_ctrl_c_inside_an_editor_that_handles_it_does_not_abort(case):
    """Like git, vaultpy ignores SIGINT while the editor runs: an editor that catches
    Ctrl-C (vim does) keeps the edit alive and its result is saved."""
    go = case.tmp / "go"
    editor = case.editor(RECORD + "trap '' INT\n"
                         'echo x > "$INFO.tmp" && mv "$INFO.tmp" "$INFO.started"\n'
                         f'while [ ! -e "{go}" ]; do sleep 0.02; done\n'
                         'printf "%s" "$APPEND" >> "$f"\n')
    proc = case.popen(editor)
    with _group_reaped(proc):
        _wait_for(Path(str(case.info) + ".started"), proc)
        os.killpg(proc.pid, signal.SIGINT)
        time.sleep(0.2)
        go.touch()
        _, err = case.finish(proc)
    assert proc.returncode == 0, err
    assert case.repo.ok("decrypt", "s").stdout == case.marker + b"\n" + case.append.encode()
    case.assert_clean()


# --------------------------------------------------------------------------- private_dir


def test_private_dir_prefers_ram_backed_xdg_runtime_dir(runtime, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    d, held = edit_mod.private_dir()
    os.close(held)
    try:
        assert d.parent == runtime
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
        assert fsutil.mount_fstype(d) in fsutil.RAM_FILESYSTEMS
    finally:
        fsutil.remove_tree(d)


def test_private_dir_skips_a_disk_backed_xdg_runtime_dir(disk_path, monkeypatch):
    assert fsutil.mount_fstype(disk_path) not in fsutil.RAM_FILESYSTEMS
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(disk_path))
    d, held = edit_mod.private_dir()
    os.close(held)
    try:
        assert d.parent != disk_path
        assert fsutil.mount_fstype(d) in fsutil.RAM_FILESYSTEMS
    finally:
        fsutil.remove_tree(d)
    assert list(disk_path.iterdir()) == []


@pytest.mark.parametrize("how", ["theirs", "open", "open-sticky-not-root"])
def test_private_dir_passes_over_a_runtime_dir_others_can_change(runtime, monkeypatch,
                                                                 how):
    """Found in review: root running edit with another user's $XDG_RUNTIME_DIR (su
    without -, sudo -E): that user renamed root's 0700 directory away, put one of theirs
    in its place, and read what root typed.  Only a directory of one's own that nobody
    else can write, or root's sticky one (/dev/shm), is used."""
    theirs = runtime / "xdg"
    theirs.mkdir()
    if how == "theirs":
        os.chown(theirs, 65534, 65534)
        os.chmod(theirs, 0o700)
        why = "owned by uid 65534, not you"
    elif how == "open":
        os.chmod(theirs, 0o777)
        why = "writable by others and not sticky"
    else:                               # sticky, but another user's: they own its names
        os.chown(theirs, 65534, 65534)
        os.chmod(theirs, 0o1777)
        why = "owned by uid 65534, not you"
    assert edit_mod.unusable(theirs) == why
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(theirs))
    d, held = edit_mod.private_dir()
    os.close(held)
    try:
        assert d.parent != theirs and edit_mod.unusable(d.parent) is None
    finally:
        fsutil.remove_tree(d)
    assert list(theirs.iterdir()) == []
    monkeypatch.setattr(edit_mod, "ram_candidates", lambda: [theirs])
    with pytest.raises(VaultpyError) as exc:
        edit_mod.private_dir()
    assert f"tried {theirs} ({why})" in exc.value.problems[0].message
    from vaultpy import doctor

    check = doctor.check_ram_dir()
    assert check.status == "problem" and f"{theirs} ({why})" in check.detail


def test_no_ram_backed_dir_needs_allow_disk(disk_path, monkeypatch):
    disk = disk_path / "disk"
    disk.mkdir()
    monkeypatch.setattr(edit_mod, "ram_candidates", lambda: [disk])
    with pytest.raises(VaultpyError) as exc:
        edit_mod.private_dir()
    assert "--allow-disk" in str(exc.value)
    # (it was named "$XDG_RUNTIME_DIR", even when that variable was not set)
    [problem] = exc.value.problems
    assert problem.file == "vaultpy edit" and f"tried {disk} (" in problem.message, problem
    assert "not in RAM)" in problem.message
    assert list(disk.iterdir()) == []
    d, held = edit_mod.private_dir(allow_disk=True)
    os.close(held)
    try:
        assert d.is_dir() and stat.S_IMODE(d.stat().st_mode) == 0o700
    finally:
        fsutil.remove_tree(d)


@pytest.mark.parametrize("editor, vimrc", [
    ("vi", None),
    ("vim", "set undofile undodir=~/undo backup backupdir=~/backup writebackup\n"),
])
def test_vim_keeps_no_copy_of_the_secret_on_disk(case: EditCase, editor: str,
                                                  vimrc: str | None) -> None:
    """With Debian's stock vi (vim), a line yanked in `vaultpy edit` went to
    ~/.viminfo, on disk: the plaintext outside edit's private directory.  vaultpy now
    starts Vim with no viminfo, no swap file, and no undo or backup file, over what
    the user's vimrc sets."""
    need("vim")
    script = need("script")     # a terminal for Vim, as a user's (viminfo is written then)
    home = case.tmp / "home"
    home.mkdir()
    if vimrc is not None:
        (home / "undo").mkdir()
        (home / "backup").mkdir()
        (home / ".vimrc").write_text(vimrc)
    # The user's keys, given after vaultpy's options: yank a line, put it, save, quit.
    command = f"{editor} -c 'normal yyp' -c wq"
    env = {**os.environ, "NO_COLOR": "1", "HOME": str(home), "TERM": "xterm",
           **case.repo.env, **case.env(command)}
    env.pop("VIMINIT", None)
    vaultpy = f"{sys.executable} -m vaultpy edit s"
    proc = subprocess.run([script, "-qec", vaultpy, "/dev/null"], cwd=case.repo.root,
                          env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout.decode(errors="replace")
    value = age_decrypt(case.repo.root / "secrets" / "s.age", case.repo.identity)
    assert value == case.marker + b"\n" + case.marker + b"\n"     # the edit was made
    found = [p for p in home.rglob("*") if p.is_file() and case.marker in p.read_bytes()]
    assert found == [], found
    assert list(case.runtime.iterdir()) == []           # the private directory is gone


def test_only_vim_gets_vims_options(tmp_path: Path) -> None:
    """Another editor, a plain vi that is no Vim, or a shell command line are left as
    they are: they would not know the options."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for name in ("vi", "nano", "vim.basic"):
        (bindir / name).write_text("#!/bin/sh\n")
        (bindir / name).chmod(0o755)
    (bindir / "vim").symlink_to("vim.basic")
    old = os.environ["PATH"]
    os.environ["PATH"] = str(bindir)
    try:
        opts = " ".join(edit_mod.VIM_OPTIONS[:3])
        assert edit_mod._with_vim_options("vim -u NONE").startswith(f"vim {opts} ")
        assert edit_mod._with_vim_options("vim -u NONE").endswith(" -u NONE")
        for command in ("vi", "nano", "vim; true", "code --wait"):
            assert edit_mod._with_vim_options(command) == command
    finally:
        os.environ["PATH"] = old


def test_a_killed_edits_plaintext_is_removed_by_the_next_edit(case):
    """A SIGKILLed edit (the OOM killer) ran no clean-up: its plaintext stayed in
    /dev/shm until the next reboot, and nothing ever named it.  The next edit removes
    the directories of this user's edits that no live process holds (a live edit's
    flock says it is live: its directory is never touched)."""
    killed = case.popen(case.editor(RECORD + "sleep 60\n"))
    _wait_for(case.info, killed)
    left = Path(case.seen()["path"]).parent
    live = case.popen(case.editor('echo "$1" > "$INFO.live"\nsleep 60\n'))
    _wait_for(Path(f"{case.info}.live"), live)
    os.killpg(killed.pid, signal.SIGKILL)       # vaultpy and its editor, as the OOM killer
    killed.wait(timeout=10)
    assert case.marker in (left / "s").read_bytes()         # left behind
    dirs = sorted(p for p in case.runtime.iterdir())
    assert len(dirs) == 2 and left in dirs, dirs
    # doctor names it (and writes nothing: it is still there after)
    from vaultpy import doctor

    os.environ["XDG_RUNTIME_DIR"], old = str(case.runtime), os.environ.get("XDG_RUNTIME_DIR")
    try:
        check = doctor.check_ram_dir()
    finally:
        if old is None:
            del os.environ["XDG_RUNTIME_DIR"]
        else:
            os.environ["XDG_RUNTIME_DIR"] = old
    assert check.status == "warning", check
    assert f"1 killed edit(s) left plaintext there: {left}" in check.detail, check
    assert check.fix == f"vaultpy edit removes it when it next runs; or rm -rf {left}"
    assert case.marker in (left / "s").read_bytes()
    proc = case.edit(case.editor("true\n"))
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert f"warning: removed {left}: the plaintext a killed vaultpy edit left" in err, err
    assert not left.exists()
    assert [p for p in case.runtime.iterdir()] == [d for d in dirs if d != left]  # live kept
    os.killpg(live.pid, signal.SIGTERM)
    case.finish(live)



def test_plaintext_that_cannot_be_removed_is_named_and_the_edit_kept(case):
    """An editor (a plugin) left a file in the private directory that cannot be removed:
    the clean-up's error replaced everything, an internal error (exit 70), the edit
    was lost although it was read, and the plaintext stayed unnamed.  Now the edit is
    saved and the directory named, with what to do."""
    chattr = need("chattr")
    editor = case.editor(RECORD + 'printf "%s" "$APPEND" >> "$f"\n'
                         f'echo x > "$d/stuck" && {chattr} +i "$d/stuck" || exit 9\n')
    proc = case.edit(editor)
    left = Path(case.seen()["path"]).parent
    try:
        if proc.returncode == 1 and b"exited with status 9" in proc.stderr:
            pytest.skip("this file system has no immutable flag")
        line = assert_one_clean_error(proc, "the plaintext could not be removed",
                                      "the edit is saved in secrets/s.age",
                                      f"remove it now: rm -rf {left}")
        assert line.startswith(f"{left}: "), line
        assert proc.returncode == 1
        value = age_decrypt(case.repo.root / "secrets" / "s.age", case.repo.identity)
        assert value == case.marker + b"\n" + case.append.encode()
    finally:
        subprocess.run([chattr, "-i", str(left / "stuck")], check=False)
        fsutil.remove_tree(left)


def test_a_ctrl_c_after_the_editor_quit_neither_loses_the_edit_nor_says_interrupted(case):
    """Ctrl-C a moment after the editor quit (as the save read the master again) raised
    KeyboardInterrupt: "interrupted", exit 130, the edit lost; a moment later it said
    "interrupted" of an edit that was saved.  Ctrl-C stays ignored until the save is
    done.  The SIGINT is delivered by strace as the save opens the master (the third
    open of that file: two come before the editor)."""
    need("strace")
    master = case.repo.root / "secrets" / "s.age"
    editor = case.editor('printf "%s" "$APPEND" >> "$1"\n')
    env = {**os.environ, "NO_COLOR": "1", **case.repo.env, **case.env(editor)}
    proc = subprocess.run(["strace", "-f", "-qq", "-o", str(case.tmp / "strace.log"), "-P",
                           str(master), "-e", "inject=openat:signal=SIGINT:when=3+",
                           sys.executable, "-m", "vaultpy", "edit", "s"],
                          cwd=case.repo.root, env=env, capture_output=True, timeout=60)
    if proc.returncode != 0 and b"ptrace" in proc.stderr:
        pytest.skip("ptrace not permitted here")
    assert "SIGINT" in (case.tmp / "strace.log").read_text()     # it was delivered
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"s: updated" in proc.stderr and b"interrupted" not in proc.stderr
    assert age_decrypt(master, case.repo.identity) == case.marker + b"\n" + \
        case.append.encode()
    case.assert_clean()


@pytest.mark.parametrize("full", ["inodes", "bytes"])
def test_a_full_ram_directory_is_one_line_not_an_internal_error(case, full: str) -> None:
    """A real tmpfs out of inodes or of bytes (mounted inside unshare -m) as
    XDG_RUNTIME_DIR: edit exited 70, "internal error: OSError … please report it"."""
    need("unshare")
    rt = case.tmp / "full-rt"
    rt.mkdir()
    opts = "size=1m,nr_inodes=2" if full == "inodes" else "size=4k"
    fill = "" if full == "inodes" else f"head -c 1m /dev/zero > {rt}/fill 2>/dev/null; "
    editor = case.editor("exit 0\n")
    script = (f"mount -t tmpfs -o {opts},mode=0700 tmpfs {rt} && {fill}"
              f"exec {sys.executable} -m vaultpy edit s")
    full_env = {**os.environ, "NO_COLOR": "1", **case.repo.env, **case.env(editor),
                "XDG_RUNTIME_DIR": str(rt)}
    full_env.pop("VAULTPY_DEBUG", None)
    proc = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script],
                          cwd=case.repo.root, env=full_env, capture_output=True, timeout=60)
    if proc.returncode != 0 and b"unshare failed" in proc.stderr:
        pytest.skip("unshare -m not permitted here")
    line = assert_one_clean_error(proc, "No space left on device", "free some room there")
    assert "internal error" not in proc.stderr.decode(), proc.stderr.decode()
    assert str(rt) in line


def test_an_edit_killed_before_its_directory_was_renamed_leaves_nothing(case) -> None:
    """An edit killed between making its private directory (.vaultpy-edit-…) and
    renaming it once locked left it, empty, for good: the sweep passed over hidden
    names.  One a minute old and empty is a killed edit's; a newer one may be an edit
    starting, and one with a file in it was never made by vaultpy."""
    old_empty = case.runtime / ".vaultpy-edit-killed1"
    fresh = case.runtime / ".vaultpy-edit-starting"
    not_empty = case.runtime / ".vaultpy-edit-notours"
    for d in (old_empty, fresh, not_empty):
        d.mkdir(mode=0o700)
    (not_empty / "x").write_text("x")
    past = time.time() - 120
    os.utime(old_empty, (past, past))
    os.utime(not_empty, (past, past))
    proc = case.edit(case.editor("exit 0\n"))
    assert proc.returncode == 0, proc.stderr.decode()
    assert not old_empty.exists()
    assert fresh.is_dir() and not_empty.is_dir()


# ------------------------------------------------------- an editor that needs a terminal

# A stand-in for a terminal editor: with no terminal, vi "draws its screen", the secret
# on it, on stdout (found in review: `vaultpy edit ID >out` with the default vi put the
# plaintext in `out`).  It records that it ran, prints the file, then edits it.
SCREEN = ('#!/bin/sh\nfor f; do :; done\nprintf "path=%s\\nran=%s\\n" "$f" "$0" > "$INFO"\n'
          'cat "$f"\n'
          'printf "%s" "$APPEND" >> "$f"\n')


def _stand_ins(case: EditCase, *names: str) -> str:
    """A PATH whose first directory holds a :data:`SCREEN` stand-in for each name."""
    bindir = case.tmp / "bin"
    bindir.mkdir(exist_ok=True)
    for name in names:
        (bindir / name).write_text(SCREEN)
        (bindir / name).chmod(0o755)
    return f"{bindir}:{os.environ['PATH']}"


def _edit_on(case: EditCase, env: dict[str, str | None], stdin: str = "null",
             stdout: str = "pipe") -> subprocess.CompletedProcess[bytes]:
    """``vaultpy edit s`` with stdin "null" (/dev/null) or "pty" (a terminal), stdout
    "pipe", "file" or "pty"; an env value None unsets the variable.  The result's stdout
    is what reached stdout, the terminal included."""
    full = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **case.repo.env,
            "XDG_RUNTIME_DIR": str(case.runtime), "APPEND": case.append,
            "INFO": str(case.info)}
    full.pop("VAULTPY_DEBUG", None)
    for key, value in env.items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    leader, follower = os.openpty()
    try:
        with open(case.tmp / "out", "w+b") as out:
            proc = subprocess.run(
                [sys.executable, "-m", "vaultpy", "edit", "s"], cwd=case.repo.root, env=full,
                stdin={"null": subprocess.DEVNULL, "pty": follower}[stdin],
                stdout={"pipe": subprocess.PIPE, "file": out, "pty": follower}[stdout],
                stderr=subprocess.PIPE, timeout=60)
            os.close(follower)
            follower = -1
            if stdout == "file":
                out.seek(0)
                shown = out.read()
            elif stdout == "pty":
                shown = b""
                with contextlib.suppress(OSError):      # EIO: the terminal's last byte
                    while chunk := os.read(leader, 1 << 16):
                        shown += chunk
            else:
                shown = proc.stdout
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    return subprocess.CompletedProcess(proc.args, proc.returncode, shown, proc.stderr)


def _refused_untouched(case: EditCase, proc: subprocess.CompletedProcess[bytes],
                       before: bytes, *needles: str) -> str:
    line = assert_one_clean_error(proc, *needles, "nothing was decrypted",
                                  "run vaultpy edit in a terminal, stdin and stdout not "
                                  "redirected",
                                  "an editor that needs none", "vaultpy encrypt s")
    assert case.marker not in proc.stdout
    assert not case.info.exists(), "the editor ran"
    assert case.master.read_bytes() == before
    assert list(case.runtime.iterdir()) == []           # no private directory was made
    return line


@pytest.mark.parametrize(("stdin", "stdout", "lacking"), [
    ("null", "file", "stdin and stdout are not terminals"),    # a CI job, `>out`
    ("pty", "pipe", "stdout is not a terminal"),               # `vaultpy edit s | tee`
    ("null", "pty", "stdin is not a terminal"),                # `</dev/null`, xargs
])
def test_the_default_vi_with_no_terminal_is_refused_before_decrypting(
        case: EditCase, stdin: str, stdout: str, lacking: str) -> None:
    before = case.master.read_bytes()
    unset: dict[str, str | None] = {"EDITOR": None, "VISUAL": None,
                                    "PATH": _stand_ins(case, "vi")}
    # refused before the key is even read: a missing identity is never reached
    proc = _edit_on(case, {**unset, "VAULTPY_IDENTITY": str(case.tmp / "no-such-key")},
                    stdin, stdout)
    _refused_untouched(case, proc, before, "$EDITOR: not set (nor $VISUAL), and the "
                       "default, 'vi', is a terminal editor", lacking)
    proc = _edit_on(case, unset, stdin, stdout)
    line = _refused_untouched(case, proc, before, "default, 'vi'", lacking, "set EDITOR")
    assert line == proc.stderr.decode().strip()                 # one line, nothing else
    # empty counts as unset, as when the editor is chosen
    proc = _edit_on(case, {**unset, "EDITOR": "", "VISUAL": ""}, stdin, stdout)
    _refused_untouched(case, proc, before, "default, 'vi'", lacking)
    case.assert_clean()


@pytest.mark.parametrize("command", [
    "vi", "vim", "nvim", "nano", "hx", "vim.basic", "BIN/vim", "vim -c wq", "emacs -nw",
    "emacsclient -t", "editor",
])
def test_a_named_terminal_editor_with_no_terminal_is_refused(case: EditCase,
                                                             command: str) -> None:
    before = case.master.read_bytes()
    path = _stand_ins(case, "vi", "vim", "nvim", "nano", "hx", "vim.basic", "emacs",
                      "emacsclient")
    (case.tmp / "bin" / "editor").symlink_to("nano")       # Debian's alternatives
    command = command.replace("BIN", str(case.tmp / "bin"))
    program = command.split()[0]
    proc = _edit_on(case, {"EDITOR": command, "VISUAL": None, "PATH": path})
    _refused_untouched(case, proc, before, f"$EDITOR: {program!r} is a terminal editor",
                       "stdin and stdout are not terminals", "set EDITOR to")
    # $VISUAL comes first, as when the editor is chosen
    proc = _edit_on(case, {"EDITOR": case.editor(RECORD), "VISUAL": command, "PATH": path},
                    "pty", "file")
    _refused_untouched(case, proc, before, f"$VISUAL: {program!r} is a terminal editor",
                       "stdout is not a terminal", "set VISUAL to")
    case.assert_clean()


def test_in_a_terminal_the_default_and_a_terminal_editor_run(case: EditCase) -> None:
    path = _stand_ins(case, "vi", "nano")
    proc = _edit_on(case, {"EDITOR": None, "VISUAL": None, "PATH": path}, "pty", "pty")
    assert proc.returncode == 0, proc.stderr.decode()
    assert case.seen()["ran"].endswith("/vi")
    assert case.marker in proc.stdout                   # its screen: on the terminal
    value = case.marker + b"\n" + case.append.encode()
    assert age_decrypt(case.master, case.repo.identity) == value
    proc = _edit_on(case, {"EDITOR": "nano", "VISUAL": "", "PATH": path}, "pty", "pty")
    assert proc.returncode == 0, proc.stderr.decode()
    assert case.seen()["ran"].endswith("/nano")
    assert age_decrypt(case.master, case.repo.identity) == value + case.append.encode()
    case.assert_clean()


@pytest.mark.parametrize("command", [
    "SCRIPT", "code --wait", "gvim -f", "emacs", "vim -g", "nvim --headless", "emacsclient -c",
    'SCRIPT "$1" && true',
])
def test_editors_that_need_no_terminal_still_run_without_one(case: EditCase,
                                                             command: str) -> None:
    """Scripts, GUI editors, and terminal editors in a mode with no screen; with $VISUAL
    set, a terminal editor in $EDITOR is not the one that runs."""
    path = _stand_ins(case, "code", "gvim", "emacs", "vim", "nvim", "emacsclient")
    command = command.replace("SCRIPT", case.editor(RECORD + 'printf "%s" "$APPEND" >> "$f"\n'))
    proc = _edit_on(case, {"EDITOR": "vim", "VISUAL": command, "PATH": path})
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"s: updated" in proc.stderr
    assert case.info.exists()
    value = case.marker + b"\n" + case.append.encode()
    assert age_decrypt(case.master, case.repo.identity) == value


def test_vim_in_silent_ex_mode_runs_a_script_from_a_pipe(case: EditCase) -> None:
    """`vim -es` draws no screen and reads its commands from stdin: a way to script an
    edit, which must keep working with no terminal."""
    need("vim")
    proc = case.repo.run("edit", "s", env={**case.env("vim -es"), "HOME": str(case.tmp)},
                         input=b"$put ='added'\nwq\n")
    assert proc.returncode == 0, proc.stderr.decode()
    assert case.marker not in proc.stdout
    assert age_decrypt(case.master, case.repo.identity) == case.marker + b"\nadded\n"
    case.assert_clean()


def test_which_editors_need_a_terminal(tmp_path: Path, monkeypatch) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "nano").write_text("#!/bin/sh\n")
    (bindir / "nano").chmod(0o755)
    (bindir / "editor").symlink_to("nano")
    monkeypatch.setenv("PATH", str(bindir))
    for command in ("vi", "vim", "/usr/bin/vim", "vim.tiny", "nvim -u NONE", "nano -w",
                    "micro", "kak", "joe", "ne", "mg", "vis", "pico", "editor",
                    "emacs -nw", "emacs --no-window-system", "emacsclient -nw",
                    "emacsclient --tty", "vim -c 'normal yy' -c wq"):
        assert edit_mod.terminal_editor(command) == command.split()[0], command
    for command in ("", "sh ./ed.sh", "./ed.sh", "code --wait", "subl -w", "gvim -f",
                    "emacs", "emacsclient -c", "vim -es", "vim -e", "nvim --headless",
                    "vim -g", "vim; true", "$EDITOR", "vim 'unclosed"):
        assert edit_mod.terminal_editor(command) is None, command
