"""Which identity files to use, in order of precedence (DESIGN §6b):

``-i FILE`` (repeatable) > ``VAULTPY_IDENTITY`` (``:``-separated) >
``[vaultpy] identity`` in hosts.toml > ``~/.config/vaultpy/master.txt``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from vaultpy import age
from vaultpy.errors import Problem, VaultpyError

TYPE_CHECKING = False       # the incremental renc loads identities, never the model
if TYPE_CHECKING:
    from vaultpy.model import Config

DEFAULT_IDENTITY = "~/.config/vaultpy/master.txt"

_in_memory: list[age.Identity] = []


def use_in_memory(text: str, source: str) -> None:
    """Use identities held only in memory (e.g. rebuilt from Shamir shares) instead of
    any file; the key never touches the disk."""
    _in_memory[:] = age.parse_identity_text(text, source)


def use_loaded(keys: Sequence[age.Identity]) -> None:
    """Use identities already unlocked in this process (no second passphrase prompt)."""
    _in_memory[:] = keys


def identity_paths(cfg: Config, explicit: Sequence[Path] = ()) -> list[Path]:
    return configured_paths(cfg.identity, explicit)


def configured_paths(configured: Path | None, explicit: Sequence[Path] = ()) -> list[Path]:
    """:func:`identity_paths`, given ``[vaultpy] identity`` (``configured``)."""
    if explicit:
        return list(explicit)
    env = os.environ.get("VAULTPY_IDENTITY")
    if env:
        paths = [Path(os.path.expanduser(p)) for p in env.split(":") if p]
        if not paths:
            raise VaultpyError(Problem("VAULTPY_IDENTITY", f"names no file: {env!r}", "",
                                       "set it to identity files separated by ':'"))
        return paths
    if configured is not None:
        return [configured]
    default = Path(os.path.expanduser(DEFAULT_IDENTITY))
    if default.exists():
        return [default]
    raise VaultpyError(Problem("hosts.toml", "no master identity to decrypt with",
                               "vaultpy.identity",
                               "pass -i FILE, set VAULTPY_IDENTITY, or set [vaultpy] "
                               "identity"))


def load(cfg: Config, explicit: Sequence[Path] = (),
         ask: age.PassphraseFn = age.passphrase_from_env_or_tty) -> list[age.Identity]:
    """Read and unlock every identity once (one passphrase prompt per file)."""
    return load_configured(cfg.identity, explicit, ask)


def load_configured(configured: Path | None, explicit: Sequence[Path] = (),
                    ask: age.PassphraseFn = age.passphrase_from_env_or_tty
                    ) -> list[age.Identity]:
    """:func:`load`, given ``[vaultpy] identity`` (``configured``)."""
    if _in_memory and not explicit:
        return list(_in_memory)
    # A file named where it is typed (-i, VAULTPY_IDENTITY) may be a pipe, as
    # -i <(pass show key); one named in hosts.toml, which a clone brings, or the
    # default one, found, must be a regular file: a FIFO there would hang the run.
    typed = bool(explicit) or bool(os.environ.get("VAULTPY_IDENTITY"))
    return age.load_identities(configured_paths(configured, explicit), ask,
                               regular_only=not typed)
