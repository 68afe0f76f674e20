"""CLI commands for Vault/OpenBao (pull, push, access): registered on vaultpy.cli.app."""

from __future__ import annotations
