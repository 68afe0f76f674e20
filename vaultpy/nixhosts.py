"""Hosts declared in NixOS configurations: hosts.toml's ``[vaultpy] nixos``.

agenix-rekey and vaultix read what each host needs from the flake's
``nixosConfigurations``: a secret declared once, in the host's configuration, is
re-encrypted for that host.  So does vaultpy, with

    [vaultpy]
    nixos = "nixos.nix"     # evaluates to an attribute set of NixOS configurations

(for a flake: ``(builtins.getFlake "git+file://${toString ./.}").nixosConfigurations``:
``git+file`` copies what git tracks; a plain path would copy untracked files, keys
included, into the world-readable store).
:func:`evaluate` runs ``nix-instantiate`` once and reads, from every configuration that
imports vaultpy's module and declares a secret, ``config.vaultpy.renc``: the host's name
and public keys, its cache directory and each secret's master file.  :func:`merge` adds
those hosts and secrets to hosts.toml's, refusing every disagreement between the two.

A path evaluated in a flake names the flake's copy in the Nix store
(``/nix/store/<hash>-source/secrets/db.age``): it is taken back to the repository by
its path under that copy (``secrets/db.age``), from hosts.toml's folder up to the top of
its git repository.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any

from vaultpy import output
from vaultpy._internal import fsutil
from vaultpy.errors import Problem, VaultpyError, display_path, key_path, nix_attr
from vaultpy.model import (
    ID_MAX,
    Config,
    Deployment,
    Host,
    Secret,
    Template,
    _Checker,
    _recipients,
)

NIX_INSTANTIATE = "nix-instantiate"

# Every configuration that imports the module and declares a secret: attribute name ->
# config.vaultpy.renc (nix/module.nix).  A configuration without the module is passed over.
_EXPR = """
let
  configs = import (/. + %s);
  # A configuration importing a hosts.toml that does not list it yet (a host to add
  # with `vaultpy host add`) would throw: it is passed over instead.
  listed = v: v.hostsToml == null || ((builtins.fromTOML (builtins.readFile v.hostsToml)).hosts
    or { }) ? ${v.settings.hostName};
  notListed = v: "not-listed:" + v.settings.hostName;
  # The record, or why there is none (merge says what a string means).
  record = c:
    if !(builtins.isAttrs c && c ? config && builtins.isAttrs c.config) then "not-config"
    else if !(c.config ? vaultpy) then "no-module"
    else if !(c.config.vaultpy ? renc) then "old-module"
    else if !(listed c.config.vaultpy) then notListed c.config.vaultpy
    else if c.config.vaultpy.secrets == { } then "no-secrets"
    else c.config.vaultpy.renc;
in
if !(builtins.isAttrs configs) then
  throw "it is a ${builtins.typeOf configs}, not an attribute set of NixOS configurations"
else
  builtins.mapAttrs (_: record) configs
"""

# config.vaultpy.renc's fields (nix/module.nix)
_RECORD = frozenset({"host", "recipients", "cacheRoot", "cacheRootIsPath", "secrets",
                     "installed", "templates", "hostsToml", "keyFromHostsToml"})
# What the expression says of a configuration that imports the module but gives no record.
_USES = frozenset({"no-secrets", "old-module"})
# A store path; under another root too (a chroot store: --store /some/root).
_STORE = re.compile(r"(?:/.*)?/nix/store/[0-9a-df-np-sv-z]{32}-[^/]+(?:/(?P<rest>.*))?")
_ERROR_LINES = 3


def _nix_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("${", "\\${") + '"'


def evaluate(cfg: Config) -> dict[str, Any]:
    """``config.vaultpy.renc`` of each NixOS configuration the ``nixos`` file holds."""
    assert cfg.nixos is not None
    where, shown = display_path(cfg.path), display_path(cfg.nixos)
    if not cfg.nixos.exists():         # (a directory: its default.nix)
        raise VaultpyError(Problem(where, f"{shown}: no such file", "vaultpy.nixos",
                                   "give the Nix file that evaluates to your NixOS "
                                   "configurations, or remove nixos"))
    expr = _EXPR % _nix_string(str(cfg.nixos.absolute()))
    cmd = [NIX_INSTANTIATE, "--eval", "--strict", "--json",
           # builtins.getFlake, for a flake's nixosConfigurations
           "--option", "extra-experimental-features", "nix-command flakes", "-E", expr]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, errors="replace",
                              cwd=cfg.root, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise VaultpyError(Problem(where, f"{NIX_INSTANTIATE} is not installed, and nixos "
                                   f"= {json.dumps(str(shown))} needs it", "vaultpy.nixos",
                                   "install Nix (Debian: apt install nix-bin), or remove "
                                   "nixos")) from None
    except OSError as exc:
        raise VaultpyError(Problem(where, f"cannot run {NIX_INSTANTIATE}: {exc.strerror}",
                                   "vaultpy.nixos", "check your Nix installation")) from None
    if proc.returncode != 0:
        message = _nix_error(proc.stderr)
        hint = "fix that, then run again"
        for sid, _problem in cfg.later:    # (a hosts.toml host's id only Nix declares)
            if f"secret {sid} " in message or f"secret id '{sid}'" in message:
                hint = (f"declare [{key_path('secrets', sid)}] in hosts.toml (with its file): a "
                        "configuration that imports hosts.toml reads its master from there")
                break
        raise VaultpyError(Problem(shown, "the NixOS configurations did not evaluate: "
                                   + message, "vaultpy.nixos", hint))
    try:
        data = json.loads(proc.stdout)
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise VaultpyError(Problem(shown, f"{NIX_INSTANTIATE} printed no attribute set "
                                   "of hosts", "vaultpy.nixos",
                                   "check your Nix installation (nix-instantiate --version)"))
    return data


def _nix_error(stderr: str) -> str:
    """Nix's own message: the last ``error:`` line (a throw's text), in one line."""
    lines = [line.strip() for line in stderr.splitlines()
             if not line.strip().startswith("(use '--show-trace'")]
    at = max((i for i, line in enumerate(lines) if line.startswith("error:")), default=-1)
    if at < 0:
        text = " ".join(line for line in lines if line) or "no message"
    else:
        first = lines[at].removeprefix("error:").strip()
        after = lines[at + 1:]
        rest = [line for line in after[:_ERROR_LINES] if line
                and not line.startswith(("…", "at ", "|")) and not line[:1].isdigit()]
        where = next((line.removeprefix("at ").rstrip(":") for line in after
                      if line.startswith("at /")), "")
        text = " ".join([first, *rest] if first else rest) or "no message"
        if where:
            text += f" (at {where})"
    return text if len(text) <= 300 else text[:297] + "..."


def _bases(cfg: Config) -> Iterator[Path]:
    """hosts.toml's folder, then each parent up to the top of its git repository."""
    top = fsutil.git_top(cfg.root)
    for d in (cfg.root, *cfg.root.parents):
        yield d
        if d == top:
            return


def _local(cfg: Config, text: str, *, exists: bool = True) -> list[Path]:
    """Where a path the evaluation printed is in the repository: itself, or for one in
    the Nix store, each place its path under the store copy may be (the first existing
    one, with ``exists``)."""
    m = _STORE.fullmatch(text)
    if m is None:
        return [Path(os.path.normpath(text))]
    rest = m.group("rest") or ""
    places = [Path(os.path.normpath(d / rest)) for d in _bases(cfg)]
    if not exists:
        return places
    found = [p for p in places if os.path.lexists(p)]
    copy = _bytes(text)
    if copy is not None:            # the file the flake sees: the one with its bytes
        return [p for p in found if _bytes(str(p)) == copy][:1]
    return found[:1]


def _bytes(path: str) -> bytes | None:
    """A regular file's bytes (a FIFO where a master should be would block a read)."""
    try:
        return fsutil.read_regular(path)[0]
    except OSError:
        return None


def _same(a: Path, b: Path) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def merge(cfg: Config, data: Mapping[str, Any]) -> Config:
    """hosts.toml's hosts and secrets, with those of the NixOS configurations ``data``
    (:func:`evaluate`).  A host or secret both declare must agree: the same keys, the
    same master file."""
    assert cfg.nixos is not None
    shown = display_path(cfg.nixos)
    ck = _Checker(cfg.nixos)
    secrets = dict(cfg.secrets)
    hosts = dict(cfg.hosts)
    from_nix: dict[str, str] = {}           # host -> the configuration declaring it
    owner = {os.path.realpath(s.file): s.id for s in cfg.secrets.values()}
    cache = os.path.realpath(cfg.cache_dir)
    notes: list[Problem] = []
    # A master not written yet goes to the git top (the flake's root, as a rule),
    # outside git beside hosts.toml.
    in_git = fsutil.git_top(cfg.root) is not None
    deferred = {sid for sid, _problem in cfg.later}     # (model.parse: ids only Nix has)
    if not any(isinstance(rec, dict) or rec in _USES or str(rec).startswith("not-listed:")
               for rec in data.values()):
        ck.add("vaultpy.nixos", "no configuration in it imports vaultpy's module ("
               + (", ".join(sorted(data)) or "it is empty") + ")", "give the file that "
               "evaluates to your NixOS configurations (a flake's nixosConfigurations)")
    for attr, rec in sorted(data.items()):
        at = f"nixosConfigurations.{nix_attr(attr)}: vaultpy"
        if rec == "not-config":
            ck.add(f"nixosConfigurations.{nix_attr(attr)}", "not a NixOS configuration (no config "
                   "attribute)", "the file must evaluate to { <name> = <nixosSystem>; }, "
                   "as a flake's nixosConfigurations")
            continue
        if isinstance(rec, str) and rec.startswith("not-listed:"):
            missing = rec.partition(":")[2]
            notes.append(Problem(shown, "imports hosts.toml, which has no "
                                 f"[{key_path('hosts', missing)}]: nothing is written for it",
                                 f"nixosConfigurations.{nix_attr(attr)}",
                                 f"vaultpy host add {missing} (or fix its host name)"))
            continue
        if rec in ("no-module", "no-secrets"):
            continue
        if not isinstance(rec, dict) or not rec.keys() >= _RECORD:
            ck.add(at, "vaultpy's module there is not this version's (no renc record)",
                   "use the module of the vaultpy you run (the flake's nixosModules)")
            continue
        name = rec["host"]
        if not ck.ident(name, f"{at}.settings.hostName", "host name"):
            continue
        if rec["recipients"] is None:
            ck.add(f"{at}.settings.hostPubkey", "not set", "give the host's "
                   "/etc/ssh/ssh_host_ed25519_key.pub line: renc encrypts to it")
            continue
        keys = _recipients(ck, rec["recipients"], f"{at}.settings.hostPubkey", host=True)
        if not keys:
            continue
        root = rec["cacheRoot"]
        if root is None:
            ck.add(f"{at}.settings.cacheRoot", "not set", "set it to the repository's "
                   f"cache directory, {display_path(cfg.cache_dir)}, where renc writes")
            continue
        if not rec["cacheRootIsPath"]:
            ck.add(f"{at}.settings.cacheRoot", f"is the string {json.dumps(root)}, not a "
                   "Nix path (the module refuses it)", "write a path: ./secrets/cache, no "
                   "quotes")
            continue
        if not any(_same(p, cfg.cache_dir) for p in _local(cfg, root, exists=False)):
            ck.add(f"{at}.settings.cacheRoot", f"is {root}, not the cache_dir renc writes "
                   f"({display_path(cfg.cache_dir)})", "point both at the same directory")
            continue
        ids: list[str] = []
        for sid, file in sorted(rec["secrets"].items()):
            where = f"{at}.secrets.{nix_attr(sid)}.file"
            if not output.ID_RE.fullmatch(sid) or len(sid) > ID_MAX:
                ck.add(f"{at}.secrets", f"secret id {sid!r} is invalid", "use letters, "
                       f"digits, _ . - (starting with a letter or digit, at most {ID_MAX})")
                continue
            m = _STORE.fullmatch(file)
            if m is not None and not m.group("rest"):
                ck.add(where, f"{file} is a store path of its own, not a file of the "
                       "repository", "write the path unquoted (./secrets/<id>.age)")
                continue
            places = _local(cfg, file)
            if m is not None and not places:
                tried = _local(cfg, file, exists=False)
                if any(os.path.lexists(p) for p in tried):
                    ck.add(where, f"{display_path(tried[0])} differs from the flake's copy "
                           f"({file})", "git add it (and commit): the flake sees what git "
                           "tracks")
                    continue
                places = [tried[-1] if in_git else tried[0]]
            path = places[0]
            # (a copy not on disk - lazy trees, a remote store - cannot tell: trusted)
            if (m is not None and os.path.isdir(file[:m.start("rest") - 1])
                    and not os.path.lexists(file) and os.path.lexists(path)):
                ck.add(where, f"{display_path(path)} is not in the flake's copy of the "
                       f"repository ({file})", "git add it: a flake sees only the files "
                       "git tracks")
                continue
            real = os.path.realpath(path)
            known = secrets.get(sid)
            if known is not None and not _same(known.file, path):
                origin = ("hosts.toml" if sid in cfg.secrets else "another configuration")
                ck.add(where, f"is {display_path(path)}, but {origin} gives secret {sid!r} "
                       f"the master file {display_path(known.file)}",
                       "use the same file for the same id, or another id")
                continue
            other = owner.setdefault(real, sid)
            if other != sid:
                ck.add(where, f"{display_path(path)} is already the master file of secret "
                       f"{other!r}", "give each secret its own master file")
                continue
            if real == cache or real.startswith(cache + os.sep):
                ck.add(where, "master file lies inside the cache directory (renc would "
                       "delete it)", "move it out of cache_dir")
                continue
            secrets.setdefault(sid, Secret(sid, path))
            ids.append(sid)
        if name in from_nix:
            ck.add(f"{at}.settings.hostName", f"{name!r} is also nixosConfigurations."
                   f"{from_nix[name]}'s host name", "give each host its own name")
            continue
        from_nix[name] = attr
        installed: dict[str, str] = rec["installed"]      # id -> its file's name
        # The module's templates, by name: the secrets each uses (its text is the
        # module's to render: not needed here).
        tmpls = tuple(Template(t, "", False, tuple(sorted(set(refs))))
                      for t, refs in sorted(rec["templates"].items()))
        used = {sid for t in tmpls for sid in t.refs}
        undeclared = [(t.name, sid) for t in tmpls for sid in t.refs
                      if sid not in rec["secrets"]]
        for tname, sid in undeclared:   # (the module's own assertion says the same)
            ck.add(f"{at}.templates.{nix_attr(tname)}", f"template {tname!r} uses secret "
                   f"{sid!r}, which this configuration does not declare",
                   f"declare vaultpy.secrets.{nix_attr(sid)} (or fix the placeholder)")
        if undeclared:
            continue
        known_host = hosts.get(name)
        imported = rec["hostsToml"] is not None and any(
            _same(p, cfg.path) for p in _local(cfg, rec["hostsToml"], exists=False))
        if known_host is not None and known_host.user:
            # A person's entry is no host's: the two share a name, not a cache directory.
            ck.add(f"{at}.settings.hostName", f"{name!r} is a person's entry in hosts.toml "
                   f"([{key_path('hosts', name)}], user = true), not this host's: both would write "
                   f"{display_path(cfg.cache_dir / name)}",
                   "give the host its own name (vaultpy.settings.hostName), or the person's "
                   "entry another")
            continue
        if known_host is not None and not imported:
            # Its profile is the module's: hosts.toml's table would never be installed.
            ck.add(f"{at}.hostsToml", f"host {name!r} is also declared in hosts.toml "
                   f"([{key_path('hosts', name)}]), which this configuration does not import: "
                   "that table's secrets and templates would never be installed",
                   "set vaultpy.hostsToml = ./hosts.toml in the configuration, or remove "
                   f"[{key_path('hosts', name)}] from hosts.toml")
            continue
        if known_host is None:
            hosts[name] = Host(name, keys, tuple(Deployment(sid, installed[sid])
                                                 for sid in ids if sid in installed), tmpls,
                               nixos=attr, received=tuple(
                                   sid for sid in ids if sid not in installed.keys() | used))
            continue
        # Imported from hosts.toml: an id it gives the host that only Nix declares has
        # no master file the module's import can find.
        for sid in known_host.needed:
            if sid in deferred:
                ck.add(f"{at}.hostsToml", f"hosts.toml gives host {name!r} secret {sid!r}, "
                       "which only a configuration declares: the module's import of "
                       "hosts.toml cannot find its master file",
                       f"declare [{key_path('secrets', sid)}] in hosts.toml (with its file)")
        # An edit of hosts.toml (host rotate) is read from the new text here, and by
        # the module at build time; the evaluation read the file still on disk.
        if not rec["keyFromHostsToml"] and list(known_host.recipients) != list(keys):
            ck.add(f"{at}.settings.hostPubkey",
                   f"differs from [{key_path('hosts', name)}] pubkey in hosts.toml",
                   "give the host the same key(s), in the same order, in both")
            continue
        new = [sid for sid in ids if sid not in known_host.needed]
        deployments = known_host.deployments + tuple(
            Deployment(sid, installed[sid]) for sid in new if sid in installed)
        # The module's template wins over hosts.toml's of the same name (it imports
        # hosts.toml's with mkDefault): its secrets are the ones the host needs.
        mine = {t.name: t for t in tmpls}
        templates = tuple(mine.pop(t.name, t) for t in known_host.templates) + tuple(
            mine.values())
        covered = {d.id for d in deployments} | {r for t in templates for r in t.refs}
        hosts[name] = Host(name, known_host.recipients, deployments, templates,
                           known_host.identities, nixos=attr,
                           received=tuple(sid for sid in ids if sid not in covered))
    if ck.problems:
        raise VaultpyError([Problem(shown, p.message, p.field, p.hint) for p in ck.problems])
    return Config(path=cfg.path, recipients=cfg.recipients, identity=cfg.identity,
                  secrets_dir=cfg.secrets_dir, cache_dir=cfg.cache_dir,
                  secrets=MappingProxyType(dict(sorted(secrets.items()))),
                  hosts=MappingProxyType(dict(sorted(hosts.items()))), vault=cfg.vault,
                  nixos=cfg.nixos, notes=tuple(notes))
