"""Which codecs a step sends with (DESIGN.md section 9, "step plan").

``algorithm.uncompressed_steps`` = W: steps 1..W (and the initial weights of weights mode, step 0)
send both ways with codec ``none`` and no error feedback, as DeepSpeed's 1-bit Adam runs its
``freeze_step`` warm-up uncompressed and PyTorch's PowerSGD hook all-reduces plainly until
``start_powerSGD_iter``. From step W + 1 the configured codecs take over with fresh error feedback
(the buffers are still zero at the switch: nothing is fed back while nothing is lost). The algorithm's
rules run unchanged throughout, so a warm-up of Efficient-Adam is Efficient-Adam with the identity
quantizer, which in early training, where the moments and the error buffers are far from settled,
tracks full-precision Adam (Chen et al. 2022 analyse the compressed rule as a perturbation of that
one). Both sides decide from the step number alone, so no message is needed to agree on the switch.
"""

from __future__ import annotations

from qtrain.codecs import get_codec
from qtrain.kernels import codec_path


class LinkPlan:
    """The codec paths of each step: the configured ones, or ``none`` during the warm-up."""

    def __init__(self, uplink_codec, downlink_codec, uncompressed_steps: int, device, kernels: str = "auto"):
        self.uncompressed_steps = uncompressed_steps
        self.main = (codec_path(uplink_codec, device, kernels), codec_path(downlink_codec, device, kernels))
        if uncompressed_steps:
            none = get_codec("none")
            path = codec_path(none, device, kernels)
            self.warm = (path, path)
        else:
            self.warm = self.main

    def uncompressed(self, step: int) -> bool:
        """Whether step ``step`` (0: the initial weights) sends uncompressed."""
        return step <= self.uncompressed_steps and self.uncompressed_steps > 0

    def paths(self, step: int) -> tuple:
        """(uplink path, downlink path) of step ``step``."""
        return self.warm if self.uncompressed(step) else self.main

    def codecs(self, step: int) -> tuple:
        """(uplink codec, downlink codec) of step ``step``: what sizes its messages."""
        up, down = self.paths(step)
        return up.codec, down.codec
