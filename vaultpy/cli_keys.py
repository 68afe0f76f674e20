"""CLI commands for keys and values: ``host add|rm|rotate``, ``generate``, ``rotate``,
``doctor`` — registered on :data:`vaultpy.cli.app`.

The libraries are :mod:`vaultpy.onboard`, :mod:`vaultpy.generate` and
:mod:`vaultpy.doctor`; these commands parse options and print.  Results go to stdout
with ``--json`` (one JSON document), messages and hints to stderr; secret values are
never printed.
"""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from vaultpy.cli import (
    IdentityOpt,
    JsonOpt,
    RepoOpt,
    _config_for,
    _emit_json,
    _err,
    _exit,
    _Globals,
    _identity,
    _json_errors,
    _out,
    _print_problems,
    app,
    complete_generated_ids,
    complete_hosts,
    complete_id_list,
    complete_ids,
)
from vaultpy.errors import VaultpyError

if os.environ.get("NO_COLOR") and (sys.stdout.isatty() or sys.stderr.isatty()):
    # rich drops colours under NO_COLOR but keeps bold/dim; typer's usage-error and help
    # panels would still carry escape codes on a terminal.  No colour system: plain text.
    # (Only on a terminal: elsewhere rich writes no escape codes, and importing
    # rich_utils costs 80 ms of every command.)
    from typer import rich_utils

    rich_utils.COLOR_SYSTEM = None


def _say(text: str) -> None:
    _err().print(text, markup=False)


# --------------------------------------------------------------------------- host

host_app = typer.Typer(
    name="host", no_args_is_help=True,
    help="Add, remove or re-key a host in hosts.toml (comments and layout kept), then "
         "renc it.")
app.add_typer(host_app, name="host")

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The host's name in hosts.toml.")]
KnownNameArg = Annotated[str, typer.Argument(metavar="NAME", help="The host's name in hosts.toml.",
                                             autocompletion=complete_hosts)]
PubkeyOpt = Annotated[str | None, typer.Option(
    "--pubkey", metavar="KEY", help='The host key line, e.g. "ssh-ed25519 AAAA… root@web1" '
    "(or an age1… key).")]
PubkeyFileOpt = Annotated[Path | None, typer.Option(
    "--pubkey-file", metavar="FILE", help="Read the key from FILE "
    "(/etc/ssh/ssh_host_ed25519_key.pub of the host).")]
KeyscanOpt = Annotated[str | None, typer.Option(
    "--keyscan", metavar="HOST[:PORT]", help="Ask the running host's sshd (ssh-keyscan -t "
    "ed25519); compare the fingerprint shown with the host's console.")]
GenerateOpt = Annotated[Path | None, typer.Option(
    "--generate", metavar="OUT_DIR", help="Create the host's ed25519 key pair in OUT_DIR "
    "(ssh-keygen; private key 0600) for provisioning.")]
NoRencOpt = Annotated[bool, typer.Option(
    "--no-renc", help="Only edit hosts.toml; run vaultpy renc later.")]


def _source(pubkey: str | None, pubkey_file: Path | None, keyscan: str | None,
            generate: Path | None) -> Any:
    from vaultpy.onboard import KeySource

    given = [KeySource(kind, str(value)) for kind, value in (
        ("pubkey", pubkey), ("pubkey-file", pubkey_file), ("keyscan", keyscan),
        ("generate", generate)) if value is not None]
    if len(given) != 1:
        raise typer.BadParameter(
            "give exactly one of --pubkey, --pubkey-file, --keyscan, --generate",
            param_hint="the host key")
    return given[0]


def _persons_key(source: Any, who: str) -> None:
    """A person's key is their own: neither made here nor scanned from a host's sshd."""
    if source.kind in ("keyscan", "generate"):
        raise typer.BadParameter(
            "a person's key is their own: give their ~/.ssh/id_ed25519.pub with "
            "--pubkey-file or --pubkey", param_hint=f"{who} with --{source.kind}")


def _report_host(out: Any, json_out: bool) -> None:
    from vaultpy.onboard import install_instructions

    if json_out:
        _emit_json(out.as_dict())
    else:
        what = f" ({out.fingerprint})" if out.fingerprint else ""
        who = f"{'person' if out.person else 'host'} {out.host}"
        _say({"added": f"added {who}{what} to hosts.toml",
              "rotated": f"new key for {who}{what} in hosts.toml",
              "unchanged": f"unchanged: {who} already has this key{what}",
              "removed": f"removed {who} from hosts.toml"}[out.action])
        if out.cache_removed is not None:
            _say(f"deleted its cache {out.cache_removed}")
        for w in out.warnings:
            _err().print(f"warning: {w}", markup=False, style="yellow")
        if out.generated is not None:
            _say(install_instructions(out.generated, out.host))
        if out.renc is not None and out.renc.ok:
            r = out.renc
            _say(f"renc {out.host}: {len(r.written) + len(r.repaired)} written, "
                 f"{len(r.unchanged)} unchanged, {len(r.pruned)} pruned")
    if out.failed:
        _print_problems(out.failed)
        _err().print(f"hosts.toml is updated; fix the problem above, then run vaultpy renc "
                     f"--host {out.host}", markup=False, style="red")
        _exit(1)


@host_app.command("add")
def host_add(
    name: NameArg,
    pubkey: PubkeyOpt = None,
    pubkey_file: PubkeyFileOpt = None,
    keyscan: KeyscanOpt = None,
    generate: GenerateOpt = None,
    secrets: Annotated[str | None, typer.Option(
        "--secrets", metavar="ID,ID…", help="Deploy these declared secrets to the host "
        "(all defaults: root:root 0400).", autocompletion=complete_id_list)] = None,
    key_path: Annotated[list[str] | None, typer.Option(
        "--key-path", metavar="PATH", help="Where the host's private key file is on the "
        "host, written as its identities (repeatable; an age1 host needs it, e.g. "
        "/etc/vaultpy/host.key; default: sshd's /etc/ssh/ssh_host_ed25519_key).")] = None,
    user: Annotated[bool, typer.Option(
        "--user", help="A person's entry (user = true), not a host's: their "
        "~/.ssh/id_ed25519.pub as --pubkey-file; they activate its profile themselves "
        "(README: A user's own secrets).")] = False,
    no_renc: NoRencOpt = False,
    json_out: JsonOpt = False,
    repo: RepoOpt = None,
    identity: IdentityOpt = None,
) -> None:
    """Add a host: its key from --pubkey, --pubkey-file, --keyscan or --generate."""
    from vaultpy import onboard

    source = _source(pubkey, pubkey_file, keyscan, generate)
    if user:
        _persons_key(source, "--user")
    ids = [s.strip() for s in (secrets or "").split(",") if s.strip()]
    cfg = _config_for(repo, json_out)
    out = _json_errors(json_out, lambda: onboard.add(
        cfg, name, source, ids, run_renc=not no_renc, identity_files=_identity(identity),
        key_paths=key_path or [], user=user))
    _report_host(out, json_out)


@host_app.command("rm")
def host_rm(
    name: KnownNameArg,
    json_out: JsonOpt = False,
    repo: RepoOpt = None,
) -> None:
    """Remove a host from hosts.toml and delete its cache directory."""
    from vaultpy import model, onboard

    where = repo or _Globals.repo
    cfg = _json_errors(json_out, lambda: model.load(where, nixos=False))
    if cfg.nixos is not None and name in cfg.hosts:
        # hosts.toml's agreement with the NixOS configurations may be what fails (a host
        # declared in both, which this removal is the fix for): what rm edits is
        # hosts.toml alone, and a host it holds is not Nix's to keep.
        with contextlib.suppress(VaultpyError):
            cfg = model.load(where)
    elif cfg.nixos is not None:
        cfg = _config_for(repo, json_out)       # (a host only Nix declares: said so)
    out = _json_errors(json_out, lambda: onboard.remove(cfg, name))
    _report_host(out, json_out)


@host_app.command("rotate")
def host_rotate(
    name: KnownNameArg,
    pubkey: PubkeyOpt = None,
    pubkey_file: PubkeyFileOpt = None,
    keyscan: KeyscanOpt = None,
    generate: GenerateOpt = None,
    no_renc: NoRencOpt = False,
    json_out: JsonOpt = False,
    repo: RepoOpt = None,
    identity: IdentityOpt = None,
) -> None:
    """Replace a host's key (after a reinstall) and re-encrypt its secrets to it."""
    from vaultpy import onboard

    source = _source(pubkey, pubkey_file, keyscan, generate)
    cfg = _config_for(repo, json_out)
    if cfg.is_person(name):
        _persons_key(source, f"{name}, a person's entry (user = true),")
    out = _json_errors(json_out, lambda: onboard.rotate(
        cfg, name, source, run_renc=not no_renc, identity_files=_identity(identity)))
    _report_host(out, json_out)


# --------------------------------------------------------------------------- generate, rotate

def _report_values(cfg: Any, result: Any, json_out: bool, verb: str) -> None:
    from vaultpy.errors import display_path
    from vaultpy.generate import public_path

    if json_out:
        _emit_json(result.as_dict())
    else:
        for sid in result.generated:
            secret = cfg.secrets[sid]
            extra = (f", public key {display_path(public_path(secret))}"
                     if secret.generate.key_pair else "")
            _say(f"{sid}: {verb} ({secret.generate}) → {display_path(secret.file)}{extra}")
        for sid in result.marked:
            _say(f"{sid}: rotation recorded")
        for sid in result.repaired:
            secret = cfg.secrets[sid]
            _say(f"{sid}: {display_path(public_path(secret))} was missing; derived it again "
                 f"from {display_path(secret.file)}")
        for sid, why in result.skipped:
            _say(f"{sid}: {why}")
        if result.generated:
            _say(f"{len(result.generated)} secret(s) {verb}; run vaultpy renc to update the "
                 "hosts")
        elif not result.marked and not result.problems and not result.repaired:
            _say(f"nothing to {'generate' if verb == 'generated' else 'rotate'}")
    if result.problems:
        _print_problems(result.problems)
        _exit(1)


@app.command("generate")
def generate_cmd(
    secret_ids: Annotated[list[str] | None, typer.Argument(
        metavar="[ID]...", help="Only these secrets (default: every secret with generate = "
        "… whose master file is missing).", autocompletion=complete_generated_ids)] = None,
    json_out: JsonOpt = False,
    repo: RepoOpt = None,
    identity: IdentityOpt = None,
) -> None:
    """Create missing generated secrets (\\[secrets.ID] generate = "alnum:32" …).

    Also the missing .pub of a generated key pair (decrypting it with the master
    identity)."""
    from vaultpy import generate

    cfg = _config_for(repo, json_out)
    result = _json_errors(json_out, lambda: generate.generate(
        cfg, secret_ids or [], identity_files=_identity(identity)), generate.Result)
    _report_values(cfg, result, json_out, "generated")


@app.command("rotate")
def rotate_cmd(
    secret_ids: Annotated[list[str] | None, typer.Argument(
        metavar="[ID]...", help="The secrets to regenerate (with --due: only those of them "
        "that are due).", autocompletion=complete_ids)] = None,
    due: Annotated[bool, typer.Option(
        "--due", help="Regenerate every secret whose rotate_days have passed.")] = False,
    mark: Annotated[bool, typer.Option(
        "--mark", help="Do not generate: record that ID was changed by hand now.")] = False,
    json_out: JsonOpt = False,
    repo: RepoOpt = None,
) -> None:
    """Regenerate secrets (new values, recorded in secrets/rotation.toml)."""
    from vaultpy import generate

    cfg = _config_for(repo, json_out)
    result = _json_errors(json_out, lambda: generate.rotate(cfg, secret_ids or [],
                                                            due_only=due, mark=mark),
                          generate.Result)
    _report_values(cfg, result, json_out, "rotated")


@app.command("signing-key")
def signing_key_cmd(
    new: Annotated[bool, typer.Option(
        "--new", help="Replace the key set with a new one (renc then re-encrypts and "
        "signs every host's cache).")] = False,
    public: Annotated[bool, typer.Option(
        "--public", help="Print the public key set in hosts.toml, and nothing else.")] = False,
    secret: Annotated[str | None, typer.Option(
        "--secret", metavar="ID", help="The secret to hold the private key (default: "
        "cache_signing; --new keeps the one set).")] = None,
    repo: RepoOpt = None,
) -> None:
    """Make the key renc signs each host's cache with; check and hosts verify it.

    The private key becomes secret ID's master file (encrypted to the master recipients,
    given to no host), the public key \\[vaultpy] signing_key in hosts.toml.  Then run
    vaultpy renc: it re-encrypts every host's cache once (a file nobody signed is not
    trusted) and writes SHA256SUMS and SHA256SUMS.sig beside each host's files."""
    from vaultpy import signing, signing_key
    from vaultpy.errors import Problem, display_path

    cfg = _config_for(repo, False)
    if public:
        if cfg.signing is None:
            _print_problems([Problem(display_path(cfg.path), "no signing key is set",
                                     "vaultpy.signing_key", "make one: vaultpy signing-key")])
            _exit(1)
        _out().print(cfg.signing.key, markup=False, highlight=False, soft_wrap=True)
        return
    if new and secret is not None:
        _print_problems([Problem("--secret", "--new keeps the secret that holds the key "
                                 "now ([vaultpy] signing_secret)", "",
                                 "leave --secret out, or change signing_secret by hand")])
        _exit(2)
    try:
        key = signing_key.set_up(cfg, secret or signing.DEFAULT_SECRET, replace=new)
    except VaultpyError as exc:
        _print_problems(exc.problems)
        _exit(1)
    _err().print(f"signing key set in {display_path(cfg.path)}: {key}\nrun vaultpy renc "
                 "to sign every host's cache (it re-encrypts each host's files once), "
                 "then commit hosts.toml, the secret and the cache", markup=False)


# --------------------------------------------------------------------------- doctor

@app.command()
def doctor(
    json_out: JsonOpt = False,
    repo: RepoOpt = None,
    identity: IdentityOpt = None,
) -> None:
    """Check this machine: hosts.toml, recipients, identity, RAM storage, ramfs, tools."""
    from vaultpy import cli
    from vaultpy import doctor as doc

    styles = {doc.OK: "green", doc.WARNING: "yellow", doc.PROBLEM: "red", doc.SKIPPED: "dim"}
    out = _out()

    def show(c: Any) -> None:
        out.print(f"{c.status:<8} {c.name:<20} {c.detail}", markup=False,
                  style=styles[c.status])
        if c.fix and c.status in (doc.PROBLEM, doc.WARNING):
            out.print(f"{'':<8} {'':<20} fix: {c.fix}", markup=False)

    checks = doc.run(repo or cli._Globals.repo, _identity(identity),
                     on_check=None if json_out else show)
    good = doc.ok(checks)
    if json_out:
        _emit_json({"ok": good, "checks": [c.as_dict() for c in checks]})
    else:
        problems = sum(c.status == doc.PROBLEM for c in checks)
        _err().print(f"{problems} problem(s); fix them as shown" if problems else
                     "no problems found", markup=False, style="red" if problems else "green")
    if not good:
        _exit(1)


