"""hosts.toml → a typed, immutable :class:`Config` (schema version 1, DESIGN §2).

:func:`load` validates everything and reports *all* problems of a file in one
:class:`~vaultpy.errors.VaultpyError`, one line each, naming the file, the TOML
table path and the fix.  Nothing here touches the disk beyond reading
hosts.toml; whether master files exist is the business of the commands.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from functools import cached_property
from pathlib import Path
from types import MappingProxyType
from typing import Any, TypeVar
from urllib.parse import urlsplit

from vaultpy import templates
from vaultpy._internal import fsutil
from vaultpy._internal.record import field, record
from vaultpy.age import normalize_recipient
from vaultpy.errors import (
    SHOWN_MAX,
    Problem,
    VaultpyError,
    display_path,
    key_path,
    nix_attr,
    os_problem,
    shown,
    toml_key,
)
from vaultpy.output import (
    DEFAULT_DIRS,
    EARLY_OWNER_HINT,
    EARLY_OWNER_PROBLEM,
    HOST_IDENTITY,
    PERSON_IDENTITY,
    USER_DIRS,
    early_owner_ok,
    has_control,
    key_path_problem,
    nesting,
    nesting_message,
    numeric_id_ok,
    path_clash,
    path_clash_message,
    path_shape_problem,
)

# Re-exported: vaultpy.model.Output and the name patterns predate vaultpy.output.
from vaultpy.output import ID_RE as ID_RE
from vaultpy.output import UNIT_RE as UNIT_RE
from vaultpy.output import USER_RE as USER_RE
from vaultpy.output import Output as Output

T = TypeVar("T")
FILENAME = "hosts.toml"
ID_MAX = 128
_KNOWN_MAX = 10         # ids a hint lists
# A key in a problem's field longer than an id (quoted) may be is cut (_fitted_field).
_FIELD_MAX = ID_MAX + 2
# `mode = 400` is decimal in TOML (0o620): refuse it rather than guess.
_DECIMAL_MODE = re.compile(
    r"(?m)(?:^|[{,])[ \t]*mode[ \t]*=[ \t]*(?P<value>[0-9]{1,20})(?![0-9_.xXoObBeE:-])")
HOST_KEY_HINT = "use the host's /etc/ssh/ssh_host_ed25519_key.pub (or an age1… key)"
PERSON_KEY_HINT = "use the person's ~/.ssh/id_ed25519.pub (or an age1… key)"
VAULT_AUTH = ("token", "approle")
VAULT_REF_HINT = ('write it as "<mount>/<path>#<field>", e.g. "secret/app/db#password" '
                  '(append @N to pin version N)')
# KV v2 mount and path segments: no policy globs (* +), quotes, spaces or "..".
_NAME_MAX = 255         # bytes in one file name, on Linux's file systems
_VAULT_MOUNT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_VAULT_SEGMENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,:=~@-]*")
_VAULT_FIELD_RE = re.compile(r"(?:(?![#@\\\"])[\x21-\x7e])+")


@record
class VaultRef:
    """A value in Vault/OpenBao KV v2: ``field`` of the secret at ``<mount>/<path>``,
    the latest version or, when ``version`` is set, exactly that one."""

    mount: str
    path: str
    field: str
    version: int | None = None

    @property
    def location(self) -> str:
        """``<mount>/<path>``: what `bao kv get` takes."""
        return f"{self.mount}/{self.path}"

    @property
    def data_path(self) -> str:
        """The API path of the value (what a policy grants): ``<mount>/data/<path>``."""
        return f"{self.mount}/data/{self.path}"

    def __str__(self) -> str:
        pinned = "" if self.version is None else f"@{self.version}"
        return f"{self.location}#{self.field}{pinned}"


def parse_vault_ref(text: str) -> VaultRef:
    """``"<mount>/<path>#<field>[@version]"`` → :class:`VaultRef`; ValueError says why not."""
    where, sep, rest = text.rpartition("#")
    if not sep:
        raise ValueError(f"no #field in vault reference {shown(text)}")
    field_name, at, version_text = rest.partition("@")
    version: int | None = None
    if at:
        if not re.fullmatch(r"[1-9][0-9]{0,9}", version_text):
            raise ValueError(f"version {shown(version_text)} in vault reference "
                             f"{shown(text)} is not a positive integer")
        version = int(version_text)
    if not _VAULT_FIELD_RE.fullmatch(field_name):
        raise ValueError(f"invalid field name {shown(field_name)} in vault reference "
                         f"{shown(text)}")
    mount, slash, path = where.partition("/")
    if not slash or not path:
        raise ValueError(f"vault reference {shown(text)} needs a mount and a path "
                         "(<mount>/<path>)")
    if not _VAULT_MOUNT_RE.fullmatch(mount):
        raise ValueError(f"invalid mount {shown(mount)} in vault reference {shown(text)} "
                         "(a letter, digit or _ first, then letters, digits and _ . -)")
    for segment in path.split("/"):
        if not _VAULT_SEGMENT_RE.fullmatch(segment) or segment.strip(".") == "":
            raise ValueError(f"invalid path segment {shown(segment)} in vault reference "
                             f"{shown(text)} (a letter, digit or _ first, then letters, "
                             "digits and _ . , : = ~ @ -)")
    return VaultRef(mount, path, field_name, version)


@record
class VaultSettings:
    """``[vaultpy.vault]``: how ``pull`` and ``push`` reach Vault/OpenBao.  The
    environment (VAULT_ADDR/BAO_ADDR …) overrides ``addr``, ``namespace`` and ``ca_cert``
    when the commands run (:mod:`vaultpy.vault`)."""

    addr: str | None = None
    auth: str = "token"
    role_id: str | None = None
    secret_id_file: Path | None = None
    wrapped_secret_id_file: Path | None = None
    namespace: str | None = None
    ca_cert: Path | None = None
    approle_mount: str = "approle"


GENERATE_SIZED = {"alnum": "characters", "hex": "random bytes", "base64": "random bytes",
                  "passphrase": "words"}
KEY_PAIR_KINDS = ("ssh-ed25519", "x25519", "wireguard")
GENERATE_KINDS = (*GENERATE_SIZED, *KEY_PAIR_KINDS, "command")
GENERATE_MAX = {"alnum": 4096, "hex": 4096, "base64": 4096, "passphrase": 64}
GENERATE_HINT = ('use "alnum:32", "hex:32", "base64:32", "passphrase:6", "ssh-ed25519", '
                 '"x25519", "wireguard" or "command:<shell command>"')
ROTATE_DAYS_MAX = 36500
ROTATION_FILE = "rotation.toml"     # in secrets_dir: vaultpy.generate's rotation state
VAULT_VERSIONS_FILE = "vault-versions.toml"     # in secrets_dir: see vaultpy.vaultstate


@record
class GenerateSpec:
    """``generate = "…"`` of a secret: how `vaultpy generate` makes its value.

    ``size`` counts characters (alnum), random bytes (hex, base64, as `openssl rand`) or
    words (passphrase); ``command`` is the shell command of ``command:<cmd>``."""

    kind: str
    size: int = 0
    command: str = ""

    @property
    def key_pair(self) -> bool:
        return self.kind in KEY_PAIR_KINDS

    def __str__(self) -> str:
        if self.kind == "command":
            return f"command:{self.command}"
        return f"{self.kind}:{self.size}" if self.kind in GENERATE_SIZED else self.kind


def parse_generate_spec(text: str) -> GenerateSpec:
    """``"alnum:32"`` … → :class:`GenerateSpec`; ValueError says what is wrong."""
    kind, colon, arg = text.partition(":")
    if kind == "command":
        if not arg.strip():
            raise ValueError("command: needs a shell command, e.g. \"command:pwgen -s 32 1\"")
        return GenerateSpec("command", command=arg)
    if kind in KEY_PAIR_KINDS:
        if colon:
            raise ValueError(f"{kind} takes no size (got {shown(text)})")
        return GenerateSpec(kind)
    if kind in GENERATE_SIZED:
        unit = GENERATE_SIZED[kind]
        if not colon:
            raise ValueError(f"{kind} needs a size in {unit}, e.g. \"{kind}:"
                             f"{6 if kind == 'passphrase' else 32}\"")
        if not re.fullmatch(r"[1-9][0-9]{0,5}", arg) or int(arg) > GENERATE_MAX[kind]:
            raise ValueError(f"invalid size {shown(arg)} for {kind}: 1 to {GENERATE_MAX[kind]} "
                             f"{unit}")
        return GenerateSpec(kind, int(arg))
    close = difflib.get_close_matches(kind, GENERATE_KINDS, n=1)
    raise ValueError(f"unknown generator {shown(kind)}" + (f" (did you mean {close[0]!r}?)"
                                                      if close else ""))


@record
class Secret:
    """A master secret: ``secrets/<id>.age``, encrypted to the master recipients."""

    id: str
    file: Path
    vault: VaultRef | None = None   # pull/push source in Vault/OpenBao KV v2
    generate: GenerateSpec | None = None   # `vaultpy generate` / `rotate` make the value
    rotate_days: int | None = None         # `check` warns once the last rotation is older

    @property
    def public_file(self) -> Path | None:
        """Where a key pair's public half lives: ``<id>.pub`` beside the master file
        (None unless ``generate`` makes a key pair)."""
        if self.generate is None or not self.generate.key_pair:
            return None
        return self.file.parent / f"{self.id}.pub"


@record
class Deployment:
    """Secret ``id`` installed on a host as file ``name``."""

    id: str
    name: str
    out: Output = field(default_factory=Output)


@record
class Template:
    """Non-secret text with placeholders, rendered on the host into file ``name``."""

    name: str
    content: str
    trim: bool
    refs: tuple[str, ...]
    out: Output = field(default_factory=Output)
    # ``file = "…"``: where ``content`` was read from (None: given inline), and the
    # stat of what was read (memo.stat_key: the no-op memo records no other state).
    source: Path | None = None
    source_stat: tuple[int, ...] = ()

    @property
    def content_field(self) -> tuple[str, str]:
        """Where the text is: the file that holds it (hosts.toml or its own) and its
        field there, for problems naming a line and column of it."""
        return ((display_path(self.source), f"templates.{toml_key(self.name)}.file")
                if self.source is not None else ("", f"templates.{toml_key(self.name)}.content"))


@record
class Host:
    name: str
    recipients: tuple[str, ...]
    deployments: tuple[Deployment, ...]
    templates: tuple[Template, ...]
    # The host's private key files, for its profile (empty: sshd's ed25519 host key).
    identities: tuple[str, ...] = ()
    # Declared in a NixOS configuration (hosts.toml's ``nixos``): its attribute name
    # there.  Its profile is the module's (config.vaultpy.profileFile), not vaultpy's.
    nixos: str = ""
    # Secrets it receives with no file of its own: the module's ``install = false``
    # (used by templates the module renders).
    received: tuple[str, ...] = ()
    # A person's entry (``user = true``): their own key; they activate its profile
    # themselves (a user's profile), so every file is theirs and paths may say %h, %r.
    user: bool = False

    @cached_property
    def needed(self) -> tuple[str, ...]:
        """Every secret id whose ciphertext the host receives (installed or used by a
        template), sorted."""
        ids = {d.id for d in self.deployments}
        ids.update(self.received)
        for t in self.templates:
            ids.update(t.refs)
        return tuple(sorted(ids))


@record
class Signing:
    """The cache signing key: its public half, and the id of the secret that holds
    its private half (an OpenSSH private key, encrypted to the master recipients)."""

    key: str
    secret: str


@record
class Config:
    path: Path
    recipients: tuple[str, ...]
    identity: Path | None
    secrets_dir: Path
    cache_dir: Path
    secrets: Mapping[str, Secret]
    hosts: Mapping[str, Host]
    vault: VaultSettings | None = None   # [vaultpy.vault]
    # [vaultpy] nixos: a Nix file whose NixOS configurations declare more hosts and
    # secrets (vaultpy/nixhosts.py); ``load`` merges them in.
    nixos: Path | None = None
    # Secret ids hosts.toml's hosts use and only the nixos file may declare, each with
    # the problem to report if it does not (with_nixos).
    later: tuple[tuple[str, Problem], ...] = ()
    # Warnings the nixos file's evaluation gave (renc and check print them).
    notes: tuple[Problem, ...] = ()
    # [vaultpy] signing_key / signing_secret: the public key (an ssh-ed25519 line) that
    # signs each host's cache, and the secret holding its private half (vaultpy/signing.py).
    signing: Signing | None = None

    @property
    def root(self) -> Path:
        return self.path.parent

    @property
    def declared_in(self) -> str:
        """Where hosts and secrets are declared, as messages name it."""
        return "hosts.toml" + (f" or {display_path(self.nixos)}" if self.nixos else "")

    @property
    def lock_path(self) -> Path:
        return self.cache_dir / ".vaultpy.lock"

    def is_person(self, name: str) -> bool:
        """Whether ``name`` is a person's entry (``user = true``), not a host's."""
        return name in self.hosts and self.hosts[name].user

    def people(self, names: Iterable[str] | None = None) -> int:
        """How many of the entries ``names`` (default: all) are people's."""
        return sum(map(self.is_person, self.hosts if names is None else names))

    def secret(self, secret_id: str) -> Secret:
        try:
            return self.secrets[secret_id]
        except KeyError:
            close = did_you_mean(secret_id, self.secrets)
            if close:
                hint = close
            elif ID_RE.fullmatch(secret_id) and len(secret_id) <= ID_MAX:
                hint = f"declare [{key_path('secrets', secret_id)}] in hosts.toml" + (
                    f", or vaultpy.secrets.{nix_attr(secret_id)} in a configuration of "
                    f"{display_path(self.nixos)}" if self.nixos else "")
            else:
                known = list(self.secrets)
                hint = ("ids are letters, digits, _ . - (starting with a letter or digit, "
                        f"at most {ID_MAX}); known: " + (", ".join(known[:_KNOWN_MAX]) or "none")
                        + (f", … ({len(known)} in all)" if len(known) > _KNOWN_MAX else ""))
            raise VaultpyError(Problem(display_path(self.path),
                                       f"unknown secret id {shown(secret_id)}", "secrets",
                                       hint)) from None


# --------------------------------------------------------------------------- validation

def _kind(value: Any) -> str:
    import datetime as dt

    kinds: dict[type, str] = {bool: "a boolean", int: "an integer", float: "a float",
                              str: "a string", list: "a list", dict: "a table",
                              dt.datetime: "a date-time", dt.date: "a date",
                              dt.time: "a time"}
    return kinds.get(type(value), type(value).__name__)


# A key of a TOML path (key_path): quoted, or up to a dot or an index.
_FIELD_KEY = re.compile(r'"(?:[^"\\]|\\.)*"|[^."\[\]]+')
# What is left of a problem's file name or text at most (each value in the text is cut
# where it is quoted, with its length: errors.shown; this is for what nothing cut).
_TEXT_MAX = 1000


def _named(path: Path) -> str:
    """``path`` as a message names it (:func:`display_path`), cut as a value is."""
    return shown(display_path(path), quote=False)


# A quoted string in tomllib's message ("Cannot declare ('secrets', 'x') twice").
_TOML_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"")


def _toml_message(exc: Exception) -> str:
    """tomllib's message, each key in it longer than a value is shown cut."""
    import ast

    def cut(m: re.Match[str]) -> str:
        if len(m.group()) <= SHOWN_MAX:
            return m.group()
        try:
            return shown(ast.literal_eval(m.group()))
        except (ValueError, SyntaxError):
            return m.group()

    return _TOML_QUOTED.sub(cut, str(exc))


def _fitted_field(field: str) -> str:
    """``field`` with each key longer than an id may be cut, as :func:`shown` cuts a
    value (the problem's message gives its length)."""
    def cut(m: re.Match[str]) -> str:
        key = m.group()
        if len(key) <= _FIELD_MAX:
            return key
        return (key[:SHOWN_MAX - 2] + '…"') if key.startswith('"') else key[:SHOWN_MAX - 1] + "…"

    return field if len(field) <= _FIELD_MAX else _FIELD_KEY.sub(cut, field)


def _fitted(problems: list[Problem]) -> list[Problem]:
    """``problems`` as one short line each, whatever hosts.toml's keys and values hold:
    a long key in a field cut (:func:`_fitted_field`), and a file name or text that
    nothing cut cut here.  (Only on the error path: a valid file has no problem.)"""
    def text(value: str) -> str:
        return shown(value, _TEXT_MAX, quote=False)

    return [p if max(len(p.message), len(p.hint)) <= _TEXT_MAX
            and max(len(p.field), len(p.file)) <= _FIELD_MAX
            else Problem(shown(p.file, _FIELD_MAX, quote=False), text(p.message),
                         _fitted_field(p.field), text(p.hint))
            for p in problems]


class _Checker:
    """Collects problems while walking the TOML document."""

    def __init__(self, path: Path) -> None:
        self.file = display_path(path)
        self.problems: list[Problem] = []
        self.warnings: list[Problem] = []      # said by renc and check (Config.notes)
        self.decimal_modes: set[int] = set()   # `mode = <decimal>` literals in the text
        self.plain_deployments: dict[str, Deployment] = {}    # shared by every host

    def add(self, where: str, message: str, hint: str = "") -> None:
        self.problems.append(Problem(self.file, message, where, hint))

    def keys(self, table: Mapping[str, Any], where: str, allowed: tuple[str, ...],
             offered: tuple[str, ...] | None = None) -> None:
        """An unknown key is a problem, with the closest of ``offered`` (else all of
        them) as its hint.  ``offered``: ``allowed`` but for keys refused later with a
        line of their own (a person's owner): a typo is not pointed at them."""
        known = allowed if offered is None else offered
        for key in table:
            if key not in allowed:
                meant, said = FOREIGN_KEYS.get(key, ("", ""))
                hint = (said if meant in known else did_you_mean(key, known)
                        or "allowed keys: " + ", ".join(known))
                written = toml_key(key)
                at = f"{where}.{written}" if where else written
                # (the field shows a long key cut: _fitted)
                self.add(at, "unknown key" + (f" ({len(key)} characters)"
                                              if len(written) > _FIELD_MAX else ""), hint)

    def item_keys(self, table: dict[str, Any], prefix: tuple[str, ...], name: str,
                  allowed: tuple[str, ...], offered: tuple[str, ...] | None = None
                  ) -> None:
        """:meth:`keys` of the table ``[<prefix>.<name>]`` (a secret, a template).
        ``[secrets.redis.password]`` is a table ``password`` inside ``[secrets.redis]``:
        an id or file name with a dot must be quoted.  A sub-table where none may be is
        said as that, with the quoted header, not as an unknown key."""
        nested = [k for k, v in table.items() if k not in allowed and isinstance(v, dict)]
        for key in nested:
            whole = f"{name}.{key}"
            self.add(key_path(*prefix, name, key), f"a table inside [{key_path(*prefix, name)}]",
                     f"for the name {shown(whole)}, quote it: "
                     f"[{_fitted_field(key_path(*prefix, whole))}]")
        self.keys({k: v for k, v in table.items() if k not in nested},
                  key_path(*prefix, name), allowed, offered)

    def table(self, value: Any, where: str) -> dict[str, Any] | None:
        if not isinstance(value, dict):
            self.add(where, f"expected a table, got {_kind(value)}",
                     f"write it as [{where}]")
            return None
        return value

    def string(self, value: Any, where: str) -> str | None:
        if not isinstance(value, str):
            self.add(where, f"expected a string, got {_kind(value)}", "quote the value")
            return None
        return value

    def path_string(self, value: Any, where: str) -> str | None:
        """A string naming a local file or directory: no OS accepts a NUL in one."""
        text = self.string(value, where)
        if text is not None and "\0" in text:
            self.add(where, f"invalid path {shown(text)} (it holds a NUL character)",
                     "remove the NUL (\\u0000) from the path")
            return None
        if text is not None and has_control(text):
            self.add(where, f"invalid path {shown(text)} (a control character, such as a line "
                     "break, is in it)", "remove it from the path")
            return None
        if text is not None and not text.strip():
            # ("" was taken as the default, without a word: a setting lost in an edit)
            self.add(where, "an empty path", "give a path, or leave the key out for the "
                     "default")
            return None
        return text

    def parsed(self, table: Mapping[str, Any], key: str, where: str,
               parse: Callable[[str], T], hint: str) -> T | None:
        """``table[key]`` as a string given to ``parse``; its ValueError becomes a problem."""
        if key not in table:
            return None
        text = self.string(table[key], f"{where}.{key}")
        if text is None:
            return None
        try:
            return parse(text)
        except ValueError as exc:
            self.add(f"{where}.{key}", str(exc), hint)
            return None

    def boolean(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            self.add(where, f"expected true or false, got {_kind(value)}",
                     "write true or false, without quotes")
            return False
        return value

    def strings(self, value: Any, where: str) -> list[str]:
        """A list of strings; else [], with a problem for the list or each item that is
        no string (``[1]: expected a string``, as ``identities`` and ``secrets`` say)."""
        if not isinstance(value, list):
            self.add(where, f"expected a list of strings, got {_kind(value)}",
                     'write it as ["a", "b"]')
            return []
        if not all(isinstance(v, str) for v in value):
            for i, item in enumerate(value):
                self.string(item, f"{where}[{i}]")
            return []
        return list(value)

    def ident(self, value: str, where: str, what: str) -> bool:
        if len(value) > ID_MAX or not ID_RE.fullmatch(value):
            self.add(where, f"invalid {what} {shown(value)}",
                     f"use letters, digits, '_', '.', '-', starting with a letter or "
                     f"digit, at most {ID_MAX} characters")
            return False
        return True


# Other tools' keys, as migrated tables keep them: what vaultpy says instead of its
# list (when the key it names is allowed there).  lib.nix unknownKey says the same.
FOREIGN_KEYS = {
    "neededForUsers": ("early", "sops-nix's neededForUsers is early = true here"),
    "symlink": ("path", "agenix's symlink: a path here is always a symlink (to the file "
                "in RAM); remove it"),
}


def _owner(ck: _Checker, value: Any, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    elif isinstance(value, str):
        text = value
    else:
        text = ""
    if numeric_id_ok(text):
        return text
    if len(text) <= 32 and USER_RE.fullmatch(text) and text.isascii():
        return text
    hint = "use a name like \"postgres\" or a numeric id like 1000"
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        # (true, a date, a list: said in TOML's words, as every wrong type is)
        ck.add(where, f"expected a user or group name or a numeric id, got {_kind(value)}",
               hint)
    else:
        ck.add(where, "invalid user or group "
               + (shown(value) if isinstance(value, str) else text), hint)
    return "root"


def _resolved(ck: _Checker, path: Path, where: str) -> Path | None:
    """``path`` with its symlinks resolved, or None (and a problem) for a symlink loop."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:      # 3.11: RuntimeError("Symlink loop …")
        reason = "a symlink loop" if isinstance(exc, RuntimeError) else exc.strerror
        ck.add(where, f"{_named(path)}: cannot resolve it ({reason})",
               "fix or remove the symlinks on that path")
        return None


class _Files:
    """Where files resolve to, as the file system sees them (what ``Path.resolve`` gives),
    for hundreds of files in a few folders: each folder is resolved once, then a file
    costs one lstat (a full resolve only for a symlink).  Paths are already normalised
    (absolute, no ``..``), so a file that is no symlink is its resolved folder / name."""

    def __init__(self, ck: _Checker) -> None:
        self.ck = ck
        self.folders: dict[Path, Path | None] = {}

    def resolve(self, path: Path, where: str | None) -> Path | None:
        """``path`` resolved; None when it cannot be (a symlink loop: a problem at
        ``where``, unless None)."""
        parent = path.parent
        if parent not in self.folders:
            try:
                self.folders[parent] = parent.resolve()
            except (RuntimeError, OSError):     # reported for the file below
                self.folders[parent] = None
        folder = self.folders[parent]
        if folder is not None:
            try:
                link = stat.S_ISLNK(os.lstat(path).st_mode)
            except OSError:                     # missing: resolve() keeps the name too
                link = False
            if not link:
                return folder / path.name
        if where is None:
            try:
                return path.resolve()
            except (RuntimeError, OSError):
                return None
        return _resolved(self.ck, path, where)


def _mode(ck: _Checker, value: Any, where: str) -> str:
    number: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        if value >= 8 and value in ck.decimal_modes:
            fix = (f'write it as a string "0{value}" or as 0o{value}'
                   if re.fullmatch(r"[0-7]{1,3}", str(value))
                   else 'write it as an octal string like "0440"')
            ck.add(where, f"mode = {value} is a decimal number (0o{value:o})", fix)
            return "0400"
        number = value
    elif isinstance(value, str) and re.fullmatch(r"[0-7]{3,4}", value):
        number = int(value, 8)
    if number is None or not 0 <= number <= 0o777:
        hint = 'use an octal string like "0400" or "0440" (no setuid/setgid/sticky bits)'
        if not isinstance(value, (str, int)) or isinstance(value, bool):
            ck.add(where, f"expected an octal string or an integer, got {_kind(value)}", hint)
        else:
            ck.add(where, "invalid mode " + (shown(value) if isinstance(value, str) else
                                             f"0o{value:o}" if value >= 0 else str(value)), hint)
        return "0400"
    return f"{number:04o}"


def _path(ck: _Checker, value: Any, where: str, *, user: bool = False) -> str | None:
    text = ck.string(value, where)
    if text is None:
        return None
    if user:
        return _user_path(ck, text, where, clash=True)
    why = path_shape_problem(text)
    if why is not None:
        ck.add(where, f"invalid path {shown(text)}: {why}",
               "a host's path is absolute: a person's entry says user = true, then %h/ is "
               "their home" if text.startswith(("%h/", "%r/"))
               else "use an absolute, normalised path like /var/lib/app/secret")
        return None
    clash = path_clash(text, DEFAULT_DIRS)
    if clash is not None:
        ck.add(where, *path_clash_message(text, *clash))
        return None
    return text


def _units(ck: _Checker, value: Any, where: str) -> tuple[str, ...]:
    units = ck.strings(value, where)
    for unit in units:
        if not UNIT_RE.fullmatch(unit):
            ck.add(where, f"invalid unit name {shown(unit)}", 'use a name like "nginx.service"')
    return tuple(units)


# A person's entry's paths are checked as if expanded here: any home and runtime
# directory shaped as systemd sets them (the person's own are only known at activation).
_SAMPLE_USER_ENV = {"HOME": "/home/user", "XDG_RUNTIME_DIR": "/run/user/1000"}
_USER_PATH_HINT = ("in a person's entry (user = true) a path is absolute or begins with %h/ "
                   "(their home) or %r/ (their runtime directory); %% is a %")


def _user_path(ck: _Checker, text: str, where: str, *, clash: bool) -> str | None:
    """A path of a person's entry, as a user's profile takes it (profile.expand)."""
    from vaultpy.profile import USER_SETTINGS, expand

    rest = text[2:] if text.startswith(("%h/", "%r/")) else text
    try:
        why = path_shape_problem(expand(text, _SAMPLE_USER_ENV))
    except ValueError as exc:
        why = str(exc)
    if why is None and "%" in rest.replace("%%", ""):  # %hfoo: /home/alicefoo, a typo
        why = "a % other than a leading %h/ or %r/"
    if why is not None:
        home = re.match(r"(~|\$HOME|\$\{HOME\})/", text)   # a shell's way to say it
        ck.add(where, f"invalid path {shown(text)}: {why}",
               f"write %h/{shown(text[home.end():], quote=False)} (%h is their home)" if home
               else _USER_PATH_HINT)
        return None
    dirs = {k: USER_SETTINGS[k] for k in DEFAULT_DIRS}
    found = path_clash(text, dirs) if clash else None
    if found is not None:
        ck.add(where, *path_clash_message(text, *found))
        return None
    return text


OUTPUT_KEYS = ("owner", "group", "mode", "path", "restart_units", "reload_units", "early")
# Of those, what a person's entry refuses (_output): its files are the person's own.
NOT_PERSONAL = ("owner", "group", "early")


def _item_keys(*keys: str, user: bool) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
    """An item table's allowed keys, and those its unknown-key hint offers."""
    allowed = (*keys, *OUTPUT_KEYS)
    return allowed, tuple(k for k in allowed if k not in NOT_PERSONAL) if user else None


def _output(ck: _Checker, table: Mapping[str, Any], where: str, *, user: bool = False,
            name: str | None = None) -> Output:
    """An item's output fields.  ``name``: its file's name, for a ``path`` that is where
    the file is anyway (``/run/vaultpy/<name>``, as agenix users write): no link, as
    the modules take it, not an overlap with activation's own directory."""
    if name is not None and "path" in table:
        dirs = USER_DIRS if user else DEFAULT_DIRS
        early = table.get("early") is True and not user
        if table["path"] == f"{dirs['early_dir' if early else 'dir']}/{name}":
            table = {k: v for k, v in table.items() if k != "path"}
    if user:
        # A user's profile: installed as the person who activates it, once they log in.
        for key in ("owner", "group"):
            if key in table:
                ck.add(f"{where}.{key}", f"{key} in a person's entry (user = true): every "
                       "file is installed as the person who activates it", f"remove {key}")
        if "early" in table:
            ck.add(f"{where}.early", "early in a person's entry (user = true): early files "
                   "are for a host's boot", "remove early")
        table = {k: v for k, v in table.items() if k not in ("owner", "group", "early")}
    out = Output(
        owner=_owner(ck, table["owner"], f"{where}.owner") if "owner" in table else "root",
        group=_owner(ck, table["group"], f"{where}.group") if "group" in table else "root",
        mode=_mode(ck, table["mode"], f"{where}.mode") if "mode" in table else "0400",
        path=(_path(ck, table["path"], f"{where}.path", user=user) if "path" in table
              else None),
        restart_units=_units(ck, table.get("restart_units", []), f"{where}.restart_units"),
        reload_units=_units(ck, table.get("reload_units", []), f"{where}.reload_units"),
        early=ck.boolean(table["early"], f"{where}.early") if "early" in table else False,
    )
    if out.early and not (early_owner_ok(out.owner) and early_owner_ok(out.group)):
        ck.add(f"{where}.early", EARLY_OWNER_PROBLEM, EARLY_OWNER_HINT)
    shared = next((d for d in SHARED_DIRS if out.path is not None
                   and out.path.startswith(d + "/")), None)
    if shared is not None and out.path is not None and not user:
        # Found in review: another user makes the path's directory there first; the
        # link is then refused (never written below another user's directory), and
        # with it the whole activation: no secret at all, on a first boot.
        ck.warnings.append(Problem(
            ck.file, f"path {shown(out.path)} lies under {shared}, where every user may "
            "create names: one who makes its directory first stops every activation (refused, "
            "rightly)", f"{where}.path", "choose a path under a directory only root can "
            "write to (/etc, /var/lib, /run)"))
    if (not user and "group" not in table and out.mode[-2] != "0"
            and not early_owner_ok(out.owner)):
        # The NixOS module's warning, for hosts.toml: most likely a migration, the group
        # meant to read it left out (found in review).
        ck.warnings.append(Problem(
            ck.file, f"mode {out.mode} lets group root read it, the default group here "
            "(agenix, sops-nix and vaultix default to the owner's)", f"{where}.group",
            f'set group to the group meant to read it (the owner\'s: group = '
            f'"{out.owner}"?), or group = "root" to keep it'))
    return out


# Directories every user may write to on a Linux host (sticky): a path below one can
# be taken first by anyone.
SHARED_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")


def _recipients(ck: _Checker, value: Any, where: str, *, host: bool, person: bool = False
                ) -> tuple[str, ...]:
    items = [value] if host and isinstance(value, str) else ck.strings(value, where)
    if not items:
        if value == []:         # (a list of other things was reported by ck.strings)
            ck.add(where, "no recipients", "add at least one age1… or ssh-ed25519 key")
        return ()
    out: list[str] = []
    for i, text in enumerate(items):
        at = where if len(items) == 1 and host else f"{where}[{i}]"
        try:
            norm = normalize_recipient(text, allow_rsa=not host, allow_plugin=not host)
        except ValueError as exc:
            ck.add(at, str(exc), (PERSON_KEY_HINT if person else HOST_KEY_HINT) if host else
                   "use an age1… key (age-keygen -y) or an ssh-ed25519 public key line")
            continue
        if norm in out:
            ck.add(at, "the same key is listed twice", "remove the duplicate")
            continue
        out.append(norm)
    return tuple(out)


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``did you mean 'x'?`` for the known name closest to ``name`` ("" if none is)."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"did you mean {close[0]!r}?" if close else ""


def shared_host_keys(cfg: Config) -> list[Problem]:
    """Warnings: hosts listed with the same key (a cloned machine, a key pasted twice).
    Each can read every secret of the other."""
    first: dict[str, str] = {}
    out: list[Problem] = []
    for name, host in cfg.hosts.items():
        for key in host.recipients:
            other = first.setdefault(key, name)
            if other != name:
                out.append(Problem(display_path(cfg.path), f"hosts {other!r} and {name!r} "
                                   "have the same key: each can read the other's secrets",
                                   f"{key_path('hosts', name)}.pubkey",
                                   "give each host its own key (its "
                                   "/etc/ssh/ssh_host_ed25519_key.pub)"))
    return out


def mistyped_placeholders(cfg: Config) -> list[Problem]:
    """Warnings: template text that reads like a placeholder mistyped (``{{ secret.x }}``,
    ``{{ Secrets.x }}``), kept as text: the host would get it verbatim."""
    out: list[Problem] = []
    for name, host in cfg.hosts.items():
        for t in host.templates:
            text_file, text_field = t.content_field
            for line, column, text, meant in templates.near_misses(t.content):
                if meant.split(".", 1)[1].rstrip(" }") not in cfg.secrets:
                    continue    # another tool's {{ secret.password }} (Jinja), no typo of ours
                out.append(Problem(text_file or display_path(cfg.path),
                                   f"line {line} column {column}: "
                                   f"{shown(text)} is kept as text, not a placeholder",
                                   f"{key_path('hosts', name)}.{text_field}",
                                   f"did you mean {meant}? (to keep it, write {{{{{{{{ for "
                                   "its {{)"))
    return out


def config_warnings(cfg: Config) -> list[Problem]:
    """What renc and check say of hosts.toml as warnings (with a memo answer never)."""
    return (shared_host_keys(cfg) + mistyped_placeholders(cfg) + stray_masters(cfg)
            + [keyless for h in cfg.hosts.values()
               if (keyless := no_identity_for_age_key(cfg, h.name)) is not None]
            + list(cfg.notes))


def no_identity_for_age_key(cfg: Config, host: str) -> Problem | None:
    """A hosts.toml host whose keys are all age1… and that names no ``identities``: its
    profile would name sshd's ed25519 key, which cannot open what renc writes for it.
    (A warning for renc and check: the NixOS module's settings.hostKeys may name the
    key; an error for ``profile`` and ``bundle``, which would write that profile.)"""
    h = cfg.hosts[host]
    if h.nixos or h.identities or not h.recipients or not all(
            r.startswith("age1") for r in h.recipients):
        return None
    if h.user:
        return Problem(display_path(cfg.path), "the person's key is an age1… key, and no "
                       "identities say where its identity file is: activation would try "
                       "~/.ssh/id_ed25519, which cannot decrypt what renc writes for it",
                       f"{key_path('hosts', host)}.identities", 'add identities = '
                       '["%h/.config/age/keys.txt"] (where that age identity file is)')
    return Problem(display_path(cfg.path), "the host's key is an age1… key, and no "
                   "identities say where its identity file is: activation would try sshd's "
                   "/etc/ssh/ssh_host_ed25519_key, which cannot decrypt what renc writes "
                   "for it", f"{key_path('hosts', host)}.identities",
                   'add identities = ["/etc/vaultpy/host.key"] (where that age identity '
                   "file is on the host; the NixOS module takes it as settings.hostKeys)")


_KEPT = re.compile(r"(?P<id>.+)\.age\.(?P<why>conflict|unsaved)-[^/]*")


def stray_masters(cfg: Config) -> list[Problem]:
    """Warnings: files in secrets_dir that look like a master but are none: a ``*.age``
    no ``[secrets.*]`` declares (a secret removed from hosts.toml, its file left: it is
    still committed, still readable by the master key), and an edit kept beside its
    master (``<id>.age.conflict-…``, ``.unsaved-…``), which ``git add secrets`` would
    commit while the edit waits to be merged.  (The secrets folder's entry names are
    in the memo's digest: a new file there is seen.)"""
    declared = {os.path.abspath(s.file) for s in cfg.secrets.values()}
    try:
        with os.scandir(cfg.secrets_dir) as it:
            names = sorted(e.name for e in it if e.is_file(follow_symlinks=False))
    except OSError:
        return []
    out: list[Problem] = []
    for name in names:
        path = cfg.secrets_dir / name
        kept = _KEPT.fullmatch(name)
        if kept is not None:
            sid = kept.group("id")
            why = ("a master written while its editor was open" if kept["why"] == "conflict"
                   else "a master that could not be written")
            out.append(Problem(display_path(path), f"an edit kept beside {why}", "",
                               f"read it with vaultpy decrypt --file {display_path(path)}, "
                               f"merge it into the master with vaultpy edit {sid}, then "
                               "delete it"))
        elif (name.endswith(".age") and not name.startswith(".")
              and os.path.abspath(path) not in declared):
            sid = name[:-4]
            out.append(Problem(display_path(path), f"no secret in {cfg.declared_in} has "
                               "this master file",
                               key_path("secrets", sid) if ID_RE.fullmatch(sid) else "",
                               f"declare it ([{key_path('secrets', sid)}]"
                               + (f", or in {display_path(cfg.nixos)}" if cfg.nixos else "")
                               + "), or delete it (git rm) if the secret is gone"))
    return out


def identity_setting(root: Path, path: Path) -> str:
    """How hosts.toml names an identity file at ``path``: relative inside the repository
    ``root`` (it moves with it), ``~/…`` under the home directory (the same for every
    clone, whoever's home it is), else absolute."""
    path = Path(os.path.abspath(path))
    if path.is_relative_to(os.path.abspath(root)):
        return str(path.relative_to(os.path.abspath(root)))
    home = os.path.expanduser("~")
    if home not in ("", "/", "~") and path.is_relative_to(home):
        return f"~/{path.relative_to(home)}"
    return str(path)


def _lists_secrets(text: str, host: str) -> bool:
    """Whether ``[hosts.<host>]`` in ``text`` has a ``secrets = [`` line (for the hint on
    a TOML error, which comes before any parse: a line scan, quoted names included)."""
    headers = {f"[{key_path('hosts', host)}]", f'[hosts."{host}"]', f"[hosts.'{host}']"}
    inside = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            inside = line.split("#", 1)[0].strip() in headers
        elif inside and re.match(r"secrets\s*=\s*\[", line):
            return True
    return False


def _template_file(ck: _Checker, root: Path, value: Any, where: str
                   ) -> tuple[Path | None, str | None, tuple[int, ...]]:
    """``file = "…"`` of a template (relative to hosts.toml's directory): its path, its
    text and the stat of what was read; or a problem and (None, None, ())."""
    from vaultpy._internal.memo import stat_key
    from vaultpy.profile import MAX_PROFILE

    if isinstance(value, str) and not value.strip():
        ck.add(where, "an empty path", 'give the template\'s file, e.g. "templates/app.conf"')
        return None, None, ()
    given = ck.path_string(value, where)
    if not given:
        return None, None, ()
    path = Path(os.path.normpath(_rel(root, given)))
    too_big = False
    try:
        # Not through a symlink (the name's own file: Nix cannot tell what a link leads
        # to before it reads it, and a FIFO there would hang it), and sized first.
        too_big = os.lstat(path).st_size > MAX_PROFILE
        if not too_big:
            data, st = fsutil.read_regular(path, follow=False)  # a FIFO must not hang it
    except OSError as exc:
        p = os_problem(path, exc, "read the template")
        hint = ("check the path: a relative one is read from hosts.toml's directory"
                if isinstance(exc, FileNotFoundError) else
                "point file at the file itself, not at a symbolic link"
                if exc.strerror == fsutil.LINK else p.hint)
        ck.problems.append(Problem(p.file, p.message, where, hint))
        return None, None, ()
    fix = "a template is text; keep binary data in a secret"
    if too_big:
        ck.add(where, f"{_named(path)} holds more than {MAX_PROFILE >> 20} MiB: more "
               "than a host's profile may hold", "keep a template to a configuration file")
        return None, None, ()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        ck.add(where, f"{_named(path)} is not UTF-8 text (byte {exc.start})", fix)
        return None, None, ()
    if "\0" in text:
        ck.add(where, f"{_named(path)} holds a NUL byte (byte {text.index(chr(0))})",
               f"{fix} (Nix cannot hold a NUL either)")
        return None, None, ()
    return path, text, stat_key(st)


def _templates_of_their_own(ck: _Checker, config: Path, declared: Mapping[str, Secret],
                            hosts: Mapping[str, Host]) -> None:
    """A template's file is no file vaultpy writes: not hosts.toml, a master file or a
    key pair's public half (a master read as a template changes with every encrypt)."""
    sourced = [(name, t) for name, h in hosts.items() for t in h.templates
               if t.source is not None]
    if not sourced:             # (one stat per master on every load, for nothing)
        return
    key = fsutil.file_key
    theirs: dict[tuple[int, int], str] = {}
    for p, what in [(config, "hosts.toml itself"),
                    *((s.file, f"the master file of secret {s.id!r}")
                      for s in declared.values()),
                    *((s.public_file, f"the public half of secret {s.id!r}")
                      for s in declared.values() if s.public_file is not None)]:
        k = key(p)
        if k is not None:
            theirs.setdefault(k, what)
    for name, t in sourced:
        k = key(t.source) if t.source is not None else None
        if k is not None and k in theirs:
            ck.add(f"{key_path('hosts', name, 'templates', t.name)}.file",
                   f"{display_path(t.source or config)} is {theirs[k]}",
                   "give the template a file of its own")


def _rel(root: Path, text: str) -> Path:
    p = Path(os.path.expanduser(text))
    return p if p.is_absolute() else root / p


def vault_address_ok(addr: str) -> bool:
    """Whether ``addr`` is a Vault address: http(s), a host, a valid port if any, and
    no path (Vault's API is at ``<addr>/v1/…``: a path there made every request miss),
    query or fragment.  For ``addr`` in hosts.toml and BAO_ADDR / VAULT_ADDR alike."""
    try:                                    # "http://[::1", "http://h:x" raise
        parts = urlsplit(addr)
        return (parts.scheme in ("http", "https") and bool(parts.hostname)
                and (parts.port is None or parts.port >= 0)     # .port checks the port
                and parts.path in ("", "/") and not parts.query and not parts.fragment
                # a user:password@ would go into vault-versions.toml (committed) and
                # into every error that names the address
                and parts.username is None and parts.password is None)
    except ValueError:
        return False


def shown_address(addr: str) -> str:
    """``addr`` for a message: any ``user:password@`` in it left out."""
    return re.sub(r"//[^/@\s]*@", "//…@", addr, count=1)


VAULT_KEYS = ("addr", "auth", "role_id", "secret_id_file", "wrapped_secret_id_file",
              "namespace", "ca_cert", "approle_mount")


def _vault_settings(ck: _Checker, raw: Any, root: Path) -> VaultSettings | None:
    where = "vaultpy.vault"
    table = ck.table(raw, where)
    if table is None:
        return None
    ck.keys(table, where, VAULT_KEYS)
    text: dict[str, str] = {}
    for key in VAULT_KEYS:
        if key in table:
            value = ck.string(table[key], f"{where}.{key}")
            if value is not None and not value.strip():
                ck.add(f"{where}.{key}", "empty", "give a value or remove the key")
            elif value is not None:
                text[key] = value
    addr = text.get("addr")
    if addr is not None and not vault_address_ok(addr):
        ck.add(f"{where}.addr", f"invalid address {shown(shown_address(addr))}",
               'use a URL like "https://vault.example.com:8200": a scheme, a host and '
               "a port, no path, no user:password@")
    auth = text.get("auth", "token")
    if auth not in VAULT_AUTH:
        ck.add(f"{where}.auth", f"unknown auth method {shown(auth)}",
               did_you_mean(str(auth), VAULT_AUTH) or 'use "token" or "approle"')
    approle_keys = ("role_id", "secret_id_file", "wrapped_secret_id_file", "approle_mount")
    if auth == "token":
        for key in approle_keys:
            if key in table:
                ck.add(f"{where}.{key}", 'only used with auth = "approle"',
                       'set auth = "approle" or remove the key')
    elif auth == "approle":
        if "role_id" not in table:
            ck.add(f"{where}.role_id", 'missing (auth = "approle")',
                   "give the role ID (bao read auth/approle/role/<name>/role-id)")
        if "secret_id_file" not in table and "wrapped_secret_id_file" not in table:
            ck.add(where, 'auth = "approle" needs secret_id_file or wrapped_secret_id_file',
                   "point one of them at the file holding the (wrapped) secret ID")
    mount = text.get("approle_mount", "approle")
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*(/[A-Za-z0-9_][A-Za-z0-9_.-]*)*", mount):
        ck.add(f"{where}.approle_mount", f"invalid auth mount {shown(mount)}",
               'use the path the AppRole method is enabled at, like "approle"')

    def file(key: str) -> Path | None:
        given = text.get(key)
        return Path(os.path.normpath(_rel(root, given))) if given else None

    return VaultSettings(addr=addr, auth=auth, role_id=text.get("role_id"),
                         secret_id_file=file("secret_id_file"),
                         wrapped_secret_id_file=file("wrapped_secret_id_file"),
                         namespace=text.get("namespace"), ca_cert=file("ca_cert"),
                         approle_mount=mount)


def _host(ck: _Checker, name: str, raw: Any, declared: Mapping[str, Secret],
          later: list[tuple[str, Problem]] | None = None, root: Path = Path(".")
          ) -> Host | None:
    """``later``: where an unknown secret id goes, with its problem, instead of being
    refused now (hosts.toml's ``nixos`` file may declare it: :func:`with_nixos`)."""
    where = key_path("hosts", name)
    ok = ck.ident(name, where, "host name")
    table = ck.table(raw, where)
    if table is None:
        return None
    ck.keys(table, where, ("pubkey", "identities", "secrets", "templates", "user"))
    # (a non-boolean is said once; its paths are still read as a person's, as meant)
    user = "user" in table and (ck.boolean(table["user"], f"{where}.user")
                                or bool(table["user"]))
    identities = _identities(ck, table.get("identities"), f"{where}.identities", user=user)
    if "pubkey" not in table:
        ck.add(f"{where}.pubkey", "missing", PERSON_KEY_HINT if user else HOST_KEY_HINT)
        recipients: tuple[str, ...] = ()
    else:
        recipients = _recipients(ck, table["pubkey"], f"{where}.pubkey", host=True,
                                 person=user)

    deployments: list[Deployment] = []
    raw_secrets = table.get("secrets", [])
    if isinstance(raw_secrets, list):
        plain = ck.plain_deployments
        for i, sid in enumerate(raw_secrets):
            # The common case first, without building messages: a valid id, whose
            # (immutable) Deployment every host listing it shares.
            if isinstance(sid, str) and len(sid) <= ID_MAX and ID_RE.fullmatch(sid):
                d = plain.get(sid)
                if d is None:
                    d = plain[sid] = Deployment(sid, sid)
                deployments.append(d)
            elif ck.string(sid, f"{where}.secrets[{i}]") is not None:
                ck.ident(sid, f"{where}.secrets[{i}]", "secret id")     # adds the problem
    elif isinstance(raw_secrets, dict):
        for sid, spec in raw_secrets.items():
            at = f"{where}.secrets.{toml_key(sid)}"
            if not ck.ident(sid, at, "secret id"):
                continue
            sub = ck.table(spec, at)
            if sub is None:
                continue
            ck.item_keys(sub, ("hosts", name, "secrets"), sid, *_item_keys("name", user=user))
            out_name = sid
            if "name" in sub:
                given = ck.string(sub["name"], f"{at}.name")
                if given is not None and ck.ident(given, f"{at}.name", "file name"):
                    out_name = given
            deployments.append(Deployment(sid, out_name,
                                          _output(ck, sub, at, user=user, name=out_name)))
    else:
        ck.add(f"{where}.secrets", f"expected a list of ids or a table, got "
               f"{_kind(raw_secrets)}", f'write secrets = ["id"] or [{where}.secrets.<id>]')

    tmpls: list[Template] = []
    raw_templates = table.get("templates", {})
    if ck.table(raw_templates, f"{where}.templates") is not None:
        for tname, spec in raw_templates.items():
            at = f"{where}.templates.{toml_key(tname)}"
            if not ck.ident(tname, at, "template name"):
                continue
            sub = ck.table(spec, at)
            if sub is None:
                continue
            ck.item_keys(sub, ("hosts", name, "templates"), tname,
                         *_item_keys("content", "file", "trim", user=user))
            content = ck.string(sub["content"], f"{at}.content") if "content" in sub else None
            source: Path | None = None
            source_stat: tuple[int, ...] = ()
            if content is not None and "\0" in content:
                ck.add(f"{at}.content", "holds a NUL character (\\u0000)", "remove it: a "
                       "template is text, and Nix cannot hold a NUL either")
                content = None
            if "file" in sub:
                if "content" in sub:
                    ck.add(f"{at}.file", "a template has content or a file, not both",
                           "remove one of them")
                    content = None
                else:
                    source, content, source_stat = _template_file(ck, root, sub["file"],
                                                                  f"{at}.file")
            elif "content" not in sub:
                ck.add(f"{at}.content", "missing", "give the template's text (content = "
                       "\"…\"), or the file that holds it (file = \"templates/…\")")
            refs: list[str] = []
            if content is not None:
                refs, broken = templates.check(content)
                for exc in broken:      # each one, with the unknown ids below
                    if source is None:
                        ck.add(f"{at}.content", str(exc))
                    else:
                        ck.problems.append(Problem(display_path(source), str(exc),
                                                   f"{at}.file"))
            trim = ck.boolean(sub["trim"], f"{at}.trim") if "trim" in sub else False
            tmpls.append(Template(tname, content or "", trim, tuple(refs),
                                  _output(ck, sub, at, user=user, name=tname), source,
                                  source_stat))

    keys = set(identities) or {PERSON_IDENTITY if user else HOST_IDENTITY}
    for at, out in [*((f"{where}.secrets.{toml_key(d.id)}", d.out) for d in deployments),
                    *((f"{where}.templates.{toml_key(t.name)}", t.out) for t in tmpls)]:
        said = None if out.path is None else key_path_problem(out.path, keys, user)
        if said is not None:
            ck.add(f"{at}.path", *said)

    def unknown(sid: str, at: str, message: str, hint: str, file: str = "") -> None:
        problem = Problem(file or ck.file, message, at, hint)
        if later is None:
            ck.problems.append(problem)
        else:
            later.append((sid, problem))

    for d in deployments:
        if d.id not in declared:
            unknown(d.id, f"{where}.secrets.{toml_key(d.id)}", f"unknown secret id {d.id!r}",
                    did_you_mean(d.id, declared)
                    or f"declare [{key_path('secrets', d.id)}] in hosts.toml")
    for t in tmpls:
        for ref in t.refs:
            if ref not in declared:
                line, column = templates.position_of(t.content, ref)
                text_file, text_field = t.content_field
                unknown(ref, f"{where}.{text_field}",
                        f"line {line} column {column}: unknown secret id {shown(ref)} in "
                        "placeholder", did_you_mean(ref, declared)
                        or f"declare [{_fitted_field(key_path('secrets', ref))}] or fix the "
                        "placeholder",
                        text_file)
    seen_ids: set[str] = set()
    for d in deployments:
        if d.id in seen_ids:
            ck.add(f"{where}.secrets", f"secret {d.id!r} is listed twice", "remove one")
        seen_ids.add(d.id)
    # Labels ("secret 'x'") are only spelled for a clash: 10,000s of entries have none.
    def label(i: int) -> str:
        return (f"secret {deployments[i].id!r}" if i < len(deployments)
                else f"template {tmpls[i - len(deployments)].name!r}")

    names: dict[str, int] = {}
    paths: dict[str, int] = {}
    items = [(d.name, d.out) for d in deployments] + [(t.name, t.out) for t in tmpls]
    for i, (out_name, out) in enumerate(items):
        first = names.setdefault(out_name, i)
        if first != i and label(first) != label(i):
            ck.add(where, f"{label(i)} and {label(first)} both install as {out_name!r}",
                   "give one of them another name")
        if out.path is not None:
            first = paths.setdefault(out.path, i)
            if first != i:
                ck.add(where, f"{label(i)} and {label(first)} both use path {shown(out.path)}",
                       "give one of them another path")
    for i, (_name, out) in enumerate(items):
        outer = nesting(out.path, paths) if out.path is not None else None
        if out.path is not None and outer is not None:
            problem, hint = nesting_message(out.path, outer, f"{label(paths[outer])}'s")
            ck.add(where, f"{label(i)}: {problem}", hint)
    if not ok:
        return None
    return Host(name, recipients, tuple(deployments), tuple(tmpls), identities, user=user)


def _identities(ck: _Checker, value: Any, where: str, *, user: bool = False
                ) -> tuple[str, ...]:
    """``[hosts.<name>] identities``: the private key files the host decrypts with, as
    its profile names them (an ``age1`` host's key is not at sshd's path).  A person's
    (``user``) may begin with %h/ or %r/."""
    if value is None:
        return ()
    if not isinstance(value, list) or not value:
        ck.add(where, "expected a non-empty list of key paths, got "
               + ("an empty list" if value == [] else _kind(value)),
               'write identities = ["%h/.ssh/id_ed25519"]' if user
               else 'write identities = ["/etc/vaultpy/host.key"]')
        return ()
    out = []
    for i, item in enumerate(value):
        text = ck.string(item, f"{where}[{i}]")
        if text is None:
            continue
        if user:
            if _user_path(ck, text, f"{where}[{i}]", clash=False) is not None:
                out.append(text)
            continue
        why = path_shape_problem(text)
        if why is not None:
            ck.add(f"{where}[{i}]", f"invalid path {shown(text)}: {why}",
                   "give the absolute path of the host's private key file")
            continue
        out.append(text)
    return tuple(out)


def _shared_files(ck: _Checker, declared: Mapping[str, Secret], chosen_files: set[str],
                  secrets_dir: Path, where_is: Mapping[str, Path | None],
                  files: _Files, hosts_toml: Path) -> None:
    """A ``file = …`` that is also another secret's master file, a key pair's ``<id>.pub``
    or the rotation state: one `vaultpy generate` would write both values to it, the
    second overwriting the first (a plaintext .pub over a master, or the reverse).

    Files are compared as the file system sees them: ``where_is`` holds each master
    file resolved (None: it cannot be); so ``./secrets/a.age`` or a symlink to it is
    ``secrets/a.age``.  A default file is blamed only when a symlink makes it another
    one (``secrets/b.age`` -> ``a.age``)."""
    def same(path: Path, resolved: Path | None) -> Path:
        return path if resolved is None else resolved

    # file as resolved -> (the secret it belongs to, or "", what it is, its path)
    claimed: dict[Path, tuple[str, str, Path]] = {}
    for fixed, what in (
            (hosts_toml, "this hosts.toml, the configuration"),
            (secrets_dir / ROTATION_FILE,
             "the rotation state file (vaultpy generate and rotate write it)"),
            (secrets_dir / VAULT_VERSIONS_FILE,
             "the Vault versions file (vaultpy pull and push write it)")):
        claimed[same(fixed, files.resolve(fixed, None))] = ("", what, fixed)
    for s in declared.values():
        pub = s.public_file
        if pub is not None:
            claimed.setdefault(same(pub, files.resolve(pub, None)), (
                s.id, f"public key file (generate = \"{s.generate}\")", pub))
    # Default files first: a clash is blamed on the `file = …` that makes it.
    for s in sorted(declared.values(), key=lambda s: s.id in chosen_files):
        owner, what, path = claimed.setdefault(same(s.file, where_is.get(s.id)),
                                               (s.id, "master file", s.file))
        if owner == s.id and what == "master file":
            continue
        kind, _, detail = what.partition(" (")
        named = (what if not owner else f"its own {what}" if owner == s.id else
                 f"the {kind} of secret {owner!r}" + (f" ({detail}" if detail else ""))
        named_as, other = display_path(s.file), display_path(path)
        through = ("" if path == s.file else ", through a symlink" if other == named_as
                   else f", through a symlink (it is {other})")
        at = f"secrets.{toml_key(s.id)}" + (".file" if s.id in chosen_files else "")
        ck.add(at, f"{named_as} is also {named}{through}",
               f"give secret {s.id!r} a file of its own" if s.id in chosen_files else
               f"remove that symlink, or give secret {s.id!r} a file of its own (file = …)")


def _linked_below(root: Path, folder: Path) -> Path | None:
    """The first symlink among ``folder`` and its parents below ``root`` (the
    repository), if ``folder`` lies there; None otherwise."""
    try:
        rest = folder.relative_to(root)
    except ValueError:
        return None                     # outside the repository: the operator's choice
    here = root
    for part in rest.parts:
        here = here / part
        try:
            if stat.S_ISLNK(os.lstat(here).st_mode):
                return here
        except OSError:
            return None                 # not there yet: renc makes it, a directory
    return None


def parse(text: str, path: Path) -> Config:
    """Validate the text of a hosts.toml that lives at ``path``."""
    # here, not at the top: activation imports this module, never TOML
    import tomllib

    ck = _Checker(path)
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        hint = ("the file starts with a byte order mark (BOM): save it as UTF-8 without one"
                if text.startswith("\ufeff") else "fix the syntax at that line")
        at = re.search(r"\(at line (\d+), column \d+\)", str(exc))
        lines = text.splitlines()
        bad_line = lines[int(at.group(1)) - 1] if at and 0 < int(at.group(1)) <= len(lines) else ""
        octal = re.fullmatch(r"\s*mode\s*=\s*(0[0-7]+)\s*(#.*)?", bad_line)
        if octal:   # TOML has no leading zeros: an octal mode is a string
            hint = f'write the mode as a string: mode = "{octal.group(1)}"'
        twice = _first_declared(str(exc), lines)
        if twice is not None:   # (a merge, a paste): where the other one is
            hint = (f"[{_fitted_field(twice[0])}] is declared twice, first at line "
                    f"{twice[1]}: merge the two tables into one")
        mixed = re.match(r"Cannot declare \('hosts', '([^']*)', 'secrets'", str(exc))
        if mixed and not _lists_secrets(text, mixed.group(1)):
            mixed = None
        if mixed:   # `host add` writes the list form; the README shows the table form
            name = mixed.group(1)
            hint = (f"{key_path('hosts', name)} lists its secrets (secrets = [...]) and has "
                    f"[{key_path('hosts', name)}.secrets.<id>] tables too: use one form, e.g. "
                    f"turn the list into a table per id ([{key_path('hosts', name)}.secrets.<id>], "
                    "empty for the defaults)")
        overwritten = _overwritten(str(exc), text)
        key = ""
        if overwritten is not None:     # a key set twice: which one
            key, hint = overwritten
        raise VaultpyError(_fitted([Problem(ck.file, f"not valid TOML: {_toml_message(exc)}",
                                            key, hint)])) from None
    except (ValueError, RecursionError):    # tomllib: a 5000-digit integer, [[[[…]]]]
        raise VaultpyError(Problem(ck.file, "not valid TOML for vaultpy: a number with "
                                   "thousands of digits or values nested too deeply", "",
                                   "fix that value")) from None
    root = path.parent
    ck.decimal_modes = {int(m.group("value")) for m in _DECIMAL_MODE.finditer(text)}
    ck.keys(doc, "", ("vaultpy", "secrets", "hosts"))

    settings = ck.table(doc.get("vaultpy", {}), "vaultpy") or {}
    ck.keys(settings, "vaultpy", ("recipients", "identity", "secrets_dir", "cache_dir",
                                  "vault", "nixos", "signing_key", "signing_secret"))
    if "recipients" not in settings:
        ck.add("vaultpy.recipients", "missing",
               'add recipients = ["age1…"] (the master public key, age-keygen -y)')
        recipients: tuple[str, ...] = ()
    else:
        recipients = _recipients(ck, settings["recipients"], "vaultpy.recipients", host=False)
    identity = None
    if "identity" in settings:
        given = ck.path_string(settings["identity"], "vaultpy.identity")
        identity = _rel(root, given) if given else None
    dirs = {}
    for key, default in (("secrets_dir", "secrets"), ("cache_dir", "secrets/cache")):
        folder = ck.path_string(settings.get(key, default), f"vaultpy.{key}") or default
        dirs[key] = Path(os.path.normpath(_rel(root, folder)))
    secrets_dir, cache_dir = dirs["secrets_dir"], dirs["cache_dir"]
    vault = _vault_settings(ck, settings["vault"], root) if "vault" in settings else None
    nixos = None
    if "nixos" in settings:
        given = ck.path_string(settings["nixos"], "vaultpy.nixos")
        nixos = Path(os.path.normpath(_rel(root, given))) if given else None

    signing_raw = _signing(ck, settings)
    declared: dict[str, Secret] = {}
    chosen_files: set[str] = set()          # ids with a `file = …` of their own
    raw_secrets = ck.table(doc.get("secrets", {}), "secrets") or {}
    for sid, spec in raw_secrets.items():
        where = f"secrets.{toml_key(sid)}"
        if not ck.ident(sid, where, "secret id"):
            continue
        sub = ck.table(spec, where)
        if sub is None:
            continue
        ck.item_keys(sub, ("secrets",), sid, ("file", "vault", "generate", "rotate_days"))
        file = secrets_dir / f"{sid}.age"
        if "file" in sub:
            given = ck.path_string(sub["file"], f"{where}.file")
            if given:
                file = Path(os.path.normpath(_rel(root, given)))
                chosen_files.add(sid)
        ref = ck.parsed(sub, "vault", where, parse_vault_ref, VAULT_REF_HINT)
        gen = ck.parsed(sub, "generate", where, parse_generate_spec, GENERATE_HINT)
        rotate_days: int | None = None
        if "rotate_days" in sub:
            days = sub["rotate_days"]
            if (isinstance(days, int) and not isinstance(days, bool)
                    and 1 <= days <= ROTATE_DAYS_MAX):
                rotate_days = days
            else:
                ck.add(f"{where}.rotate_days", "expected a number of days, got "
                       + (f"{days}" if isinstance(days, int) and not isinstance(days, bool)
                          else _kind(days)),
                       f"use a whole number from 1 to {ROTATE_DAYS_MAX}, e.g. rotate_days = 90")
        declared[sid] = Secret(sid, file, ref, gen, rotate_days)
    files = _Files(ck)
    where_is = {s.id: files.resolve(s.file, f"secrets.{toml_key(s.id)}.file")
                for s in declared.values()}
    _shared_files(ck, declared, chosen_files, secrets_dir, where_is, files, path)

    hosts: dict[str, Host] = {}
    # With a nixos file, an id only it declares is checked once it is read (with_nixos).
    later: list[tuple[str, Problem]] | None = [] if nixos is not None else None
    raw_hosts = ck.table(doc.get("hosts", {}), "hosts") or {}
    for name, spec in raw_hosts.items():
        host = _host(ck, name, spec, declared, later, root)
        if host is not None:
            hosts[name] = host
    _templates_of_their_own(ck, path, declared, hosts)
    if signing_raw is not None and signing_raw.secret not in declared:
        ck.add("vaultpy.signing_secret", f"secret {signing_raw.secret!r} is not declared",
               f"declare [{key_path('secrets', signing_raw.secret)}] (its master holds the "
               "signing key: vaultpy signing-key makes both)")
    if signing_raw is not None:
        for h in hosts.values():        # (a host that held it could sign anything)
            if signing_raw.secret in h.needed:
                _holds_signing_key(ck, h, signing_raw.secret, raw_hosts[h.name])

    resolved_cache = _resolved(ck, cache_dir, "vaultpy.cache_dir")
    resolved_root = _resolved(ck, root, "")
    # Master files inside the cache: renc would delete them.  When the cache holds
    # secrets_dir or hosts.toml's folder (cache_dir = "secrets", "."), those in there
    # are cache_dir's mistake, said once, on its line; any other is its own `file =`'s.
    inside: dict[str, Path] = {}
    if resolved_cache is not None:
        for s in declared.values():
            r = where_is[s.id]
            if r is not None and r.is_relative_to(resolved_cache):
                inside[s.id] = r
    held: list[str] = []                    # what the cache must not contain
    covered = 0

    def take(folder: Path) -> int:
        """The masters in ``folder`` are cache_dir's to report: how many."""
        ours = [sid for sid, r in inside.items() if r.is_relative_to(folder)]
        for sid in ours:
            del inside[sid]
        return len(ours)

    if resolved_cache is not None and resolved_root is not None and (
            resolved_root.is_relative_to(resolved_cache)):
        held.append("hosts.toml")
        covered += take(resolved_root)
    if inside and resolved_cache is not None:
        resolved_secrets = _resolved(ck, secrets_dir, "vaultpy.secrets_dir")
        if resolved_secrets is not None and resolved_secrets.is_relative_to(resolved_cache):
            n = take(resolved_secrets)
            if n:
                held.append(f"secrets_dir ({display_path(secrets_dir)})")
                covered += n
    if held:
        found = f", with {covered} master file(s) renc must never prune" if covered else ""
        ck.add("vaultpy.cache_dir", f"the cache would contain {' and '.join(held)}{found}",
               'use a directory of its own, like "secrets/cache"')
    try:
        st = cache_dir.stat() if resolved_cache is not None else None
    except (FileNotFoundError, NotADirectoryError):
        st = None
    except OSError as exc:      # a parent it cannot search: one line, not a traceback
        ck.add("vaultpy.cache_dir", f"{_named(cache_dir)}: {exc.strerror}",
               "give this user access to it, or run as its owner")
        st = None
    if st is not None and not stat.S_ISDIR(st.st_mode):
        ck.add("vaultpy.cache_dir", f"{_named(cache_dir)} is not a directory",
               "point cache_dir at a directory (renc creates it if missing)")
    linked = _linked_below(root, cache_dir)
    if linked is not None:
        # git keeps symlinks: a clone's secrets/cache -> /somewhere would send renc's
        # writes, and its prune, there.
        ck.add("vaultpy.cache_dir", f"{_named(linked)} is a symlink: the cache lies in "
               "the repository, in directories of its own", "replace the link with a "
               "directory (or set cache_dir to where it leads)")
    for s in declared.values():
        if any(len(os.fsencode(part)) > _NAME_MAX for part in s.file.parts):
            ck.add(f"secrets.{toml_key(s.id)}.file", f"a name in this path is longer than "
                   f"{_NAME_MAX} bytes, more than a file system allows", "shorten it")
        if s.id in inside:
            ck.add(f"secrets.{toml_key(s.id)}.file", "master file lies inside the cache "
                   "directory (renc would delete it)", "move it out of cache_dir")
    if ck.problems:
        raise VaultpyError(_fitted(ck.problems))
    return Config(path=path, recipients=recipients, identity=identity,
                  secrets_dir=secrets_dir, cache_dir=cache_dir,
                  secrets=MappingProxyType(dict(sorted(declared.items()))),
                  hosts=MappingProxyType(dict(sorted(hosts.items()))), vault=vault,
                  nixos=nixos, later=tuple(later or ()), notes=tuple(ck.warnings),
                  signing=signing_raw)


def _holds_signing_key(ck: _Checker, h: Host, sid: str, raw: Mapping[str, Any]) -> None:
    """The problems of host ``h`` receiving secret ``sid``, the cache signing key: one
    for each place that gives it to the host (its secrets, a template's placeholder)."""
    why = "the cache signing key ([vaultpy] signing_secret): no host may hold it"
    where = key_path("hosts", h.name)
    if any(d.id == sid for d in h.deployments):
        if isinstance(raw.get("secrets"), list):
            ck.add(f"{where}.secrets", f"lists {sid!r}, {why}",
                   f"remove {sid!r} from {where}.secrets")
        else:
            table = key_path("hosts", h.name, "secrets", sid)
            ck.add(table, f"installs {sid!r}, {why}", f"remove the table [{table}]")
    for t in h.templates:
        if sid in t.refs:
            line, column = templates.position_of(t.content, sid)
            text_file, text_field = t.content_field
            ck.problems.append(Problem(
                text_file or ck.file, f"line {line} column {column}: the placeholder "
                f"for {sid!r} gives the host {why}", f"{where}.{text_field}",
                f"remove every placeholder for {sid!r} from the template"))


def _signing(ck: _Checker, settings: Mapping[str, Any]) -> Signing | None:
    """[vaultpy] signing_key and signing_secret: both, or neither."""
    given = [k for k in ("signing_key", "signing_secret") if k in settings]
    if not given:
        return None
    if len(given) == 1:
        other = "signing_secret" if given[0] == "signing_key" else "signing_key"
        ck.add(f"vaultpy.{other}", "missing: signing_key and signing_secret go together",
               "run vaultpy signing-key, which sets both (or remove the other one)")
        return None
    key, secret = settings["signing_key"], settings["signing_secret"]
    ok = True
    if not isinstance(key, str):
        ck.add("vaultpy.signing_key", f"expected a string, got {_kind(key)}",
               'write the public key in quotes: signing_key = "ssh-ed25519 AAAA…"')
        ok = False
    else:
        from vaultpy import age

        try:
            kind = key.split()[0] if key.split() else ""
            if kind != age.SSH_ED25519:
                raise ValueError("not an ssh-ed25519 public key (got "
                                 f"{shown(kind) if kind else 'nothing'})")
            key = age.normalize_recipient(key)
        except ValueError as exc:
            ck.add("vaultpy.signing_key", str(exc),
                   "use the ssh-ed25519 line vaultpy signing-key wrote")
            ok = False
    if not isinstance(secret, str):
        ck.add("vaultpy.signing_secret", f"expected a secret id, got {_kind(secret)}",
               'name the secret in quotes: signing_secret = "cache_signing"')
        ok = False
    elif not ck.ident(secret, "vaultpy.signing_secret", "secret id"):
        ok = False
    return Signing(key, secret) if ok else None


def _first_declared(message: str, lines: list[str]) -> tuple[str, int] | None:
    """For tomllib's "Cannot declare ('a', 'b') twice (at line N ...)": the table as
    written in TOML and the line of its first header, if a header declared it."""
    import ast
    import tomllib

    m = re.match(r"Cannot declare (\(.*\)) twice \(at line (\d+),", message)
    if m is None:
        return None
    try:
        keys = ast.literal_eval(m.group(1))
    except (ValueError, SyntaxError):
        return None
    if not (isinstance(keys, tuple) and all(isinstance(k, str) for k in keys)):
        return None
    inside = ""                         # the quotes of a multi-line string open here
    for number, line in enumerate(lines[: int(m.group(2)) - 1], start=1):
        header = line.strip()
        # A template's text may hold "[section]" lines: not headers (found in review).
        # (A rough scan: triple quotes in a comment can mislead it; the hint is then
        # only less precise.)
        opened = inside
        for quotes in ('"""', "'''"):
            if (not inside or inside == quotes) and line.count(quotes) % 2:
                inside = "" if inside else quotes
        if opened or not header.startswith("[") or header.startswith("[["):
            continue
        try:
            table: Any = tomllib.loads(header)
        except tomllib.TOMLDecodeError:
            continue
        path: list[str] = []
        while isinstance(table, dict) and len(table) == 1:
            (key, table), = table.items()
            path.append(key)
        if tuple(path) == keys:
            return key_path(*keys), number
    return None


_KEY_PART = r"""(?:[A-Za-z0-9_-]+|"(?:[^"\\\n]|\\.)*"|'[^'\n]*')"""
# A dotted key as TOML writes it, at the start of a key/value line or in a header.
_DOTTED_KEY = re.compile(rf"[ \t]*{_KEY_PART}(?:[ \t]*\.[ \t]*{_KEY_PART})*")
_OVERWRITE = re.compile(r"Cannot overwrite a value \(at (?:line (\d+), column (\d+)"
                        r"|end of document)\)")
_PROBE = "__vaultpy_table_probe__"      # a key no hosts.toml has (see _overwritten)


def _keys_of(written: str) -> tuple[str, ...] | None:
    """The keys of the dotted key ``written`` (as TOML writes it), or None."""
    import tomllib

    try:
        node: Any = tomllib.loads(f"{written} = 0")
    except tomllib.TOMLDecodeError:
        return None
    keys: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        (key, node), = node.items()
        keys.append(key)
    return tuple(keys)


def _toml_path(parts: Iterable[str | int]) -> str:
    """A path in a TOML document as a field names it: ``hosts.web1.pubkey``, with an
    array of tables' index as ``[i]``."""
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (("." if out else "") + toml_key(part))
    return out


def _overwritten(message: str, text: str) -> tuple[str, str] | None:
    """For tomllib's "Cannot overwrite a value (at line N, column M)": the key set again
    as a field names it, and the fix (None when it cannot be told).

    tomllib gives where the statement ends, not the key: the statement starts at the
    nearest line start above from which the text up to there is one key/value pair,
    and is read in the table the document up to there is in.  (On the error path only.)"""
    import tomllib

    m = _OVERWRITE.fullmatch(message)
    if m is None:
        return None
    src = text.replace("\r\n", "\n")       # what tomllib reads, and counts in
    lines = src.split("\n")
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line) + 1)
    end_line = int(m.group(1)) if m.group(1) else len(lines)
    end = (starts[end_line - 1] + int(m.group(2)) - 1) if m.group(2) else len(src)
    for number in range(end_line, max(0, end_line - 200), -1):
        line = lines[number - 1]
        begin = starts[number - 1] + len(line) - len(line.lstrip(" \t"))
        header = src.startswith("[", begin)
        if header and number != end_line:
            continue                # (text in a multi-line string: a header is one line)
        brackets = ("[[", "]]") if src.startswith("[[", begin) else ("[", "]")
        written = _DOTTED_KEY.match(src, begin + (len(brackets[0]) if header else 0))
        if written is None:
            continue
        if not header:
            try:
                tomllib.loads(src[begin:end])   # one whole key/value pair?
            except tomllib.TOMLDecodeError:
                continue
        keys = _keys_of(written.group().strip())
        if keys is None:
            return None
        try:
            doc = tomllib.loads(src[:begin] + ("" if header else f"\n{_PROBE} = 0\n"))
        except (tomllib.TOMLDecodeError, ValueError, RecursionError):
            return None
        table: tuple[str | int, ...] = () if header else _probe_path(doc) or ()
        node: Any = doc
        for part in table:
            node = node[part]
        field = _toml_path((*table, *keys))
        # The table the key goes into, and the key itself for a header: a table each.
        for i in range(len(keys) + (1 if header else 0)):
            if isinstance(node, list) and node and isinstance(node[-1], dict):
                node = node[-1]     # (a key goes into an array's last table, as tomllib's)
            if not isinstance(node, dict):
                return (field, f"{_toml_path((*table, *keys[:i]))} is {_kind(node)} "
                        f"already, not a table (line {number} "
                        + (f"declares {brackets[0]}{_toml_path(keys)}{brackets[1]}" if header
                           else "sets a key inside it") + "): remove or rename one of them")
            if i == len(keys):
                return None
            if keys[i] not in node:
                return None
            node = node[keys[i]]
        return (field, f"it is set twice (again at line {number}): remove one of them")
    return None


def _probe_path(doc: dict[str, Any]) -> tuple[str | int, ...] | None:
    """Where :data:`_PROBE` is in ``doc``: the table the text before it was in."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(doc, ())]
    while stack:
        node, at = stack.pop()
        if isinstance(node, dict):
            if _PROBE in node:
                node.pop(_PROBE)
                return at
            stack.extend((v, (*at, k)) for k, v in node.items() if isinstance(v, (dict, list)))
        elif isinstance(node, list):
            stack.extend((v, (*at, i)) for i, v in enumerate(node) if isinstance(v, (dict, list)))
    return None


def command_for(config: Path) -> str:
    """``vaultpy``, or ``vaultpy -C DIR`` when a command run from here would not find
    hosts.toml ``config`` by itself: the start of a command a message tells to run."""
    import shlex

    try:
        if os.path.samefile(find(Path.cwd()), config):
            return "vaultpy"
    except (VaultpyError, OSError):
        pass
    folder = display_path(config.parent)
    return "vaultpy -C " + ("~/" + shlex.quote(folder[2:]) if folder.startswith("~/")
                            else shlex.quote(folder))


def find(start: Path) -> Path:
    """hosts.toml in ``start`` or its nearest parent that has one (like git), never
    above the top of the git repository ``start`` is in: a hosts.toml further up is
    another repository's, which a command (an import, say) must not change."""
    here = start.resolve()
    for d in (here, *here.parents):
        candidate = d / FILENAME
        if candidate.is_file():
            return candidate
        if candidate.exists():          # not silently passed over for a parent's
            raise VaultpyError(Problem(display_path(candidate), "not a regular file", "",
                                       f"replace it with your {FILENAME}, or pass -C DIR"))
        if os.path.lexists(candidate):  # nor a broken symlink
            raise _leads_nowhere(candidate)
        if _creates_hosts_toml(d):
            raise VaultpyError(Problem(display_path(d / _WRITES), "a killed import's write "
                                       f"waits here to create {FILENAME}", "",
                                       "run the same vaultpy import again: it finishes "
                                       "the write first"))
        if os.path.lexists(d / ".git"):     # a repository's top (.git: a file in a worktree)
            raise VaultpyError(Problem(
                display_path(start), f"no {FILENAME} in this git repository (its top: "
                f"{display_path(d)})", "", "run vaultpy init, or pass -C DIR"))
    raise VaultpyError(Problem(display_path(start), f"no {FILENAME} here or in any parent "
                               "directory", "", "run vaultpy init, or pass -C DIR"))


_WRITES = ".vaultpy-writes"      # vaultpy/_internal/writes.py JOURNAL (it imports this)


def _creates_hosts_toml(folder: Path) -> bool:
    """Whether ``folder`` holds a write journal that renames hosts.toml into it: an
    import into a new repository, killed once its write was decided.  Until that write
    is finished there is no hosts.toml to find, and only the import can finish it."""
    try:
        raw = fsutil.read_regular(folder / _WRITES)[0]
    except OSError:
        return False
    from vaultpy._internal import writes  # (it imports this module)

    return any(final == folder / FILENAME for _tmp, final, _new in writes.parse(raw, folder)
               or ())


def load(repo: Path | None = None, *, nixos: bool = True) -> Config:
    """Find and load hosts.toml: ``repo`` may be a directory or the file itself.
    ``nixos=False``: without the hosts of its ``nixos`` file (:func:`with_nixos`)."""
    if repo is None:
        path = find(Path.cwd())
    elif not repo.exists():
        raise VaultpyError(Problem(display_path(repo), "no such file or directory", "",
                                   "fix -C/--repo: give the directory holding hosts.toml"))
    elif repo.is_dir():
        path = repo / FILENAME
        if not path.exists():
            if os.path.lexists(path):       # (it said "no hosts.toml in this directory")
                raise _leads_nowhere(path)
            raise VaultpyError(Problem(display_path(repo), f"no {FILENAME} in this directory",
                                       "", "run vaultpy init there, or fix -C"))
    else:
        path = repo
    try:
        data = fsutil.read_regular(path)[0]      # a FIFO must not hang the run
    except OSError as exc:
        hint = ("replace it with your hosts.toml" if exc.strerror == fsutil.NOT_REGULAR
                else "check the path and its permissions")
        raise VaultpyError(Problem(display_path(path), f"cannot read: {exc.strerror}", "",
                                   hint)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise VaultpyError(Problem(display_path(path), "not UTF-8 text", "",
                                   "save it as UTF-8" if path.suffix == ".toml" else
                                   "-C/--repo takes the repository's directory or its "
                                   f"{FILENAME}: fix -C")) from None
    cfg = parse(text, path.absolute())
    return with_nixos(cfg) if nixos else cfg


def reparse(text: str, path: Path) -> Config:
    """:func:`parse`, with the hosts of hosts.toml's ``nixos`` merged in, as :func:`load`
    gives them: what a command that edits hosts.toml must compare and renc with."""
    return with_nixos(parse(text, path))


def with_nixos(cfg: Config, *, first: str | None = None) -> Config:
    """``cfg`` with the hosts and secrets its ``nixos`` file declares (one Nix
    evaluation: vaultpy/nixhosts.py).  ``first``: a secret id a command was given,
    refused before anything hosts.toml's hosts use and nothing declares."""
    if cfg.nixos is None:
        return cfg
    from vaultpy import nixhosts

    merged = nixhosts.merge(cfg, nixhosts.evaluate(cfg))
    if first is not None:
        merged.secret(first)
    unknown = [problem for sid, problem in cfg.later if sid not in merged.secrets]
    if unknown:
        raise VaultpyError(_fitted(unknown))
    return merged


def _leads_nowhere(path: Path) -> VaultpyError:
    return VaultpyError(Problem(display_path(path), "a symlink that leads nowhere (its "
                                "target is missing, or it is a loop)", "",
                                f"point it at your {FILENAME}, or remove it"))
