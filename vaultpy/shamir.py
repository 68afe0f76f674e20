"""Shamir k-of-n split of the master identity (SLIP-39 mnemonics)."""

from __future__ import annotations

from pathlib import Path

from vaultpy.errors import Problem, VaultpyError


def combine_from_dir(directory: Path) -> str:
    raise VaultpyError(Problem(str(directory), "Shamir shares are not implemented yet", "",
                               "use -i FILE"))


def combine_from_prompt() -> str:
    raise VaultpyError(Problem("--from-shares-prompt", "Shamir shares are not implemented "
                               "yet", "", "use -i FILE"))
