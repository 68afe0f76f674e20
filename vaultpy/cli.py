"""The ``vaultpy`` command: a thin typer layer over the library.

Each command parses its options, calls one library function and prints the
result with rich.  Problems are printed one per line (file: field: what; fix)
and exit 1; usage errors exit 2; nothing here ever shows a traceback unless
``VAULTPY_DEBUG=1``.  Heavy modules are imported inside the commands so that
``vaultpy --help`` and ``--version`` start fast.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar

import typer
import typer.core

from vaultpy import __version__
from vaultpy._internal.leave import OUTPUT_ERRNOS, output_lost
from vaultpy.errors import Problem, UsageError, VaultpyError, display_path

if TYPE_CHECKING:
    from rich.console import Console

    from vaultpy.model import Config

T = TypeVar("T")


def _given_twice(group: Any, args: list[str]) -> Problem | None:
    """An option that takes one value, given twice (click keeps the last without a
    word: found in review, `host add --pubkey-file a --pubkey-file b` dropped a's key).
    ``args`` as the root group receives them, subcommands' included."""
    command: Any = group
    seen: dict[str, str] = {}
    path = ["vaultpy"]
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            break
        if not (a.startswith("-") and len(a) > 1):
            sub = getattr(command, "commands", {}).get(a)
            if sub is not None:
                command = sub
                path.append(a)
            continue
        name, inline = ((a.split("=", 1)[0], "=" in a) if a.startswith("--")
                        else (a[:2], len(a) > 2))
        param = next((p for p in command.params if getattr(p, "param_type_name", "") ==
                      "option" and name in (*p.opts, *p.secondary_opts)), None)
        if param is None or param.is_flag or param.count:
            continue
        value = (a.split("=", 1)[1] if a.startswith("--") else a[2:]) if inline else (
            args[i] if i < len(args) else "")
        if not inline:
            i += max(param.nargs, 1)
        if param.multiple:
            continue
        # by its names, not its command: -C before the command and after it is one option
        key = ",".join(sorted((*param.opts, *param.secondary_opts)))
        if key in seen:
            return Problem(" ".join(path), f"{name} given twice ({seen[key]}, then {value}): "
                           "it takes one value, and the last would win unseen", "",
                           f"give {name} once")
        seen[key] = value
    return None


class _Group(typer.core.TyperGroup):
    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        # Not while completing (a value half typed), nor when help is asked for.
        if not ctx.resilient_parsing and not {"-h", "--help"} & set(args):
            twice = _given_twice(self, list(args))
            if twice is not None:
                raise UsageError(twice)
        return super().parse_args(ctx, args)


app = typer.Typer(
    cls=_Group,
    name="vaultpy",
    help="Compile age-encrypted secrets for NixOS and Linux hosts.\n\n"
         "Master secrets live in secrets/<id>.age; `vaultpy renc` re-encrypts them to each "
         "host's SSH key into secrets/cache/<host>/, which is safe to commit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

def _declared(table: str, having: str = "") -> Callable[[typer.Context, str], list[str]]:
    """Shell completion of the names hosts.toml declares in ``[table]``: secret ids,
    host names (``having``: only the entries that set that field).  The nearest
    hosts.toml (or -C's) is read as TOML and not checked: a half-edited file still
    completes, and nothing ever goes wrong on a prompt."""

    def complete(ctx: typer.Context, incomplete: str) -> list[str]:
        import tomllib

        from vaultpy import model
        from vaultpy._internal.fsutil import read_regular

        try:
            c: Any = ctx
            repo = None
            while c is not None and repo is None:     # -C after the command, or before it
                repo = c.params.get("repo")
                c = c.parent
            if repo is None:
                path = model.find(Path.cwd())
            else:       # as typed: bash expands neither ~ nor $HOME in what it passes
                given = Path(os.path.expandvars(str(repo))).expanduser()
                path = given if given.is_file() else given / model.FILENAME
            # (read_regular: a FIFO named hosts.toml must not hang the shell's prompt)
            entries = tomllib.loads(read_regular(path)[0].decode("utf-8")).get(table)
        except Exception:   # no hosts.toml, a TOML error: nothing to offer
            return []
        if not isinstance(entries, dict):
            return []
        typed = {v for value in ctx.params.values()      # [ID]..., a repeated --host
                 if isinstance(value, (list, tuple)) for v in value}
        return sorted(n for n, entry in entries.items()
                      if isinstance(n, str) and n.startswith(incomplete) and n not in typed
                      and (not having or (isinstance(entry, dict) and having in entry)))

    return complete


complete_ids = _declared("secrets")
complete_generated_ids = _declared("secrets", "generate")   # generate's
complete_vault_ids = _declared("secrets", "vault")          # pull's and push's
complete_hosts = _declared("hosts")


def complete_id_list(ctx: typer.Context, incomplete: str) -> list[str]:
    """An ``ID,ID…`` option's last id (those before it stay as typed)."""
    head, _, last = incomplete.rpartition(",")
    given = set(head.split(","))
    prefix = head + "," if head else ""
    return [prefix + i for i in complete_ids(ctx, last) if i not in given]


def _tilde(value: Any) -> Any:
    """A path option's ``~`` expanded: the shell leaves it in ``--opt=~/x`` and in quotes,
    where VAULTPY_IDENTITY, hosts.toml and -C expand it (found in review: init wrote the
    new master key to ./~/.config/..., while hosts.toml named the one under $HOME)."""
    if isinstance(value, list):
        return [Path(os.path.expanduser(v)) for v in value]
    return None if value is None else Path(os.path.expanduser(value))


RepoOpt = Annotated[Path | None, typer.Option(
    "-C", "--repo", metavar="DIR",
    help="Repository (or hosts.toml) to use; default: the nearest hosts.toml upwards.")]
IdentityOpt = Annotated[list[Path] | None, typer.Option(
    "-i", "--identity", metavar="FILE", callback=_tilde,
    help="Master identity file (repeatable); default: VAULTPY_IDENTITY, then "
         "\\[vaultpy] identity, then ~/.config/vaultpy/master.txt.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


class _Globals:
    repo: Path | None = None
    identity: list[Path] = []  # noqa: RUF012 (process-wide CLI state)
    from_shares: bool = False


def _err() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False, soft_wrap=True)


def _out() -> Console:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


def _plain(text: str, *, err: bool = False) -> None:
    """``text`` and a newline, exactly as :func:`_out` / :func:`_err` print it without
    markup: a successful run's last words need not import rich (~40 ms)."""
    (sys.stderr if err else sys.stdout).write(text + "\n")


def _config(repo: Path | None) -> Config:
    from vaultpy import model

    return model.load(repo or _Globals.repo)


def _config_of(repo: Path | None, secret_id: str | None) -> Config:
    """hosts.toml for one secret: Nix is evaluated only for an id hosts.toml does not
    declare (encrypt, decrypt and edit of its own secrets need no configuration)."""
    from vaultpy import model

    cfg = model.load(repo or _Globals.repo, nixos=False)
    if secret_id is None or secret_id in cfg.secrets:
        return cfg
    return model.with_nixos(cfg, first=secret_id)


def _json_errors(json_out: bool, fn: Callable[[], T],
                 empty: Callable[[], Any] | None = None) -> T:
    """Run ``fn``; with --json a failure is still one JSON document on stdout, with
    every key of the command's result (``empty``: the result of nothing done, whose
    ``as_dict`` gives them), so that scripts reading ``.changed`` find a list."""
    try:
        return fn()
    except VaultpyError as exc:
        if not json_out:
            raise
        doc = empty().as_dict() if empty is not None else {}
        doc.update(ok=False, problems=[p.as_dict() for p in exc.problems])
        _emit_json(doc)
        _print_problems(exc.problems)
        _exit(2 if isinstance(exc, UsageError) else 1)


def _config_for(repo: Path | None, json_out: bool) -> Config:
    """Load hosts.toml; with --json an invalid file is still reported as JSON."""
    return _json_errors(json_out, lambda: _config(repo))


_BOTH_KEYS = ("--from-shares rebuilds the master identity to use, and -i names another: "
              "give one of them")


def _identity(identity: list[Path] | None) -> list[Path]:
    if identity and _Globals.from_shares:   # (-i after the command: the key is rebuilt)
        _err().print(_BOTH_KEYS, markup=False)
        _exit(2)
    # -i before the command and after it: all of them (the later ones dropped the
    # earlier without a word: found in review)
    return list(dict.fromkeys([*_Globals.identity, *(identity or [])]))


def _print_problems(problems: list[Problem], console: Console | None = None) -> None:
    console = console or _err()
    for p in problems:
        console.print(str(p), markup=False, style="red" if console.stderr else None)


def _emit_json(data: Any) -> None:
    from vaultpy._internal.memo import as_json

    sys.stdout.write(as_json(data))


def _exit(code: int) -> NoReturn:
    raise typer.Exit(code)


@app.callback()
def _main(
    repo: RepoOpt = None,
    identity: IdentityOpt = None,
    version: Annotated[bool, typer.Option("--version", help="Show the version and exit.",
                                          is_eager=True)] = False,
    from_shares: Annotated[Path | None, typer.Option(
        "--from-shares", metavar="DIR",
        help="Use the master identity rebuilt in memory from Shamir share files in DIR.")
    ] = None,
    from_shares_prompt: Annotated[bool, typer.Option(
        "--from-shares-prompt", help="Rebuild the master identity from shares typed in.")
    ] = False,
    passphrase_fd: Annotated[int | None, typer.Option(
        "--passphrase-fd", metavar="N", help="Read passphrases from file descriptor N.")
    ] = None,
) -> None:
    if version:
        print(f"vaultpy {__version__}")
        raise typer.Exit(0)
    _Globals.repo = repo
    _Globals.identity = list(identity or [])
    _Globals.from_shares = False
    if passphrase_fd is not None:
        from vaultpy import age

        age.set_passphrase_fd(passphrase_fd)
    if from_shares is not None and from_shares_prompt:  # one was ignored without a word
        _err().print("--from-shares reads the shares from DIR, and --from-shares-prompt "
                     "asks for them: give one of them", markup=False)
        _exit(2)
    if from_shares is not None or from_shares_prompt:
        if identity:                # before a share is asked for
            _err().print(_BOTH_KEYS, markup=False)
            _exit(2)
        _Globals.from_shares = True
        from vaultpy import identities, shamir

        text = (shamir.combine_from_dir(from_shares) if from_shares is not None
                else shamir.combine_from_prompt())
        identities.use_in_memory(text, "shamir shares")


@app.command()
def init(
    directory: Annotated[Path, typer.Argument(help="Where to create hosts.toml.")] = Path("."),
    generate_identity: Annotated[Path | None, typer.Option(
        "--generate-identity", metavar="PATH", callback=_tilde,
        help="Also create a new master identity (mode 0600) and use it.")] = None,
    recipient: Annotated[list[str] | None, typer.Option(
        "--recipient", "-r", help="A master recipient to list (repeatable).")] = None,
) -> None:
    """Start a repository: a commented hosts.toml and a secrets/ directory."""
    from vaultpy.init import default_recipient
    from vaultpy.init import init as do_init

    recipients = list(recipient or [])
    found = None
    # VAULTPY_IDENTITY, set for every command, says nothing of a repository whose
    # recipients -r names; -i, typed for this one, does.
    named = (_named_identity(generate_identity)
             if _Globals.identity or not recipients else None)
    if named is not None:
        # -i or VAULTPY_IDENTITY, as every command takes them: its key is the master's
        # (init took the default identity's while a key was named: found in review).
        recipients = [named[1], *[r for r in recipients if r.strip() != named[1]]]
    elif not recipients and generate_identity is None:
        # No key named: the default identity's, if there is one (it wrote
        # `recipients = []`, while the key every command uses by default sat there).
        found = default_recipient()
        if found is not None:
            recipients = [found[1]]
    written = do_init(directory, recipients, generate_identity,
                      identity=named[0] if named is not None and _Globals.identity else None)
    if found is not None:
        _err().print(f"master recipient: {found[1]} (the public key of {found[0]}, the "
                     "default identity)", markup=False)
    if named is not None:
        _err().print(f"master recipient: {named[1]} (the public key of "
                     f"{display_path(named[0])})", markup=False)
    for path in written:
        _err().print(f"wrote {path}", markup=False)
    if generate_identity is not None:
        backup = ("" if recipients else " Consider a second (backup) recipient: vaultpy "
                  "rekey after adding its public key to [vaultpy] recipients.")
        _err().print(f"Keep {generate_identity} secret and backed up: it decrypts every "
                     f"secret.{backup}", markup=False)
    elif not recipients:
        # Every later command fails on `recipients = []`: say so now, and how to mend it.
        from vaultpy.identities import DEFAULT_IDENTITY

        if os.path.lexists(os.path.expanduser(DEFAULT_IDENTITY)):
            why = (f"{DEFAULT_IDENTITY} holds no plain age key (passphrase-protected, a "
                   "plugin's, several, or damaged)")
            fix = "add its public key (age-keygen -y, or the plugin's recipient)"
        else:
            why = f"no -r, no --generate-identity, and no {DEFAULT_IDENTITY}"
            fix = ("make a key (mkdir -p ~/.config/vaultpy && age-keygen -o "
                   f"{DEFAULT_IDENTITY}) and add the public key it prints")
        _err().print(f"warning: no master recipient ({why}): {fix} to [vaultpy] recipients "
                     "in hosts.toml", markup=False)


def _named_identity(generate: Path | None) -> tuple[Path, str] | None:
    """For init: the identity named with -i or VAULTPY_IDENTITY (one file, whose key is
    an X25519 one) and its public key; None when none is named."""
    from vaultpy import age
    from vaultpy.identities import configured_paths

    if not (_Globals.identity or os.environ.get("VAULTPY_IDENTITY")):
        return None
    how = "-i" if _Globals.identity else "VAULTPY_IDENTITY"
    if generate is not None:
        _err().print(f"{how} names the master identity, and --generate-identity makes a new "
                     "one: give one of them", markup=False)
        _exit(2)
    paths = configured_paths(None, _Globals.identity)
    if len(paths) != 1:
        raise VaultpyError(Problem(how, f"names {len(paths)} identity files; init takes the "
                                   "master's alone", "", "name one file (more master "
                                   "recipients: -r KEY)"))
    keys = age.load_identities(paths, regular_only=False)
    publics = [str(k.key.to_public()) for k in keys if k.kind == "x25519"]
    if len(publics) != 1:
        raise VaultpyError(Problem(display_path(paths[0]), "holds no single age key "
                                   f"({how}): init cannot tell the master's public key",
                                   "", "give the master public key with -r KEY instead"))
    return paths[0], publics[0]


@app.command()
def encrypt(
    secret_id: Annotated[str, typer.Argument(metavar="ID", help="Secret id from hosts.toml.",
                                            autocompletion=complete_ids)],
    file: Annotated[Path | None, typer.Option("--file", "-f",
                                              help="Read plaintext from FILE, not stdin.")] = None,
    armor: Annotated[bool, typer.Option("--armor", "-a", help="Write ASCII armor.")] = False,
    allow_empty: Annotated[bool, typer.Option(
        "--allow-empty", help="Accept empty input (or a lone line break) over a secret "
        "that holds a value (without it, that is refused: an empty stdin or file "
        "replaced the value).")
    ] = False,
    repo: RepoOpt = None,
) -> None:
    """Encrypt plaintext (stdin or --file) as master secret ID."""
    from vaultpy import masters

    cfg = _config_of(repo, secret_id)
    cfg.secret(secret_id)
    if file is None and sys.stdin.isatty():
        _err().print("reading the secret from the terminal; end with Ctrl-D", markup=False)
    from vaultpy._internal.fsutil import read_at_most, read_named

    limit = masters.MAX_PLAINTEXT
    try:
        data = (read_at_most(sys.stdin.buffer.fileno(), limit) if file is None
                else read_named(file, limit))
    except OSError as exc:
        from vaultpy.errors import os_problem

        raise VaultpyError(os_problem(file or "-", exc, "read plaintext")) from None
    if data is None:
        from vaultpy.errors import too_big

        raise VaultpyError(too_big(
            file or "-", limit, " of plaintext",
            "a secret is held in RAM on every host it goes to; encrypt a big file with "
            "age on its own and keep only its key in vaultpy"))
    if not allow_empty:
        masters.refuse_empty_over_a_value(
            cfg, secret_id, data, "stdin" if file is None else display_path(file))
    path = masters.write_master(cfg, secret_id, data, armor)
    _err().print(f"wrote {path}; run vaultpy renc to update the hosts", markup=False)
    for w in masters.value_warnings(cfg, secret_id, data):
        _err().print(f"warning: {w}", markup=False, style="yellow")


@app.command()
def decrypt(
    secret_id: Annotated[str | None, typer.Argument(
        metavar="ID", help="Secret id from hosts.toml.", autocompletion=complete_ids)] = None,
    file: Annotated[Path | None, typer.Option(
        "--file", metavar="FILE", help="Decrypt FILE, encrypted like a master (an edit "
        "conflict's kept version, a backup copy), instead of ID's master.")] = None,
    repo: RepoOpt = None,
    identity: IdentityOpt = None,
) -> None:
    """Decrypt master secret ID (or --file FILE) to stdout."""
    from vaultpy import identities, masters
    from vaultpy._internal import nocore

    nocore.forbid()
    if (secret_id is None) == (file is None):
        raise UsageError(Problem("vaultpy decrypt", "give a secret ID or --file FILE, "
                                 "not both or neither", "", "see vaultpy decrypt --help"))
    cfg = _config_of(repo, secret_id)
    if file is not None:
        data = masters.decrypt_file(file, identities.load(cfg, _identity(identity)))
    else:
        assert secret_id is not None
        cfg.secret(secret_id)
        data = masters.decrypt(cfg, secret_id, identities.load(cfg, _identity(identity)))
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


@app.command()
def edit(
    secret_id: Annotated[str, typer.Argument(metavar="ID", help="Secret id from hosts.toml.",
                                            autocompletion=complete_ids)],
    allow_disk: Annotated[bool, typer.Option(
        "--allow-disk", help="Accept a disk-backed temp dir if no RAM-backed one exists.")
    ] = False,
    repo: RepoOpt = None,
    identity: IdentityOpt = None,
) -> None:
    """Edit master secret ID in $VISUAL/$EDITOR; plaintext stays in RAM."""
    from vaultpy.edit import edit as do_edit

    cfg = _config_of(repo, secret_id)
    result = do_edit(cfg, secret_id, identity_files=_identity(identity),
                     allow_disk=allow_disk)
    if not result.changed:
        _err().print(f"{secret_id}: unchanged, nothing written", markup=False)
    else:
        what = "created" if result.created else "updated"
        _err().print(f"{secret_id}: {what} {result.path}; run vaultpy renc to update the "
                     "hosts", markup=False)
    for w in result.warnings:
        _err().print(f"warning: {w}", markup=False, style="yellow")


@app.command()
def renc(
    host: Annotated[list[str] | None, typer.Option(
        "--host", "-H", help="Only this host (repeatable).",
        autocompletion=complete_hosts)] = None,
    jobs: Annotated[int | None, typer.Option(
        "--jobs", "-j", min=1, help="Worker processes (default: one per CPU).")] = None,
    json_out: JsonOpt = False,
    repo: RepoOpt = None,
    identity: IdentityOpt = None,
    show_timings: Annotated[bool, typer.Option(
        "--timings", help="Also print how long each step took, wall and CPU time (on "
        "stderr; with --json, in the JSON).")] = False,
    accept: Annotated[list[str] | None, typer.Option(
        "--accept", metavar="ID", help="With a signing key: sign secret ID's new value, "
        "though it was not written by vaultpy on this machine (repeatable; look at it "
        "first).", autocompletion=complete_ids)] = None,
    accept_all: Annotated[bool, typer.Option(
        "--accept-all", help="As --accept, for every changed secret.")] = False,
) -> None:
    """Re-encrypt master secrets to each host's key, into the cache."""
    from vaultpy import renc as pipeline
    from vaultpy._internal import memo, timings

    clock = timings.Clock()
    host = list(dict.fromkeys(host)) if host else None     # -H a -H a: host a, once
    snapshot = None if host else memo.begin(repo or _Globals.repo)   # before loading
    with clock.phase("load"):
        cfg = _config_for(repo, json_out)
    if snapshot is not None:
        snapshot.capture(cfg)
    progress_cm = _progress() if (sys.stderr.isatty() and not json_out) else None
    accepted: list[str] | bool = True if accept_all else list(accept or ())
    if progress_cm is None:     # (with --json, a run that raises still prints its JSON)
        result = _json_errors(json_out, lambda: pipeline.renc(
            cfg, host or [], jobs=jobs, identity_files=_identity(identity), clock=clock,
            accept=accepted), pipeline.Result)
    else:
        with progress_cm as report:
            result = pipeline.renc(cfg, host or [], jobs=jobs, clock=clock,
                                   identity_files=_identity(identity), progress=report,
                                   accept=accepted)
    from vaultpy.model import config_warnings

    warnings = config_warnings(cfg)
    if snapshot is not None and result.ok and not warnings and not (
            result.written or result.repaired or result.pruned or result.signed):
        # (no memo while there is a warning: it is said again on every run)
        snapshot.commit("renc", {"files": len(result.unchanged), "hosts": len(cfg.hosts)})
    people = cfg.people(host)
    total = clock.total()
    if json_out:
        extra = {"timings": timings.as_list(clock.phases, total)} if show_timings else {}
        _emit_json(result.as_dict() | {"warnings": [w.as_dict() for w in warnings]} | extra)
    else:
        for w in warnings:
            _err().print(f"warning: {w}", markup=False, style="yellow")
        _renc_summary(result, cfg.cache_dir, len(host) if host else len(cfg.hosts), people)
        if show_timings:
            _plain(timings.table(clock.phases, total), err=True)
    if not result.ok:
        _print_problems(result.failed)
        _exit(1)


def _progress() -> Any:
    """A progress bar on stderr, as a ``report(done, total)`` callback.  The callback
    redraws it (at most 10 times a second, and at the end), not rich's refresh thread:
    renc forks its workers while the bar is up, and a fork must not cut another thread
    off in the middle of a write (see vaultpy/_internal/forksafe.py)."""
    import contextlib
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    @contextlib.contextmanager
    def cm() -> Any:
        with Progress(TextColumn("encrypting"), BarColumn(), MofNCompleteColumn(),
                      console=_err(), transient=True, auto_refresh=False) as bar:
            task = bar.add_task("renc", total=None)
            shown = 0.0

            def report(done: int, total: int) -> None:
                nonlocal shown
                bar.update(task, completed=done, total=total)
                now = time.monotonic()
                if now - shown >= 0.1 or done >= total:
                    shown = now
                    bar.refresh()

            yield report

    return cm()


def _renc_summary(result: Any, cache_dir: Path, hosts: int, people: int) -> None:
    from vaultpy._internal.memo import renc_noop_line, renc_table, signed_line

    if not (result.written or result.repaired or result.pruned or result.failed):
        _plain(renc_noop_line(len(result.unchanged), hosts, people))
        if result.signed:
            _plain(signed_line(result.signed))
        return

    rows: dict[str, list[int]] = {}
    for col, items in enumerate((result.written, result.repaired, result.unchanged)):
        for item in items:
            rows.setdefault(item.host, [0, 0, 0, 0])[col] += 1
    for path in result.pruned:       # a file of a host, or a removed host's directory
        host = path.name if path.parent == cache_dir else path.parent.name
        rows.setdefault(host, [0, 0, 0, 0])[3] += 1
    if rows:            # (a run that failed whole: a table of zeros says nothing)
        _plain(renc_table(rows))
    if result.signed:
        _plain(signed_line(result.signed))
    by_reason: dict[str, list[str]] = {}
    for host, why in sorted(result.unvouched.items()):
        by_reason.setdefault(why, []).append(host)
    for why, names in by_reason.items():    # (why the "repaired" column is full)
        _plain(f"re-encrypted every file of {', '.join(names)}: no signed list vouched for "
               f"them ({why})")
    if result.failed:
        _err().print(f"[red]{len(result.failed)} failed[/]")


@app.command()
def check(
    json_out: JsonOpt = False,
    repo: RepoOpt = None,
    recipient_coverage: Annotated[bool, typer.Option(
        "--recipient-coverage", help="Kept for scripts: every check now proves each "
        "master file is addressed to exactly the \\[vaultpy] recipients.")] = False,
    backup_identity: Annotated[list[Path] | None, typer.Option(
        "--backup-identity", metavar="FILE", callback=_tilde, help="A backup identity "
        "every master file must decrypt with (repeatable; implies "
        "--recipient-coverage).")] = None,
    strict: Annotated[bool, typer.Option(
        "--strict", help="Warnings fail the check: secrets overdue for rotation "
        "(rotate_days), hosts sharing a key, text in a template that reads like a mistyped "
        "placeholder, a master file no secret declares, an edit kept beside its master "
        "(.conflict-, .unsaved-).")] = False,
) -> None:
    """Verify the cache for CI: complete, well-formed, nothing stale (no key needed)."""
    from vaultpy._internal import memo
    from vaultpy.check import check as do_check
    from vaultpy.check import has_rotation, overdue
    from vaultpy.model import config_warnings

    plain = not (recipient_coverage or backup_identity or strict)
    snapshot = memo.begin(repo or _Globals.repo) if plain else None    # before loading
    cfg = _config_for(repo, json_out)
    if snapshot is not None:
        snapshot.capture(cfg)
    problems = do_check(cfg)
    warnings = config_warnings(cfg) + overdue(cfg)
    # A passing check is remembered unless time alone could change it (rotate_days).
    if snapshot is not None and not problems and not warnings and not has_rotation(cfg):
        snapshot.commit("check")        # (a warning is said again on every run)
    if strict:
        problems, warnings = problems + warnings, []
    if recipient_coverage or backup_identity:
        from vaultpy import recovery

        problems += recovery.coverage(cfg, backup_identity or [])
    if json_out:
        _emit_json({"ok": not problems, "problems": [p.as_dict() for p in problems],
                    "warnings": [w.as_dict() for w in warnings]})
    else:
        for w in warnings:
            _err().print(f"warning: {w}", markup=False, style="yellow")
        if problems:
            _print_problems(problems, _out())
            _err().print(f"[red]{len(problems)} problem(s)[/]")
        else:
            hosts, people = len(cfg.hosts), cfg.people()
            if (color := memo.rich_colours(sys.stderr)) is not None:   # as the memo answers
                _plain(memo.check_ok_line(color, hosts, people), err=True)
            else:
                _err().print(f"[green]ok[/]{memo.check_ok_tail(hosts, people)}")
    if problems:
        _exit(1)


@app.command()
def rekey(
    secret_ids: Annotated[list[str] | None, typer.Argument(
        metavar="[ID]...", help="Only these secrets (default: all).",
        autocompletion=complete_ids)] = None,
    repo: RepoOpt = None,
    identity: IdentityOpt = None,
    rotate_master: Annotated[bool, typer.Option(
        "--rotate-master", help="Rotate the master key: a new identity (--new-identity), "
        "every master re-encrypted to it and the remaining recipients, hosts.toml updated, "
        "renc run. Resumable: rerun the same command after an interruption.")] = False,
    new_identity: Annotated[Path | None, typer.Option(
        "--new-identity", metavar="FILE", help="Where to write the new master identity "
        "(implies --rotate-master).")] = None,
    retire: Annotated[list[str] | None, typer.Option(
        "--retire", metavar="RECIPIENT", help="With --rotate-master: also drop this "
        "recipient (default: the public key of the identity in use).")] = None,
) -> None:
    """Re-encrypt master files to the current \\[vaultpy] recipients.

    With --rotate-master: a new master key, the old one retired."""
    from vaultpy import masters, recovery

    if retire and not (rotate_master or new_identity is not None):
        # A plain rekey keeps every [vaultpy] recipient: the key was not dropped.
        _err().print("--retire drops a recipient in a master key rotation: add "
                     "--rotate-master, or remove the key from [vaultpy] recipients in "
                     "hosts.toml and run vaultpy rekey", markup=False)
        _exit(2)
    cfg = _config(repo)
    if rotate_master or new_identity is not None:
        if secret_ids:
            _err().print("--rotate-master re-encrypts every master; give no IDs",
                         markup=False)
            _exit(2)
        rot = recovery.rotate_master(cfg, new_identity, _identity(identity), retire or [],
                                     say=lambda m: _err().print(m, markup=False))
        _err().print(f"rotated {len(rot.rotated)} master file(s) to {rot.new_recipient} "
                     f"(+ {len(rot.recipients) - 1} backup recipient(s)); retired "
                     f"{len(rot.retired)} key(s); renc done", markup=False)
        where = ("hosts.toml's identity now points at it" if rot.identity_in_hosts_toml else
                 "use it with -i, VAULTPY_IDENTITY or [vaultpy] identity")
        _err().print(f"new master identity: {rot.new_identity} ({where}); back it up, e.g. "
                     "vaultpy identity split", markup=False)
        return
    recovery.refuse_if_rotating(cfg)
    written = masters.rekey(cfg, secret_ids or [], _identity(identity))
    _err().print(f"re-encrypted {len(written)} master file(s); run vaultpy renc next",
                 markup=False)


def _not_over_another_file(output: Path) -> None:
    """``profile -o`` replaces an older profile, never any other file: a slip of the
    finger (-o hosts.toml, -o the master key) must not destroy it."""
    import json

    from vaultpy._internal import fsutil

    if not os.path.lexists(output):
        return
    if not os.path.isfile(output) or os.path.islink(output):   # /dev/null, a directory
        raise VaultpyError(Problem(display_path(output), "exists and is not a regular file: "
                                   "not replaced", "--output", "give the name of a file "
                                   "(or leave -o out to print the profile)"))
    try:
        data = fsutil.read_regular(output)[0]
        if not data:            # an empty file (mktemp's) holds nothing to lose
            return
        old = json.loads(data)
        if isinstance(old, dict) and {"version", "host", "secrets"} <= old.keys():
            return
    except (OSError, ValueError):
        pass
    raise VaultpyError(Problem(display_path(output), "exists and is not a vaultpy profile: "
                               "not replaced", "--output", "give another file name (or "
                               "remove this file first, if it is to go)"))


@app.command()
def profile(
    host: Annotated[str, typer.Option("--host", "-H", help="The host to describe.",
                                            autocompletion=complete_hosts)],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", metavar="FILE",
        help="Write here (cache paths relative to FILE's directory) instead of stdout "
             "(absolute paths).")] = None,
    user: Annotated[bool, typer.Option(
        "--user", help="A user's profile: HOST is a person's entry; they activate it "
        "themselves (systemd --user), into their runtime directory; every file is "
        "theirs.  (Always so for an entry with user = true.)")] = False,
    repo: RepoOpt = None,
) -> None:
    """Write the activation profile (JSON) of one host, or of one user (--user)."""
    from vaultpy import profile as profile_mod
    from vaultpy._internal import fsutil

    cfg = _config(repo)
    # Relative to where the profile really is (its ".." are taken there, not in the -o
    # path as written through a symlinked directory).
    data = profile_mod.build(cfg, host, user=user, relative_to=(
        Path(os.path.realpath(output.absolute().parent)) if output else None))
    text = profile_mod.dumps(data)
    if output is None:
        sys.stdout.write(text + "\n")
        return
    _not_over_another_file(output)
    try:
        fsutil.atomic_write(output, text.encode() + b"\n")
    except OSError as exc:
        from vaultpy.errors import os_problem

        raise VaultpyError(os_problem(output, exc, "write the profile")) from None
    _err().print(f"wrote {output}", markup=False)


@app.command()
def activate(
    profile: Annotated[Path, typer.Option("--profile", "-p", metavar="FILE",
                                          help="The profile: a host's, or a user's "
                                               "(profile --user).")],
    root: Annotated[Path, typer.Option(
        "--root", metavar="DIR",
        help="Prefix every host path (keys, dirs, extra paths, /etc/passwd).")] = Path("/"),
    no_mount: Annotated[bool, typer.Option(
        "--no-mount", help="Do not mount ramfs on the store (a user's profile: accept a "
        "store not in RAM); tests and demos only.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Show what would change; touch nothing.")] = False,
    early: Annotated[bool, typer.Option(
        "--early", help="Only items marked early, into early_dir.")] = False,
    systemctl: Annotated[str | None, typer.Option(
        "--systemctl", metavar="PATH", help="systemctl to call for unit restarts (default: "
        "systemctl, but none with a --root other than /).")] = None,
    keep: Annotated[int | None, typer.Option(
        "--keep", min=1, help="Generations to keep (default: the profile's).")] = None,
    jobs: Annotated[int | None, typer.Option(
        "--jobs", "-j", min=1,
        help="Processes that decrypt (default: the CPUs, at most 4).")] = None,
    regular_profile: Annotated[bool, typer.Option(
        "--regular-profile", help="Read the profile only if it is a regular file, never "
        "wait on a FIFO (the units vaultpy bundle writes pass it).")] = False,
) -> None:
    """On the host: decrypt into a new generation in RAM and switch to it atomically."""
    from vaultpy.activate import Options, summary
    from vaultpy.activate import activate as run

    ctx = run(Options(profile=profile, root=root, no_mount=no_mount, dry_run=dry_run,
                      early=early, systemctl=systemctl, keep=keep, jobs=jobs,
                      regular_profile=regular_profile))
    with contextlib.suppress(OSError, ValueError):     # the activation is done
        for line in summary(ctx):
            _err().print(line, markup=False)


@app.command()
def bundle(
    host: Annotated[str, typer.Option("--host", "-H", help="The host to bundle.",
                                            autocompletion=complete_hosts)],
    output: Annotated[Path, typer.Option("--output", "-o", metavar="DIR",
                                         help="Directory to create.")],
    vaultpy_path: Annotated[str | None, typer.Option(
        "--vaultpy", metavar="PATH", help="vaultpy's path on the host: the unit runs "
        "PATH-activate, beside it (default /usr/local/bin/vaultpy; a user's bundle: "
        "%h/.local/bin/vaultpy, where pipx installs it).", show_default=False)
    ] = None,
    force: Annotated[bool, typer.Option(
        "--force", help="Replace the bundle an earlier run wrote at DIR.")] = False,
    user: Annotated[bool, typer.Option(
        "--user", help="A user's bundle: HOST is a person's entry; its vaultpy.service is "
        "for their systemd --user, reading ~/.config/vaultpy.  (Always so for an entry "
        "with user = true.)")] = False,
    repo: RepoOpt = None,
) -> None:
    """Write a self-contained bundle for a non-NixOS systemd host (or a user: --user)."""
    from vaultpy.bundle import bundle as do_bundle

    cfg = _config(repo)
    person = user or cfg.is_person(host)
    vaultpy_path = vaultpy_path or ("%h/.local/bin/vaultpy" if person
                                    else "/usr/local/bin/vaultpy")
    out = do_bundle(cfg, host, output, vaultpy_path, force, user=user)
    if person:
        _err().print(f"wrote {out}: as {host}, copy it to ~/.config/vaultpy (see README); "
                     f"its vaultpy.service runs {vaultpy_path}-activate", markup=False)
        return
    _err().print(f"wrote {out}: copy it to /etc/vaultpy on {host} (see README); its unit "
                 f"runs {vaultpy_path}-activate there", markup=False)


@app.command()
def status(
    json_out: JsonOpt = False,
    repo: RepoOpt = None,
    profile: Annotated[Path | None, typer.Option(
        "--profile", "-p", metavar="FILE", help="On a host: compare the live generation "
        "with this profile.")] = None,
    root: Annotated[Path, typer.Option("--root", metavar="DIR",
                                       help="With --profile: the host's root.")] = Path("/"),
) -> None:
    """Show hosts x secrets and the state of each cache file.

    Exits 1 unless every one is ok, as check does.  With --profile, on a host: the
    live generation and what differs from the profile."""
    from rich.table import Table

    if profile is not None:
        _host_status(profile, root, json_out)
        return

    from vaultpy.check import survey

    cfg = _config_for(repo, json_out)
    entries, problems = survey(cfg)
    ok = not problems and all(e.state == "ok" for e in entries)
    if json_out:
        _emit_json({"ok": ok,
                    "entries": [e.__dict__ for e in entries],
                    "problems": [p.as_dict() for p in problems]})
        if not ok:
            raise typer.Exit(1)
        return
    ids = sorted({e.id for e in entries})
    table = Table(show_edge=False)
    table.add_column("host")
    for sid in ids:
        table.add_column(sid, justify="center")
    marks = {"ok": "[green]ok[/]", "outdated": "[yellow]outdated[/]",
             "missing": "[red]missing[/]", "damaged": "[red]damaged[/]",
             "unsigned": "[red]unsigned[/]",
             "no-master": "[red]no master[/]", "bad-master": "[red]master damaged[/]"}
    grid: dict[str, dict[str, str]] = {}
    for e in entries:
        mark = marks[e.state] + ("" if e.installed else " [dim](tmpl)[/]")
        grid.setdefault(e.host, {})[e.id] = mark
    for host in cfg.hosts:
        table.add_row(host, *(grid.get(host, {}).get(sid, "[dim]·[/]") for sid in ids))
    _out().print(table)
    if problems:
        _err().print(f"[yellow]{len(problems)} problem(s); see vaultpy check[/]")
    if not ok:
        raise typer.Exit(1)


SHELLS = ("bash", "zsh", "fish")


@app.command()
def completion(
    shell: Annotated[str, typer.Argument(help="bash, zsh or fish.", metavar="SHELL")],
) -> None:
    """Print the completion script for SHELL.

    bash: vaultpy completion bash > ~/.local/share/bash-completion/completions/vaultpy
    zsh:  vaultpy completion zsh > ~/.zfunc/_vaultpy   (with fpath+=~/.zfunc)
    fish: vaultpy completion fish > ~/.config/fish/completions/vaultpy.fish
    """
    from typer.completion import get_completion_script  # type: ignore[attr-defined]

    if shell not in SHELLS:
        raise UsageError(Problem("SHELL", f"no completion for {shell!r}", "",
                                 "choose one of " + ", ".join(SHELLS)))
    script = get_completion_script(prog_name="vaultpy", complete_var="_VAULTPY_COMPLETE",
                                   shell=shell)
    sys.stdout.write(script if script.endswith("\n") else script + "\n")    # (fish's had none)


def _live(link: Path) -> Path | None:
    """The generation ``link`` (a profile's live link) points to, ``../`` resolved."""
    from vaultpy.activate.context import read_link_generation

    live = read_link_generation(link)
    return Path(os.path.realpath(live)) if live is not None else None


def _host_status_failing(profile: Path, root: Path, exc: VaultpyError,
                         json_out: bool) -> None:
    """status --profile when activating it would fail (a damaged cache file, a host key
    gone): what is live now, which that failure leaves in place, then the problems
    (found in review: only the error was shown, at the moment the live generation is
    what an operator needs to know).  A profile that cannot be read says only that."""
    from vaultpy import profile as profile_mod
    from vaultpy.activate import Context, Options

    try:
        loaded = profile_mod.load(profile)
    except VaultpyError:
        raise exc from None
    report: dict[str, Any] = {"ok": False, "changes": [],
                              "problems": [p.as_dict() for p in exc.problems]}
    for early in (False, True) if loaded.installed(early=True) else (False,):
        live = _live(Context(Options(profile=profile, root=root, early=early), loaded).link)
        report[f"{'early_' if early else ''}live"] = str(live) if live else None
        if not json_out:
            _out().print(f"{'early ' if early else ''}live generation: "
                         + (f"{live} (stays live: activating this profile would fail)"
                            if live else "none (and none until this profile activates)"),
                         markup=False)
    if json_out:
        _emit_json(report)
        return
    _print_problems(exc.problems)


def _host_status(profile: Path, root: Path, json_out: bool) -> None:
    from rich.table import Table

    from vaultpy.activate import Options
    from vaultpy.activate import activate as run

    try:
        ctx = run(Options(profile=profile, root=root, dry_run=True, quiet=True))
        runs = [ctx]
        if ctx.profile.installed(early=True):      # the early side is a generation too
            runs.append(run(Options(profile=profile, root=root, dry_run=True, quiet=True,
                                    early=True)))
    except VaultpyError as exc:
        _host_status_failing(profile, root, exc, json_out)
        raise typer.Exit(1) from None
    report: dict[str, Any] = {"ok": True, "changes": []}
    for r in runs:
        live = _live(r.link)
        files = []
        if live is not None:
            for entry in sorted(live.iterdir()):
                if entry.name.startswith("."):
                    continue
                st = entry.lstat()
                files.append({"name": entry.name, "uid": st.st_uid, "gid": st.st_gid,
                              "mode": f"{st.st_mode & 0o7777:04o}", "size": st.st_size})
        changes = [{**c.__dict__, "early": r.opts.early} for c in r.changes]
        if live is not None:
            changes += [{"name": name, "kind": "link", "detail": detail,
                         "early": r.opts.early} for name, detail in _link_drift(r)]
            changes += [{"name": unit, "kind": "owed", "detail": f"systemctl {verb} not "
                         "made: the activation that switched to this generation was "
                         "stopped first; the next one makes it", "early": r.opts.early}
                        for verb, unit in _owed_calls(live)]
        prefix = "early_" if r.opts.early else ""
        report.update({f"{prefix}live": str(live) if live else None, f"{prefix}files": files})
        report["changes"] += changes                 # one list: consumers need not merge
        report["ok"] = report["ok"] and not changes
        if json_out:
            continue
        _out().print(f"{'early ' if r.opts.early else ''}live generation: {live or 'none'}",
                     markup=False)
        table = Table(show_edge=False)
        for col in ("name", "uid", "gid", "mode", "size"):
            table.add_column(col)
        for f in files:
            table.add_row(*(str(f[k]) for k in ("name", "uid", "gid", "mode", "size")))
        _out().print(table)
        for c in changes:
            detail = f": {c['detail']}" if c["detail"] else ""
            _out().print(f"differs: {c['name']} ({c['kind']}{detail})", markup=False)
    if json_out:
        _emit_json(report)
    elif report["ok"]:
        _out().print("in sync with the profile", markup=False)
    if not report["ok"]:
        _exit(1)


def _owed_calls(live: Path) -> list[tuple[str, str]]:
    """(verb, unit) the live generation's manifest owes and no run has made (a killed
    activation: no ``.vaultpy-notified`` in it); none when it cannot be read now."""
    from vaultpy.activate.notify import owed_calls

    try:
        return owed_calls(live)
    except OSError:
        return []


def _link_drift(ctx: Any) -> list[tuple[str, str]]:
    """(item name, what is wrong) for each extra ``path`` of the profile that is not a
    link reaching the live file: missing, a file in its place, a link elsewhere."""
    import os

    out = []
    root = str(ctx.opts.root)
    for item in ctx.items():
        path = item.out.path
        if not path:
            continue
        at = os.path.join(root, path.lstrip("/"))
        want = os.path.realpath(os.path.join(str(ctx.link), item.name))
        if not os.path.lexists(at):
            out.append((item.name, f"{path} is missing"))
        elif not os.path.islink(at):
            out.append((item.name, f"{path} is not a link (a file or directory is there)"))
        elif os.path.realpath(at) != want:
            out.append((item.name, f"{path} leads elsewhere"))
    from vaultpy.activate.links import owed_removals

    for path, name in sorted(owed_removals(ctx).items()):
        if os.path.islink(os.path.join(root, path.lstrip("/"))):
            out.append((name, f"{path} is no item's any more: activation removes it"))
    return out


def _is_usage_error(exc: Exception) -> bool:
    """click's ClickException (vendored by typer, so named by its shape)."""
    return callable(getattr(exc, "format_message", None)) and isinstance(
        getattr(exc, "exit_code", None), int)


def _usage_error(exc: Any) -> None:
    """A usage error (unknown option, bad value, missing argument) as one line, like
    every other error: typer's default is a usage line, a hint and a boxed panel."""
    if type(exc).__name__ == "NoArgsIsHelpError":      # the help was shown instead
        return
    ctx = getattr(exc, "ctx", None)
    where = ctx.command_path if ctx is not None else "vaultpy"
    message = " ".join(str(exc.format_message()).split()).rstrip(".")
    if type(exc).__name__ == "NoSuchOption" and getattr(exc, "option_name", "") in _IDENTITY:
        # A script that passes -i to every command: this one needs none.
        message += (f" ({where} needs no master identity); before the command, every "
                    "command takes -i")
    elif type(exc).__name__ == "NoSuchOption" and getattr(exc, "option_name", "") in _BEFORE:
        name = exc.option_name
        message += (f" (it goes before the command: vaultpy {name}"
                    f"{'' if name == '--from-shares-prompt' else ' ' + _BEFORE[name]} "
                    f"{where.removeprefix('vaultpy ')} ...)")
    _err().print(f"{where}: {message}; see {where} --help", markup=False, soft_wrap=True,
                 style="red")


_IDENTITY = ("-i", "--identity")
# Options only the whole command line takes, before the command (found in review:
# `vaultpy decrypt ID --from-shares DIR` was told only "No such option").
_BEFORE = {"--from-shares": "DIR", "--from-shares-prompt": "", "--passphrase-fd": "N"}


# The global options that take a value (see _main above): what comes before the command.
_GLOBAL_VALUED = ("-C", "--repo", "-i", "--identity", "--from-shares", "--passphrase-fd")


def _command_name(argv: list[str]) -> str | None:
    """The command ``argv`` runs, when only global options precede it (else None:
    ``--help``, ``--version``, a completion option or a typo want the whole app)."""
    args = iter(argv)
    for a in args:
        if a in _GLOBAL_VALUED:
            if next(args, None) is None:
                return None
        elif not (a == "--from-shares-prompt" or a.startswith(("-C", "-i")) or
                  any(a.startswith(o + "=") for o in _GLOBAL_VALUED if o.startswith("--"))):
            return None if a.startswith("-") else a
    return None


def _app_for(argv: list[str]) -> typer.Typer:
    """The app with only the command ``argv`` runs.  typer builds a click command for
    every command it has, inspecting each function's signature and evaluating its
    annotations, at every start: ~60 ms for ~30 commands, against ~3 ms for one.  The
    whole app still answers anything else (help, completion, an unknown name)."""
    import copy

    name = _command_name(argv)
    if name is None or any(k.startswith("_") and k.endswith("_COMPLETE") for k in os.environ):
        return app
    commands = [c for c in app.registered_commands if c.callback is not None and
                (c.name or c.callback.__name__.lower().replace("_", "-")) == name]
    groups = [g for g in app.registered_groups if g.name == name]
    if len(commands) + len(groups) != 1:
        return app
    one = copy.copy(app)
    one.registered_commands, one.registered_groups = commands, groups
    return one


def _output_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a failure to write stdout or stderr: an OSError of the kind a
    write gives, naming no file, raised where output is written (the CLI modules, rich,
    click) — not by a write of vaultpy's library code to a file of its own."""
    if not (isinstance(exc, OSError) and exc.filename is None
            and exc.errno in OUTPUT_ERRNOS):
        return False
    tb = exc.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    where = tb.tb_frame.f_code.co_filename.replace(os.sep, "/")
    here = os.path.dirname(os.path.abspath(__file__)).replace(os.sep, "/")
    return (any(f"/{pkg}/" in where for pkg in ("rich", "click", "typer"))
            or (os.path.dirname(where) == here
            and os.path.basename(where).startswith(("cli", "output"))))


def main() -> None:
    """Entry point: map every failure to one readable line and an exit code."""
    if sys.argv[1:] == ["--version"]:
        print(f"vaultpy {__version__}")
        return
    try:
        # Not standalone: usage errors come here (see _usage_error), and an exit code
        # (typer.Exit, --help) is returned rather than raised.
        code = _app_for(sys.argv[1:])(prog_name="vaultpy", standalone_mode=False)
        sys.stdout.flush()      # here, where a failure to write is handled below
        if isinstance(code, int) and not isinstance(code, bool) and code:
            sys.exit(code)      # (130, typer's Ctrl-C, is reported below)
    except typer.Abort:         # end of input at a prompt
        _err().print("aborted", markup=False)
        sys.exit(1)
    except VaultpyError as exc:
        _print_problems(exc.problems)
        sys.exit(2 if isinstance(exc, UsageError) else 1)
    except KeyboardInterrupt:
        _err().print("interrupted", markup=False)
        sys.exit(130)
    except SystemExit as exc:
        if exc.code == 130:     # typer turns Ctrl-C into a silent exit 130
            _err().print("interrupted", markup=False)
        raise
    except BrokenPipeError as exc:
        # The reader went away (`vaultpy decrypt x | head`): exit like other Unix tools.
        sys.exit(output_lost(exc))
    except Exception as exc:
        if _is_usage_error(exc):
            _usage_error(exc)
            sys.exit(getattr(exc, "exit_code", 2))
        if isinstance(exc, OSError) and _output_error(exc):
            # stdout or stderr cannot be written (> /dev/full, a full disk): what the
            # command did stands; only its report is lost.  Not an internal error.
            sys.exit(output_lost(exc))
        if os.environ.get("VAULTPY_DEBUG"):
            raise
        _err().print(f"vaultpy: internal error: {type(exc).__name__}: {exc} (set "
                     "VAULTPY_DEBUG=1 for details and please report it)", markup=False)
        sys.exit(70)


# Commands that live in their own modules register themselves on `app`.
from vaultpy import cli_keys, cli_recovery, cli_vault  # noqa: E402, F401
