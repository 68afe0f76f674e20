"""Migration from sops-nix (``vaultpy import sops FILE...``).

The files are decrypted by the real ``sops --decrypt``, with the operator's own sops
keys (age or SSH keys, PGP, KMS, Vault transit: whatever sops finds, as when they edit
them); the plaintext comes back through a pipe, never a file.  sops itself checks each
file's MAC.  What becomes a master secret follows what sops-nix could install:

* YAML and JSON files: every string value, its id taken from its sops-nix key
  (``db/password`` for ``db: {password: …}``: ``db_password``).  sops-nix installs only
  strings by key, so numbers, booleans, lists and nulls are skipped with a warning,
  as are keys its names cannot reach (a '/' in one key's name, a top-level "");
  ``--key KEY[=ID]`` takes only the keys named (looked up as sops-nix does), and
  ``--whole`` each file as one secret (sops-nix's ``key = ""``);
* dotenv, INI and binary files: the whole file, as sops-nix installs them.

The format is guessed from the end of the name, as sops does (``.yaml``/``.yml``,
``.json``, ``.env``, ``.ini``; anything else is binary), unless ``--format`` says.
Which hosts get which secret lives in the NixOS configuration (``sops.secrets``), not
in these files, so no host is declared: :func:`vaultpy.migrate.apply` writes the
masters and their ``[secrets.<id>]`` tables, and the operator lists them under hosts.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from stat import S_ISREG
from typing import Any

from vaultpy import age, masters, model
from vaultpy._internal import fsutil
from vaultpy.errors import Problem, VaultpyError, display_path, fail, os_problem
from vaultpy.migrate import ID_RE, ImportResult, Plan, PlannedSecret, apply, too_much_plaintext

FORMATS = ("yaml", "json", "dotenv", "ini", "binary")
_BY_SUFFIX = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".env": "dotenv",
              ".ini": "ini"}
_TREES = ("yaml", "json")           # values addressed by key; the others are whole files
_NOT_ID = re.compile(r"[^A-Za-z0-9_.-]+")
# sops's words when a file does not parse as the --input-type given (json, yaml; dotenv;
# ini): the file is of another format, or not sops's.
_NOT_FMT = re.compile(r"sops metadata not found|Error unmarshalling input|"
                      r"invalid dotenv input|key-value delimiter not found")


def file_format(path: Path, given: str | None) -> str:
    """sops's own guess from the end of the name (``--format`` wins).  sops matches it
    as Go's strings.HasSuffix does, case and all, not as ``Path.suffix``: ``.env`` is a
    dotenv file, ``a.YML`` a binary one, and sops encrypted them so."""
    if given:
        return given
    return next((fmt for end, fmt in _BY_SUFFIX.items() if path.name.endswith(end)),
                "binary")


def to_id(text: str) -> str:
    """A secret id for a sops-nix key or a file's stem: ``/`` and anything else an id
    cannot hold become ``_`` (``db/password`` -> ``db_password``)."""
    return _NOT_ID.sub("_", text).lstrip("_.-")


def stem_id(path: Path) -> str:
    """A whole file's id: its name without the extension, nor a ``.sops`` or ``.enc``
    before it (``db.sops.env`` -> ``db``)."""
    stem = path.stem
    for mark in (".sops", ".enc"):
        stem = stem.removesuffix(mark)
    return to_id(stem)


def sops_binary() -> str:
    found = shutil.which("sops")
    if found is None:
        raise VaultpyError(Problem("sops", "not found on PATH", "",
                                   "install sops (the importer runs sops --decrypt with "
                                   "your own sops keys)"))
    return found


def decrypt(path: Path, fmt: str, sops: str, out: str) -> bytes:
    """``sops --decrypt`` of ``path``, a ``fmt`` file, written as ``out`` ("json" for
    the tree of a YAML or JSON file; ``fmt`` for the file as sops-nix installs it).
    sops finds the keys in the environment, as when the operator edits the file.
    ``path`` must be a regular file (:func:`plan_sops` checks): sops would wait
    forever on a FIFO."""
    try:
        proc = subprocess.run([sops, "--decrypt", "--input-type", fmt, "--output-type", out,
                               str(path)], capture_output=True, check=False)
    except OSError as exc:
        raise fail(path, f"cannot run sops: {exc.strerror or exc}",
                   hint="check that sops is installed and runs") from None
    if proc.returncode != 0:
        raise fail(path, f"sops --decrypt failed: {_sops_error(proc.stderr)}"[:400],
                   hint=_sops_hint(proc.stderr, path, fmt))
    if len(proc.stdout) > masters.MAX_PLAINTEXT:
        raise VaultpyError(too_much_plaintext(path))
    return proc.stdout


def _documents(path: Path) -> int:
    """How many YAML documents a sops file holds.  sops decrypts them all, but its JSON
    output (as sops-nix's yaml.Unmarshal) has the first only; sops writes its ``sops:``
    metadata at the top of each, which is all this reads (the file sops just read)."""
    try:
        data = fsutil.read_regular(path)[0]
    except OSError:
        return 1                            # sops read it a moment ago
    return max(1, len(re.findall(rb"^sops:", data, re.MULTILINE)))


def _sops_error(stderr: bytes) -> str:
    """The line of sops's error output that says what went wrong: its first."""
    lines = [ln.strip() for ln in stderr.decode("utf-8", "replace").splitlines()]
    return next((ln for ln in lines if ln), "(no output)").rstrip(".")


def _sops_hint(stderr: bytes, path: Path, fmt: str) -> str:
    text = stderr.decode("utf-8", "replace")
    if "data key" in text:
        return ("give sops a key that opens it, as when you edit it (SOPS_AGE_KEY_FILE, "
                "SOPS_AGE_SSH_PRIVATE_KEY_FILE, your PGP agent...)")
    if _NOT_FMT.search(text):
        return (f"it is not a sops-encrypted {fmt} file: check it, or give its format "
                "with --format")
    # The format as given to sops: without it, sops guesses again, maybe otherwise.
    return (f"run sops --decrypt --input-type {fmt} {shlex.quote(display_path(path))} to "
            "see sops's whole error")


def _leaves(tree: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every value that is not a mapping, with its keys, in the file's order."""
    if isinstance(tree, dict):
        out: list[tuple[tuple[str, ...], Any]] = []
        for key, value in tree.items():
            out.extend(_leaves(value, (*path, str(key))))
        return out
    return [(path, tree)]


def _unnamable(keys: tuple[str, ...]) -> str | None:
    """Why sops-nix's key cannot name the value at ``keys`` (None: it can).  Its
    recurseSecretKey splits the key on '/', and key "" is the whole file."""
    if keys == ("",):
        return "its name is \"\", sops-nix's name for the whole file"
    part = next((k for k in keys if "/" in k), None)
    return None if part is None else f"{part!r} is one name, and sops-nix splits on '/'"


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bool):
        return "a boolean"
    return "a number" if isinstance(value, int | float) else "a mapping"


class KeyProblem(ValueError):
    """A ``--key`` that names no string of the file (``missing``: no such key)."""

    def __init__(self, message: str, hint: str, missing: bool = False) -> None:
        super().__init__(message)
        self.hint, self.missing = hint, missing


def lookup(tree: Any, key: str, secret_id: str = "ID") -> str:
    """The string at sops-nix key ``key`` (``a/b``: ``b`` in mapping ``a``), with
    sops-nix's own refusals as :class:`KeyProblem` (``secret_id``: the secret it is
    imported as, for the fix)."""
    value = tree
    parts = key.split("/")
    for n, part in enumerate(parts):
        if not isinstance(value, dict):
            raise KeyProblem(f"key {'/'.join(parts[:n])!r} does not refer to a mapping",
                             "name a key inside a mapping (a/b for b inside a)")
        if part not in value:
            raise KeyProblem(f"key {'/'.join(parts[:n + 1])!r} is not in the file",
                             "check the key's spelling (a/b for b inside a)", missing=True)
        value = value[part]
    if not isinstance(value, str):
        raise KeyProblem(f"the value of key {key!r} is {_kind(value)}, not a string",
                         "sops-nix installs strings only: encrypt it by hand if you need "
                         f"it (vaultpy encrypt {secret_id})")
    return value


def _parse_keys(keys: Sequence[str], prefix: str
                ) -> tuple[list[tuple[str, str]], list[Problem]]:
    """``--key KEY[=ID]`` options: (key, id) pairs (``prefix`` before an id made of KEY,
    not before one given)."""
    out, problems = [], []
    for given in keys:
        key, sep, sid = given.partition("=")
        sid = sid if sep else _prefixed(prefix, to_id(key))
        if not key or not ID_RE.fullmatch(sid) or len(sid) > model.ID_MAX:
            problems.append(Problem("--key", f"{given!r}: not KEY or KEY=ID with an id of "
                                    "letters, digits, '_', '.' and '-', starting with a "
                                    f"letter or digit, at most {model.ID_MAX} characters", "",
                                    "for example --key db/password=db_password"))
        else:
            out.append((key, sid))
    return out, problems


def _prefixed(prefix: str, made: str) -> str:
    """An id made of a name, after ``--prefix`` ("" when the name gave nothing)."""
    return prefix + made if made else ""


def plan_sops(files: Sequence[Path], *, fmt: str | None = None, keys: Sequence[str] = (),
              whole: bool = False, prefix: str = "") -> Plan:
    """Decrypt every file with sops and name a master secret for each value taken.
    ``prefix`` goes before every id made of a key or a file's name: each host's file of
    the same keys (``hosts/web1/secrets.yaml``), imported one at a time."""
    plan = Plan("sops", ", ".join(display_path(f) for f in files))
    plan.default_hint = "the X25519 identity given with -i"
    wanted, plan.problems = _parse_keys(keys, prefix)
    if prefix and not ID_RE.fullmatch(prefix + "x"):
        plan.problems.append(Problem("--prefix", f"{prefix!r} cannot start a secret id", "",
                                     "use letters, digits, '_', '.' and '-', starting with "
                                     "a letter or digit: --prefix web1_"))
    if whole and keys:
        plan.problems.append(Problem("--key", "--key and --whole both given", "",
                                     "--whole takes each file as one secret: drop one"))
    if fmt is not None and fmt not in FORMATS:
        plan.problems.append(Problem("--format", f"{fmt!r} is not a sops format", "",
                                     f"use one of {', '.join(FORMATS)}"))
    if plan.problems:
        return plan
    sops = sops_binary()
    origins: dict[str, tuple[Path, str]] = {}   # id -> its file and where, for collisions
    seen: dict[tuple[int, int], Path] = {}      # (st_dev, st_ino) -> the file given first

    def take(sid: str, value: bytes, source: Path, origin: str) -> None:
        # --key cannot name a whole file (refused for one): a copy of it can.
        rename = ("import a copy of it named with letters or digits"
                  if origin == "the whole file" else "name it: --key KEY=ID")
        if not ID_RE.fullmatch(sid):
            plan.problems.append(Problem(display_path(source), f"{origin}: no secret id can "
                                         "be made of its name", "", rename))
        elif len(sid) > model.ID_MAX:   # else hosts.toml's loader names a file not written
            plan.problems.append(Problem(display_path(source), f"{origin}: its id would be "
                                         f"longer than {model.ID_MAX} characters", "",
                                         rename))
        elif sid in origins:
            first, where = origins[sid]
            # --key names keys, in every file given: it renames neither a whole file nor
            # a key that another file has too; a prefix per file does.
            if first != source:
                hint = ("import the files one at a time, each with its own --prefix "
                        "(--prefix web1_)")
            else:
                hint = "name one of them: --key KEY=ID"
            plan.problems.append(Problem(display_path(source), f"{origin} would be secret "
                                         f"{sid!r}, as {where} is", "", hint))
        else:
            origins[sid] = (source, f"{display_path(source)}: {origin}")
            plan.secrets[sid] = PlannedSecret(sid, source, origins[sid][1], value)

    for path in files:
        try:        # sops would name a missing file its own way, and wait on a FIFO
            st = os.stat(path)
        except OSError as exc:
            plan.problems.append(os_problem(path, exc, "read it"))
            continue
        if not S_ISREG(st.st_mode):
            plan.problems.append(Problem(display_path(path), "not a regular file", "",
                                         "give the sops-encrypted file itself"))
            continue
        # One file twice (or by a link) would collide with itself on every id.
        if (st.st_dev, st.st_ino) in seen:
            plan.problems.append(Problem(display_path(path), "given twice (as "
                                         f"{display_path(seen[st.st_dev, st.st_ino])} "
                                         "too)", "", "give each file once"))
            continue
        seen[st.st_dev, st.st_ino] = path
        kind = file_format(path, fmt)
        as_tree = kind in _TREES and not whole
        if wanted and not as_tree:
            plan.problems.append(Problem(display_path(path), f"a {kind} file is installed "
                                         "whole by sops-nix", "--key",
                                         "drop --key, or import this file on its own"))
            continue
        try:
            plain = decrypt(path, kind, sops, "json" if as_tree else kind)
        except VaultpyError as exc:
            plan.problems.extend(exc.problems)
            continue
        if not as_tree:
            take(_prefixed(prefix, stem_id(path)), plain, path, "the whole file")
            continue
        try:        # Python's parser and walk: one frame a level, as deep as the file
            tree = json.loads(plain)
            leaves = _leaves(tree)
        except RecursionError:
            plan.problems.append(Problem(display_path(path), "nested too deep to read by key",
                                         "", "import it as one secret: --whole"))
            continue
        except ValueError:          # what is on PATH as sops printed more than its JSON
            plan.problems.append(Problem(display_path(path), "sops --decrypt --output-type "
                                         "json printed what is not JSON", "", "check that the sops "
                                         "on PATH is sops itself (sops --version)"))
            continue
        if kind == "yaml" and (docs := _documents(path)) > 1:
            plan.warnings.append(f"{display_path(path)}: holds {docs} YAML documents: only "
                                 "the first is imported, as sops-nix reads only it (give "
                                 "the others a file each, or encrypt them by hand)")
        if wanted:
            for key, sid in wanted:
                try:
                    value = lookup(tree, key, sid)
                except KeyProblem as exc:
                    if exc.missing and len(files) > 1:
                        continue            # another file may have it
                    plan.problems.append(Problem(display_path(path), str(exc), "--key",
                                                 exc.hint))
                    continue
                take(sid, value.encode("utf-8"), path, f"key {key!r}")
            continue
        for keys_path, value in leaves:
            key = "/".join(keys_path)
            if (why := _unnamable(keys_path)) is not None:
                plan.warnings.append(f"{display_path(path)}: key {key!r} cannot be named by "
                                     f"sops-nix ({why}): not imported (encrypt it by hand "
                                     "if you need it)")
            elif isinstance(value, str):
                take(_prefixed(prefix, to_id(key)), value.encode("utf-8"), path, f"key {key!r}")
            else:
                plan.warnings.append(f"{display_path(path)}: key {key!r} is {_kind(value)}, "
                                     "not a string: not imported (sops-nix installs "
                                     "strings only; encrypt it by hand if you need it)")
    if wanted and not plan.problems:
        for key, sid in wanted:
            if sid not in plan.secrets:
                plan.problems.append(Problem("--key", f"key {key!r} is in none of the "
                                             "files", "", "check the key's spelling "
                                             "(a/b for b inside a)"))
    if not plan.secrets and not plan.problems:
        plan.problems.append(Problem(plan.source, "no string value to import", "",
                                     "give --whole to import each file as one secret"))
    return plan


def import_sops(files: Sequence[Path], target: Path, *, fmt: str | None = None,
                keys: Sequence[str] = (), whole: bool = False, prefix: str = "",
                recipients: Sequence[str] = (), identity_files: Sequence[Path] = (),
                force: bool = False, dry_run: bool = False, masters_dir: str | None = None,
                ask: age.PassphraseFn = age.passphrase_from_env_or_tty) -> ImportResult:
    plan = plan_sops(files, fmt=fmt, keys=keys, whole=whole, prefix=prefix)
    return apply(plan, target, recipients=recipients, identity_files=identity_files,
                 force=force, dry_run=dry_run, masters_dir=masters_dir, ask=ask)


__all__ = ["FORMATS", "KeyProblem", "file_format", "import_sops", "lookup", "plan_sops",
           "stem_id", "to_id"]
