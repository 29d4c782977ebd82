"""The reproductions by name, in the order ``make reproduce`` runs them."""

from __future__ import annotations

from qtrain.reproduce import (
    ecq_compression,
    ecq_linear,
    ecq_projection,
    efficient_adam,
    efficient_adam_lm,
    qadam,
    qcmd_sparsity,
)

REPRODUCTIONS = {
    "ecq-linear": ecq_linear.reproduce,  # ECQ-SGD vs QSGD vs SGD, Syn-256/512/1024
    "ecq-compression": ecq_compression.reproduce,  # compression within 0.5 points, LeNet / Fashion-MNIST
    "ecq-projection": ecq_projection.reproduce,  # projected ResNet-50 speed-up, 8-512 workers, 40 Gb/s
    "qcmd-sparsity": qcmd_sparsity.reproduce,  # QCMD/QRDA model density across codecs and l1
    "qadam": qadam.reproduce,  # gradient quantization with/without EF, weight quantization bits
    "efficient-adam": efficient_adam.reproduce,  # 1-bit both ways vs Adam on Fashion-MNIST, EF ablations
    "efficient-adam-lm": efficient_adam_lm.reproduce,  # the same on a character transformer: perplexity
}

# Reproductions that measure time (their numbers would suffer from a neighbour on the same cores):
# `reproduce --jobs N` runs them alone, after the others.
MEASURES_TIME = {"ecq-projection"}
# The others' cost on the 2-core reference machine, minutes, for `--jobs N` to start the longest
# first (measured by `make reproduce --jobs 2` on 2026-12-01; only the order matters).
MINUTES = {
    "efficient-adam-lm": 21,
    "efficient-adam": 15,
    "ecq-compression": 14,
    "qcmd-sparsity": 11,
    "ecq-linear": 3,
    "qadam": 2,
}
