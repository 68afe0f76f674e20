"""CLI commands for Vault/OpenBao (pull, push, access): registered on vaultpy.cli.app.

The library is :mod:`vaultpy.vault`; these commands only parse options and print.
Results go to stdout (``--json``: one JSON document), progress and hints to stderr;
secret values are never printed.
"""

from __future__ import annotations

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
    _identity,
    _json_errors,
    _out,
    _print_problems,
    app,
    complete_hosts,
    complete_vault_ids,
)

IdsArg = Annotated[list[str] | None, typer.Argument(
    metavar="[ID]...", help="Only these secrets (default: every secret with vault = …).",
    autocompletion=complete_vault_ids)]


@app.command()
def pull(
    secret_ids: IdsArg = None,
    check: Annotated[bool, typer.Option(
        "--check", help="Only compare: exit 1 and name the ids that differ from Vault "
        "(never their values); write nothing.")] = False,
    force: Annotated[bool, typer.Option(
        "--force", help="Take Vault's value even over a master edited here and not "
        "pushed.")] = False,
    json_out: JsonOpt = False,
    repo: RepoOpt = None,
    identity: IdentityOpt = None,
) -> None:
    """Fetch Vault/OpenBao KV v2 values into master files (only those that changed)."""
    from vaultpy import vault

    cfg = _config_for(repo, json_out)
    result = _json_errors(json_out, lambda: vault.pull(
        cfg, secret_ids or [], check=check, force=force, identity_files=_identity(identity)),
        lambda: vault.PullResult(check))
    if json_out:
        _emit_json(result.as_dict())
    else:
        words = {"created": "created", "updated": "updated", "unchanged": "unchanged",
                 "missing": "differs (no master file yet)", "differs": "differs from Vault",
                 "edited": "edited here since the last pull; vaultpy push keeps it"}
        console = _out() if check else _err()
        for item in result.items:
            if check and item.status == "unchanged":
                continue
            console.print(f"{item.id}: {words[item.status]} ({item.ref}, version "
                          f"{item.version})", markup=False)
        changed = len(result.changed) + len(result.edited)
        if check and changed:
            fix = "; ".join(f for f, n in (("run vaultpy pull", result.changed),
                                           ("push the edited ones", result.edited)) if n)
            _err().print(f"{changed} of {len(result.items)} secret(s) differ from Vault; "
                         f"{fix}", markup=False)
        elif check:
            _err().print(f"in sync: {len(result.items)} secret(s) match Vault", markup=False)
        elif changed:
            _err().print(f"wrote {changed} master file(s); run vaultpy renc to update the "
                         "hosts", markup=False)
        elif result.recorded:
            _err().print("no value changed; Vault's versions moved, recorded in "
                         "secrets/vault-versions.toml", markup=False)
        else:
            _err().print("nothing changed", markup=False)
    if not result.ok:
        _exit(1)


@app.command()
def push(
    secret_ids: IdsArg = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Overwrite a different value already in Vault (still with "
        "check-and-set against concurrent writers).")] = False,
    json_out: JsonOpt = False,
    repo: RepoOpt = None,
    identity: IdentityOpt = None,
) -> None:
    """Write master secrets into Vault/OpenBao KV v2 (check-and-set)."""
    from vaultpy import vault

    cfg = _config_for(repo, json_out)
    result = _json_errors(json_out, lambda: vault.push(
        cfg, secret_ids or [], force=force, identity_files=_identity(identity)),
        vault.PushResult)
    if json_out:
        _emit_json(result.as_dict())
    else:
        for item in result.items:
            if item.status != "failed":
                _err().print(f"{item.id}: {item.status} ({item.ref}, version {item.version})",
                             markup=False)
    if not result.ok:
        _print_problems(result.problems)
        _exit(1)


@app.command()
def access(
    json_out: JsonOpt = False,
    vault_policy: Annotated[bool, typer.Option(
        "--vault-policy", help="Print one HCL policy per host granting read on exactly "
        "its secrets' KV v2 paths (instead of the matrix).")] = False,
    host: Annotated[list[str] | None, typer.Option(
        "--host", "-H", help="Only this host (repeatable).",
        autocompletion=complete_hosts)] = None,
    repo: RepoOpt = None,
) -> None:
    """Who can read what: hosts x secrets, with the host key and cache file of each."""
    from vaultpy import vault

    cfg = _config_for(repo, json_out)
    hosts = host or []
    grants = _json_errors(json_out, lambda: vault.access(cfg, hosts))
    pols = vault.policies(cfg, hosts) if vault_policy else None
    if json_out:
        data: dict[str, Any] = {
            "ok": True,
            "grants": [g.as_dict(cfg.root) for g in grants],
            "hosts": {h.name: {"recipients": list(h.recipients),
                               "secrets": sorted({g.secret for g in grants
                                                  if g.host == h.name})}
                      for h in cfg.hosts.values() if not hosts or h.name in hosts},
            "secrets": {sid: {"hosts": sorted({g.host for g in grants if g.secret == sid}),
                              "vault": str(s.vault) if s.vault else None}
                        for sid, s in cfg.secrets.items()},
        }
        if pols is not None:
            data["policies"] = pols
        _emit_json(data)
        return
    if pols is not None:
        typer.echo("\n".join(pols.values()), nl=False)
        return
    _access_table(cfg, grants, hosts)


def _access_table(cfg: Any, grants: list[Any], hosts: list[str]) -> None:
    """A hosts x secrets matrix, then per host its key(s) and, per secret, how it is
    used, the cache file the host decrypts and the Vault source."""
    from rich.table import Table

    out = _out()
    ids = sorted({g.secret for g in grants})
    by_host: dict[str, dict[str, Any]] = {}
    for g in grants:
        by_host.setdefault(g.host, {})[g.secret] = g
    names = hosts or list(cfg.hosts)
    table = Table(show_edge=False)
    table.add_column("host")
    for sid in ids:
        table.add_column(sid, justify="center")
    for name in names:
        row = by_host.get(name, {})
        table.add_row(name, *("file" if sid in row and row[sid].installed_as else
                              "tmpl" if sid in row else "·" for sid in ids))
    out.print(table)
    for name in names:
        host = cfg.hosts[name]
        out.print("", markup=False)
        out.print(f"{name}: " + ", ".join(host.recipients), markup=False)
        rows = list(by_host.get(name, {}).values())
        if not rows:
            out.print("  (no secrets)", markup=False)
        width = max((len(g.secret) for g in rows), default=0)
        for g in rows:
            how = [f"file {g.installed_as}"] if g.installed_as else []
            how += [f"template {t}" for t in g.templates]
            where = (str(g.cache_file.relative_to(cfg.root)) if g.cache_file and
                     g.cache_file.is_relative_to(cfg.root) else
                     str(g.cache_file) if g.cache_file else "(no master file yet)")
            source = f"  vault {g.vault}" if g.vault else ""
            out.print(f"  {g.secret:<{width}}  {', '.join(how)}  {where}{source}",
                      markup=False)
    unread = sorted(set(cfg.secrets) - {g.secret for g in grants})
    if unread and not hosts:
        _err().print("read by no host: " + ", ".join(unread), markup=False)
