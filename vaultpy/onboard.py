"""Host onboarding: ``vaultpy host add | rm | rotate``.

The host's key comes from one of four places (:class:`KeySource`): a public key line,
a ``.pub`` file, ``ssh-keyscan`` against the running host, or a key pair generated here
(``ssh-keygen``) for provisioning.  Every input is validated before anything is touched;
then hosts.toml is edited *in place* — its comments, order and layout kept — and
written atomically (temp file, fsync, rename, directory fsync) under the repository
lock, and renc runs for that host only.

Editing hosts.toml (pure functions on the text, each checked against the parsed
document before it is used):

* :func:`add_host_text` appends a ``[hosts.<name>]`` table at the end of the file;
* :func:`remove_host_text` cuts the host's tables out of the text: comment lines right
  above its headers go with it, comment lines right above the *next* table stay;
* :func:`set_pubkey_text` replaces the ``pubkey`` value with tomlkit, which keeps the
  rest of the line (a trailing comment) and everything else byte for byte.

Layouts the text edits do not cover (a host written as an inline table or with dotted
keys) fall back to tomlkit's round-trip editing.  Whatever edited it, the new text must
parse to exactly the old document with the one intended change, or nothing is written.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaultpy import age, model
from vaultpy._internal import fsutil, writes
from vaultpy.errors import (
    Problem,
    VaultpyError,
    display_path,
    key_path,
    nix_attr,
    os_problem,
    too_big,
)
from vaultpy.model import Config

HOST_KEY = "ssh_host_ed25519_key"
KEYSCAN_TIMEOUT = 10


class EditError(Exception):
    """The text edit did not produce exactly the intended document."""


# --------------------------------------------------------------------------- key sources

@dataclass(frozen=True)
class KeySource:
    """Where the host key comes from: ``kind`` is pubkey | pubkey-file | keyscan |
    generate, ``value`` the key line, file, HOST[:PORT] or output directory."""

    kind: str
    value: str

    @property
    def label(self) -> str:
        return f"--{self.kind}"


@dataclass
class Generated:
    private: Path
    public: Path
    created_dir: Path | None = None

    def undo(self) -> None:
        for p in (self.private, self.public):
            with contextlib.suppress(OSError):
                p.unlink()
        if self.created_dir is not None:
            with contextlib.suppress(OSError):
                self.created_dir.rmdir()


@dataclass
class Resolved:
    line: str                      # as written into hosts.toml (comment kept)
    normalized: str                # `type base64`
    generated: Generated | None = None


# What is read of a --pubkey-file at most: a key line is ~100 bytes; /dev/zero must end.
MAX_PUBKEY_FILE = 64 << 10


def _bad_key(source: str, message: str) -> VaultpyError:
    return VaultpyError(Problem(source, message, "", model.HOST_KEY_HINT))


def _parse_key(text: str, source: str) -> Resolved:
    lines = [ln.strip() for ln in text.splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    if lines and lines[0].startswith("-----BEGIN ") and "PRIVATE KEY" in lines[0]:
        raise VaultpyError(Problem(source, "this is a private key, not a public one", "",
                                   "give its public half: the .pub file beside it (or "
                                   "ssh-keygen -y -f FILE)"))
    if len(lines) != 1:
        raise _bad_key(source, "expected one public key line, found "
                       f"{len(lines) or 'none'}")
    try:
        norm = age.normalize_recipient(lines[0], allow_rsa=False)
    except ValueError as exc:
        raise _bad_key(source, str(exc)) from None
    return Resolved(lines[0], norm)


def _split_target(target: str) -> tuple[str, int]:
    """``HOST``, ``HOST:PORT``, ``[V6]:PORT`` or a bare IPv6 address → (host, port)."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.%]+)\](?::([0-9]+))?", target)
    if m:
        host, port = m.group(1), m.group(2)
    elif target.count(":") == 1:
        host, port = target.split(":")
    else:
        host, port = target, None
    if not re.fullmatch(r"[A-Za-z0-9_.:%][A-Za-z0-9_.:%-]*", host or "-"):
        raise VaultpyError(Problem("--keyscan", f"invalid host {host!r}", "",
                                   "give HOST, HOST:PORT or [IPv6]:PORT"))
    number = int(port) if port is not None and port.isdigit() else (22 if port is None else 0)
    if not 1 <= number <= 65535:
        raise VaultpyError(Problem("--keyscan", f"invalid port {port!r}", "",
                                   "give a port from 1 to 65535"))
    return host, number


def keyscan(target: str, timeout: int = KEYSCAN_TIMEOUT) -> Resolved:
    """The ed25519 host key that ``ssh-keyscan`` reads from a running host."""
    host, port = _split_target(target)
    exe = shutil.which("ssh-keyscan")
    if exe is None:
        raise VaultpyError(Problem("--keyscan", "ssh-keyscan is not installed", "",
                                   "install openssh-client, or pass --pubkey"))
    try:
        proc = subprocess.run([exe, "-T", str(timeout), "-t", "ed25519", "-p", str(port),
                               host], capture_output=True, text=True, timeout=timeout + 20,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise VaultpyError(Problem(f"{host}:{port}", "ssh-keyscan timed out", "",
                                   "check that sshd is running and reachable")) from None
    keys = []
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and not parts[0].startswith("#") and parts[1] == age.SSH_ED25519:
            keys.append(f"{parts[1]} {parts[2]}")
    keys = list(dict.fromkeys(keys))
    if not keys:
        said = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("#")]
        why = f" (ssh-keyscan: {said[-1].strip()})" if said else ""
        raise VaultpyError(Problem(f"{host}:{port}", f"no ssh-ed25519 host key "
                                   f"received{why}", "", "check the address and that sshd "
                                   "is running with an ed25519 host key, or pass --pubkey"))
    if len(keys) > 1:
        raise VaultpyError(Problem(f"{host}:{port}", "several different ed25519 keys "
                                   "received", "", "pass the right one with --pubkey"))
    return _parse_key(keys[0], f"{host}:{port}")


def _check_generate_target(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise VaultpyError(Problem(display_path(out_dir), "is not a directory", "",
                                   "give a directory for the new key pair"))
    for p in (out_dir / HOST_KEY, out_dir / f"{HOST_KEY}.pub"):
        if p.exists() or p.is_symlink():
            raise VaultpyError(Problem(display_path(p), "already exists", "",
                                       "choose an empty directory; vaultpy never overwrites "
                                       "a key"))
    if shutil.which("ssh-keygen") is None:
        raise VaultpyError(Problem("--generate", "ssh-keygen is not installed", "",
                                   "install openssh-client"))


def generate_host_key(out_dir: Path, name: str) -> Resolved:
    """A new ed25519 host key pair in ``out_dir`` (private key 0600), by ssh-keygen."""
    _check_generate_target(out_dir)
    created = None
    if not out_dir.exists():
        missing = out_dir
        while not missing.parent.exists():
            missing = missing.parent
        try:
            out_dir.mkdir(mode=0o700, parents=True)
        except OSError as exc:
            raise VaultpyError(os_problem(out_dir, exc, "create the directory")) from None
        created = missing if missing == out_dir else None
    gen = Generated(out_dir / HOST_KEY, out_dir / f"{HOST_KEY}.pub", created)
    exe = shutil.which("ssh-keygen") or "ssh-keygen"
    proc = subprocess.run([exe, "-q", "-t", "ed25519", "-N", "", "-C", f"root@{name}",
                           "-f", str(gen.private)], capture_output=True, text=True,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        gen.undo()
        said = proc.stderr.strip().splitlines()
        raise VaultpyError(Problem(display_path(gen.private), "ssh-keygen failed"
                                   + (f": {said[-1]}" if said else ""), "",
                                   "check the directory's permissions"))
    try:
        os.chmod(gen.private, 0o600)
        resolved = _parse_key(gen.public.read_text(), display_path(gen.public))
    except (OSError, VaultpyError):
        gen.undo()
        raise
    resolved.generated = gen
    return resolved


def validate_source(source: KeySource) -> Resolved | None:
    """Check a source without side effects; returns the key when it is already known
    (--pubkey, --pubkey-file)."""
    if source.kind == "pubkey":
        return _parse_key(source.value, "--pubkey")
    if source.kind == "pubkey-file":
        path = Path(source.value)
        try:
            raw = fsutil.read_named(path, MAX_PUBKEY_FILE)
            text = raw.decode("utf-8") if raw is not None else None
        except (OSError, UnicodeDecodeError) as exc:
            if isinstance(exc, OSError):
                raise VaultpyError(os_problem(path, exc, "read the public key")) from None
            raise _bad_key(display_path(path), "not a text file") from None
        if text is None:
            raise VaultpyError(too_big(path, MAX_PUBKEY_FILE,
                                       ", too much for a public key file", model.HOST_KEY_HINT))
        return _parse_key(text, display_path(path))
    if source.kind == "keyscan":
        _split_target(source.value)
        return None
    if source.kind == "generate":
        _check_generate_target(Path(source.value))
        return None
    raise ValueError(source.kind)


def resolve(source: KeySource, name: str) -> Resolved:
    """The key of ``source``: reads, scans or generates it."""
    known = validate_source(source)
    if known is not None:
        return known
    if source.kind == "keyscan":
        return keyscan(source.value)
    return generate_host_key(Path(source.value), name)


# --------------------------------------------------------------------------- text edits

def _toml_value(value: Any) -> str:
    import tomlkit

    text: str = tomlkit.item(value).as_string()
    return text


def _newline(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def _without_empty_hosts(doc: dict[str, Any]) -> dict[str, Any]:
    if doc.get("hosts") == {}:
        return {k: v for k, v in doc.items() if k != "hosts"}
    return doc


def _verify(new_text: str, expected: dict[str, Any]) -> str:
    try:
        got = tomllib.loads(new_text)
    except tomllib.TOMLDecodeError as exc:
        raise EditError(f"the edited text is not valid TOML ({exc})") from None
    if _without_empty_hosts(got) != _without_empty_hosts(expected):
        raise EditError("the edit changed more than the host")
    return new_text


def _hosts_of(doc: dict[str, Any]) -> dict[str, Any]:
    hosts = doc.get("hosts", {})
    if not isinstance(hosts, dict):
        raise EditError("[hosts] is not a table")
    return hosts


def add_host_text(text: str, name: str, pubkey: str, secrets: Sequence[str] = (),
                  identities: Sequence[str] = (), user: bool = False) -> str:
    """hosts.toml with a new ``[hosts.<name>]`` table appended (``user``: a person's)."""
    old = tomllib.loads(text)
    if name in _hosts_of(old):
        raise EditError(f"host {name!r} exists")
    table: dict[str, Any] = {"user": True} if user else {}
    table["pubkey"] = pubkey
    if identities:
        table["identities"] = list(identities)
    if secrets:
        table["secrets"] = list(secrets)
    expected = {**old, "hosts": {**_hosts_of(old), name: table}}
    nl = _newline(text)
    fragment = [f"[{key_path('hosts', name)}]", *(["user = true"] if user else []),
                f"pubkey = {_toml_value(pubkey)}"]
    if identities:
        fragment.append(f"identities = {_toml_value(list(identities))}")
    if secrets:
        fragment.append(f"secrets = {_toml_value(list(secrets))}")
    body = text.rstrip("\r\n")
    new = (body + nl + nl if body else "") + nl.join(fragment) + nl
    try:
        return _verify(new, expected)
    except EditError:
        pass
    # `hosts = {…}` or dotted keys under [hosts]: edit the document itself
    import tomlkit

    doc = tomlkit.parse(text)
    hosts = doc.get("hosts")
    if hosts is None:
        doc["hosts"] = tomlkit.table(is_super_table=True)
        hosts = doc["hosts"]
    new_table = tomlkit.table()
    for key, value in table.items():
        new_table[key] = value
    try:
        hosts[name] = new_table
    except Exception as exc:  # tomlkit refuses some layouts (a table in an inline table)
        raise EditError(f"cannot add a table here ({exc})") from None
    return _verify(doc.as_string(), expected)


def _scan(text: str) -> tuple[list[int], set[int]]:
    """Line numbers of table headers and of comment-only lines, outside strings/arrays."""
    headers: list[int] = []
    comments: set[int] = set()
    i, n, line, depth, at_start = 0, len(text), 0, 0, True

    def to_eol(j: int) -> int:
        k = text.find("\n", j)
        return n if k < 0 else k

    def close(j: int, quote: str, escapes: bool, multi: bool) -> int:
        while j < n:
            c = text[j]
            if escapes and c == "\\":
                j += 2
                continue
            if multi and text.startswith(quote * 3, j):
                j += 3
                extra = 0
                while j < n and text[j] == quote and extra < 2:
                    j, extra = j + 1, extra + 1
                return j
            if not multi and c == quote:
                return j + 1
            if not multi and c == "\n":
                return j
            j += 1
        return n

    while i < n:
        c = text[i]
        if c == "\n":
            line, i, at_start = line + 1, i + 1, True
            continue
        if c in " \t\r":
            i += 1
            continue
        if at_start and depth == 0 and c == "[":
            headers.append(line)
            i, at_start = to_eol(i), False
            continue
        if c == "#":
            if at_start:
                comments.add(line)
            i, at_start = to_eol(i), False
            continue
        at_start = False
        if c in "\"'":
            multi = text.startswith(c * 3, i)
            j = close(i + (3 if multi else 1), c, c == '"', multi)
            line += text.count("\n", i, j)
            i = j
            continue
        if c in "[{":
            depth += 1
        elif c in "]}":
            depth = max(0, depth - 1)
        i += 1
    return headers, comments


def _header_path(line: str) -> tuple[str, ...] | None:
    """``[a.b."c"]`` → ("a", "b", "c"); None for an array of tables or anything odd."""
    try:
        doc: Any = tomllib.loads(line)
    except tomllib.TOMLDecodeError:
        return None
    path: list[str] = []
    while isinstance(doc, dict) and len(doc) == 1:
        key, doc = next(iter(doc.items()))
        path.append(key)
    return tuple(path) if doc == {} else None


def _remove_by_lines(text: str, name: str) -> str | None:
    lines = text.splitlines(keepends=True)
    headers, comments = _scan(text)
    if not headers:
        return None
    paths = [_header_path(lines[h]) for h in headers]
    gone = [p is not None and p[:2] == ("hosts", name) for p in paths]
    if not any(gone):
        return None
    bounds = [*headers, len(lines)]
    out: list[str] = lines[: headers[0]]
    out_numbers: list[int] = list(range(headers[0]))      # original line numbers in `out`
    nl = _newline(text)

    def is_blank(k: int) -> bool:
        return k < 0 or lines[k].strip() == ""

    for s, start in enumerate(headers):
        end = bounds[s + 1]
        if not gone[s]:
            out += lines[start:end]
            out_numbers += range(start, end)
            continue
        # comment lines right above a removed header describe it: they go too
        while out_numbers and out_numbers[-1] in comments and out_numbers[-1] == start - 1:
            out.pop()
            start = out_numbers.pop()
        # Comments after the section's last key describe what follows (the next
        # header, a "# ---- staging ----" divider, the end of the file): they stay.
        keep_from = end
        while keep_from - 1 > headers[s] and (keep_from - 1 in comments
                                              or is_blank(keep_from - 1)):
            keep_from -= 1
        while keep_from < end and is_blank(keep_from):
            keep_from += 1
        while out_numbers and is_blank(out_numbers[-1]):
            out.pop()
            out_numbers.pop()
        if out and (s + 1 < len(headers) or keep_from < end):
            out.append(nl)
            out_numbers.append(-1)
        out += lines[keep_from:end]
        out_numbers += range(keep_from, end)
    while out and out[-1].strip() == "":
        out.pop()
    result = "".join(out)
    if result and not result.endswith("\n"):
        result += nl
    return result


def remove_host_text(text: str, name: str) -> str:
    """hosts.toml without host ``name`` (every table and key under ``hosts.<name>``)."""
    old = tomllib.loads(text)
    hosts = _hosts_of(old)
    if name not in hosts:
        raise EditError(f"no host {name!r}")
    expected = {**old, "hosts": {k: v for k, v in hosts.items() if k != name}}
    cut = _remove_by_lines(text, name)
    if cut is not None:
        try:
            return _verify(cut, expected)
        except EditError:
            pass
    import tomlkit

    doc = tomlkit.parse(text)
    try:
        del doc["hosts"][name]
    except Exception as exc:
        raise EditError(f"cannot remove the host ({exc})") from None
    return _verify(doc.as_string(), expected)


def set_pubkey_text(text: str, name: str, pubkey: str) -> str:
    """hosts.toml with host ``name``'s pubkey replaced by ``pubkey``."""
    import tomlkit

    old = tomllib.loads(text)
    hosts = _hosts_of(old)
    if name not in hosts:
        raise EditError(f"no host {name!r}")
    expected = {**old, "hosts": {**hosts, name: {**hosts[name], "pubkey": pubkey}}}
    doc = tomlkit.parse(text)
    try:
        doc["hosts"][name]["pubkey"] = pubkey
    except Exception as exc:
        raise EditError(f"cannot replace the key ({exc})") from None
    return _verify(doc.as_string(), expected)


# --------------------------------------------------------------------------- commands

@dataclass
class Outcome:
    action: str                     # added | removed | rotated | unchanged
    host: str
    pubkey: str | None = None
    fingerprint: str | None = None
    generated: Generated | None = None
    renc: Any = None                # vaultpy.renc.Result, when renc ran
    renc_problems: list[Problem] = field(default_factory=list)   # renc could not run
    cache_removed: Path | None = None
    warnings: list[str] = field(default_factory=list)
    person: bool = False            # a person's entry (user = true), not a host's

    @property
    def ok(self) -> bool:
        return not self.renc_problems and (self.renc is None or bool(self.renc.ok))

    @property
    def failed(self) -> list[Problem]:
        return self.renc_problems + (list(self.renc.failed) if self.renc is not None else [])

    def as_dict(self) -> dict[str, object]:
        return {"ok": self.ok, "action": self.action, "host": self.host,
                "pubkey": self.pubkey, "fingerprint": self.fingerprint,
                "generated": None if self.generated is None else {
                    "private": str(self.generated.private),
                    "public": str(self.generated.public)},
                "renc": None if self.renc is None else self.renc.as_dict(),
                "renc_problems": [p.as_dict() for p in self.renc_problems],
                "cache_removed": None if self.cache_removed is None
                else str(self.cache_removed),
                "warnings": self.warnings, "user": self.person}


def _problem(cfg: Config, message: str, where: str = "hosts", hint: str = "") -> VaultpyError:
    return VaultpyError(Problem(display_path(cfg.path), message, where, hint))


def _read_text(cfg: Config) -> str:
    try:                            # bytes, not read_text(): keep CRLF line ends as they are
        return cfg.path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        if isinstance(exc, OSError):
            raise VaultpyError(os_problem(cfg.path, exc, "read")) from None
        raise _problem(cfg, "not UTF-8 text", "", "save it as UTF-8") from None


def _edit(cfg: Config, text: str, fn: Callable[[], str], host: str) -> tuple[str, Config]:
    """Apply a text edit and validate the result as a whole hosts.toml."""
    known = cfg.hosts.get(host)
    try:
        new_text = fn()
    except EditError as exc:
        if known is not None and known.nixos:   # declared in Nix alone: change it there
            raise _nix_host(cfg, known) from None
        raise _problem(cfg, f"cannot edit this hosts.toml automatically: {exc}",
                       key_path("hosts", host), "make the change by hand") from None
    new_cfg = model.reparse(new_text, cfg.path)
    return new_text, new_cfg


def _nix_host(cfg: Config, host: model.Host) -> VaultpyError:
    return VaultpyError(Problem(
        display_path(cfg.nixos or cfg.path), f"host {host.name!r} is declared in the NixOS "
        f"configuration {host.nixos!r}", "vaultpy.nixos", f"change it there "
        f"(nixosConfigurations.{nix_attr(host.nixos)}.config.vaultpy), then run vaultpy renc"))


def _write(cfg: Config, old_text: str, new_text: str, then: Callable[[], None] | None = None
           ) -> None:
    """Replace hosts.toml atomically (same mode and owner) under the repository lock."""
    path = cfg.path.resolve()
    renamed = False
    try:
        st = path.stat()
        with writes.lock(cfg):
            if path.read_bytes() != old_text.encode():
                raise _problem(cfg, "changed while vaultpy was editing it", "",
                               "run the command again")
            tmp = fsutil.tmp_name(path)
            try:
                fsutil.write_new(tmp, new_text.encode(), 0o600)
                os.chmod(tmp, stat.S_IMODE(st.st_mode))
                if os.geteuid() == 0:
                    os.chown(tmp, st.st_uid, st.st_gid)
                fsutil.fsync_path(tmp)
                os.rename(tmp, path)
                renamed = True
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
            fsutil.fsync_path(path.parent, directory=True)
            if then is not None:
                then()
    except OSError as exc:
        if renamed:
            # The edit is in place: "cannot write hosts.toml, then run it again" sent
            # the user to a rerun that fails ("already exists", "unknown host").
            failed = os_problem(exc.filename or path.parent, exc, "finish")
            raise VaultpyError(Problem(display_path(path), "is updated, but "
                                       f"{failed.file}: {failed.message}", "",
                                       "run vaultpy renc to finish (vaultpy check shows "
                                       "what is left)")) from None
        raise VaultpyError(os_problem(path, exc, "write")) from None


def _check_name(cfg: Config, name: str) -> None:
    if len(name) > model.ID_MAX or not model.ID_RE.fullmatch(name):
        raise _problem(cfg, f"invalid host name {name!r}", "hosts",
                       f"use letters, digits, '_', '.', '-', starting with a letter or digit, "
                       f"at most {model.ID_MAX} characters")


def _known_host(cfg: Config, name: str) -> None:
    if name not in cfg.hosts:
        known = ", ".join(cfg.hosts) or "none"
        raise _problem(cfg, f"unknown host {name!r}", "hosts", f"known hosts: {known}")


def _same_key_elsewhere(cfg: Config, name: str, normalized: str) -> list[str]:
    return [f"host {other!r} has the same key: a cloned machine? give each host its own "
            "key" for other, h in cfg.hosts.items()
            if other != name and normalized in h.recipients]


def _run_renc(out: Outcome, cfg: Config, identity_files: Sequence[Path]) -> None:
    """renc for the one host; hosts.toml is already written, so a failure is reported
    on the outcome (the CLI says how to finish) rather than raised."""
    from vaultpy import renc

    try:
        out.renc = renc.renc(cfg, [out.host], identity_files=identity_files)
    except VaultpyError as exc:
        out.renc_problems = exc.problems


def add(cfg: Config, name: str, source: KeySource, secrets: Sequence[str] = (), *,
        run_renc: bool = True, identity_files: Sequence[Path] = (),
        key_paths: Sequence[str] = (), user: bool = False) -> Outcome:
    """Add host ``name`` with the key from ``source`` and deploy ``secrets`` to it.
    ``key_paths``: where the host's private key files are on the host (its
    ``identities``; an age1 host needs them).  ``user``: a person's entry
    (``user = true``), their own key from ``source``."""
    _check_name(cfg, name)
    text = _read_text(cfg)
    if name in cfg.hosts and cfg.hosts[name].nixos:
        raise _nix_host(cfg, cfg.hosts[name])
    if name in cfg.hosts or name in _hosts_of(tomllib.loads(text)):
        raise _problem(cfg, f"host {name!r} already exists", key_path("hosts", name),
                       f"use vaultpy host rotate {name} to change its key, or choose "
                       "another name")
    problems = []
    seen: set[str] = set()
    for sid in secrets:
        if sid not in cfg.secrets:
            problems.append(Problem(display_path(cfg.path), f"unknown secret id {sid!r}",
                                    "--secrets",
                                    f"declare [{key_path('secrets', sid)}] in hosts.toml first"))
        elif sid in seen:
            problems.append(Problem("--secrets", f"secret {sid!r} is listed twice", "",
                                    "list it once"))
        seen.add(sid)
    if problems:
        raise VaultpyError(problems)
    key = _persons_or_hosts_key(source, name, user)
    return _apply_key(cfg, text, name, key, "added",
                      lambda: add_host_text(text, name, key.line, list(secrets),
                                            list(key_paths), user),
                      run_renc, identity_files)


def _persons_or_hosts_key(source: KeySource, name: str, person: bool) -> Resolved:
    """The key ``source`` gives; a bad one is told what a person's key is, for a
    person's entry, not a host's."""
    try:
        validate_source(source)
        return resolve(source, name)
    except VaultpyError as exc:
        if not person:
            raise
        raise VaultpyError([Problem(p.file, p.message, p.field, model.PERSON_KEY_HINT)
                            if p.hint == model.HOST_KEY_HINT else p
                            for p in exc.problems]) from None


def _apply_key(cfg: Config, text: str, name: str, key: Resolved, verb: str,
               make_text: Callable[[], str], run_renc: bool,
               identity_files: Sequence[Path]) -> Outcome:
    """Write the hosts.toml edit that gives ``name`` its key, then renc that host.
    A key pair generated for the edit is removed again if the edit fails."""
    try:
        new_text, new_cfg = _edit(cfg, text, make_text, name)
        _write(cfg, text, new_text)
    except BaseException:
        if key.generated is not None:
            key.generated.undo()
        raise
    out = Outcome(verb, name, key.line, age.fingerprint(key.normalized), key.generated,
                  person=new_cfg.is_person(name),
                  warnings=_same_key_elsewhere(cfg, name, key.normalized))
    keyless = model.no_identity_for_age_key(new_cfg, name)
    if keyless is not None:     # said now, not first at the host's boot
        out.warnings.append(f"{keyless.field}: {keyless.message}; {keyless.hint} "
                            "(host add --key-path PATH writes it)")
    if run_renc:
        _run_renc(out, new_cfg, identity_files)
    return out


def remove(cfg: Config, name: str) -> Outcome:
    """Remove host ``name`` from hosts.toml and delete its cache directory."""
    _known_host(cfg, name)
    if cfg.hosts[name].nixos:       # removed from hosts.toml, Nix would still declare it
        raise _nix_host(cfg, cfg.hosts[name])
    text = _read_text(cfg)
    new_text, _ = _edit(cfg, text, lambda: remove_host_text(text, name), name)
    cache = cfg.cache_dir / name
    out = Outcome("removed", name, person=cfg.hosts[name].user)

    def drop_cache() -> None:
        from vaultpy.cache import not_cache_files

        shown = display_path(cache)
        if cache.is_symlink():              # the link itself, never what it leads to
            fsutil.remove_tree(cache)
            out.cache_removed = cache
            out.warnings.append(f"{shown} was a symlink: removed the link, not what it "
                                "leads to")
        elif cache.is_dir():
            # What renc never writes may be someone's (cache_dir = "/etc", host ssh).
            try:
                others = not_cache_files(cache)
            except OSError as exc:
                out.warnings.append(f"{shown}: not deleted: cannot list it "
                                    f"({exc.strerror}); delete it yourself if it is no "
                                    "longer needed")
                return
            if others:
                more = f" and {len(others) - 1} more" if len(others) > 1 else ""
                out.warnings.append(f"{shown}: not deleted: it holds what vaultpy did not "
                                    f"write ({display_path(cache / others[0])}{more}); "
                                    "delete it yourself if it is no longer needed")
                return
            fsutil.remove_tree(cache)
            out.cache_removed = cache
        elif cache.exists():                # a file in the directory's place: not ours
            out.warnings.append(f"{shown}: not deleted: a file, where the host's cache "
                                "directory would be; delete it yourself if it is no "
                                "longer needed")
            return
        else:
            return
        with contextlib.suppress(OSError):
            fsutil.fsync_path(cfg.cache_dir, directory=True)

    _write(cfg, text, new_text, then=drop_cache)
    return out


def rotate(cfg: Config, name: str, source: KeySource, *, run_renc: bool = True,
           identity_files: Sequence[Path] = ()) -> Outcome:
    """Give host ``name`` a new key (after a reinstall) and re-encrypt its secrets."""
    _known_host(cfg, name)
    text = _read_text(cfg)
    key = _persons_or_hosts_key(source, name, cfg.hosts[name].user)
    if cfg.hosts[name].recipients == (key.normalized,):
        if key.generated is not None:       # unreachable: a new key pair is new
            key.generated.undo()
        return Outcome("unchanged", name, key.line, age.fingerprint(key.normalized),
                       person=cfg.hosts[name].user)
    return _apply_key(cfg, text, name, key, "rotated",
                      lambda: set_pubkey_text(text, name, key.line), run_renc, identity_files)


def install_instructions(gen: Generated, name: str) -> str:
    """How to put a generated key pair in place on the host."""
    priv, pub = gen.private, gen.public
    return (f"Install this key pair on {name} as its SSH host key (it decrypts {name}'s "
            "secrets), e.g. before first boot:\n"
            f"  install -D -m 0600 -o root -g root {priv} /etc/ssh/{HOST_KEY}\n"
            f"  install -D -m 0644 -o root -g root {pub} /etc/ssh/{HOST_KEY}.pub\n"
            "(with nixos-anywhere: put both under DIR/etc/ssh/ and pass --extra-files DIR), "
            f"then delete {priv}: it must not stay on this machine.")
