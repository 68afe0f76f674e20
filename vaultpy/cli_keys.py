"""CLI commands registered on vaultpy.cli.app (see the module that implements them)."""

from __future__ import annotations
