"""qtrain: communication-efficient distributed training on MPI clusters.

Layers (imports go downward only, see docs/architecture.md):
cli -> library -> runtime -> engine -> algorithms, codecs -> io, models, data -> analysis.

The public Python API (``qtrain.init``, ``qtrain.session``, ``qtrain.Session``,
``qtrain.DistributedOptimizer``, ``qtrain.UsageError``, ``qtrain.get_codec``; docs/library.md) lives in
``qtrain.library``; it is imported on first use, so ``import qtrain`` stays cheap for the CLI.
"""

__version__ = "0.1.0"

_PUBLIC = ("init", "session", "Session", "DistributedOptimizer", "ShardedLoader", "UsageError", "get_codec")
__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str):
    if name in _PUBLIC:
        import qtrain.library  # noqa: PLC0415 - the public API, on first use (PEP 562)

        return getattr(qtrain.library, name)
    raise AttributeError(f"module 'qtrain' has no attribute {name!r}")
