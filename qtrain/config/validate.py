"""Cross-field rules of a configuration; each error names the key."""

from __future__ import annotations

import re

from qtrain.config.loader import ConfigError
from qtrain.config.schema import BUFFER_POLICIES, DEFAULT_SEGMENT_BYTES, MAX_SEGMENTS
from qtrain.kernels import KERNEL_CHOICES


def _positive(value, key: str, allow_zero: bool = False) -> None:
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{key} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _at_most(value, key: str, limit: int, why: str) -> None:
    if value is not None and value > limit:
        raise ConfigError(f"{key} must be at most {limit} ({why}), got {value}")


# Upper bounds on sizes: far above any real run, low enough that a typo cannot make a rank
# allocate tens of GB before failing (uplink.bucket=4294967295 grew each worker to 12 GB).
SIZE_LIMITS = {
    "uplink.bucket": (1 << 24, "elements per bucket; a bucket is padded to full size"),
    "downlink.bucket": (1 << 24, "elements per bucket; a bucket is padded to full size"),
    "uplink.k": (1 << 24, "entries per bucket"),
    "downlink.k": (1 << 24, "entries per bucket"),
    "runtime.segments": (MAX_SEGMENTS, "messages per direction per step: MPI tags"),
    "runtime.servers": (1 << 12, "serving ranks"),
    "runtime.threads": (1024, "threads per process"),
    "runtime.timeout_s": (1e7, "seconds, about 115 days"),
    "data.batch_size": (1 << 24, "samples per worker per step"),
    "data.samples": (1 << 31, "synthetic samples"),
    "data.features": (1 << 24, "synthetic features"),
    "data.context": (1 << 16, "characters of context"),
    "workers": (1 << 20, "simulated workers"),
    "train.steps": (1 << 40, "steps"),
    "algorithm.uncompressed_steps": (1 << 40, "steps"),
    "train.epochs": (1e9, "epochs"),
    "checkpoint.keep": (1 << 20, "checkpoints kept"),
    "seed": ((1 << 63) - 1, "a 64-bit seed"),
}


# a torch device qtrain places ranks on; whether this node has it is checked where a rank is placed
# (runtime/placement.choose_device), the form here, before anything starts
DEVICE = re.compile(r"cpu|cuda(:[0-9]{1,4})?")


def _value(cfg, key: str):
    obj = cfg
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg, source: str) -> None:
    """Check ranges, names and combinations. ``source`` names the file for the error message."""
    try:
        _validate(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from exc


def _validate(cfg) -> None:
    from qtrain.algorithms import ALGORITHMS
    from qtrain.algorithms.links import resolve_links
    from qtrain.data import DATASETS
    from qtrain.models import MODELS

    a, t, d, r = cfg.algorithm, cfg.train, cfg.data, cfg.runtime
    if t.steps is not None and t.epochs is not None:
        raise ConfigError("set train.steps or train.epochs, not both")
    _positive(t.steps, "train.steps")
    _positive(t.epochs, "train.epochs")
    _positive(t.eval_every, "train.eval_every")
    _positive(t.log_every, "train.log_every")
    _positive(d.batch_size, "data.batch_size")
    _positive(d.samples, "data.samples")
    _positive(d.features, "data.features")
    _positive(cfg.workers, "workers")
    _positive(a.lr, "algorithm.lr")
    _positive(a.eps, "algorithm.eps")
    _positive(a.adagrad_eps, "algorithm.adagrad_eps", allow_zero=True)
    _positive(a.weight_decay, "algorithm.weight_decay", allow_zero=True)
    _positive(a.momentum, "algorithm.momentum", allow_zero=True)
    _positive(a.l1, "algorithm.l1", allow_zero=True)
    _positive(a.lr_decay, "algorithm.lr_decay", allow_zero=True)
    _positive(r.threads, "runtime.threads", allow_zero=True)
    if cfg.model.buffers not in BUFFER_POLICIES:
        raise ConfigError(
            f"model.buffers must be one of {', '.join(BUFFER_POLICIES)}, got {cfg.model.buffers!r}"
        )
    if r.overlap not in ("auto", "on", "off"):
        raise ConfigError(f"runtime.overlap must be auto, on or off, got {r.overlap!r}")
    if r.backend not in ("auto", "mpi", "torch"):
        raise ConfigError(f"runtime.backend must be auto, mpi or torch, got {r.backend!r}")
    if r.kernels not in KERNEL_CHOICES:
        raise ConfigError(f"runtime.kernels must be one of {', '.join(KERNEL_CHOICES)}, got {r.kernels!r}")
    _positive(r.timeout_s, "runtime.timeout_s")
    _positive(r.segments, "runtime.segments", allow_zero=True)
    if isinstance(r.servers, str):
        if r.servers != "colocated":
            raise ConfigError(
                f"runtime.servers must be a count of serving ranks or colocated, got {r.servers!r}"
            )
    else:
        _positive(r.servers, "runtime.servers")
    _positive(r.segment_bytes, "runtime.segment_bytes", allow_zero=True)
    if r.segments > 1 and r.segment_bytes not in (0, DEFAULT_SEGMENT_BYTES):
        raise ConfigError(
            f"runtime.segments {r.segments} and runtime.segment_bytes {r.segment_bytes}: "
            "set runtime.segments or runtime.segment_bytes, not both"
        )
    _positive(cfg.checkpoint.every, "checkpoint.every", allow_zero=True)
    _positive(cfg.checkpoint.keep, "checkpoint.keep")
    _positive(cfg.trace.flush_every, "trace.flush_every")
    _positive(d.context, "data.context")
    _positive(cfg.trace.timeline_every, "trace.timeline_every", allow_zero=True)
    if cfg.seed < 0:
        raise ConfigError(f"seed must be >= 0, got {cfg.seed}")
    for key in ("beta1", "beta2"):
        if not 0 <= getattr(a, key) < 1:
            raise ConfigError(f"algorithm.{key} must be in [0, 1), got {getattr(a, key)}")
    if cfg.trace.tensorboard:
        from qtrain.io.live_metrics import TENSORBOARD_MISSING, tensorboard_available

        if not tensorboard_available():
            raise ConfigError(TENSORBOARD_MISSING)
    if d.task not in ("auto", "classification", "regression"):
        raise ConfigError(f"data.task must be auto, classification or regression, got {d.task!r}")
    if not 0 < d.test_fraction < 1:
        raise ConfigError(f"data.test_fraction must be in (0, 1), got {d.test_fraction}")
    if not 0 < d.density <= 1:
        raise ConfigError(f"data.density must be in (0, 1], got {d.density}")
    if a.name not in ALGORITHMS:
        raise ConfigError(
            f"algorithm.name: unknown algorithm {a.name!r}; choose one of {', '.join(ALGORITHMS)}"
        )
    if d.name not in DATASETS:
        raise ConfigError(f"data.name: unknown dataset {d.name!r}; choose one of {', '.join(DATASETS)}")
    if cfg.model.name not in MODELS and ":" not in cfg.model.name:
        raise ConfigError(
            f"model.name: unknown model {cfg.model.name!r}; choose one of {', '.join(MODELS)} "
            "or package.module:function"
        )
    if a.weight_quantization and a.name != "qadam":
        raise ConfigError("algorithm.weight_quantization is a qadam option")
    _positive(a.uncompressed_steps, "algorithm.uncompressed_steps", allow_zero=True)
    if a.decoupled_weight_decay and a.name in ("qcmd-adagrad", "qrda-adagrad"):
        raise ConfigError(
            f"algorithm.decoupled_weight_decay: {a.name}'s rule has no weight decay (its regularizer is "
            "algorithm.l1)"
        )
    if a.l1 and a.name not in ("qcmd-adagrad", "qrda-adagrad"):
        raise ConfigError("algorithm.l1 applies to qcmd-adagrad and qrda-adagrad only")
    if r.device != "auto" and not DEVICE.fullmatch(r.device):
        raise ConfigError(
            f"runtime.device must be auto, cpu, cuda or cuda:N (N a GPU index), got {r.device!r}"
        )
    if not DEVICE.fullmatch(r.server_device):
        raise ConfigError(
            f"runtime.server_device must be cpu, cuda or cuda:N (N a GPU index), got {r.server_device!r}"
        )
    if t.progress not in ("auto", "bar", "lines"):
        raise ConfigError(f"train.progress must be auto, bar or lines, got {t.progress!r}")
    if r.cuda_aware not in ("auto", "on", "off"):
        raise ConfigError(f"runtime.cuda_aware must be auto, on or off, got {r.cuda_aware!r}")
    for key, h in enumerate(cfg.model.hidden):
        _positive(h, f"model.hidden[{key}]")
        _at_most(h, f"model.hidden[{key}]", 1 << 20, "units in a layer")
    for key, (limit, why) in SIZE_LIMITS.items():
        value = _value(cfg, key)
        if not isinstance(value, str):  # runtime.servers: colocated is a word
            _at_most(value, key, limit, why)
    _positive(cfg.uplink.bucket, "uplink.bucket")
    _positive(cfg.downlink.bucket, "downlink.bucket")
    try:
        resolve_links(cfg)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
