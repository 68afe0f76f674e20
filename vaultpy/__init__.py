"""vaultpy: a declarative, age-based secret compiler for NixOS and plain Linux hosts.

The library API (the CLI is a thin layer over it)::

    from vaultpy import model, renc, check
    cfg = model.load(Path("."))            # hosts.toml -> typed Config
    result = renc.renc(cfg)                # master secrets -> per-host cache
    problems = check.check(cfg)            # [] when the cache is complete

Errors the user can fix are :class:`vaultpy.errors.VaultpyError`.
"""

__version__ = "0.1.0"
