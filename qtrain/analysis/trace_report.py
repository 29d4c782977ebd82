"""What a trace says: bytes per step each way vs fp32, time per phase, stragglers, loss, accuracy
and compression error over steps."""

from __future__ import annotations

import math

import numpy as np

WORKER_PHASES = ("compute_s", "encode_s", "comm_s", "decode_s")
# mean per serving rank; decode_cpu_s is the CPU time while decode_s was timed (trace.py UNITS)
SERVER_PHASES = ("wait_s", "decode_s", "decode_cpu_s", "encode_s", "comm_s", "compute_s")


def per_step(steps: np.ndarray) -> dict[str, np.ndarray]:
    """Per-step series from the server rows: one per step and serving rank (``runtime.servers``),
    the bytes summed over the serving ranks, the rest from the lead's row (the lowest rank; every
    serving rank's row carries the run's loss and statistics)."""
    rows = np.sort(steps[steps["role"] == 0], order=["step", "rank"])
    _, first = np.unique(rows["step"], return_index=True)
    server = rows[first]
    return {
        "step": server["step"].astype(np.int64),
        "bytes_up": np.add.reduceat(rows["bytes_recv"].astype(np.int64), first) if len(rows) else first,
        "bytes_down": np.add.reduceat(rows["bytes_sent"].astype(np.int64), first) if len(rows) else first,
        "loss": server["loss"],
        "wall_s": server["wall_s"],  # seconds since the run (or its resume) started, at the step's end
        "up_rel_error": server["up_rel_error"],
        "down_rel_error": server["down_rel_error"],
        "up_ef_norm": server["up_ef_norm"],
        "down_ef_norm": server["down_ef_norm"],
    }


def report(steps: np.ndarray, evals: np.ndarray, attrs: dict, straggler_factor: float = 1.25) -> dict:
    if len(steps) == 0:
        raise ValueError("the trace has no rows yet")
    workers_rows = steps[steps["role"] == 1]
    series = per_step(steps)
    n_steps = len(series["step"])
    workers = int(attrs.get("workers", max(1, len(np.unique(workers_rows["rank"])))))
    fp32 = int(attrs["fp32_message_bytes"]) * workers
    up = float(series["bytes_up"].mean())
    down = float(series["bytes_down"].mean())
    worker_time = {p: float(np.nanmean(workers_rows[p])) if len(workers_rows) else 0.0 for p in WORKER_PHASES}
    server_rows = steps[steps["role"] == 0]
    server_time = {p: float(server_rows[p].mean()) for p in SERVER_PHASES}
    if not server_rows["decode_cpu_s"].any():  # a trace from before the column: not measured, not 0
        del server_time["decode_cpu_s"]
    total = sum(v for v in worker_time.values() if np.isfinite(v))
    per_rank = {}
    for r in np.unique(workers_rows["rank"]):
        rows = workers_rows[workers_rows["rank"] == r]
        per_rank[int(r)] = float(np.mean(rows["compute_s"] + rows["encode_s"]))
    median = float(np.median(list(per_rank.values()))) if per_rank else 0.0
    stragglers = [r for r, t in per_rank.items() if median > 0 and t > straggler_factor * median]
    out = {
        "algorithm": attrs.get("algorithm"),
        "workers": workers,
        "steps_traced": n_steps,
        "first_step": int(series["step"][0]),
        "last_step": int(series["step"][-1]),
        "bytes_up_per_step": up,
        "bytes_down_per_step": down,
        "fp32_bytes_per_step_each_way": fp32,
        "compression_up": fp32 / up if up else None,
        "compression_down": fp32 / down if down else None,
        "worker_seconds_per_step": worker_time,
        "server_seconds_per_step": server_time,
        "communication_share": worker_time["comm_s"] / total if total else None,
        "worker_busy_seconds_per_step": per_rank,
        "stragglers": stragglers,
        "final_loss": float(series["loss"][-1]),
        "mean_up_rel_error": float(np.mean(series["up_rel_error"])),
        "mean_down_rel_error": float(np.mean(series["down_rel_error"])),
    }
    if len(evals):
        out["last_eval"] = {
            "step": int(evals["step"][-1]),
            "test_loss": float(evals["test_loss"][-1]),
            "test_accuracy": None
            if np.isnan(evals["test_accuracy"][-1])
            else float(evals["test_accuracy"][-1]),
        }
    return out


def format_report(r: dict) -> str:
    lines = [
        f"algorithm {r['algorithm']}, {r['workers']} workers, steps {r['first_step']}..{r['last_step']} "
        f"({r['steps_traced']} traced)",
        f"bytes/step   up {r['bytes_up_per_step']:.0f} ({r['compression_up']:.1f}x less than fp32)   "
        f"down {r['bytes_down_per_step']:.0f} ({r['compression_down']:.1f}x less than fp32)",
        "worker s/step "
        + "  ".join(f"{k[:-2]} {v * 1e3:.3f}ms" for k, v in r["worker_seconds_per_step"].items()),
        "server s/step "
        + "  ".join(f"{k[:-2]} {v * 1e3:.3f}ms" for k, v in r["server_seconds_per_step"].items()),
    ]
    if r["communication_share"] is not None:
        lines.append(f"communication share of a worker's step: {100 * r['communication_share']:.1f}%")
    lines.append(f"stragglers (busy > 1.25x median): {r['stragglers'] or 'none'}")
    loss = r["final_loss"]
    shown = f"{loss:.5f}" if loss is not None and math.isfinite(loss) else "not reported"
    lines.append(
        f"final batch loss {shown}; mean relative compression error up "
        f"{r['mean_up_rel_error']:.4f} down {r['mean_down_rel_error']:.4f}"
    )
    if "last_eval" in r:
        e = r["last_eval"]
        acc = f", test accuracy {e['test_accuracy']:.4f}" if e["test_accuracy"] is not None else ""
        lines.append(f"last evaluation at step {e['step']}: test loss {e['test_loss']:.5f}{acc}")
    return "\n".join(lines)
