"""CLI commands for key recovery and migration, registered on vaultpy.cli.app:

* ``vaultpy identity split|combine`` — Shamir (SLIP-39) shares of the master identity
  (:mod:`vaultpy.shamir`);
* ``vaultpy import agenix|vaultix|sops`` — migrate another tool's secrets
  (:mod:`vaultpy.migrate`, :mod:`vaultpy.migrate_sops`).

Shares and the rebuilt secret key go to stdout or to files only when asked;
everything else (progress, hints) goes to stderr.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from vaultpy.cli import (
    IdentityOpt,
    JsonOpt,
    RepoOpt,
    _config,
    _emit_json,
    _err,
    _Globals,
    _identity,
    _out,
    _tilde,
    app,
)
from vaultpy.errors import Problem, VaultpyError, display_path

identity_app = typer.Typer(
    name="identity", no_args_is_help=True,
    help="Back up the master identity as Shamir shares (SLIP-39) and rebuild it.")
import_app = typer.Typer(
    name="import", no_args_is_help=True,
    help="Migrate secrets from agenix, vaultix or sops-nix into this repository.")
app.add_typer(identity_app, name="identity")
app.add_typer(import_app, name="import")


def _master_identity_line(identity: list[Path], repo: Path | None) -> str:
    """The one X25519 identity to split: -i FILE, shares in memory, or the repo's."""
    from vaultpy import age, identities

    explicit = _identity(identity)
    if explicit:
        keys = age.load_identities(explicit)
    elif identities._in_memory:
        keys = list(identities._in_memory)
    else:
        keys = identities.load(_config(repo))
    sources = ", ".join(sorted({k.source for k in keys}))
    if len(keys) != 1:
        raise VaultpyError(Problem(sources, f"holds {len(keys)} identities; split one key "
                                   "at a time", "", "put the master key alone in a file "
                                   "and pass it with -i FILE"))
    key = keys[0]
    if key.kind != "x25519":
        raise VaultpyError(Problem(key.source, f"not an X25519 identity ({key.kind}): it "
                                   "cannot be split",
                                   "", "only age X25519 identities (AGE-SECRET-KEY-1…, "
                                   "age-keygen) can be split into shares"))
    return str(key.key)


@identity_app.command("split")
def split(
    threshold: Annotated[int, typer.Option(
        "--threshold", "-t", metavar="K", help="Shares needed to rebuild the key.")],
    shares: Annotated[int, typer.Option(
        "--shares", "-n", metavar="N", help="Shares to make (at most 16).")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="DIR", help="Write one file per share here (mode 0600; "
        "existing files are never overwritten). Default: print them.")] = None,
    identity: IdentityOpt = None,
    repo: RepoOpt = None,
) -> None:
    """Split the master identity into N SLIP-39 mnemonic shares, any K of which rebuild it."""
    from vaultpy import shamir

    line = _master_identity_line(identity or [], repo)
    made = shamir.split(line, threshold, shares)
    public = shamir.public_key(line)
    if output is not None:
        files = shamir.write_shares(made, public, output)
        for f in files:
            _err().print(f"wrote {f}", markup=False)
    else:
        for s in made:
            sys.stdout.write(shamir.render_share(s, public) + "\n")
        sys.stdout.flush()
    how = "(vaultpy identity combine, or vaultpy --from-shares DIR COMMAND)"
    if shares == 1:             # a mnemonic copy of the key, say for paper: not a split
        _err().print(f"1 share of {public}: it alone rebuilds the key {how}, so it is the "
                     "key written as words: keep it as you would the key (for a split, "
                     "--shares 3 --threshold 2, say)", markup=False)
        return
    _err().print(f"{shares} shares of {public}; any {threshold} rebuild it {how}. Give "
                 "each share to a different holder, then keep the identity file offline or "
                 "destroy it.", markup=False)


@identity_app.command("combine")
def combine(
    shares: Annotated[list[str] | None, typer.Argument(
        metavar="[DIR | FILE... | prompt]",
        help="A directory of share files, the files, or 'prompt' (default) to type them.")
    ] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE", help="Write the rebuilt identity here (mode 0600, "
        "never overwriting). Without it the secret key is never shown.")] = None,
    json_out: JsonOpt = False,
    repo: RepoOpt = None,
) -> None:
    """Rebuild the master identity from shares and print its public key."""
    from vaultpy import shamir

    if not shares or shares in (["prompt"], ["-"]):
        line = shamir.combine_from_prompt()
    else:
        line = shamir.combine_files([Path(s) for s in shares])
    public = shamir.public_key(line)
    listed = _listed_in_repo(public, repo)
    if output is not None:
        shamir.write_identity_file(output, line)
        _err().print(f"wrote {output} (mode 0600)", markup=False)
    if json_out:
        _emit_json({"public_key": public, "recipient_of_repo": listed,
                    "output": str(output) if output else None})
    else:
        _out().print(public, markup=False)
    if listed is True:
        _err().print("it is a [vaultpy] recipient of hosts.toml", markup=False)
    elif listed is False:
        _err().print("warning: it is NOT a [vaultpy] recipient of hosts.toml", markup=False)
    if output is None:
        _err().print("the key was not written anywhere; use --output FILE to write it, or "
                     "vaultpy --from-shares DIR COMMAND to use it from memory", markup=False)


def _listed_in_repo(public: str, repo: Path | None) -> bool | None:
    """Whether ``public`` is a master recipient of the repository (None: no repository)."""
    try:
        cfg = _config(repo)
    except VaultpyError:
        return None
    return public in cfg.recipients


# --------------------------------------------------------------------------- import

RecipientOpt = Annotated[list[str] | None, typer.Option(
    "--recipient", "-r", metavar="KEY", help="Master recipient for the imported secrets "
    "(repeatable; default: hosts.toml's, else as the command's description says).")]
ForceOpt = Annotated[bool, typer.Option(
    "--force", help="Replace master files that exist but are not declared in hosts.toml "
    "(put there by hand, or left by an older vaultpy's interrupted import).")]
OldIdentityOpt = Annotated[list[Path] | None, typer.Option(
    "-i", "--identity", metavar="FILE", callback=_tilde, help="The identity the old tool "
    "decrypted with (repeatable; default: ~/.ssh/id_ed25519 and ~/.ssh/id_rsa, those that exist: "
    "agenix's defaults).")]
DryRunOpt = Annotated[bool, typer.Option(
    "--dry-run", help="Show the hosts.toml that would be written; write nothing.")]
MastersDirOpt = Annotated[str | None, typer.Option(
    "--masters-dir", metavar="DIR", help="Where a new hosts.toml keeps vaultpy's masters: "
    "its secrets_dir, a folder relative to hosts.toml's (default: secrets), for when the "
    "old tool's files are in secrets/.")]


def _target(repo: Path | None) -> Path:
    """Where to import: -C DIR, else the nearest hosts.toml upwards, else the current
    directory (a new hosts.toml)."""
    from vaultpy import model

    given = repo or _Globals.repo
    if given is not None:
        return given.parent if given.is_file() else given
    try:
        return model.find(Path.cwd()).parent
    except VaultpyError:
        return Path.cwd()


def _report(result: object, dry_run: bool) -> None:
    from vaultpy.migrate import ImportResult

    assert isinstance(result, ImportResult)
    for w in result.warnings:
        _err().print(f"warning: {w}", markup=False)
    if dry_run:
        sys.stdout.write(result.hosts_toml)
        return
    import shlex

    from vaultpy import model

    vaultpy = model.command_for(result.path)
    renc = f"{vaultpy} renc"
    check = f"{vaultpy} check"
    if result.master_identity is not None:      # the masters are not opened by default
        key = shlex.quote(str(result.master_identity))
        renc += f" -i {key}"
        # Every later command needs it as well (edit, renc, rekey): how to say it once.
        # (Before the last line, which stays the commands to run next.)
        _err().print(f"the masters open with {key}: to drop -i from every later command, "
                     f"set identity = \"{result.master_identity}\" under [vaultpy] in "
                     f"{result.path.name}, or VAULTPY_IDENTITY={key}", markup=False)
    else:                           # renc alone finds none: say which flag it needs
        from vaultpy import identities

        try:
            identities.identity_paths(model.load(result.path))
        except (VaultpyError, OSError):
            renc += " -i <your master identity>"
    # Named as from here ("../hosts.toml" for -C .., not ".../secrets/../hosts.toml").
    shown = display_path(Path(os.path.realpath(result.path.parent)) / result.path.name)
    if not result.hosts:            # sops: which host gets what is in the NixOS config
        _err().print(f"imported {len(result.secrets)} secret(s) into {shown}; next: "
                     "list them under each host that needs them ([hosts.NAME] secrets = "
                     f"[...]), then {renc} && {check}", markup=False)
        return
    _err().print(f"imported {len(result.secrets)} secret(s) for {len(result.hosts)} host(s) "
                 f"into {shown}; next: {renc} && {check}", markup=False)


@import_app.command("agenix")
def import_agenix(
    secrets_nix: Annotated[Path | None, typer.Argument(
        metavar="SECRETS_NIX", help="agenix's rules file (default: $RULES, else "
        "./secrets.nix, as agenix).  Its names are read from the current directory when "
        "RULES names it, else from the file's own directory.", show_default=False)] = None,
    hosts_from: Annotated[Path | None, typer.Option(
        "--hosts-from", metavar="FILE", help="Host names for host keys: a .nix, .json or "
        ".toml file mapping NAME to a public key (or a list of keys).")] = None,
    host_key: Annotated[list[str] | None, typer.Option(
        "--host-key", metavar="NAME=KEY", help="A host and its public key (repeatable).")
    ] = None,
    hosts_by_comment: Annotated[bool, typer.Option(
        "--hosts-by-comment", help="Also treat ssh keys whose comment is root@NAME as host "
        "NAME.")] = False,
    recipient: RecipientOpt = None,
    identity: OldIdentityOpt = None,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    masters_dir: MastersDirOpt = None,
    repo: RepoOpt = None,
) -> None:
    """Import agenix secrets: hosts from host keys, masters re-encrypted.

    Master recipients: hosts.toml's (a --recipient must then name the same keys),
    else --recipient, else the keys of secrets.nix that are not host keys."""
    from vaultpy import migrate

    result = migrate.import_agenix(
        secrets_nix, _target(repo), hosts_from=hosts_from, host_keys=host_key or [],
        hosts_by_comment=hosts_by_comment, recipients=recipient or [],
        identity_files=_identity(identity), force=force, dry_run=dry_run,
        masters_dir=masters_dir, rules_env=os.environ.get("RULES"))
    _report(result, dry_run)


@import_app.command("vaultix")
def import_vaultix(
    profiles: Annotated[list[Path], typer.Argument(
        metavar="PROFILE.json...", help="vaultix profiles, one per host (see "
        "docs/migration.md for how to get them).")],
    secrets_dir: Annotated[Path | None, typer.Option(
        "--secrets-dir", metavar="DIR", help="Where the .age files are when the profile's "
        "/nix/store paths are not on this machine (for …-source/secrets/x.age: the "
        "flake's root, or its secrets directory).")] = None,
    recipient: RecipientOpt = None,
    identity: OldIdentityOpt = None,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    masters_dir: MastersDirOpt = None,
    repo: RepoOpt = None,
) -> None:
    """Import vaultix secrets and templates, masters re-encrypted.

    Master recipients: hosts.toml's (a --recipient must then name the same keys),
    else --recipient, else the public key of the X25519 identity given with -i."""
    from vaultpy import migrate

    result = migrate.import_vaultix(
        profiles, _target(repo), secrets_dir=secrets_dir, recipients=recipient or [],
        identity_files=_identity(identity), force=force, dry_run=dry_run,
        masters_dir=masters_dir)
    _report(result, dry_run)


@import_app.command("sops")
def import_sops(
    files: Annotated[list[Path], typer.Argument(
        metavar="FILE...", help="sops-encrypted files (sops-nix's sopsFile), decrypted "
        "by `sops --decrypt` with your own sops keys.")],
    key: Annotated[list[str] | None, typer.Option(
        "--key", metavar="KEY[=ID]", help="Import only this sops-nix key (a/b: b inside "
        "a), as secret ID (default: the key with '/' as '_'); repeatable.")] = None,
    whole: Annotated[bool, typer.Option(
        "--whole", help="Import each YAML/JSON file whole, as one secret named after the "
        "file (sops-nix's key = \"\"); dotenv, INI and binary files always are.")] = False,
    prefix: Annotated[str, typer.Option(
        "--prefix", metavar="TEXT", help="Put TEXT before every id made of a key or a file "
        "name (--prefix web1_ for hosts/web1/secrets.yaml: each host's file with the same "
        "keys, imported one at a time).")] = "",
    fmt: Annotated[str | None, typer.Option(
        "--format", metavar="FORMAT", help="yaml, json, dotenv, ini or binary (default: "
        "from the extension, as sops).")] = None,
    recipient: RecipientOpt = None,
    identity: Annotated[list[Path] | None, typer.Option(
        "-i", "--identity", metavar="FILE", callback=_tilde, help="Your age identity: its "
        "public key "
        "becomes the master recipient when there is no hosts.toml and no --recipient "
        "(repeatable).")] = None,
    force: ForceOpt = False,
    dry_run: DryRunOpt = False,
    masters_dir: MastersDirOpt = None,
    repo: RepoOpt = None,
) -> None:
    """Import sops-nix secrets: each string value (or file) becomes a master.

    Which hosts get them is in your NixOS configuration: list them under
    the hosts in hosts.toml afterwards.  Master recipients: hosts.toml's (a
    --recipient must then name the same keys), else --recipient, else the public
    key of the X25519 identity -i."""
    from vaultpy import migrate_sops

    result = migrate_sops.import_sops(
        files, _target(repo), fmt=fmt, keys=key or [], whole=whole, prefix=prefix,
        recipients=recipient or [], identity_files=_identity(identity), force=force,
        dry_run=dry_run, masters_dir=masters_dir)
    _report(result, dry_run)
