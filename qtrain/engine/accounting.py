"""What a run measured: bytes each way, evaluations, losses; and the ``summary.json`` it becomes.

Bytes are counted from the packed buffers themselves. A downlink message is counted once per
worker that receives it (what crosses the network in a parameter server). The fp32 equivalent is
what the same messages would have cost with the ``none`` codec (40-byte header + 4 bytes/element).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

import qtrain
from qtrain.codecs import get_codec


@dataclass
class RunStats:
    numel: int
    workers: int
    bytes_up: int = 0
    bytes_down: int = 0
    messages_up: int = 0
    messages_down: int = 0
    evals: list[dict] = field(default_factory=list)
    last_batch_loss: float = float("nan")
    started: float = field(default_factory=time.perf_counter)

    def add_uplinks(self, sizes: list[int]) -> None:
        self.bytes_up += sum(sizes)
        self.messages_up += len(sizes)

    def add_downlink(self, size: int) -> None:
        self.bytes_down += size * self.workers
        self.messages_down += self.workers

    def add_eval(self, step: int, ev: dict, trace=None) -> None:
        """Record an evaluation ({"loss", "accuracy"?}) in the summary history and the trace."""
        self.evals.append({"step": step, **{f"test_{k}": v for k, v in ev.items()}})
        if trace is not None:
            trace.add_eval(step, ev["loss"], ev.get("accuracy"))

    def fp32_bytes(self, messages: int) -> int:
        return messages * get_codec("none").wire_bytes(self.numel)

    def summary(self, setup, steps_done: int, final: dict, train: dict, sha: str, **extra) -> dict:
        ds = setup.dataset
        up32, down32 = self.fp32_bytes(self.messages_up), self.fp32_bytes(self.messages_down)
        out = {
            "algorithm": setup.algorithm.name,
            "workers": setup.workers,
            "steps": steps_done,
            "model": setup.cfg.model.name,
            "dataset": ds.name,
            "task": ds.task,
            "numel": self.numel,
            "seed": setup.cfg.seed,
            "uplink": {
                "codec": setup.uplink.codec.name,
                **setup.uplink.codec.params(),
                "bits": setup.uplink.codec.bits,
                "error_feedback": setup.uplink.error_feedback,
            },
            "downlink": {
                "codec": setup.downlink.codec.name,
                **setup.downlink.codec.params(),
                "bits": setup.downlink.codec.bits,
                "error_feedback": setup.downlink.error_feedback,
                "mode": setup.algorithm.downlink_mode,
            },
            "final_train_loss": train["loss"],
            "final_batch_loss": self.last_batch_loss,
            "final_test_loss": final["loss"],
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "bytes_fp32_equivalent_up": up32,
            "bytes_fp32_equivalent_down": down32,
            "bytes_fp32_equivalent": up32 + down32,
            "compression_up": up32 / self.bytes_up if self.bytes_up else None,
            "compression_down": down32 / self.bytes_down if self.bytes_down else None,
            "wall_seconds": time.perf_counter() - self.started,
            "params_sha256": sha,
            "evals": self.evals,
        }
        if ds.task == "classification":
            out["final_test_accuracy"] = final["accuracy"]
            out["final_train_accuracy"] = train["accuracy"]
        if ds.optimum_train_loss is not None:
            out["optimum_train_loss"] = ds.optimum_train_loss
        out.update(extra)
        return out


def trace_attrs(setup, numel: int, world: int) -> dict:
    up, down = setup.uplink.codec, setup.downlink.codec
    return {
        "algorithm": setup.algorithm.name,
        "uplink_codec": json.dumps(
            {"codec": up.name, **up.params(), "error_feedback": setup.uplink.error_feedback}
        ),
        "downlink_codec": json.dumps(
            {"codec": down.name, **down.params(), "error_feedback": setup.downlink.error_feedback}
        ),
        "uplink_bits_per_element": 8 * up.wire_bytes(numel) / numel,
        "downlink_bits_per_element": 8 * down.wire_bytes(numel) / numel,
        "fp32_message_bytes": get_codec("none").wire_bytes(numel),
        "numel": numel,
        "world_size": world,
        "workers": world - 1,
        "steps_planned": setup.steps,
        "qtrain_version": qtrain.__version__,
    }
