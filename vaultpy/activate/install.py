"""Steps ``decrypt_secrets`` and ``render_templates``: the generation's files.

Each file is created with O_CREAT|O_EXCL|O_NOFOLLOW relative to the generation
directory's descriptor, and gets its owner, group and mode (fchown, fchmod)
while it is still empty and mode 0000: no byte is ever readable by anyone the
profile did not name.
"""

from __future__ import annotations

import os

from vaultpy import age, templates
from vaultpy.activate.context import Context
from vaultpy.activate.users import Accounts
from vaultpy.errors import Problem, VaultpyError, display_path
from vaultpy.profile import Item


def _needed_ids(ctx: Context) -> list[str]:
    ids: dict[str, None] = {}
    for item in ctx.items():
        if item.is_template:
            for ref in templates.references(item.content or ""):
                ids.setdefault(ref)
        elif item.id is not None:
            ids.setdefault(item.id)
    return list(ids)


def create_file(dir_fd: int, name: str, data: bytes, uid: int, gid: int, mode: int) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o000, dir_fd=dir_fd)
    try:
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


def _owner(ctx: Context, accounts: Accounts, item: Item) -> tuple[int, int]:
    label = f"{'template' if item.is_template else 'secret'} {item.name!r}"
    return accounts.uid(item.out.owner, label), accounts.gid(item.out.group, label)


def _install(ctx: Context, item: Item, data: bytes, accounts: Accounts) -> None:
    uid, gid = _owner(ctx, accounts, item)       # unknown users fail before any write
    if ctx.opts.dry_run:
        return
    assert ctx.generation_fd is not None
    create_file(ctx.generation_fd, item.name, data, uid, gid, int(item.out.mode, 8))


def decrypt_secrets(ctx: Context) -> None:
    """Decrypt every secret this run needs (installed or used by a template) with the
    host's key, and install the secret files."""
    for sid in _needed_ids(ctx):
        item = ctx.profile.secret(sid)
        if item is None or item.file is None:
            raise VaultpyError(Problem(ctx.profile.source, f"secret {sid!r} is used but not "
                                       "in the profile", "secrets",
                                       "regenerate the profile with vaultpy profile"))
        try:
            data = item.file.read_bytes()
        except OSError as exc:
            raise VaultpyError(Problem(display_path(item.file), f"secret {sid!r}: cannot "
                                       f"read its cache file: {exc.strerror}", "file",
                                       "run vaultpy renc and deploy again")) from None
        try:
            ctx.plaintext[sid] = age.decrypt(data, ctx.identities, str(item.file))
        except VaultpyError as exc:
            p = exc.problems[0]
            raise VaultpyError(Problem(p.file, f"secret {sid!r}: {p.message}", p.field,
                                       "was it encrypted to this host's key? run vaultpy "
                                       "renc and deploy again")) from None
    accounts = Accounts(ctx.opts.root)
    count = 0
    for item in ctx.items():
        if not item.is_template and item.id is not None:
            _install(ctx, item, ctx.plaintext[item.id], accounts)
            count += 1
    ctx.log("decrypt_secrets", f"{count} secret file(s), {len(ctx.plaintext)} decrypted")


def render_templates(ctx: Context) -> None:
    """Fill each template's placeholders; a placeholder left over is an error."""
    accounts = Accounts(ctx.opts.root)
    count = 0
    for item in ctx.items():
        if not item.is_template:
            continue
        try:
            data = templates.render(item.content or "", ctx.plaintext, item.trim)
        except KeyError as exc:
            raise VaultpyError(Problem(ctx.profile.source, f"template {item.name!r}: "
                                       f"placeholder for secret {exc.args[0]!r} left "
                                       "unfilled: this host does not receive it",
                                       "templates",
                                       "regenerate the profile with vaultpy profile")) from None
        except templates.TemplateError as exc:
            raise VaultpyError(Problem(ctx.profile.source, f"template {item.name!r}: {exc}",
                                       "templates", "fix the template in hosts.toml")) from None
        ctx.rendered[item.name] = data
        _install(ctx, item, data, accounts)
        count += 1
    ctx.log("render_templates", f"{count} template(s)")
