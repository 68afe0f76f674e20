"""The activation profile (DESIGN §5): what one host consumes.

Written by ``vaultpy profile --host H`` from hosts.toml, and by the Nix module
with ``builtins.toJSON``; both must produce identical bytes, so :func:`dumps`
uses Nix's conventions (keys sorted, no whitespace, UTF-8), secrets are sorted
by id and templates by name.  :func:`load` validates a profile strictly: it is
the input of activation, which runs as root on every boot.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path

from vaultpy import templates
from vaultpy._internal import fsutil
from vaultpy._internal.record import record
from vaultpy.errors import Problem, VaultpyError, display_path, key_path, nix_attr, too_big
from vaultpy.output import (
    DEFAULT_DIRS,
    EARLY_OWNER_HINT,
    EARLY_OWNER_PROBLEM,
    HOST_IDENTITY,
    ID_RE,
    PERSON_IDENTITY,
    UNIT_RE,
    USER_DIRS,
    USER_RE,
    Output,
    early_owner_ok,
    key_path_problem,
    nesting,
    nesting_message,
    numeric_id_ok,
    path_clash,
    path_clash_message,
    path_shape_problem,
    settings_clashes,
)

TYPE_CHECKING = False       # typing costs ~5 ms to import, on every activation
if TYPE_CHECKING:       # activation loads profiles only, never hosts.toml's model
    from typing import Any

    from vaultpy.model import Config

VERSION = 1
DEFAULT_SETTINGS: dict[str, Any] = {
    "identities": [HOST_IDENTITY],
    **DEFAULT_DIRS,
    "keep": 3,
}
# A user's profile (``settings.user``: activated by that user, for their own programs,
# from a systemd --user unit): the user's SSH key, the generations in their runtime
# directory (RAM), the live link in their home.  ``%h`` and ``%r`` are expanded when
# it is activated (:func:`expand`), as systemd expands them in a user unit.
USER_SETTINGS: dict[str, Any] = {
    "user": True,
    "identities": [PERSON_IDENTITY],
    **USER_DIRS,
    "keep": 3,
}


@record
class Settings:
    identities: tuple[str, ...]
    dir: str
    early_dir: str
    store: str
    keep: int
    user: bool = False      # a user's profile: every file theirs, activated by them


@record
class Item:
    """A file in the generation directory: a secret (``id`` set) or a template."""

    name: str
    out: Output
    id: str | None = None            # secrets
    file: Path | None = None         # secrets: the cache file (absolute)
    install: bool = True             # False: only decrypted for templates
    content: str | None = None       # templates
    trim: bool = False

    @property
    def is_template(self) -> bool:
        return self.content is not None


@record
class Signed:
    """Where the host's signed list of cache files is, and the key that signs it
    (vaultpy/signing.py): activation installs only files whose hash it lists."""

    key: str
    sums: Path
    signature: Path


@record
class Profile:
    host: str
    settings: Settings
    secrets: tuple[Item, ...]
    templates: tuple[Item, ...]
    source: str = "profile"
    signed: Signed | None = None

    def installed(self, early: bool) -> list[Item]:
        """Files one activation creates: the ``early`` ones (into ``early_dir``, before
        users exist) or the others (into ``dir``)."""
        items = [s for s in self.secrets if s.install] + list(self.templates)
        return [i for i in items if i.out.early == early]

    def secret(self, secret_id: str) -> Item | None:
        return self._by_id.get(secret_id)

    @cached_property
    def _by_id(self) -> dict[str | None, Item]:
        """Activation looks every secret up: a dict, not a scan per lookup (n²)."""
        found: dict[str | None, Item] = {}
        for s in self.secrets:
            found.setdefault(s.id, s)       # the first one, as a scan would find
        return found


def _user_output_json(cfg: Config, out: Output, where: str, wrong: list[Problem],
                      person: bool = False) -> dict[str, Any]:
    """An item of a user's profile: the user's, so no owner or group; never early (what
    hosts.toml says otherwise is added to ``wrong``).  Its path is taken literally: a
    ``%`` in it is written ``%%``, as activation expands %h and %r; unless the entry
    is a ``person``'s (``user = true``), whose paths are written as a user's profile
    takes them."""
    for key, value in (("owner", out.owner), ("group", out.group)):
        if value not in ("root", "0"):
            wrong.append(Problem(display_path(cfg.path), f"{key} {value!r} in a user's "
                                 "profile, which installs every file as the user who "
                                 "activates it", f"{where}.{key}",
                                 f"remove {key} (or build a host's profile: drop --user)"))
    if out.early:
        wrong.append(Problem(display_path(cfg.path), "early in a user's profile (early "
                             "files are for a host's boot)", f"{where}.early",
                             "remove early (or drop --user)"))
    data = _output_json(out)
    for key in ("owner", "group", "early"):
        del data[key]
    if data["path"] is not None and not person:
        data["path"] = _literal(data["path"])
    return data


def _literal(path: str) -> str:
    """``path`` as a user's profile writes it to mean itself (:func:`expand`)."""
    return path.replace("%", "%%")


def _output_json(out: Output) -> dict[str, Any]:
    return {"owner": out.owner, "group": out.group, "mode": out.mode, "path": out.path,
            "restart_units": list(out.restart_units), "reload_units": list(out.reload_units),
            "early": out.early}


def build(cfg: Config, host: str, relative_to: Path | None = None, *, user: bool = False
          ) -> dict[str, Any]:
    """The profile of ``host`` as a JSON-ready dict.

    ``file`` paths are absolute, or relative to ``relative_to`` (the directory the
    profile will be written to) when given.  ``user``: a user's profile (``host`` is a
    person's key in hosts.toml), which the user activates: :data:`USER_SETTINGS`, and
    no owner, group or early item; an entry with ``user = true`` always gives one.
    """
    from vaultpy import cache  # operator side only: hosts load profiles, not caches

    if host not in cfg.hosts:
        raise VaultpyError(Problem(display_path(cfg.path), f"unknown host {host!r}", "hosts",
                                   "known hosts: " + ", ".join(cfg.hosts)))
    h = cfg.hosts[host]
    user = user or h.user
    if h.nixos:
        raise VaultpyError(Problem(
            display_path(cfg.nixos or cfg.path), f"host {host!r} is declared in the NixOS "
            f"configuration {h.nixos!r}: its profile is the module's", "vaultpy.nixos",
            f"use config.vaultpy.profileFile of nixosConfigurations.{nix_attr(h.nixos)}"))
    from vaultpy.model import no_identity_for_age_key

    keyless = no_identity_for_age_key(cfg, host)
    if keyless is not None and user and not h.user:
        raise VaultpyError(Problem(keyless.file, "the entry's key is an age1… key, and no "
                                   "identities say where its identity file is: activation "
                                   "would try ~/.ssh/id_ed25519, which cannot decrypt what "
                                   "renc writes for it", keyless.field,
                                   'add identities = ["/home/<you>/.config/age/keys.txt"] '
                                   "(where that age identity file is)"))
    if keyless is not None:     # the profile would name a key that opens nothing
        raise VaultpyError(keyless)
    hashes, problems = cache.master_hashes(cfg, h.needed)
    if problems:
        raise VaultpyError(problems)
    deployed = {d.id: d for d in h.deployments}
    secrets = []
    wrong: list[Problem] = []       # a user's profile: every item's owner/group/early
    for sid in h.needed:
        path = cfg.cache_dir / host / cache.cache_name(sid, hashes[sid].sha256, h.recipients)
        # (its directory's realpath: the file itself is named, never what a link there
        # leads to, which check and bundle refuse by name)
        file = (os.path.relpath(os.path.join(os.path.realpath(path.parent), path.name),
                                relative_to) if relative_to else str(path.absolute()))
        d = deployed.get(sid)
        out = d.out if d else Output()
        where = key_path("hosts", host, "secrets", sid)
        secrets.append({"id": sid, "file": file, "install": d is not None,
                        "name": d.name if d else sid,
                        **(_user_output_json(cfg, out, where, wrong, h.user) if user
                           else _output_json(out))})
    tmpls = [{"name": t.name, "content": t.content, "trim": t.trim,
              **(_user_output_json(cfg, t.out, key_path("hosts", host, "templates", t.name), wrong,
                                   h.user) if user else _output_json(t.out))}
             for t in sorted(h.templates, key=lambda t: t.name)]
    if wrong:
        raise VaultpyError(wrong)
    settings = dict(USER_SETTINGS if user else DEFAULT_SETTINGS)
    if h.identities:
        settings["identities"] = [_literal(i) if user and not h.user else i
                                  for i in h.identities]
    signed = {}
    if cfg.signing is not None and secrets:
        from vaultpy import signing

        folder = os.path.realpath(cfg.cache_dir / host)
        signed = {"signed": {"key": cfg.signing.key, **{
            field: os.path.relpath(os.path.join(folder, name), relative_to) if relative_to
            else os.path.join(folder, name)
            for field, name in (("sums", signing.SUMS), ("signature", signing.SIGNATURE))}}}
    return {"version": VERSION, "host": host, "settings": settings,
            "secrets": secrets, "templates": tmpls, **signed}


def dumps(data: Mapping[str, Any]) -> str:
    """Serialise exactly as Nix's builtins.toJSON does."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


# --------------------------------------------------------------------------- loading

class _Reader:
    def __init__(self, source: str) -> None:
        self.source = source
        self.problems: list[Problem] = []
        # A user's profile: its paths' %h and %r are expanded from this environment.
        self.user_env: Mapping[str, str] | None = None
        self.env_said: set[str] = set()     # what is wrong with it, said once

    def bad(self, where: str, message: str, hint: str = "") -> None:
        self.problems.append(Problem(self.source, message, where,
                                     hint or "regenerate it with vaultpy profile"))

    def get(self, obj: Mapping[str, Any], key: str, kind: type | tuple[type, ...],
            where: str, optional: bool = False) -> Any:
        if key not in obj:
            if not optional:
                self.bad(f"{where}.{key}" if where else key, "missing")
            return None
        value = obj[key]
        ok = isinstance(value, kind) and not (isinstance(value, bool) and kind is int)
        if not ok and not (optional and value is None):
            kinds = kind if isinstance(kind, tuple) else (kind,)
            self.bad(f"{where}.{key}" if where else key,
                     f"expected {' or '.join(_json_kind(k) for k in kinds)}, got "
                     f"{_json_kind(type(value))}")
            return None
        return value


_JSON_KINDS: dict[type, str] = {bool: "a boolean", int: "an integer", float: "a number",
                                str: "a string", list: "a list", dict: "an object",
                                type(None): "null"}


def _json_kind(kind: type) -> str:
    """A JSON type as the profile's reader knows it ("a string", not "str")."""
    return _JSON_KINDS.get(kind, kind.__name__)


def _abs_path(rd: _Reader, value: Any, where: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        rd.bad(where, "expected a string")
        return None
    text: str = value
    if rd.user_env is not None:
        try:
            text = expand(value, rd.user_env)
        except EnvironmentProblem as exc:   # one line for the variable, not per path
            if str(exc) not in rd.env_said:
                rd.env_said.add(str(exc))
                rd.bad(where, str(exc), _ENV_HINT)
            return None
        except ValueError as exc:
            rd.bad(where, f"{exc}: {value!r}", _EXPAND_HINT)
            return None
    why = path_shape_problem(text)
    if why is not None:
        rd.bad(where, f"{why}: {text!r}")
        return None
    return text


USER_AS_ROOT_HINT = ("activate it as the user whose secrets these are (as their systemd "
                     "--user unit vaultpy.service does)")
_SPECIFIER = re.compile(r"%(.?)", re.DOTALL)
_SPECIFIERS = {"h": "HOME", "r": "XDG_RUNTIME_DIR"}
_ENV_HINT = ("activate a user's profile from their systemd --user unit (vaultpy.service), "
             "which sets $HOME and $XDG_RUNTIME_DIR")
_EXPAND_HINT = ("in a user's profile a path may begin with %h (their home) or %r (their "
                "runtime directory, $XDG_RUNTIME_DIR); %% is a %; run it from the "
                "user's systemd --user unit, which sets both")


class EnvironmentProblem(ValueError):
    """A variable a user's profile needs is unset, or not a usable path."""


def expand(path: str, env: Mapping[str, str]) -> str:
    """A user's profile path with ``%h`` ($HOME), ``%r`` ($XDG_RUNTIME_DIR) and ``%%``
    expanded, as systemd expands them in a user unit.  ValueError: an unknown
    specifier; :class:`EnvironmentProblem`: a variable unset, or not an absolute,
    normalised path."""
    def one(m: re.Match[str]) -> str:
        c = m.group(1)
        if c == "%":
            return "%"
        var = _SPECIFIERS.get(c)
        if var is None:
            raise ValueError(f"unknown specifier %{c}" if c else "a lone % at the end")
        value = env.get(var, "")
        if not value:
            raise EnvironmentProblem(f"%{c} needs ${var}, which is not set")
        if value != "/" and (value.endswith("/") or path_shape_problem(value) is not None):
            raise EnvironmentProblem(f"%{c} needs ${var} to be an absolute, normalised "
                                     f"path, not {value!r}")
        return value.rstrip("/")
    return _SPECIFIER.sub(one, path) if "%" in path else path


_MODE_RE = re.compile(r"0[0-7]{3}")
_WORD_RE = re.compile(r"[A-Za-z0-9_]+")


def _read_output(rd: _Reader, obj: Mapping[str, Any], where: str) -> Output:
    if rd.user_env is not None:
        return _read_user_output(rd, obj, where)
    owner = rd.get(obj, "owner", str, where) or "root"
    group = rd.get(obj, "group", str, where) or "root"
    for key, val in (("owner", owner), ("group", group)):
        if not (numeric_id_ok(val) or (not val.isdigit() and USER_RE.fullmatch(val))):
            rd.bad(f"{where}.{key}", f"invalid user or group {val!r}")
    mode, restart, reload = _mode_and_units(rd, obj, where)
    early = rd.get(obj, "early", bool, where)
    if early and not (early_owner_ok(owner) and early_owner_ok(group)):
        rd.bad(f"{where}.early", EARLY_OWNER_PROBLEM, EARLY_OWNER_HINT)
    path = _abs_path(rd, obj.get("path"), f"{where}.path") if "path" in obj else None
    return Output(owner, group, mode, path, restart, reload, bool(early))


def _read_user_output(rd: _Reader, obj: Mapping[str, Any], where: str) -> Output:
    """A user's profile: every file is the user's, installed while they are logged in."""
    for key in ("owner", "group"):
        if key in obj:
            rd.bad(f"{where}.{key}", "a user's profile installs every file as the user "
                   "who activates it", f"remove {key} (or make this a host's profile)")
    if obj.get("early"):
        rd.bad(f"{where}.early", "a user's profile has no early files (they are for a "
               "host's boot, before its users exist)", "remove early")
    mode, restart, reload = _mode_and_units(rd, obj, where)
    path = _abs_path(rd, obj.get("path"), f"{where}.path") if "path" in obj else None
    return Output("", "", mode, path, restart, reload, False)


def _mode_and_units(rd: _Reader, obj: Mapping[str, Any], where: str
                    ) -> tuple[str, tuple[str, ...], tuple[str, ...]]:
    """An item's mode, restart_units and reload_units (a host's or a user's alike)."""
    mode = rd.get(obj, "mode", str, where) or "0400"
    if not _MODE_RE.fullmatch(mode):
        rd.bad(f"{where}.mode", f"invalid mode {mode!r}", 'use 4 octal digits like "0400"')
        mode = "0400"
    units: dict[str, tuple[str, ...]] = {}
    for key in ("restart_units", "reload_units"):
        raw = rd.get(obj, key, list, where) or []
        if not all(isinstance(u, str) and UNIT_RE.fullmatch(u) for u in raw):
            rd.bad(f"{where}.{key}", "expected a list of unit names")
            raw = []
        units[key] = tuple(raw)
    return mode, units["restart_units"], units["reload_units"]


def _field(where: str, key: object) -> str:
    """``where.key``, or ``where["key"]`` (ASCII-escaped) for a key that is not a plain
    word: a field path is printed, never a raw newline or surrogate from the file."""
    if isinstance(key, int):
        return f"{where}[{key}]"
    if isinstance(key, str) and _WORD_RE.fullmatch(key):
        return f"{where}.{key}" if where else key
    return f"{where}[{json.dumps(key)}]"


def _not_utf8(value: Any, where: str = "") -> list[str]:
    """The field paths of every string (dict keys included) that does not encode to
    UTF-8: a JSON escape like "\\ud800" decodes to a lone surrogate, which no file
    name, file content or user name can hold (writing it would crash activation)."""
    try:        # the common case at C speed: nothing to name
        json.dumps(value, ensure_ascii=False).encode("utf-8")
        return []
    except (ValueError, TypeError, RecursionError):   # UnicodeEncodeError: find them
        pass
    found: list[str] = []
    stack: list[tuple[Any, str]] = [(value, where)]
    while stack:            # iterative: a deeply nested profile must not recurse
        obj, at = stack.pop()
        if isinstance(obj, str):
            try:
                obj.encode("utf-8")
            except UnicodeEncodeError:
                found.append(at)
        elif isinstance(obj, dict):
            for key, val in reversed(obj.items()):
                field = _field(at, key)
                stack.append((val, field))
                stack.append((key, f"{field} (its name)"))
        elif isinstance(obj, list):
            stack.extend((val, _field(at, i)) for i, val in reversed(list(enumerate(obj))))
    return found


# Every field a profile of this VERSION has.  Any other is refused, not skipped: a typo
# ("onwer") would install the file as root's, and a field of a newer vaultpy (a profile
# built by it, activated by this one) would be silently left undone.
_OUTPUT_KEYS = frozenset({"owner", "group", "mode", "path", "restart_units",
                          "reload_units", "early"})
_KEYS: dict[str, frozenset[str]] = {
    "": frozenset({"version", "host", "settings", "secrets", "templates", "signed"}),
    "signed": frozenset({"key", "sums", "signature"}),
    "settings": frozenset({"identities", "dir", "early_dir", "store", "keep", "user"}),
    "secrets": _OUTPUT_KEYS | {"id", "name", "file", "install"},
    "templates": _OUTPUT_KEYS | {"name", "content", "trim"},
}


def _unknown(rd: _Reader, obj: Mapping[str, Any], kind: str, where: str) -> None:
    for key in obj:
        if key not in _KEYS[kind]:
            rd.bad(_field(where, key), "unknown field",
                   "a newer vaultpy's? upgrade vaultpy on this host, or regenerate the "
                   "profile with this version (vaultpy profile)")


# hosts.toml's limit on ids and names (model.ID_MAX, not imported: activation loads
# profiles only): a longer one was refused only by the kernel, mid-build.
_NAME_MAX = 128


def parse(data: Any, source: str, base: Path, env: Mapping[str, str] | None = None,
          *, as_root: bool = False) -> Profile:
    """Validate a decoded profile; ``base`` resolves relative ``file`` paths.  A user's
    profile has its paths' ``%h`` and ``%r`` expanded from ``env`` (default: this
    process's environment); ``as_root``: refused, before anything is expanded (root's
    environment is no user's)."""
    rd = _Reader(source)
    if not isinstance(data, dict):
        raise VaultpyError(Problem(source, "not a JSON object", "",
                                   "regenerate it with vaultpy profile"))
    for where in _not_utf8(data):
        rd.bad(where, "not valid UTF-8: holds a lone surrogate (a \\ud800-\\udfff escape)")
    if rd.problems:         # checked first: every later check may print the value
        raise VaultpyError(rd.problems)
    version = rd.get(data, "version", int, "")
    if version is not None and version != VERSION:
        rd.bad("version", f"unsupported profile version {version}",
               "upgrade vaultpy on this host")
        raise VaultpyError(rd.problems)     # its fields are another version's
    _unknown(rd, data, "", "")
    host = rd.get(data, "host", str, "") or ""
    raw = rd.get(data, "settings", dict, "") or {}
    _unknown(rd, raw, "settings", "settings")
    user = bool(rd.get(raw, "user", bool, "settings", optional=True))
    if user and as_root:
        raise VaultpyError(Problem(source, "a user's profile (settings.user), run as root",
                                   "settings.user", USER_AS_ROOT_HINT))
    if user:
        rd.user_env = os.environ if env is None else env
        # $HOME is needed whatever the paths say: the record of links is kept there.
        try:
            expand("%h", rd.user_env)
        except EnvironmentProblem as exc:
            rd.env_said.add(str(exc))
            rd.bad("settings.user", str(exc), _ENV_HINT)
    idents = rd.get(raw, "identities", list, "settings")    # None: reported already
    if not idents or not all(isinstance(i, str) for i in idents):
        if idents is not None:
            rd.bad("settings.identities", "expected a non-empty list of key paths")
        idents = []
    elif user:
        idents = [_abs_path(rd, i, f"settings.identities[{n}]") or ""
                  for n, i in enumerate(idents)]
    keep = rd.get(raw, "keep", int, "settings")
    if keep is not None and keep < 1:
        rd.bad("settings.keep", "must be at least 1")
    settings = Settings(
        identities=tuple(idents),
        dir=_abs_path(rd, rd.get(raw, "dir", str, "settings"), "settings.dir") or "",
        early_dir=_abs_path(rd, rd.get(raw, "early_dir", str, "settings"),
                            "settings.early_dir") or "",
        store=_abs_path(rd, rd.get(raw, "store", str, "settings"), "settings.store") or "",
        keep=keep if isinstance(keep, int) and keep >= 1 else 3, user=user)
    secrets: list[Item] = []
    for i, obj in enumerate(rd.get(data, "secrets", list, "") or []):
        where = f"secrets[{i}]"
        if not isinstance(obj, dict):
            rd.bad(where, "expected an object")
            continue
        _unknown(rd, obj, "secrets", where)
        got = {key: rd.get(obj, key, str, where) for key in ("id", "name")}
        for key, val in got.items():     # a missing or mistyped one is reported already
            if val is not None and (not ID_RE.fullmatch(val) or len(val) > _NAME_MAX):
                rd.bad(f"{where}.{key}", f"invalid {key} {val!r}")
        sid, name = got["id"] or "", got["name"] or ""
        file = rd.get(obj, "file", str, where) or ""
        if "\0" in file:
            rd.bad(f"{where}.file", "the path holds a NUL character")
            file = ""
        install = rd.get(obj, "install", bool, where)
        secrets.append(Item(name=name, out=_read_output(rd, obj, where), id=sid,
                            file=(base / file) if file else None, install=bool(install)))
    tmpls: list[Item] = []
    known = {s.id for s in secrets}
    for i, obj in enumerate(rd.get(data, "templates", list, "") or []):
        where = f"templates[{i}]"
        if not isinstance(obj, dict):
            rd.bad(where, "expected an object")
            continue
        _unknown(rd, obj, "templates", where)
        got_name = rd.get(obj, "name", str, where)
        if got_name is not None and (not ID_RE.fullmatch(got_name)
                                     or len(got_name) > _NAME_MAX):
            rd.bad(f"{where}.name", f"invalid name {got_name!r}")
        name = got_name or ""
        content = rd.get(obj, "content", str, where) or ""
        try:
            for ref in templates.references(content):
                if ref not in known:
                    rd.bad(f"{where}.content", f"template {name!r} uses secret {ref!r}, "
                           "which the profile does not carry")
        except templates.TemplateError as exc:
            rd.bad(f"{where}.content", str(exc))
        trim = rd.get(obj, "trim", bool, where)
        tmpls.append(Item(name=name, out=_read_output(rd, obj, where), content=content,
                          trim=bool(trim)))
    names: set[str] = set()
    paths: set[str] = set()
    dirs = {"dir": settings.dir, "early_dir": settings.early_dir, "store": settings.store}
    for a, b in settings_clashes(dirs):
        rd.bad(f"settings.{a}", f"{a} and {b} overlap: activation would put one over "
               "the other; give each a place of its own")
    labelled = [(f"secrets[{i}]", s) for i, s in enumerate(secrets) if s.install] + [
        (f"templates[{i}]", t) for i, t in enumerate(tmpls)]
    for where, item in labelled:
        if item.name in names:
            rd.bad("secrets", f"two items install as {item.name!r}")
        names.add(item.name)
        path = item.out.path
        if path is None:
            continue
        if path in paths:
            rd.bad(f"{where}.path", f"two items use the path {path!r}")
        paths.add(path)
        clash = path_clash(path, {k: v for k, v in dirs.items() if v})
        if clash is not None:
            rd.bad(f"{where}.path", *path_clash_message(path, *clash))
        said = key_path_problem(path, settings.identities, settings.user)
        if said is not None:
            rd.bad(f"{where}.path", *said)
    for where, item in labelled:
        path = item.out.path
        outer = nesting(path, paths) if path is not None else None
        if path is not None and outer is not None:
            rd.bad(f"{where}.path", *nesting_message(path, outer))
    signed = _read_signed(rd, data, base) if "signed" in data else None
    if rd.problems:
        raise VaultpyError(rd.problems)
    return Profile(host, settings, tuple(secrets), tuple(tmpls), source, signed)


def _read_signed(rd: _Reader, data: Mapping[str, Any], base: Path) -> Signed | None:
    raw = rd.get(data, "signed", dict, "")
    if raw is None:
        return None
    _unknown(rd, raw, "signed", "signed")
    key = rd.get(raw, "key", str, "signed") or ""
    from vaultpy._internal import sshsig

    try:
        sshsig.public_blob(key)
    except ValueError as exc:
        rd.bad("signed.key", str(exc), "regenerate the profile with vaultpy profile")
    paths = []
    for name in ("sums", "signature"):
        value = rd.get(raw, name, str, "signed") or ""
        if "\0" in value:
            rd.bad(f"signed.{name}", "the path holds a NUL character")
        paths.append(base / value)
    return Signed(key, paths[0], paths[1])


# What is read of a profile at most (docs/contracts.md): 10,000 secrets make ~2.3 MB
# (bench/bench.py's fixture), templates hold their text; /dev/zero must end in one line.
MAX_PROFILE = 64 << 20


def load(path: Path, regular_only: bool = False, *, as_root: bool = False) -> Profile:
    """The profile at ``path``, read as given (``--profile /dev/stdin``, a FIFO) up to
    :data:`MAX_PROFILE`; ``regular_only``: only if it is a regular file (the profile a
    bundle's unit names, read at boot, where a FIFO would wait for ever)."""
    source = display_path(path)
    try:
        if regular_only:    # a regular file, and no bigger than any other profile
            with fsutil.open_regular(path) as f:
                raw = fsutil.read_at_most(f.fileno(), MAX_PROFILE)
        else:
            raw = fsutil.read_named(path, MAX_PROFILE)
        text = raw.decode("utf-8") if raw is not None else None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8"
        hint = ("replace it with the profile.json vaultpy bundle wrote"
                if reason == fsutil.NOT_REGULAR else "check the --profile path")
        raise VaultpyError(Problem(source, f"cannot read profile: {reason}", "",
                                   hint)) from None
    if text is None:
        raise VaultpyError(too_big(path, MAX_PROFILE, ", too much for a profile",
                                   "point --profile at the profile.json vaultpy profile "
                                   "or vaultpy bundle wrote"))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise VaultpyError(Problem(source, f"not valid JSON: {exc}", "",
                                   "regenerate it with vaultpy profile")) from None
    except (ValueError, RecursionError):    # a 5000-digit number, [[[[…]]]] nested deeply
        raise VaultpyError(Problem(source, "not a profile: a number with thousands of digits "
                                   "or values nested too deeply", "",
                                   "regenerate it with vaultpy profile")) from None
    return parse(data, source, path.parent.absolute(), as_root=as_root)
