"""qtrain: communication-efficient distributed training on MPI clusters.

Layers (imports go downward only, see docs/architecture.md):
cli -> runtime -> engine -> algorithms, codecs -> io, models, data -> analysis.
"""

__version__ = "0.1.0"
