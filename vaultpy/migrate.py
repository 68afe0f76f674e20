"""Migration from agenix and vaultix (``vaultpy import agenix|vaultix``).

Both importers build the same tool-independent :class:`Plan` (master secrets with
their source ``.age`` files, hosts with their keys, deployments and templates),
then :func:`apply` does the rest the same way:

1. choose the master recipients (``--recipient``; else hosts.toml's; else the
   importer's default) and check for collisions with what hosts.toml already has;
2. render the new hosts.toml (or the tables appended to the existing one) and
   validate it with the real model loader, checking it is equivalent to the plan;
3. decrypt every source file with the operator's identity (one prompt per file);
4. encrypt every master to the master recipients, and only then write hosts.toml and
   the masters as one journaled write (:func:`vaultpy.masters.write_all`): all of them
   or none, finished by the next command if killed once decided.  Bad input writes
   nothing.

agenix (``secrets.nix``, evaluated with ``nix-instantiate --eval --strict --json``):
``{ "<path>.age" = { publicKeys = [ "<key>" … ]; armor = <bool>; }; … }``; paths are
relative to secrets.nix.  Which keys are hosts is not in the file (Nix variable
names are gone after evaluation), so hosts are named by ``--hosts-from FILE``,
``--host-key NAME=KEY`` or, on request, by ``root@NAME`` key comments; every other
key is an operator key (the default master recipients).

vaultix (one JSON profile per host, as vaultix's ``renc`` app writes it from
``config.vaultix``: ``settings`` (``hostIdentifier``, ``hostPubkey``, ``decryptedDir``,
``decryptedDirForUser`` …), ``secrets.<id>`` (``file``, ``name``, ``owner``, ``group``,
``mode``, ``path``, ``insert``, ``cleanPlaceholder``), ``templates.<key>`` (``name``,
``content``, ``trim``, ``owner``, ``group``, ``mode``, ``path``), ``beforeUserborn`` and
``placeholder.<id> = "{{ <sha256 of id> }}"``).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from vaultpy import age, masters, model, templates
from vaultpy import profile as profile_mod
from vaultpy._internal import ageformat, fsutil, writes
from vaultpy.errors import (
    Problem,
    VaultpyError,
    display_path,
    fail,
    key_path,
    os_problem,
    too_big,
)

ID_RE = re.compile(templates.ID_PATTERN)
_COMMENT_HOST = re.compile(r"root@(" + templates.ID_PATTERN + r")")
_NOT_IN_COMMENT = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")     # TOML: tab only, of these


@dataclass
class PlannedSecret:
    id: str
    source: Path           # the other tool's .age file (sops: its encrypted file)
    origin: str            # for messages: "secrets.nix: \"a.age\""
    # The plaintext, when the importer decrypted it itself (sops runs `sops --decrypt`);
    # None: apply() decrypts ``source`` with the operator's identities.
    value: bytes | None = None


@dataclass
class PlannedHost:
    name: str
    pubkeys: list[str]                        # as written (comments kept)
    secrets: dict[str, dict[str, Any]] = field(default_factory=dict)   # id -> fields
    templates: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> fields


@dataclass
class Plan:
    tool: str
    source: str
    secrets: dict[str, PlannedSecret] = field(default_factory=dict)
    hosts: dict[str, PlannedHost] = field(default_factory=dict)
    default_recipients: list[str] = field(default_factory=list)
    default_hint: str = ""
    default_warnings: list[str] = field(default_factory=list)   # if the defaults are used
    # Keys of the source that open some secrets and become neither a host nor a master
    # recipient (normalized key -> the warning naming them): unless --recipient names one.
    left_out: dict[str, str] = field(default_factory=dict)
    default_refused: Problem | None = None                      # the defaults can't be used
    warnings: list[str] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)


@dataclass
class ImportResult:
    path: Path
    hosts_toml: str
    secrets: list[str]
    hosts: list[str]
    warnings: list[str]
    written: list[Path]
    # An identity file of the import that opens the masters written, for the next
    # step: `vaultpy renc -i FILE` (None: none does; renc needs the master identity).
    master_identity: Path | None = None


# --------------------------------------------------------------------------- helpers

def nix_eval_json(path: Path) -> Any:
    """``nix-instantiate --eval --strict --json FILE`` (read-only: no store writes)."""
    try:
        fsutil.read_regular(path)       # a clear line for a missing file, not Nix's
    except OSError as exc:
        raise VaultpyError(os_problem(path, exc, "read it")) from None
    exe = shutil.which("nix-instantiate")
    if exe is None:
        raise fail(path, "nix-instantiate is needed to evaluate this file",
                   hint="install Nix (Debian: nix-bin), or write the mapping as JSON/TOML")
    try:
        proc = subprocess.run([exe, "--eval", "--strict", "--json", "--readonly-mode",
                               str(path.absolute())], capture_output=True, text=True,
                              timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise fail(path, f"cannot run nix-instantiate: {exc}") from None
    if proc.returncode != 0:
        raise fail(path, f"nix-instantiate failed: {nix_error(proc.stderr)}"[:400],
                   hint="fix the Nix expression (run nix-instantiate --eval --strict "
                   "--json on it to see the whole error)")
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise fail(path, "nix-instantiate printed no JSON") from None


def nix_error(stderr: str) -> str:
    """The line of Nix's error output that says what is wrong.  Nix up to 2.12 prints it
    first (``error: undefined variable 'x'``, then where); later ones open with a bare
    ``error:`` and a trace, and end with the innermost ``error: …``."""
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()]
    said = [ln for ln in lines if ln.startswith("error") and ln.rstrip(":") != "error"]
    return (said[-1:] or lines[-1:] or ["(no output)"])[0]


def _load_mapping(path: Path) -> Any:
    """A .nix, .json or .toml file's value."""
    suffix = path.suffix.lower()
    if suffix == ".nix":
        return nix_eval_json(path)
    try:
        text = fsutil.read_regular(path)[0].decode("utf-8")
    except OSError as exc:
        raise VaultpyError(os_problem(path, exc, "read it")) from None
    except UnicodeDecodeError:
        raise fail(path, "not UTF-8 text",
                   hint="give a .nix, .json or .toml file mapping NAME to KEY") from None
    try:
        if suffix == ".toml":
            return tomllib.loads(text)
        return json.loads(text)
    except ValueError as exc:
        raise fail(path, f"not valid {'TOML' if suffix == '.toml' else 'JSON'}: {exc}",
                   hint="give a .nix, .json or .toml file mapping NAME to KEY") from None


def _norm(key: str, *, host: bool) -> str:
    return age.normalize_recipient(key, allow_rsa=not host, allow_plugin=not host)


def _comment(key: str) -> str:
    parts = key.split(None, 2)
    return parts[2].strip() if len(parts) == 3 and not key.startswith("age1") else ""


def _mode(value: Any) -> str | None:
    """A chmod-style octal mode string as vaultpy writes it ("400" -> "0400")."""
    if isinstance(value, str) and re.fullmatch(r"0?[0-7]{3}", value):
        return f"{int(value, 8):04o}"
    return None


# --------------------------------------------------------------------------- agenix

def agenix_id(name: str) -> str:
    """``"hosts/web/db.age"`` -> ``"hosts-web-db"``: ``.age`` dropped, ``/`` -> ``-``,
    other characters outside ``[A-Za-z0-9_.-]`` -> ``_``, and what an id cannot start
    with dropped from its start (``-dash.age`` -> ``dash``, as import sops does)."""
    base = name[:-4] if name.endswith(".age") else name
    base = base.lstrip("./").replace("/", "-")
    return re.sub(r"[^A-Za-z0-9_.-]", "_", base).lstrip("_.-")


# Names of key lists in agenix's secrets.nix / keys.nix layouts, never one host's.
_GROUP_NAMES = frozenset({"users", "systems", "hosts", "machines", "servers", "admins",
                          "all", "everyone", "keys"})


def _host_map(plan: Plan, hosts_from: Path | None, host_keys: Sequence[str]
              ) -> dict[str, list[str]]:
    """Host name -> its keys as written, from --hosts-from and --host-key."""
    named: dict[str, list[str]] = {}
    if hosts_from is not None:
        data = _load_mapping(hosts_from)
        if not isinstance(data, dict):
            raise fail(hosts_from, "expected a mapping of host name to public key",
                       hint='e.g. { web1 = "ssh-ed25519 AAAA…"; }')
        for name, value in data.items():
            keys = [value] if isinstance(value, str) else value
            if not isinstance(keys, list) or not keys or not all(
                    isinstance(k, str) for k in keys):
                plan.problems.append(Problem(display_path(hosts_from), "expected a key or "
                                             "a list of keys", str(name)))
                continue
            # agenix's README keeps { users = [ alice bob ]; systems = [ web1 db1 ]; }:
            # a list of several machines' keys is no host (each would read the others').
            named_in = sorted({c for k in keys if (c := _comment(k))})
            if len(keys) > 1 and (len(named_in) > 1 or str(name).lower() in _GROUP_NAMES):
                shown_in = f" ({', '.join(named_in[:3])}{', …' if len(named_in) > 3 else ''})"
                plan.problems.append(Problem(
                    display_path(hosts_from), f"{len(keys)} keys"
                    + (shown_in if len(named_in) > 1 else "") + " for one host: this looks "
                    "like a list of several machines' or people's keys, and one host gets "
                    "every key's secrets", str(name), "give one entry per host: "
                    '{ web1 = "ssh-ed25519 AAAA…"; db1 = "ssh-ed25519 AAAA…"; } (a host '
                    "with two keys of its own: a list of those)"))
                continue
            named.setdefault(str(name), []).extend(keys)
    for item in host_keys:
        name, sep, key = item.partition("=")
        if not sep or not name.strip() or not key.strip():
            plan.problems.append(Problem("--host-key", f"expected NAME=KEY, got {item!r}", "",
                                         'e.g. --host-key "web1=ssh-ed25519 AAAA…"'))
            continue
        named.setdefault(name.strip(), []).append(key.strip())
    return named


def agenix_rules(given: Path | None, rules_env: str | None) -> tuple[Path, Path]:
    """agenix's rules file, and the directory the names in it are relative to, as the
    agenix CLI has them: ``RULES`` names the file (default ``./secrets.nix``), and the
    names are paths from the directory agenix runs in.  A file given as SECRETS_NIX is
    read as agenix run beside it (with the default RULES) reads it, unless RULES names
    that very file: then agenix ran here."""
    env_path = Path(rules_env) if rules_env else None
    if given is None:
        return env_path or Path("secrets.nix"), Path.cwd()
    key = fsutil.file_key(env_path) if env_path is not None else None
    return given, Path.cwd() if key is not None and key == fsutil.file_key(given) else given.parent


def _misplaced(plan: Plan, secrets_nix: Path, base: Path, ids: Mapping[str, str]) -> None:
    """Names not found from ``base`` but from the other directory agenix could have run
    in: one line for the rules file, saying where to run the import (not one "cannot
    read" per file, whose fix would be wrong)."""
    here, beside = Path.cwd().absolute(), secrets_nix.parent.absolute()
    other = beside if base.absolute() == here else here
    if other == base.absolute():
        return
    found = [sid for sid, name in ids.items()
             if not os.path.lexists(plan.secrets[sid].source) and (other / name).is_file()]
    if not found:
        return
    shown = display_path(secrets_nix)
    more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
    if other == here:
        message = f"found from the current directory, not from this file's{more}"
        hint = (f"agenix ran here with RULES={shlex.quote(shown)}: run the import so too, "
                f"RULES={shlex.quote(shown)} vaultpy import agenix …")
    else:
        message = f"found from this file's directory, not from the current one{more}"
        hint = (f"agenix ran in {display_path(secrets_nix.parent)}: run the import there, "
                "or unset RULES and give the file as SECRETS_NIX")
    plan.problems.append(Problem(shown, message, f'"{ids[found[0]]}"', hint))
    for sid in found:           # said once, here, not again as unreadable
        del plan.secrets[sid]


def plan_agenix(secrets_nix: Path, *, hosts_from: Path | None = None,
                host_keys: Sequence[str] = (), hosts_by_comment: bool = False,
                base: Path | None = None) -> Plan:
    """``base``: the directory the names of secrets.nix are relative to (default: its
    own; see :func:`agenix_rules`)."""
    base = secrets_nix.parent if base is None else base
    plan = Plan("agenix", display_path(secrets_nix),
                default_hint="the keys of secrets.nix that are not host keys")
    rules = nix_eval_json(secrets_nix)
    shown = display_path(secrets_nix)
    if not isinstance(rules, dict):
        raise fail(secrets_nix, "expected an attribute set of \"<file>.age\" = { publicKeys "
                   "= [ … ]; }", hint="this is agenix's rules file (secrets.nix)")
    by_key: dict[str, str] = {}                 # normalised host key -> host name
    for name, keys in _host_map(plan, hosts_from, host_keys).items():
        if not ID_RE.fullmatch(name):
            plan.problems.append(Problem("--hosts-from/--host-key", f"invalid host name "
                                         f"{name!r}", "", "use letters, digits, '_', '.', '-'"))
            continue
        for key in keys:
            try:
                norm = _norm(key, host=True)
            except ValueError as exc:
                plan.problems.append(Problem("--hosts-from/--host-key", f"host {name}: {exc}",
                                             "", model.HOST_KEY_HINT))
                continue
            if by_key.setdefault(norm, name) != name:
                plan.problems.append(Problem("--hosts-from/--host-key", f"the same key is "
                                             f"given for {by_key[norm]} and {name}", ""))
                continue
            host = plan.hosts.setdefault(name, PlannedHost(name, []))
            host.pubkeys.append(key.strip())
    users: dict[str, str] = {}                  # normalised -> as written, first seen
    opens: dict[str, set[str]] = {}             # normalised -> the ids it can open
    ids: dict[str, str] = {}
    for name in sorted(rules):
        rule = rules[name]
        where = f'"{name}"'
        if not isinstance(rule, dict) or not isinstance(rule.get("publicKeys"), list):
            plan.problems.append(Problem(shown, "expected { publicKeys = [ … ]; }", where))
            continue
        for extra in sorted(set(rule) - {"publicKeys", "armor"}):
            plan.warnings.append(f"{shown}: {name}: ignoring attribute {extra!r}")
        sid = agenix_id(name)
        if not sid or not ID_RE.fullmatch(sid) or len(sid) > model.ID_MAX:
            plan.problems.append(Problem(shown, f"cannot make a secret id of {name!r}", where,
                                         "rename the file"))
            continue
        if sid in ids:
            plan.problems.append(Problem(shown, f"{name!r} and {ids[sid]!r} both become "
                                         f"secret id {sid!r}", where, "rename one of them"))
            continue
        ids[sid] = name
        source = base / name
        plan.secrets[sid] = PlannedSecret(sid, source, f"{shown}: {name}")
        for key in rule["publicKeys"]:
            if not isinstance(key, str):
                plan.problems.append(Problem(shown, "publicKeys holds a non-string", where))
                continue
            try:
                norm = _norm(key, host=False)
            except ValueError as exc:
                plan.problems.append(Problem(shown, f"{exc}: {key[:40]!r}", where,
                                             age.KEY_HINT))
                continue
            host_name = by_key.get(norm)
            if host_name is None and hosts_by_comment:
                m = _COMMENT_HOST.fullmatch(_comment(key))
                if m and norm.startswith(age.SSH_ED25519):
                    host_name = m.group(1)
                    by_key[norm] = host_name
                    plan.hosts.setdefault(host_name, PlannedHost(host_name, [])).pubkeys.append(
                        key.strip())
            if host_name is not None:
                plan.hosts[host_name].secrets.setdefault(sid, {})
            else:
                users.setdefault(norm, key.strip())
                opens.setdefault(norm, set()).add(sid)
    _misplaced(plan, secrets_nix, base, ids)
    for host in plan.hosts.values():
        if not host.secrets:
            plan.warnings.append(f"host {host.name}: no secret in {shown} is encrypted to its "
                                 "key; it is added without secrets")
    # A master recipient can decrypt every master: only a key that could open every
    # secret before becomes one.  Another (a user given some secrets, a host no option
    # names) would gain the rest; it is named, and left out.
    every = set(plan.secrets)
    plan.default_recipients = [k for n, k in users.items() if opens[n] >= every]
    hosts_like = []
    for norm, key in users.items():
        some = sorted(opens[norm])
        shown_ids = ", ".join(some[:3]) + (", …" if len(some) > 3 else "")
        # An ssh-ed25519 key whose comment names a host (root@web1, as a host's .pub has
        # it) is a host's until the operator says otherwise: as a master recipient that
        # host could read every master; left out, it would get none of its secrets.
        if (_COMMENT_HOST.fullmatch(_comment(key)) is not None
                and key.startswith(age.SSH_ED25519)):
            hosts_like.append(key)
            plan.left_out[norm] = (
                f"{age.key_name(key)} looks like a host key that no host option names, on "
                f"{len(some)} of {len(every)} secrets ({shown_ids}): no host gets them; "
                "name its host with --hosts-by-comment, --hosts-from FILE or --host-key "
                "NAME=KEY")
        elif not opens[norm] >= every:
            host_fix = ("if it is a host's key, add the host with its ssh-ed25519 key "
                        "(vaultpy hosts take no RSA key: --host-key NAME=KEY) and give it "
                        "these secrets" if key.startswith("ssh-rsa ") else
                        "if it is a host's key, name its host with --hosts-from, "
                        "--host-key or --hosts-by-comment")
            plan.left_out[norm] = (
                f"{age.key_name(key)} could open {len(some)} of {len(every)} secrets "
                f"({shown_ids}), so it is not a master recipient (they can decrypt every "
                f"secret): {host_fix}; if it may read every secret, name it with "
                "--recipient, with every other master recipient")
        elif key.startswith("ssh-rsa "):
            # An RSA key may be a user's (agenix's id_rsa) or a host's, and cannot be a
            # vaultpy host's either way.  age.key_name names the key once, with its comment.
            looks = ("looks like a host key but becomes"
                     if _COMMENT_HOST.fullmatch(_comment(key)) else "becomes")
            plan.default_warnings.append(
                f"{age.key_name(key)} {looks} a master recipient, able to decrypt every "
                "secret: if it is a host's key, "
                "drop it from [vaultpy] recipients after the import and give the host its "
                "ssh-ed25519 key (vaultpy hosts take no RSA key)")
    # Unless the operator chose the master recipients (--recipient), such keys stop the
    # import: as the defaults they would read every master, and their hosts be left out.
    if hosts_like:
        more = f" and {len(hosts_like) - 1} more" if len(hosts_like) > 1 else ""
        plan.default_refused = Problem(
            shown, f"{age.key_name(hosts_like[0])}{more} look like host keys that no host option "
            "names: their hosts would be left out"
            + (", and a master recipient can decrypt every secret"
               if set(hosts_like) & set(plan.default_recipients) else ""),
            "publicKeys", "name their hosts with --hosts-by-comment, --hosts-from FILE or "
            "--host-key NAME=KEY; or, if they are operators' keys, choose the master "
            "recipients with --recipient KEY")
    return plan


# --------------------------------------------------------------------------- vaultix

_STORE = re.compile(r"^/nix/store/[0-9a-z]{32}-(?P<name>.+)$")
_VAULTIX_PLACEHOLDER = re.compile(r"\{\{ ([0-9a-f]{64}) \}\}")


def _tails(text: str) -> list[Path]:
    """Where below a --secrets-dir DIR the secret file ``text`` may be, most specific
    first.  A store path's part below ``/nix/store/<hash>-`` and each shorter tail of
    it: ``…-source/secrets/db.age`` (``file = ./secrets/db.age`` in a flake) is
    ``secrets/db.age`` under DIR the flake's root, then ``db.age`` under DIR its
    secrets directory; ``…-db.age`` (builtins.path, vaultix's default) is ``db.age``.
    Another path: its file name."""
    m = _STORE.match(text)
    if m is None:
        return [Path(Path(text).name)] if Path(text).name else []
    obj, _, below = m.group("name").partition("/")
    parts = [p for p in [*([] if obj == "source" else [obj]), *below.split("/")]
             if p not in ("", ".")]
    if ".." in parts:
        return []
    return [Path(*parts[i:]) for i in range(len(parts))]


def _resolve_store_file(text: str, secrets_dir: Path | None, base: Path
                        ) -> tuple[Path | None, list[Path]]:
    """The secret file ``text`` names, and where else it was looked for."""
    path = Path(text)
    if not path.is_absolute():
        path = base / path
    if path.is_file():
        return path, []
    if secrets_dir is None:
        return None, []
    tried = [secrets_dir / tail for tail in _tails(text)]
    return next((c for c in tried if c.is_file()), None), tried


def convert_template(content: str, placeholders: Mapping[str, str]) -> str:
    """vaultix template text -> vaultpy's: ``{{ <sha256 hex of id> }}`` becomes
    ``{{ secrets.<id> }}``; literal ``{{`` are escaped only where vaultpy would misread
    them.  ValueError names an unknown placeholder."""
    parts: list[str | templates.Ref] = []
    pos = 0
    for m in _VAULTIX_PLACEHOLDER.finditer(content):
        sid = placeholders.get(m.group(1))
        if sid is None:
            raise ValueError(f"placeholder {{{{ {m.group(1)[:12]}… }}}} names no secret of "
                             "this profile")
        parts.append(content[pos : m.start()])
        parts.append(templates.Ref(sid))
        pos = m.end()
    parts.append(content[pos:])

    def render(escape_all: bool) -> str:
        out = []
        for p in parts:
            if isinstance(p, templates.Ref):
                out.append(f"{{{{ secrets.{p.id} }}}}")
            else:
                out.append(p.replace("{{", "{{{{") if escape_all else p)
        return "".join(out)

    def segments(items: Sequence[str | templates.Ref]) -> list[str | templates.Ref]:
        merged: list[str | templates.Ref] = []
        for it in items:
            if isinstance(it, str) and merged and isinstance(merged[-1], str):
                merged[-1] += it
            elif not (isinstance(it, str) and not it):
                merged.append(it)
        return merged

    want = segments(parts)
    for escape_all in (False, True):
        text = render(escape_all)
        try:
            if segments(templates.parse(text)) == want:
                return text
        except templates.TemplateError:
            continue
    raise ValueError("cannot express this template in vaultpy's placeholder syntax")


def _output_fields(entry: Mapping[str, Any], where: str, plan: Plan,
                   default_paths: Sequence[str], early: bool, shown: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("owner", "group"):
        value = entry.get(key, "root")
        if isinstance(value, bool) or not isinstance(value, str | int):
            plan.problems.append(Problem(shown, f"{key} {value!r} is not a user or group",
                                         f"{where}.{key}", 'give a name like "root"'))
        elif value != "root":
            out[key] = value
    mode = entry.get("mode", "0400")
    normal = _mode(mode)
    if normal is None:
        plan.problems.append(Problem(shown, f"mode {mode!r} is not an octal mode",
                                     f"{where}.mode", 'vaultpy takes octal modes like "0440"'))
    elif normal != "0400":
        out["mode"] = normal
    path = entry.get("path")
    if isinstance(path, str) and path and path not in default_paths:
        out["path"] = path
    if early:
        out["early"] = True
    return out


def plan_vaultix(profiles: Sequence[Path], *, secrets_dir: Path | None = None) -> Plan:
    plan = Plan("vaultix", ", ".join(display_path(p) for p in profiles),
                default_hint="the public key of the X25519 identity given with -i")
    digests: dict[str, tuple[str, str]] = {}          # id -> (sha256 of source, host)
    claimed: dict[str, str] = {}                      # source read -> the file it is for
    for prof_path in profiles:
        shown = display_path(prof_path)
        # Each profile's problem is kept and the next one read: one run names them all.
        give = "give the JSON profile (see docs/migration.md)"
        try:
            raw = fsutil.read_named(prof_path, profile_mod.MAX_PROFILE)
        except OSError as exc:
            p = os_problem(prof_path, exc, "read the vaultix profile")
            plan.problems.append(Problem(p.file, p.message, "", give))
            continue
        if raw is None:
            plan.problems.append(too_big(prof_path, profile_mod.MAX_PROFILE,
                                         ", too much for a vaultix profile", give))
            continue
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            plan.problems.append(Problem(shown, "not a vaultix profile: not UTF-8 text", "",
                                         give))
            continue
        except ValueError as exc:
            where = (f" (line {exc.lineno}, column {exc.colno})"
                     if isinstance(exc, json.JSONDecodeError) else "")
            plan.problems.append(Problem(shown, f"not a vaultix profile: not JSON{where}", "",
                                         give))
            continue
        if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
            plan.problems.append(Problem(shown, "not a vaultix profile (no settings)", "",
                                         give))
            continue
        settings = data["settings"]
        name, pubkey = settings.get("hostIdentifier"), settings.get("hostPubkey")
        if not isinstance(name, str) or not ID_RE.fullmatch(name):
            plan.problems.append(Problem(shown, f"invalid or missing host name {name!r}",
                                         "settings.hostIdentifier"))
            continue
        if name in plan.hosts:
            plan.problems.append(Problem(shown, f"host {name} is given twice",
                                         "settings.hostIdentifier", "give one profile per host"))
            continue
        if not isinstance(pubkey, str):
            plan.problems.append(Problem(shown, "missing", "settings.hostPubkey"))
            continue
        if pubkey.startswith("/"):
            # vaultix takes the path of a .pub file too (a store path once exported).
            try:
                with fsutil.open_regular(pubkey) as f:      # (a FIFO would hang it)
                    raw = fsutil.read_at_most(f.fileno(), 16 << 10)
                if raw is None:
                    raise OSError(errno.EFBIG, "too big for a public key")
            except OSError as exc:
                plan.problems.append(Problem(shown, f"{pubkey}: cannot read the host key "
                                             f"file: {exc.strerror or exc}",
                                             "settings.hostPubkey", "export the key's text "
                                             "instead of its path, or run the import where "
                                             "that file is"))
                continue
            pubkey = raw.decode("utf-8", "replace").strip()
        try:
            _norm(pubkey, host=True)
        except ValueError as exc:
            plan.problems.append(Problem(shown, str(exc), "settings.hostPubkey",
                                         model.HOST_KEY_HINT))
            continue
        host = PlannedHost(name, [pubkey.strip()])
        plan.hosts[name] = host
        kinds = {"beforeUserborn": list, "secrets": dict, "templates": dict,
                 "placeholder": dict}
        wrong = [k for k, kind in kinds.items()
                 if data.get(k) is not None and not isinstance(data[k], kind)]
        early = data.get("beforeUserborn") or []
        if isinstance(early, list) and not all(isinstance(i, str) for i in early):
            wrong.append("beforeUserborn")
        if wrong:
            for k in wrong:
                want = "a list of names" if k == "beforeUserborn" else "an object"
                plan.problems.append(Problem(shown, f"expected {want}", k, "export the "
                                             "profile as docs/migration.md shows"))
            continue
        early_ids = set(early)
        dirs = [settings.get("decryptedDir") or "/run/vaultix",
                settings.get("decryptedDirForUser") or "/run/vaultix-for-user"]
        secrets = data.get("secrets") or {}
        placeholders = {hashlib.sha256(sid.encode()).hexdigest(): sid for sid in secrets}
        for sid, holder in (data.get("placeholder") or {}).items():
            m = _VAULTIX_PLACEHOLDER.fullmatch(str(holder))
            if m:
                placeholders[m.group(1)] = sid
        for sid, entry in sorted(secrets.items()):
            where = key_path("secrets", sid)      # (a JSON file: as jq, or TOML, writes it)
            if not isinstance(entry, dict):
                plan.problems.append(Problem(shown, "expected an object", where))
                continue
            if not ID_RE.fullmatch(sid) or len(sid) > model.ID_MAX:
                plan.problems.append(Problem(shown, f"secret id {sid!r} is not valid for "
                                             "vaultpy", where, "rename the secret"))
                continue
            if entry.get("insert") or entry.get("cleanPlaceholder"):
                plan.problems.append(Problem(shown, "insert/cleanPlaceholder are not "
                                             "supported by vaultpy", where, "move the inserted "
                                             "text into the secret, or use a template"))
                continue
            file_text = entry.get("file")
            source, tried = (_resolve_store_file(file_text, secrets_dir, prof_path.parent)
                             if isinstance(file_text, str) else (None, []))
            if source is None:
                tails = _tails(file_text) if isinstance(file_text, str) else []
                holding = (f"DIR holding {tails[0]}" + (f" (or {tails[-1]})"
                                                        if len(tails) > 1 else "")
                           if tails else "DIR holding <name>.age")
                plan.problems.append(Problem(
                    shown, f"secret file {file_text!r} not found" + (
                        f", nor {', '.join(display_path(t) for t in tried)}" if tried else ""),
                    f"{where}.file",
                    # (tried: --secrets-dir was given, and is the wrong directory)
                    f"give --secrets-dir the {holding}, not {display_path(secrets_dir)}"
                    if tried and secrets_dir is not None else
                    f"build the host once so the file is in /nix/store, or pass "
                    f"--secrets-dir {holding}"))
                continue
            # Two store paths read from one file: a --secrets-dir that has the file
            # name but not the directories (a/key.age and b/key.age as DIR/key.age).
            assert isinstance(file_text, str)       # a source was found from it
            key = os.path.abspath(source)
            other = claimed.setdefault(key, file_text)
            if _STORE.sub(r"\g<name>", other) != _STORE.sub(r"\g<name>", file_text):
                plan.problems.append(Problem(
                    shown, f"secret files {other!r} and {file_text!r} would both be read "
                    f"from {display_path(source)}", f"{where}.file",
                    "pass --secrets-dir the directory their paths below the store are "
                    "relative to (the flake's root for …-source/…)"))
                continue
            try:
                digest = hashlib.sha256(source.read_bytes()).hexdigest()
            except OSError as exc:
                plan.problems.append(os_problem(source, exc, "read the secret"))
                continue
            seen = digests.setdefault(sid, (digest, name))
            if seen[0] != digest:
                plan.problems.append(Problem(shown, f"secret {sid!r} differs from the one of "
                                             f"host {seen[1]}", where, "give them distinct "
                                             "ids in vaultix first"))
                continue
            plan.secrets.setdefault(sid, PlannedSecret(sid, source, f"{shown}: {where}"))
            out_name = entry.get("name") or sid
            if not isinstance(out_name, str) or not ID_RE.fullmatch(out_name):
                plan.problems.append(Problem(shown, f"name {out_name!r} is not valid for "
                                             "vaultpy", f"{where}.name", "rename it"))
                continue
            fields: dict[str, Any] = {}
            if out_name != sid:
                fields["name"] = out_name
            defaults = [f"{d}/{out_name}" for d in dirs if isinstance(d, str)]
            fields.update(_output_fields(entry, where, plan, defaults, sid in early_ids,
                                         shown))
            host.secrets[sid] = fields
        for key, entry in sorted((data.get("templates") or {}).items()):
            where = key_path("templates", key)
            if not isinstance(entry, dict):
                plan.problems.append(Problem(shown, "expected an object", where))
                continue
            tname = entry.get("name", key)
            if not isinstance(tname, str) or not ID_RE.fullmatch(tname):
                plan.problems.append(Problem(shown, f"template name {tname!r} is not valid "
                                             "for vaultpy", where, "rename the template"))
                continue
            raw_content, trim = entry.get("content"), entry.get("trim", True)
            if not isinstance(raw_content, str):
                plan.problems.append(Problem(shown, "missing" if raw_content is None else
                                             "expected a string", f"{where}.content",
                                             "give the template's text"))
                continue
            if not isinstance(trim, bool):
                plan.problems.append(Problem(shown, f"expected true or false, got {trim!r}",
                                             f"{where}.trim"))
                continue
            try:
                content = convert_template(raw_content, placeholders)
            except ValueError as exc:
                plan.problems.append(Problem(shown, str(exc), f"{where}.content"))
                continue
            fields = {"content": content, "trim": trim}
            defaults = [f"{d}/{tname}" for d in dirs if isinstance(d, str)]
            fields.update(_output_fields(entry, where, plan, defaults, key in early_ids,
                                         shown))
            host.templates[tname] = fields
        for other in sorted(set(data) - {"settings", "secrets", "templates", "beforeUserborn",
                                        "placeholder"}):
            plan.warnings.append(f"{shown}: ignoring {other!r}")
    return plan


# --------------------------------------------------------------------------- apply

def _host_table(host: PlannedHost) -> dict[str, Any]:
    table: dict[str, Any] = {"pubkey": host.pubkeys[0] if len(host.pubkeys) == 1
                             else host.pubkeys}
    if host.secrets:
        if any(host.secrets.values()):
            table["secrets"] = {sid: dict(f) for sid, f in sorted(host.secrets.items())}
        else:
            table["secrets"] = sorted(host.secrets)
    if host.templates:
        table["templates"] = {n: dict(f) for n, f in sorted(host.templates.items())}
    return table


def render_tables(plan: Plan) -> str:
    import tomli_w

    doc: dict[str, Any] = {}
    if plan.secrets:
        doc["secrets"] = {sid: {} for sid in sorted(plan.secrets)}
    if plan.hosts:
        doc["hosts"] = {n: _host_table(h) for n, h in sorted(plan.hosts.items())}
    return tomli_w.dumps(doc, multiline_strings=True)


def _recipients(plan: Plan, given: Sequence[str], existing: model.Config | None,
                keys: Sequence[age.Identity]) -> tuple[list[str], str]:
    """The master recipients as written in hosts.toml, and where they came from."""
    for g in given:
        try:
            _norm(g, host=False)
        except ValueError as exc:
            raise VaultpyError(Problem("--recipient", str(exc), "", "give an age1… key or "
                                       "an ssh public key line (age-keygen -y FILE)")) from None
    if existing is not None:
        if given and [_norm(g, host=False) for g in given] != list(
                existing.recipients):
            raise fail(existing.path, "hosts.toml already has [vaultpy] recipients; the "
                       "imported masters are encrypted to them", field="--recipient",
                       hint="drop --recipient, or give exactly those keys (or change "
                       "hosts.toml first)")
        plan.warnings.extend(w for k, w in plan.left_out.items()
                             if k not in existing.recipients)
        return list(existing.recipients), "hosts.toml"
    if given:
        chosen = {_norm(g, host=False) for g in given}
        plan.warnings.extend(w for k, w in plan.left_out.items() if k not in chosen)
        return [g.strip() for g in given], "--recipient"
    publics = [] if plan.default_recipients else [
        str(k.key.to_public()) for k in keys if k.kind == "x25519"]
    if plan.default_recipients or publics:
        if plan.default_refused is not None:
            raise VaultpyError(plan.default_refused)
        plan.warnings.extend(plan.default_warnings)
        plan.warnings.extend(plan.left_out.values())
    if plan.default_recipients:
        return plan.default_recipients, plan.default_hint
    if publics:
        return publics, "the X25519 identity given with -i"
    none_all = (f"; no key in {plan.source} could open every secret"
                if plan.left_out else "")
    raise VaultpyError(Problem("--recipient", "no master recipient for the new hosts.toml"
                               + none_all, "", "give one with --recipient KEY (your master "
                               "public key, age-keygen -y)"))


def default_identities() -> list[Path]:
    """agenix's own defaults: ~/.ssh/id_ed25519 and ~/.ssh/id_rsa, those that exist."""
    home = Path(os.path.expanduser("~/.ssh"))
    return [p for p in (home / "id_ed25519", home / "id_rsa") if p.exists()]


def too_much_plaintext(path: Path) -> Problem:
    """An imported secret over masters.MAX_PLAINTEXT, as encrypt and edit refuse one."""
    return too_big(path, masters.MAX_PLAINTEXT, " of plaintext", "a secret is held in RAM "
                   "on every host it goes to; move a big file by hand")


def apply(plan: Plan, target: Path, *, recipients: Sequence[str] = (),
          identity_files: Sequence[Path] = (), force: bool = False, dry_run: bool = False,
          masters_dir: str | None = None,
          ask: age.PassphraseFn = age.passphrase_from_env_or_tty) -> ImportResult:
    """Check everything, then write the masters and hosts.toml.  ``masters_dir``: the
    new hosts.toml's secrets_dir (cache_dir below it), for an import in the directory
    that holds the old tool's files."""
    # Every check runs, whatever an earlier one found: one run lists every problem.
    problems: list[Problem] = list(plan.problems)
    hosts_path = (target / model.FILENAME).absolute()
    existing: model.Config | None = None
    old_text = ""
    if hosts_path.exists():
        existing = model.load(hosts_path)
        old_text = hosts_path.read_text(encoding="utf-8")
        if not dry_run:
            _finish_interrupted(existing, old_text)
    # Identities open the old tool's files; when the importer has every plaintext
    # already (sops), only -i's are loaded: a master recipient, the next step's hint.
    needs_key = any(sec.value is None for sec in plan.secrets.values())
    hint = (f"pass the key {plan.tool} decrypted with: -i FILE" if needs_key
            else "pass an age identity file: -i FILE")
    files = list(identity_files) or (default_identities() if needs_key else [])
    if not files and needs_key:
        raise VaultpyError([*problems, Problem(
            "-i", f"no identity to decrypt the {plan.tool} secrets", "", hint)])
    try:
        keys = age.load_identities(files, ask, unreadable_hint=hint,
                                   regular_only=not identity_files     # found: ~/.ssh/…
                                   ) if files else []
    except VaultpyError as exc:
        raise VaultpyError([*problems, *exc.problems]) from None
    chosen: list[str] = []
    origin = ""
    try:
        chosen, origin = _recipients(plan, recipients, existing, keys)
    except VaultpyError as exc:
        problems.extend(exc.problems)
    if masters_dir is not None and (os.path.isabs(masters_dir) or masters_dir.startswith("~")
                                    or os.path.normpath(masters_dir).split(os.sep)[0]
                                    == ".."):
        # It is written as secrets_dir, which is read relative to hosts.toml: "../vp"
        # put the masters and the cache outside the repository, and nothing said so.
        problems.append(Problem("--masters-dir", f"{masters_dir!r} is not a folder inside "
                                f"the repository ({display_path(hosts_path.parent)})", "",
                                "name one relative to hosts.toml's folder, like "
                                "--masters-dir vaultpy"))
    if existing is not None and masters_dir is not None:
        problems.append(Problem("--masters-dir", f"{display_path(hosts_path)} exists, and "
                                "its secrets_dir decides where masters go", "",
                                "drop --masters-dir, or set secrets_dir in hosts.toml"))
    if existing is not None:
        for sid in plan.secrets:
            if sid in existing.secrets:
                problems.append(Problem(display_path(hosts_path), f"secret {sid!r} is already "
                                        "declared", key_path("secrets", sid),
                                        "remove it, or import into another repository"))
        for name in plan.hosts:
            if name in existing.hosts:
                problems.append(Problem(display_path(hosts_path), f"host {name!r} is already "
                                        "declared", key_path("hosts", name), "remove it, or import "
                                        "into another repository"))
    # The new hosts.toml, when the input is right (else it would say something else).
    cfg: model.Config | None = None
    text = ""
    if not problems:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d")
        # The source goes into a comment: a newline in a file's name would end it, and
        # what follows be read as tables; other control characters make it invalid.
        source = _NOT_IN_COMMENT.sub(lambda m: ascii(m[0])[1:-1], plan.source)
        tables = render_tables(plan)
        if existing is None:
            import tomli_w

            settings: dict[str, Any] = {"recipients": list(chosen)}
            if masters_dir is not None:
                settings.update(secrets_dir=masters_dir, cache_dir=f"{masters_dir}/cache")
            head = tomli_w.dumps({"vaultpy": settings})
            text = (f"# Imported from {plan.tool} ({source}) on {stamp} by vaultpy "
                    f"import.\n# Master recipients: {origin}.\n{head}\n{tables}")
        else:
            sep = "" if old_text.endswith("\n") or not old_text else "\n"
            text = (f"{old_text}{sep}\n# Imported from {plan.tool} ({source}) on {stamp} "
                    f"by vaultpy import.\n{tables}")
        try:
            cfg = model.reparse(text, hosts_path)
        except VaultpyError as exc:
            problems.extend(Problem(p.file, p.message, p.field, p.hint or "fix the source "
                                    f"{plan.tool} configuration") for p in exc.problems)
        else:
            _check_equivalent(plan, cfg, existing)
            if existing is None and not dry_run:
                _finish_interrupted(cfg, None)
    # Decrypt everything before writing anything.
    plain: dict[str, tuple[bytes, bool]] = {}
    widest = 0                      # the most recipients one source file is encrypted to
    imported = {key for sec in plan.secrets.values()
                if (key := fsutil.file_key(sec.source)) is not None}
    for sid, sec in plan.secrets.items():
        target_file = cfg.secrets[sid].file if cfg is not None else None
        if target_file is not None and fsutil.file_key(target_file) in imported:
            # Never replaced, --force or not: it is what is being imported (this
            # secret's file, or another's).
            problems.append(Problem(
                display_path(target_file), f"is a file this import reads (import {plan.tool}), "
                "and its vaultpy master would replace it", key_path("secrets", sid),
                "keep vaultpy's masters apart: --masters-dir vaultpy-secrets"
                if existing is None
                else "set secrets_dir in hosts.toml to a directory of vaultpy's own"))
        elif target_file is not None and target_file.exists() and not force:
            problems.append(Problem(display_path(target_file), "already exists",
                                    key_path("secrets", sid),
                                    "it is not declared in hosts.toml (put there by hand, or "
                                    "left by an older vaultpy's interrupted import); remove "
                                    "it, or pass --force to replace it"))
        if sec.value is not None:
            plain[sid] = (sec.value, False)
            continue
        try:
            with fsutil.open_regular(sec.source) as f:      # a FIFO must not hang it
                read = fsutil.read_at_most(f.fileno(), masters.MAX_AGE_FILE)
        except OSError as exc:
            p = os_problem(sec.source, exc, "read the secret")
            problems.append(Problem(p.file, p.message, sec.origin, f"create it with "
                                    f"{plan.tool} first, or remove it from its configuration"))
            continue
        if read is None:
            problems.append(too_much_plaintext(sec.source))
            continue
        data = read
        try:
            plain[sid] = (age.decrypt(
                data, keys, display_path(sec.source),
                wrong_key_hint=f"pass the key {plan.tool} decrypted it with: -i FILE",
                damaged_hint=f"restore it from git, or recreate it with {plan.tool}"),
                ageformat.is_armored(data))
        except VaultpyError as exc:
            problems.extend(exc.problems)
            continue
        if len(plain[sid][0]) > masters.MAX_PLAINTEXT:     # as encrypt, edit, import sops
            del plain[sid]
            problems.append(too_much_plaintext(sec.source))
            continue
        with contextlib.suppress(ageformat.FormatError):
            widest = max(widest, len(ageformat.parse(data).recipient_stanzas()))
    if problems:
        raise VaultpyError(problems)
    if plan.tool == "vaultix" and existing is None and widest > len(chosen):
        # vaultix's sources go to its master identity and its extraRecipients (backup
        # keys); only the master's key is known here.
        result_warnings = [f"the vaultix secrets are encrypted to {widest} recipients, the "
                           f"new masters to {len(chosen)} ({origin}): vaultix's "
                           "extraRecipients (backup keys) are not kept; give every master "
                           "recipient with --recipient (repeatable), the master's own key "
                           "included"]
    else:
        result_warnings = []
    assert cfg is not None          # built and valid whenever nothing was found wrong
    result = ImportResult(hosts_path, text, sorted(plan.secrets), sorted(plan.hosts),
                          [*plan.warnings, *result_warnings], [])
    if dry_run:
        return result
    # Encrypted before anything is made: a recipient that cannot be encrypted to (its
    # plugin not installed) fails the import with the repository as it was.
    out: list[tuple[Path, bytes, int]] = []
    for sid in sorted(plain):
        text_bytes, armor = plain.pop(sid)
        try:
            out.append((cfg.secrets[sid].file,
                        age.encrypt(text_bytes, list(cfg.recipients), armor), 0o644))
        except VaultpyError as exc:
            where = "--recipient" if origin == "--recipient" else (
                "vaultpy.recipients" if existing is not None else f"publicKeys in {plan.source}")
            raise VaultpyError([Problem(p.file, p.message, where, p.hint)
                                for p in exc.problems]) from None
    _write(cfg, text, existing, old_text, out)
    result.written = [dest for dest, _, _ in out]
    if existing is None:            # a new repository: as `vaultpy init` makes one
        from vaultpy.init import ignore_local_state

        try:
            result.written += ignore_local_state(cfg.root, cfg.cache_dir)
        except OSError as exc:
            result.warnings.append(f"{os_problem(exc.filename or cfg.cache_dir, exc, 'write')}"
                                   "; add vaultpy's local state to .gitignore by hand "
                                   "(vaultpy doctor lists it)")
    result.master_identity = _opener(files, keys, out[0][1] if out else b"")
    return result


def _finish_interrupted(cfg: model.Config, text: str | None) -> None:
    """Finish a write a killed command left decided (a killed import's), as every command
    that takes the lock does first.  If that wrote hosts.toml (``text`` before; None: it
    did not exist), the import was checked against a hosts.toml that is gone: it stops."""
    if not os.path.lexists(writes.path(cfg)):
        return
    writes.settle(cfg)
    try:
        now: str | None = cfg.path.read_text(encoding="utf-8")
    except FileNotFoundError:
        now = None
    if text is None and now is not None:
        # It made a new repository, and was killed before its .gitignore lines (written
        # after the journaled write, as init writes them): they are added now.
        from vaultpy.init import ignore_local_state

        with contextlib.suppress(OSError, VaultpyError):    # (doctor names what is left)
            made = model.load(cfg.path, nixos=False)
            ignore_local_state(made.root, made.cache_dir)
    if now != text:
        raise VaultpyError(Problem(
            display_path(cfg.path), "an interrupted write (a killed import's) was finished "
            "first, and it wrote this file; nothing of this import was written", "",
            "run vaultpy check, then the import again for what is still missing"))


def _write(cfg: model.Config, text: str, existing: model.Config | None, old_text: str,
           out: Sequence[tuple[Path, bytes, int]]) -> None:
    """hosts.toml and the masters, as one journaled write (masters.write_all): all of
    them or none, and a write killed once it is decided is finished by the next command
    that takes the lock (vaultpy/_internal/writes.py).  hosts.toml goes first, so that
    from its rename on `vaultpy check` finds the journal and renc finishes it; killed
    before the journal, only temp files are left, which this removes on the rerun (and
    renc, once hosts.toml is there).  A failure puts back what the renames replaced."""
    hosts_path = cfg.path
    mode = 0o644
    if existing is not None:
        with contextlib.suppress(OSError):      # gone: hosts_toml() below says so
            mode = hosts_path.stat().st_mode & 0o777
    dests = [dest for dest, _, _ in out]

    def hosts_toml() -> bytes:
        # Called under the lock, before any temp file of this write (hosts.toml is its
        # first file).  hosts.toml was read before the prompts and the decryption: an
        # edit made meanwhile (by hand, or by host add) must not be overwritten.
        try:
            now: str | None = hosts_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            now = None
        if existing is not None and now != old_text:
            raise VaultpyError(Problem(display_path(hosts_path), "changed while the import "
                                       "was running; nothing was written", "",
                                       "run the import again"))
        # A killed import's temp files (a temp file is only made under the lock):
        # renc removes those beside the masters, but without hosts.toml nothing runs.
        fsutil.remove_leftovers([hosts_path, *dests, writes.path(cfg)])
        return text.encode("utf-8")

    new = {dest for dest in dests if not os.path.lexists(dest)}
    if existing is None:
        new.add(hosts_path)
    try:
        masters.write_all(cfg, [(hosts_path, hosts_toml, mode), *out], new=new)
    except masters.Appeared as exc:
        raise VaultpyError(Problem(display_path(exc.paths[0]), "was made while the import "
                                   "was running; nothing was written", "",
                                   "run vaultpy check, then the import again")) from None


def _opener(files: Sequence[Path], keys: Sequence[age.Identity], ciphertext: bytes
            ) -> Path | None:
    """The first of ``files`` whose keys open ``ciphertext`` (a master just written).
    Plugin keys are not tried: a PIN or a touch for a hint is too much."""
    if not ciphertext:
        return None
    for path in files:
        mine = [k for k in keys if k.source == display_path(path) and k.kind != "plugin"]
        if not mine:
            continue
        try:
            age.decrypt(ciphertext, mine, display_path(path))
        except VaultpyError:
            continue
        return path
    return None


def _check_equivalent(plan: Plan, cfg: model.Config,
                      existing: model.Config | None = None) -> None:
    """The hosts.toml about to be written says exactly what the plan says: its hosts,
    and no secret but the plan's and those already declared (a source's name in the
    header comment once declared one of its own)."""
    before = set(existing.secrets) if existing is not None else set()
    if set(cfg.secrets) != before | set(plan.secrets):
        extra = sorted(set(cfg.secrets) - before - set(plan.secrets))
        raise VaultpyError(Problem(display_path(cfg.path), "the rendered hosts.toml declares "
                                   f"secrets the import does not ({', '.join(extra) or '-'})"
                                   " (a bug)", "", "please report it"))
    for name, host in plan.hosts.items():
        got = cfg.hosts.get(name)
        want_keys = tuple(_norm(k, host=True) for k in host.pubkeys)
        if (got is None or got.recipients != want_keys
                or {d.id for d in got.deployments} != set(host.secrets)
                or {t.name for t in got.templates} != set(host.templates)):
            raise VaultpyError(Problem(display_path(cfg.path), f"host {name}: the rendered "
                                       "hosts.toml does not match the import (a bug)", "",
                                       "please report it"))


def import_agenix(secrets_nix: Path | None, target: Path, *, hosts_from: Path | None = None,
                  host_keys: Sequence[str] = (), hosts_by_comment: bool = False,
                  recipients: Sequence[str] = (), identity_files: Sequence[Path] = (),
                  force: bool = False, dry_run: bool = False, masters_dir: str | None = None,
                  rules_env: str | None = None,
                  ask: age.PassphraseFn = age.passphrase_from_env_or_tty) -> ImportResult:
    """``secrets_nix`` None: agenix's own default, ``rules_env`` (the RULES environment
    variable), else ./secrets.nix (see :func:`agenix_rules`)."""
    rules, base = agenix_rules(secrets_nix, rules_env)
    if not rules.is_file():
        if secrets_nix is not None:
            raise fail(rules, "no such file", hint="give agenix's secrets.nix")
        raise fail(rules, "no such file", field="RULES" if rules_env else "",
                   hint="give agenix's rules file as SECRETS_NIX, or set RULES to it "
                   "as for agenix")
    plan = plan_agenix(rules, hosts_from=hosts_from, host_keys=host_keys,
                       hosts_by_comment=hosts_by_comment, base=base)
    if not plan.hosts and not plan.problems:
        plan.warnings.append("no host key recognised: no host is added, and no secret "
                             "goes to any host; name hosts with --hosts-from FILE, "
                             "--host-key NAME=KEY or --hosts-by-comment")
    return apply(plan, target, recipients=recipients, identity_files=identity_files,
                 force=force, dry_run=dry_run, masters_dir=masters_dir, ask=ask)


def import_vaultix(profiles: Sequence[Path], target: Path, *, secrets_dir: Path | None = None,
                   recipients: Sequence[str] = (), identity_files: Sequence[Path] = (),
                   force: bool = False, dry_run: bool = False, masters_dir: str | None = None,
                   ask: age.PassphraseFn = age.passphrase_from_env_or_tty) -> ImportResult:
    plan = plan_vaultix(profiles, secrets_dir=secrets_dir)
    return apply(plan, target, recipients=recipients, identity_files=identity_files,
                 force=force, dry_run=dry_run, masters_dir=masters_dir, ask=ask)
