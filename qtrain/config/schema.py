"""Every configuration key, its type and its default. ``docs/configuration.md`` lists them.

``None`` means "the algorithm's default" for the link settings (codec, bits, error feedback), and
"not set" elsewhere. Cross-field rules (one of steps/epochs, codec parameters that fit the codec)
are checked in :func:`qtrain.config.loader.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

BUFFER_POLICIES = ("average", "broadcast")  # model.buffers (qtrain/engine/buffers.py)
# runtime.segment_bytes: segments of at most 5 MiB cut the benchmarks' 17.4 MB MLP into 4 of 4.35 MB,
# the fastest cut for fp32 Adam and 1-bit Efficient-Adam together on the emulated 1 Gbit/s network
# (docs/benchmarks.md, "The default segment size"); a model below it travels as one message per way
DEFAULT_SEGMENT_BYTES = 5 << 20
# runtime.segments' bound, and engine/partition.py's: keeps every MPI tag below 32767, the smallest
# MPI_TAG_UB the standard allows (here, so validation refuses what the partition would)
MAX_SEGMENTS = 4096


@dataclass
class ModelConfig:
    name: str = "mlp"  # logreg | mlp | lenet | resnet20 | package.module:function
    hidden: list[int] = field(default_factory=lambda: [64])  # mlp hidden widths
    kwargs: dict = field(default_factory=dict)  # keyword arguments for a plug-in model function
    # BatchNorm statistics and other buffers at evaluations and checkpoints: average | broadcast
    buffers: str = "average"


@dataclass
class DataConfig:
    # digits | synthetic-regression | synthetic-sparse-logistic | toy-convex | libsvm | cifar10 | npz
    # | idx (MNIST-layout directory) | fashion-mnist | text (character-level, any UTF-8 file)
    name: str = "digits"
    batch_size: int = 32  # per worker
    path: str | None = None  # libsvm file, cifar10 directory, npz file, idx directory, text file
    test_path: str | None = None  # libsvm: a separate test file (else test_fraction of `path`)
    test_fraction: float = 0.2  # held-out share where the dataset has no test split
    samples: int = 10000  # synthetic datasets: training samples
    features: int = 100  # synthetic datasets: dimension
    noise: float = 0.1  # synthetic-regression: label noise std
    density: float = 0.1  # synthetic-sparse-logistic: share of nonzero true weights
    shuffle: bool = True  # reshuffle each worker's shard every epoch
    context: int = 64  # text: characters per training window
    # libsvm and npz labels: classification | regression | auto (integer-valued labels in one
    # column are classes, anything else is regression; the plan prints what was chosen)
    task: str = "auto"


@dataclass
class AlgorithmConfig:
    name: str = (
        "efficient-adam"  # sgd | adam | ecq-sgd | qadam | efficient-adam | qcmd-adagrad | qrda-adagrad
    )
    lr: float = 0.001
    momentum: float = 0.0  # sgd, ecq-sgd: heavy-ball momentum on the server
    nesterov: bool = False
    weight_decay: float = 0.0  # l2 added to the gradient (sgd, adam, ecq-sgd, qadam, efficient-adam)
    # decoupled weight decay, x <- x * (1 - lr * weight_decay) where the weights live (Adam-type: AdamW,
    # torch.optim.Adam's own flag; sgd, ecq-sgd: SGDW) instead of the l2 term in the gradient
    decoupled_weight_decay: bool = False
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    eps_inside_sqrt: bool = False  # qadam/efficient-adam: sqrt(v + eps) instead of sqrt(v) + eps
    bias_correction: bool = True  # Adam-type: divide m, v by (1 - beta^t)
    amsgrad: bool = False  # adam: v_max = max(v_max, v)
    ef_alpha: float = 1.0  # error feedback: send Q(p + alpha * e)
    ef_beta: float = 1.0  # error feedback: e <- beta * e + (p - Q(...))
    weight_quantization: bool = False  # qadam: downlink sends quantized weights, server keeps masters
    l1: float = 0.0  # qcmd/qrda: lambda of the l1 regularizer
    adagrad_eps: float = 1e-10  # qcmd/qrda: delta in H = delta + sqrt(sum g^2)
    lr_decay: float = 0.0  # qcmd: lr_t = lr / (1 + (t-1) * lr_decay), as torch.optim.Adagrad
    # the first N steps send both ways uncompressed (codec none, no error feedback); the configured
    # codecs take over at step N + 1 with fresh error feedback (DeepSpeed's freeze_step, PowerSGD's
    # start_powerSGD_iter)
    uncompressed_steps: int = 0


@dataclass
class LinkConfig:
    codec: str | None = None  # None: the algorithm's default codec for this direction
    bits: int | None = None  # uniform: bits per element; other codecs: must match their width
    bucket: int = 512
    error_feedback: bool | None = None  # None: the algorithm's default
    norm: str | None = None  # uniform: l2 | linf
    rounding: str | None = None  # uniform: stochastic | nearest
    levels: int | None = None  # uniform: s (instead of bits)
    kappa: float | None = None  # threshold
    reference: str | None = None  # threshold: linf | mean
    layout: str | None = None  # threshold: auto | dense | sparse
    k: int | None = None  # topk: entries per bucket
    ratio: float | None = None  # topk: k = ratio * bucket
    values: str | None = None  # topk: fp32 | fp16
    entropy: str | None = None  # any codec: zstd adds a lossless stage after quantization (codecs.entropy)
    entropy_level: int | None = None  # zstd level 1..19 (unset: 3)


@dataclass
class TrainConfig:
    steps: int | None = None  # exactly one of steps / epochs; neither: 200 steps
    epochs: float | None = None  # passes over each worker's shard
    eval_every: int = 50  # server evaluates on the test split every N steps (and at the end)
    log_every: int = 10
    progress: str = "auto"  # rank 0: bar (rich progress bar) | lines (a line per log_every) | auto (see docs)


@dataclass
class RuntimeConfig:
    device: str = "auto"  # workers: auto | cpu | cuda | cuda:N
    server_device: str = "cpu"  # the serving ranks: cpu | cuda | cuda:N
    cuda_aware: str = "auto"  # auto | on | off
    threads: int = 1  # torch intra-op and numba kernel threads per process (0: their defaults)
    kernels: str = "auto"  # codec fast path: auto (numba on CPU where a kernel exists) | numba | torch
    timeout_s: float = 300.0  # watchdog: a phase that takes longer aborts the job
    segments: int = 0  # messages per direction per step: the flat vector cut into this many (0: by size)
    segment_bytes: int = DEFAULT_SEGMENT_BYTES  # with segments 0: segments of about this many fp32 bytes
    # serving ranks: ranks 0..servers-1 serve, each owning a shard of the segments; or "colocated":
    # every rank trains and serves 1/N of them (no rank only serves)
    servers: int | str = 1
    overlap: str = "auto"  # workers send each segment during backward: auto (CPU workers) | on | off
    backend: str = "auto"  # what carries the messages: auto (the launcher's) | mpi | torch (gloo)

    @property
    def colocated(self) -> bool:
        """Every rank trains and serves its shard (``servers: colocated``)."""
        return self.servers == "colocated"

    @property
    def segment_count(self) -> int:
        """The count ``Partition.build`` cuts (0: by ``segment_bytes``). A config written before the
        size default (``segments: 1`` beside a ``segment_bytes`` of its own) cut by size: so it
        still does, and rerunning an old run's config.yaml gives its cut."""
        if self.segments == 1 and self.segment_bytes not in (0, DEFAULT_SEGMENT_BYTES):
            return 0
        return self.segments


@dataclass
class CheckpointConfig:
    every: int = 0  # also write OUT/checkpoints/step-N.h5 every N steps (0: only at the end and on a stop)
    keep: int = 3  # keep the newest N checkpoints


@dataclass
class TraceConfig:
    enabled: bool = True  # write OUT/trace.h5 (one row per step per rank)
    flush_every: int = 10  # flush the trace every N steps (what a killed run keeps)
    timeline_every: int = 10  # MPI runs: record the per-segment timeline of every Nth step (0: never)
    csv: bool = False  # live metrics as OUT/metrics/rank-R.csv (step, wall_s, name, value), growing
    tensorboard: bool = False  # live metrics as TensorBoard events in OUT/tensorboard/rank-R


@dataclass
class Config:
    seed: int = 0
    workers: int = 2  # the simulator's default number of virtual workers (MPI: world size - 1)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    uplink: LinkConfig = field(default_factory=LinkConfig)
    downlink: LinkConfig = field(default_factory=LinkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    trace: TraceConfig = field(default_factory=TraceConfig)
