"""What a run measured: bytes each way, evaluations, losses; and the ``summary.json`` it becomes.

Bytes are counted from the packed buffers themselves, segment by segment. A downlink message is
counted once per worker that receives it (what crosses the network in a parameter server). The fp32
equivalent is what the same messages would have cost with the ``none`` codec (40-byte header +
4 bytes/element, per segment message).
"""

from __future__ import annotations

import json
import time

import qtrain
from qtrain.codecs import get_codec


class RunStats:
    """Bytes each way (counted from the packed messages, per segment), their fp32 equivalents,
    evaluations and the last batch loss; a checkpoint stores them (``state_dict``)."""

    COUNTERS = ("bytes_up", "bytes_down", "messages_up", "messages_down", "fp32_up", "fp32_down")

    def __init__(self, partition, workers: int):
        self.numel, self.workers = partition.numel, workers
        self.segments = len(partition)
        for key in self.COUNTERS:
            setattr(self, key, 0)
        self.evals: list[dict] = []
        self.last_batch_loss = float("nan")
        self.started = time.perf_counter()

    def add_uplinks(self, sizes: list[int], numel: int) -> None:
        """One segment's uplink messages (``numel`` elements each), one per worker."""
        self.bytes_up += int(sum(sizes))
        self.messages_up += len(sizes)
        self.fp32_up += len(sizes) * get_codec("none").wire_bytes(numel)

    def add_downlink(self, size: int, numel: int) -> None:
        """One segment's downlink message, received by every worker."""
        self.bytes_down += size * self.workers
        self.messages_down += self.workers
        self.fp32_down += self.workers * get_codec("none").wire_bytes(numel)

    @property
    def compression_up(self) -> float:
        return self.fp32_up / max(self.bytes_up, 1)

    def add_eval(self, step: int, ev: dict, trace=None) -> None:
        """Record an evaluation ({"loss", "accuracy"?}) in the summary history and the trace."""
        self.evals.append({"step": step, **{f"test_{k}": v for k, v in ev.items()}})
        if trace is not None:
            trace.add_eval(step, ev["loss"], ev.get("accuracy"))

    def state_dict(self) -> dict:
        sd = {key: getattr(self, key) for key in self.COUNTERS}
        sd.update({"last_batch_loss": float(self.last_batch_loss), "evals": json.dumps(self.evals)})
        return sd

    def load_state_dict(self, sd: dict) -> None:
        for key in self.COUNTERS:
            setattr(self, key, int(sd[key]))
        self.last_batch_loss, self.evals = float(sd["last_batch_loss"]), json.loads(sd["evals"])

    def summary(self, setup, steps_done: int, final: dict, train: dict, sha: str, **extra) -> dict:
        ds = setup.dataset
        up32, down32 = self.fp32_up, self.fp32_down
        out = {
            "algorithm": setup.algorithm.name,
            "workers": setup.workers,
            "steps": steps_done,
            "model": setup.cfg.model.name,
            "dataset": ds.name,
            "task": ds.task,
            "numel": self.numel,
            "segments": self.segments,
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
        if "accuracy" in final:  # classification and language models (a library run has none)
            out["final_test_accuracy"] = final["accuracy"]
            out["final_train_accuracy"] = train.get("accuracy")
        if "perplexity" in final:
            out["final_test_perplexity"] = final["perplexity"]
            out["final_train_perplexity"] = train.get("perplexity")
        if ds.optimum_train_loss is not None:
            out["optimum_train_loss"] = ds.optimum_train_loss
        out.update(extra)
        return out


def trace_attrs(setup, topology, partition) -> dict:
    up, down = setup.uplink.codec, setup.downlink.codec
    numel = partition.numel
    return {
        "algorithm": setup.algorithm.name,
        "uplink_codec": json.dumps(
            {"codec": up.name, **up.params(), "error_feedback": setup.uplink.error_feedback}
        ),
        "downlink_codec": json.dumps(
            {"codec": down.name, **down.params(), "error_feedback": setup.downlink.error_feedback}
        ),
        "uplink_bits_per_element": 8 * partition.wire_bytes(up) / numel,
        "downlink_bits_per_element": 8 * partition.wire_bytes(down) / numel,
        "fp32_message_bytes": partition.wire_bytes(get_codec("none")),
        "numel": numel,
        "segments": len(partition),
        "world_size": topology.world_size,
        "workers": topology.num_workers,
        "server_ranks": json.dumps(list(topology.servers)),
        "colocated": int(topology.colocated),  # every rank works and serves: both roles' rows
        "segment_owners": json.dumps([topology.servers[s.owner] for s in partition]),
        "steps_planned": setup.steps,
        "qtrain_version": qtrain.__version__,
    }
