"""The bad-input corpus (issue 7, part 1): every directory under ``tests/corpus/`` is
one thing a user (or a disk, or a hostile local user) can get wrong.

Each case is copied to a temporary directory, prepared as its ``case.toml`` says,
and the real CLI (``python -m vaultpy <command>``) runs in it.  The run must:

* exit with the expected code (1 unless the case says otherwise; never 0, never 70);
* print no traceback, on either stream;
* print ONE line that names the file, the field (when the case gives one) and the
  expected message (and the fix, when the case gives one);
* leave the case directory byte-for-byte as it was: every file's bytes, mode, owner
  and mtime, every symlink's target, no entry created or removed.  renc's git-ignored
  local state (conftest.LOCAL_STATE) is no exception: a failing run never creates it.

The format of ``case.toml`` is described in ``tests/corpus/README.md``.
Run this file as a script (``python tests/test_corpus.py fill-disk CASE_DIR``) and it
is the in-namespace driver of the ``fill_disk`` cases (called by the test, inside
``unshare -m``).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from conftest import LOCAL_STATE

ROOT = Path(__file__).resolve().parent.parent
CORPUS = Path(__file__).resolve().parent / "corpus"
NOBODY = 65534
# demo users on the demo hosts (name -> uid, gid), written to root/etc by host_root:
DEMO_USERS = {"app": (1101, 2101), "nginx": (1103, 2103), "postgres": (1104, 2104)}
CASE_KEYS = {"about", "command", "code", "stream", "file", "field", "expect", "fix",
             "setup", "make", "profile"}
COPY_STEPS = ("copy_demo_keys", "copy_demo_secrets", "copy:", "host_root:")
OTHER_STEPS = ("remove:", "symlink:", "mkdir:", "activate:", "chmod_000:", "fill_disk:")


class _Skip(Exception):
    """A case this machine cannot run (not root, no unshare)."""


def case_dirs() -> list[Path]:
    return sorted(p for p in CORPUS.iterdir() if (p / "case.toml").is_file())


def load_case(case_dir: Path) -> dict[str, Any]:
    spec = tomllib.loads((case_dir / "case.toml").read_text(encoding="utf-8"))
    unknown = set(spec) - CASE_KEYS
    assert not unknown, f"{case_dir.name}/case.toml: unknown keys {sorted(unknown)}"
    for key in ("about", "command", "file", "expect"):
        assert key in spec, f"{case_dir.name}/case.toml: {key!r} is required"
    for step in spec.get("setup", []):
        assert step in ("copy_demo_keys", "copy_demo_secrets", "make", "profile") or \
            step.startswith(COPY_STEPS + OTHER_STEPS), f"{case_dir.name}: unknown step {step!r}"
    return spec


# --------------------------------------------------------------------------- snapshots

def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``root``: type, mode, owner, and bytes + mtime or link target.
    Directory mtimes are left out (a created-and-removed temp name is judged by the
    entries, not by the directory's timestamp)."""
    out: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath, name)
            st = p.lstat()
            rel = str(p.relative_to(root))
            ids = (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p), *ids)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", *ids)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = ("file", *ids, st.st_mtime_ns, _read_as_root(p))
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode), *ids)
    return out


def _read_as_root(p: Path) -> bytes:
    try:
        return p.read_bytes()
    except PermissionError:          # not root: a chmod 000 file
        return b"<unreadable>"


def diff(before: dict[str, tuple[Any, ...]], after: dict[str, tuple[Any, ...]]) -> list[str]:
    lines = [f"created: {k}" for k in sorted(after.keys() - before.keys())]
    lines += [f"removed: {k}" for k in sorted(before.keys() - after.keys())]
    lines += [f"changed: {k}" for k in sorted(before.keys() & after.keys())
              if before[k] != after[k]]
    return lines


# --------------------------------------------------------------------------- preparation

def _paths(case: Path, pattern: str) -> list[Path]:
    found = sorted(glob.glob(str(case / pattern)))
    assert found, f"setup: nothing matches {pattern!r}"
    return [Path(p) for p in found]


def _copy(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if src.is_dir():
        shutil.copytree(src, dest, symlinks=True, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns(*LOCAL_STATE))
    else:
        shutil.copyfile(src, dest)


def _write_accounts(root: Path) -> None:
    etc = root / "etc"
    etc.mkdir(parents=True, exist_ok=True)
    passwd = ["root:x:0:0:root:/root:/bin/sh"]
    group = ["root:x:0:"]
    for name, (uid, gid) in DEMO_USERS.items():
        passwd.append(f"{name}:x:{uid}:{gid}::/var/empty:/usr/sbin/nologin")
        group.append(f"{name}:x:{gid}:")
    (etc / "passwd").write_text("\n".join(passwd) + "\n")
    (etc / "group").write_text("\n".join(group) + "\n")


def _mutate(data: bytes, ops: list[dict[str, Any]]) -> bytes:
    for op in ops:
        ((kind, arg),) = op.items()
        if kind == "truncate":          # keep the first N bytes (negative: drop |N|)
            data = data[:arg]
        elif kind == "flip":            # xor the byte at offset N (negative: from the end)
            i = arg % len(data)
            data = data[:i] + bytes([data[i] ^ 0x01]) + data[i + 1:]
        elif kind == "replace":         # [old, new] as text, first occurrence
            old, new = (s.encode() for s in arg)
            assert old in data, f"make: {old!r} not found"
            data = data.replace(old, new, 1)
        elif kind == "drop_line":       # remove line N (0-based, negative from the end)
            lines = data.rstrip(b"\n").split(b"\n")
            del lines[arg]
            data = b"\n".join(lines) + b"\n"
        elif kind == "change_after":    # replace the byte after a marker (another base64
            i = data.index(arg.encode()) + len(arg)     # letter, so the syntax stays valid)
            data = data[:i] + (b"B" if data[i:i + 1] == b"A" else b"A") + data[i + 1:]
        elif kind == "cut_payload":     # keep the header and the first N payload bytes
            i = data.index(b"\n", data.index(b"\n--- ") + 1) + 1
            data = data[:i + arg]
        elif kind == "append_repeat":   # [text, n]: text n times (deep nesting, long values)
            data += arg[0].encode() * arg[1]
        elif kind == "append_hex":
            data += bytes.fromhex(arg)
        elif kind == "prepend":
            data = arg.encode() + data
        else:
            raise AssertionError(f"make: unknown mutation {kind!r}")
    return data


def _make(case: Path, spec: dict[str, Any]) -> None:
    sources = [k for k in ("from", "text", "hex", "encrypt") if k in spec]
    assert len(sources) == 1, f"make {spec.get('path')}: give exactly one source"
    if "from" in spec:
        data = _one(case, spec["from"]).read_bytes()
    elif "text" in spec:
        data = spec["text"].encode("utf-8")
    elif "hex" in spec:
        data = bytes.fromhex(spec["hex"])
    else:
        from vaultpy import age
        enc = spec["encrypt"]
        data = age.encrypt(enc.get("plaintext", "corpus plaintext").encode(),
                           [age.normalize_recipient(r, allow_rsa=True) for r in enc["to"]],
                           armor=enc.get("armor", False))
    data = _mutate(data, spec.get("mutate", []))
    dest = _one(case, spec["path"]) if "*" in spec["path"] else case / spec["path"]
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(data)


def _set_path(doc: Any, dotted: str, value: Any, delete: bool = False) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    key: Any = int(last) if isinstance(doc, list) else last
    if delete:
        del doc[key]
    else:
        doc[key] = value


def _profile(case: Path, spec: dict[str, Any]) -> None:
    """profile.json as ``vaultpy profile --host H -o OUT`` writes it, then edited."""
    from vaultpy import model
    from vaultpy import profile as profile_mod

    out = case / spec.get("out", "profile.json")
    cfg = model.load(case / "hosts.toml")
    data = profile_mod.build(cfg, spec["host"], relative_to=out.parent)
    for dotted, text in spec.get("set", {}).items():
        _set_path(data, dotted, json.loads(text))
    for dotted in spec.get("delete", []):
        _set_path(data, dotted, None, delete=True)
    out.write_text(profile_mod.dumps(data) + "\n")


# Taken once, at collection: the cases run in threads while pytest sets and unsets
# PYTEST_CURRENT_TEST, and iterating os.environ then raised KeyError (a CI failure).
_ENV = {k: v for k, v in os.environ.items()
        if not k.startswith(("VAULTPY_", "VAULT_", "BAO_", "PYTEST_"))}


def cli_env(case: Path) -> dict[str, str]:
    env = dict(_ENV)
    env.update({"NO_COLOR": "1", "COLUMNS": "200", "HOME": str(case), "LC_ALL": "C.UTF-8"})
    return env


def run_cli(case: Path, args: list[str], as_nobody: bool = False
            ) -> subprocess.CompletedProcess[bytes]:
    prefix: list[str] = []
    if as_nobody and os.geteuid() == 0:
        prefix = [shutil.which("setpriv") or "setpriv", f"--reuid={NOBODY}",
                  f"--regid={NOBODY}", "--clear-groups"]
    return subprocess.run([*prefix, sys.executable, "-m", "vaultpy", *args], cwd=case,
                          env=cli_env(case), capture_output=True, stdin=subprocess.DEVNULL,
                          timeout=60)


def _steps(spec: dict[str, Any]) -> list[str]:
    """The setup steps in execution order: "make" and "profile" run where the case lists
    them, by default right after the copy steps; chmod_000 runs last."""
    steps = list(spec.get("setup", []))
    copies = [i for i, s in enumerate(steps) if s.startswith(COPY_STEPS)]
    at = copies[-1] + 1 if copies else 0
    for name in ("make", "profile"):
        if spec.get(name) and name not in steps:
            steps.insert(at, name)
            at += 1
    return steps


def _one(case: Path, pattern: str) -> Path:
    found = _paths(case, pattern)
    assert len(found) == 1, f"setup: {pattern!r} matches {len(found)} paths"
    return found[0]


def prepare(case: Path, spec: dict[str, Any]) -> bool:
    """Run the setup of a copied case; returns whether the command runs as nobody."""
    nobody = []
    for step in _steps(spec):
        kind, _, arg = step.partition(":")
        if step == "copy_demo_keys":
            _copy(ROOT / "demo", case / "demo")
            for key in (case / "demo").rglob("*"):
                if key.is_file():
                    key.chmod(0o644 if key.suffix in (".pub", ".md") else 0o600)
        elif step == "copy_demo_secrets":
            for master in (ROOT / "secrets").glob("*.age"):
                _copy(master, case / "secrets" / master.name)
            _copy(ROOT / "secrets" / "cache", case / "secrets" / "cache")
        elif kind == "copy":
            src, dest = arg.split(":")
            _copy(ROOT / src, case / dest)
        elif kind == "host_root":
            root = case / "root"
            _write_accounts(root)
            key = root / "etc" / "ssh" / "ssh_host_ed25519_key"
            key.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(ROOT / "demo" / "hosts" / f"{arg}.ssh_host_ed25519_key.demo-only",
                            key)
            key.chmod(0o600)
        elif step == "make":
            for item in spec["make"]:
                _make(case, item)
        elif step == "profile":
            for item in spec["profile"]:
                _profile(case, item)
        elif kind == "remove":
            for p in _paths(case, arg):
                shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()
        elif kind == "mkdir":
            (case / arg).mkdir(parents=True, exist_ok=True)
        elif kind == "symlink":
            link, target = arg.split(":", 1)
            path = _one(case, link) if "*" in link else case / link
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_symlink() or path.exists():
                path.unlink()
            path.symlink_to(target)
        elif kind == "activate":
            proc = run_cli(case, ["activate", "--profile", arg, "--root", "root",
                                  "--no-mount", "--systemctl", "/bin/true"])
            assert proc.returncode == 0, ("setup activation failed", proc.stderr.decode())
        elif kind == "chmod_000":
            nobody.append(arg)
        elif kind != "fill_disk":
            raise AssertionError(f"unknown setup step {step!r}")
    if nobody:
        if os.geteuid() != 0:
            raise _Skip("chmod_000 cases need root (setpriv to uid 65534)")
        for dirpath, dirnames, filenames in os.walk(case):
            for name in [*dirnames, *filenames]:
                os.lchown(os.path.join(dirpath, name), NOBODY, NOBODY)
        os.lchown(case, NOBODY, NOBODY)
        for pattern in nobody:
            for p in _paths(case, pattern):
                p.chmod(0)
    return bool(nobody)


def expected_line(spec: dict[str, Any], proc: subprocess.CompletedProcess[bytes]) -> str:
    text = (proc.stdout if spec.get("stream", "stderr") == "stdout" else proc.stderr).decode(
        "utf-8", "replace")
    needles = [spec["file"], spec["expect"], *(spec[k] for k in ("field", "fix") if k in spec)]
    lines = [ln for ln in text.splitlines() if all(n in ln for n in needles)]
    assert lines, (f"no {spec.get('stream', 'stderr')} line with all of {needles!r}:\n"
                   f"stdout:\n{proc.stdout.decode(errors='replace')}\n"
                   f"stderr:\n{proc.stderr.decode(errors='replace')}")
    return lines[0]


def check_outcome(spec: dict[str, Any], proc: subprocess.CompletedProcess[bytes]) -> str:
    out = proc.stdout.decode("utf-8", "replace") + proc.stderr.decode("utf-8", "replace")
    assert "Traceback" not in out, out
    assert "internal error" not in out, out
    raw = re.search(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]", out)      # NUL, ESC, CR, ...
    assert raw is None, f"a raw control character reached the terminal: {out!r}"
    code = spec.get("code", 1)
    assert code not in (0, 70)
    assert proc.returncode == code, (proc.returncode, out)
    return expected_line(spec, proc)


# --------------------------------------------------------------------------- the test

@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A directory uid 65534 can traverse (pytest's own tmp root is 0700)."""
    path = Path(tempfile.mkdtemp(prefix="vaultpy-corpus-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def run_case(case_dir: Path, base: Path) -> dict[str, Any]:
    """Copy, prepare and run one case; what the test then judges."""
    spec = load_case(case_dir)
    case = base / case_dir.name
    shutil.copytree(case_dir, case, symlinks=True)
    case.chmod(0o755)
    if any(s.startswith("fill_disk:") for s in spec.get("setup", [])):
        return _fill_disk_case(case, spec)
    try:
        nobody = prepare(case, spec)
    except _Skip as exc:
        return {"skip": str(exc)}
    before = snapshot(case)
    proc = run_cli(case, spec["command"], as_nobody=nobody)
    return {"spec": spec, "proc": proc, "diff": diff(before, snapshot(case))}


@pytest.fixture(scope="module")
def outcomes(request: pytest.FixtureRequest, base: Path) -> dict[str, Future[dict[str, Any]]]:
    """Every selected case, run concurrently (each is a subprocess or two, so this
    keeps the corpus fast); each test then judges its own case."""
    selected = [item.callspec.params["case_dir"] for item in request.session.items
                if item.path == Path(__file__) and hasattr(item, "callspec")
                and "case_dir" in item.callspec.params]
    pool = ThreadPoolExecutor(max_workers=2 * (os.cpu_count() or 1))
    request.addfinalizer(pool.shutdown)
    return {d.name: pool.submit(run_case, d, base) for d in selected}


def test_corpus_size() -> None:
    assert len(case_dirs()) >= 60


@pytest.mark.parametrize("case_dir", case_dirs(), ids=lambda p: p.name)
def test_case(case_dir: Path, outcomes: dict[str, Future[dict[str, Any]]]) -> None:
    out = outcomes[case_dir.name].result(timeout=300)
    if "skip" in out:
        pytest.skip(out["skip"])
    check_outcome(out["spec"], out["proc"])
    assert out["diff"] == [], out["diff"]
    for key in ("leftovers", "retry", "check"):       # fill_disk only
        assert out.get(key, 0) in (0, []), (key, out)


# --------------------------------------------------------------------------- full disk

def _fill_disk_case(case: Path, spec: dict[str, Any]) -> dict[str, Any]:
    unshare = shutil.which("unshare")
    if unshare is None or os.geteuid() != 0:
        return {"skip": "fill_disk cases need root and unshare (a private tmpfs mount)"}
    proc = subprocess.run([unshare, "-m", "--propagation", "private", sys.executable,
                           __file__, "fill-disk", str(case)], capture_output=True,
                          timeout=120, env=cli_env(case))
    assert proc.returncode == 0, proc.stderr.decode()
    report = json.loads(proc.stdout)
    failing = subprocess.CompletedProcess(spec["command"], report.pop("code"),
                                          report.pop("stdout").encode(),
                                          report.pop("stderr").encode())
    return {"spec": spec, "proc": failing, **report}


def fill_disk_driver(case: Path) -> dict[str, Any]:
    """Inside a private mount namespace: put a ``size`` tmpfs on ``dir`` (keeping what
    the case put there, plus the lock file an earlier run left), fill it to the last
    byte, run the command, then free the space and run it again."""
    spec = load_case(case)
    step = next(s for s in spec["setup"] if s.startswith("fill_disk:"))
    _, rel, size = step.split(":")
    prepare(case, spec)
    target = case / rel
    aside = target.with_name(target.name + ".before-mount")
    target.rename(aside)
    target.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                    str(target)], check=True)
    shutil.copytree(aside, target, symlinks=True, dirs_exist_ok=True)
    shutil.rmtree(aside)
    (target / ".vaultpy.lock").touch()            # an earlier successful run made it
    filler = target / ".fill"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError:
            pass
    before = snapshot(case)
    proc = run_cli(case, spec["command"])
    after = snapshot(case)
    leftovers = [k for k in after if ".vaultpy-tmp-" in k]
    filler.unlink()
    retry = run_cli(case, spec["command"])
    check = run_cli(case, ["check"])
    return {"code": proc.returncode, "stdout": proc.stdout.decode(errors="replace"),
            "stderr": proc.stderr.decode(errors="replace"), "diff": diff(before, after),
            "leftovers": leftovers, "retry": retry.returncode,
            "retry_stderr": retry.stderr.decode(errors="replace"),
            "check": check.returncode,
            "check_output": (check.stdout + check.stderr).decode(errors="replace")}


if __name__ == "__main__":
    if sys.argv[1:2] == ["fill-disk"]:
        sys.path.insert(0, str(ROOT))
        print(json.dumps(fill_disk_driver(Path(sys.argv[2]))))
    else:
        sys.exit("usage: test_corpus.py fill-disk CASE_DIR")

