"""qtrain as a library: your model, your data, your loop (docs/library.md).

sess = qtrain.init("configs/default.yaml")
if sess.is_server:
    sess.serve()
else:
    opt = sess.optimizer(model)
    for x, y in sess.shard(dataset):
        opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step()

qtrain.get_codec(name, **params) is the codecs' public API on the compiled kernels
(kernels/fast_codec.py); qtrain.codecs.get_codec is the torch reference.
"""

from qtrain.kernels.fast_codec import get_codec
from qtrain.library.errors import UsageError
from qtrain.library.optimizer import DistributedOptimizer
from qtrain.library.session import Session, init, session
from qtrain.library.shard import ShardedLoader

__all__ = ["DistributedOptimizer", "Session", "ShardedLoader", "UsageError", "get_codec", "init", "session"]
