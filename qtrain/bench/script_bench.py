"""``qtrain bench network --script``: the user's own library script against its DDP twin, on an
emulated cluster network, as time to a target validation loss.

Every run trains the same script arguments (``ARGS``, after ``--``) on the same per-rank shaped
links (:mod:`qtrain.bench.netem`):

- a **qtrain run** per ``--run [NAME=]EXTRA``: ``mpiexec -n K+W python SCRIPT ARGS EXTRA --out
  DIR`` (W ranks with ``--servers colocated``; the script must take ``--out`` and pass it to
  ``qtrain.init(out=...)``); its validation losses are the evaluations of its serving rank
  (``sess.serve(evaluate=...)``, or ``sess.optimizer(evaluate=...)`` when co-located,
  ``test_loss`` in the trace), its clock the lead serving rank's step ends, its bytes what the
  serving ranks' links carried (``QTRAIN_WIRE_DEVICE``);
- a **DDP twin** per ``--peers`` entry: ``torchrun --nnodes W --node_rank r`` of ``TWIN ARGS``,
  one node per namespace over gloo, with a comm hook added from the outside and its evaluations
  read from the lines it prints (:mod:`qtrain.bench.ddp_twin`).

Per run: the evaluations as (step, seconds since the end of the first step, bytes through the
busiest link since then, loss); seconds per step (median after ``warmup`` steps, with min and
max); bytes per step each way on the busiest link; the final loss; and the wall time at which the
loss first reached the target (default: the plain DDP twin's final loss; None: never).
Startup (imports, data, the connection and the first step) is left out of every clock; the
evaluations are inside it, and every run evaluates at the same steps with the script's own code.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qtrain.bench.ddp_twin import DEFAULT_PATTERN, hook_spec
from qtrain.bench.netem import EmulatedNetwork, LinkSpec
from qtrain.bench.network import check_link, results_head, run_per_rank, step_stats
from qtrain.engine.topology import Topology
from qtrain.io import strict_json

TORCHRUN_PORT = 29531
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


@dataclass
class QtrainRun:
    name: str | None  # None: named after its algorithm and codecs once it ran
    extra: list[str]  # script arguments of this configuration, after the common ones


@dataclass
class ScriptPlan:
    script: str
    args: list[str]
    runs: list[QtrainRun]
    link: LinkSpec
    twin: str | None = None
    peers: list[str] = field(default_factory=lambda: ["ddp", "ddp-fp16", "ddp-powersgd:4"])
    workers: int = 4
    servers: int | str = 1  # qtrain's serving ranks, or "colocated" (every worker serves its shard)
    warmup: int = 5
    target: float | None = None
    pattern: str = DEFAULT_PATTERN
    timeout_s: float = 900.0

    @property
    def ranks(self) -> int:
        return self.workers if self.servers == "colocated" else int(self.servers) + self.workers

    @property
    def serving(self) -> list[int]:
        """qtrain's serving ranks (each counts its own link's bytes)."""
        if self.servers == "colocated":
            return list(range(self.workers))
        return list(Topology.parameter_server(self.ranks, servers=int(self.servers)).servers)


def parse_run(text: str) -> QtrainRun:
    """``"1bit=--config c.yaml --set a=b"`` -> QtrainRun("1bit", [...]); without ``NAME=`` the
    run is named after what it trained. A ValueError says what is wrong."""
    import shlex

    try:
        words = shlex.split(text)
    except ValueError as exc:
        raise ValueError(f"--run {text!r}: {exc}") from None
    name = None
    if words and not words[0].startswith("-") and "=" in words[0]:
        name, first = words[0].split("=", 1)
        if not NAME.fullmatch(name):
            raise ValueError(f"--run {text!r}: a run's name is letters, digits and _.+- (got {name!r})")
        words = ([first] if first else []) + words[1:]
    return QtrainRun(name, words)


def peer_hook_name(peer: str) -> str:
    """``ddp`` -> none, ``ddp-fp16`` -> fp16, ``ddp-powersgd:R[:S]`` -> powersgd:R[:S] (checked)."""
    if peer == "ddp":
        return "none"
    if peer.startswith("ddp-"):
        hook = peer.removeprefix("ddp-")
        try:
            hook_spec(hook)
            return hook
        except ValueError:
            pass
    raise ValueError(
        f"--peers: unknown peer {peer!r}; choose ddp, ddp-fp16 or ddp-powersgd:RANK[:START] "
        "(RANK >= 1, START >= 2)"
    )


# a loss within this fraction of the target reaches it: the same training on qtrain and DDP sums
# its gradients in another order, and a DDP script prints its loss to 4 decimals
TARGET_TOLERANCE = 1e-4


def time_to_target(evals: list[dict], target: float | None) -> float | None:
    """Wall seconds of the first evaluation whose loss is at or below ``target`` (within
    TARGET_TOLERANCE of it; None: never, or no target)."""
    if target is None:
        return None
    for e in sorted(evals, key=lambda e: e["step"]):
        if e["loss"] <= target + TARGET_TOLERANCE * abs(target):
            return e["wall_s"]
    return None


def qtrain_curve(steps: np.ndarray, evals: np.ndarray, serving: list[int]) -> tuple[list[dict], dict]:
    """From a trace's step rows and evaluations: the evaluations as (step, wall_s, bytes, loss),
    the clock and the bytes counted from the end of step 1 (the lead serving rank's rows end the
    steps, each evaluation stamped before it ran; bytes are those of the serving rank whose link
    carried the most), and the per-step bytes of that link ({"up", "down"} arrays, step order)."""
    steps = steps[steps["role"] == 0]  # the serving rows (a co-located rank also has worker rows)
    lead = np.sort(steps[steps["rank"] == serving[0]], order="step")
    rows = {r: np.sort(steps[steps["rank"] == r], order="step") for r in serving}
    busiest = max(
        serving, key=lambda r: int(rows[r]["wire_recv_bytes"].sum() + rows[r]["wire_sent_bytes"].sum())
    )
    b = rows[busiest]
    per_step = b["wire_recv_bytes"].astype(np.int64) + b["wire_sent_bytes"].astype(np.int64)
    cumulative = np.cumsum(per_step) - per_step[0]  # from the end of step 1
    # an evaluation is stamped at its step's end before it ran, as the twin's are: the lead's row
    # for that step holds the evaluation's time (compute_s) inside its wall_s
    wall = {
        int(s): float(w - c - lead["wall_s"][0])
        for s, w, c in zip(lead["step"], lead["wall_s"], lead["compute_s"], strict=True)
    }
    through = {int(s): int(c) for s, c in zip(b["step"], cumulative, strict=True)}
    curve = [
        {
            "step": int(e["step"]),
            "wall_s": wall[int(e["step"])],
            "bytes": through[int(e["step"])],
            "loss": float(e["test_loss"]),
        }
        for e in np.sort(evals, order="step")
        if int(e["step"]) in wall
    ]
    return curve, {"up": b["wire_recv_bytes"], "down": b["wire_sent_bytes"], "wall_s": lead["wall_s"]}


def codec_name(link: dict) -> str:
    """``uniform`` with its bits (``uniform 4-bit``), other codecs by name (summary.json's link)."""
    return (
        f"{link['codec']} {link['bits']}-bit"
        if link.get("bits") and link["codec"] == "uniform"
        else link["codec"]
    )


def run_qtrain_script(
    net: EmulatedNetwork, plan: ScriptPlan, index: int, run: QtrainRun, out: Path, mpiexec: list[str]
) -> dict:
    from qtrain.io.trace import read_trace

    run_dir = out / "runs" / f"qtrain-{index}"
    if run_dir.exists():  # this benchmark's own directory for its index-th run
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    argv = [sys.executable, plan.script, *plan.args, *run.extra, "--out", str(run_dir / "run")]
    serving = plan.serving
    cmd = net.mpi_command(mpiexec, argv, {r: {"QTRAIN_WIRE_DEVICE": net.device(r)} for r in serving})
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=plan.timeout_s)
    log = run_dir / "bench-output.txt"
    log.write_text(p.stdout + p.stderr)
    label = run.name or f"qtrain-{index}"
    if p.returncode != 0:
        raise RuntimeError(f"qtrain run {label} failed (rc {p.returncode}); see {log}")
    summary_file = run_dir / "run" / "summary.json"
    if not summary_file.is_file():
        raise RuntimeError(
            f"qtrain run {label} wrote no {summary_file}: the script must pass --out to qtrain.init(out=...)"
        )
    summary = json.loads(summary_file.read_text())
    steps, evals, _ = read_trace(run_dir / "run" / "trace.h5")
    served = sorted({int(r) for r in steps["rank"][steps["role"] == 0]})
    if served != serving:
        raise RuntimeError(
            f"qtrain run {label}: its serving ranks are {served}, not ranks {serving[0]}..{serving[-1]}; "
            f"set the script's runtime.servers to --servers ({plan.servers})"
        )
    if len(evals) == 0:
        raise RuntimeError(
            f"qtrain run {label} has no evaluations: the serving rank must evaluate "
            "(sess.serve(evaluate=...)) at the steps the DDP twin prints its validation loss"
        )
    curve, link = qtrain_curve(steps, evals, serving)
    w = plan.warmup
    return {
        "name": run.name
        or f"{summary['algorithm']}-{summary['uplink']['codec']}-{summary['downlink']['codec']}",
        "kind": "qtrain",
        "label": f"qtrain {summary['algorithm']}, up {codec_name(summary['uplink'])}, "
        f"down {codec_name(summary['downlink'])}",
        "args": run.extra,
        "algorithm": summary["algorithm"],
        "uplink": summary["uplink"]["codec"],
        "downlink": summary["downlink"]["codec"],
        "steps": int(summary["steps"]),
        "seconds_per_step": step_stats(list(link["wall_s"]), w),
        # the median step: an evaluation step also carries the other serving ranks' parameters
        "bytes_per_step_busiest_link": {
            "up": float(np.median(link["up"][w:])),
            "down": float(np.median(link["down"][w:])),
        },
        "evals": curve,
        "final_loss": curve[-1]["loss"],
        "run_dir": str(run_dir / "run"),
    }


def run_twin(net: EmulatedNetwork, plan: ScriptPlan, peer: str, out: Path) -> dict:
    hook = peer_hook_name(peer)
    run_dir = out / "runs" / peer.replace(":", "-")
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    result_file = run_dir / "twin.json"
    argvs = [
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            str(plan.workers),
            "--node_rank",
            str(r),
            "--nproc_per_node",
            "1",
            "--master_addr",
            net.address(0),
            "--master_port",
            str(TORCHRUN_PORT),
            "-m",
            "qtrain.bench.ddp_twin",
            "--result",
            str(result_file),
            "--hook",
            hook,
            "--wire-device",
            net.device(r),
            f"--pattern={plan.pattern}",
            "--",
            plan.twin,
            *plan.args,
        ]  # fmt: skip
        for r in range(plan.workers)
    ]
    env = lambda r: {"GLOO_SOCKET_IFNAME": net.device(r), "OMP_NUM_THREADS": "1"}  # noqa: E731
    codes = run_per_rank(net, argvs, env, run_dir / "node", plan.timeout_s)
    if codes[0] != 0 or not result_file.exists():
        raise RuntimeError(f"DDP twin {peer} failed (exit codes {codes}); see {run_dir}/node-*.txt")
    for r, code in enumerate(codes):
        if code:  # rank 0 finished every step, which needs every rank's all-reduce: it failed closing
            print(
                f"qtrain bench network: warning: DDP twin {peer} node {r} exited {code} after rank 0 "
                f"finished every step (see {run_dir}/node-{r}.txt; gloo can abort while closing)",
                file=sys.stderr,
            )
    res = json.loads(result_file.read_text())
    if not res["evals"]:
        raise RuntimeError(
            f"DDP twin {peer}: no line of rank 0's output matched --pattern (named groups step and "
            f"loss); see {run_dir}/node-0.txt"
        )
    ends, link = res["step_end_s"], res["link_bytes"]
    if len(ends) < plan.warmup + 2:
        raise RuntimeError(
            f"DDP twin {peer}: {len(ends)} optimizer steps seen (torch.optim's step post-hook), too few "
            f"to time after --warmup {plan.warmup}; does it step a torch.optim optimizer?"
        )
    per_step = np.diff(np.asarray(link, dtype=np.int64))[plan.warmup - 1 :]  # steps warmup+1..
    per_way = float(np.median(per_step)) / 2 if len(per_step) else 0.0
    return {
        "name": peer,
        "kind": "ddp",
        "label": {"none": "DDP AdamW, no hook", "fp16": "DDP + fp16 hook"}.get(
            hook, f"DDP + PowerSGD rank {hook_spec(hook)[1]}, from iteration {hook_spec(hook)[2]}"
        ),
        "hook": hook,
        "steps": len(ends),
        "seconds_per_step": step_stats(ends, plan.warmup),
        # the median step; a ring all-reduce sends and receives the same on every link: half of
        # rank 0's each way
        "bytes_per_step_busiest_link": {"up": per_way, "down": per_way},
        "evals": res["evals"],
        "final_loss": res["evals"][-1]["loss"],
        "unmatched_eval_steps": res["unmatched_eval_steps"],
        "link_bytes_total": link[-1] if link else None,
    }


def bench_script(plan: ScriptPlan, out: Path, mpiexec: list[str], echo=print) -> dict:
    """Build the network, check the link, run every qtrain configuration and DDP twin, tear the
    network down; write ``OUT/results.json`` and ``OUT/results.png`` and return the results."""
    out.mkdir(parents=True, exist_ok=True)
    results = results_head(
        plan.link, plan.workers, plan.servers, plan.warmup, script=plan.script, twin=plan.twin, args=plan.args
    )
    with EmulatedNetwork(plan.ranks, plan.link) as net:
        check_link(net, results, echo)
        try:
            for peer in plan.peers:
                echo(f"running the DDP twin {peer} ...")
                results["runs"].append(run_twin(net, plan, peer, out))
            for i, run in enumerate(plan.runs):
                echo(f"running qtrain {run.name or ' '.join(run.extra) or '(the script as it is)'} ...")
                results["runs"].append(run_qtrain_script(net, plan, i, run, out, mpiexec))
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(
                f"a run did not finish within {exc.timeout:g} s: {' '.join(exc.cmd[-8:])}"
            ) from exc
    results["target"], results["target_from"] = choose_target(results["runs"], plan.target)
    for r in results["runs"]:
        r["time_to_target_s"] = time_to_target(r["evals"], results["target"])
    (out / "results.json").write_text(strict_json.dumps(results, indent=2) + "\n")
    from qtrain.analysis.plots import plot_bench_script

    plot_bench_script(results, str(out / "results.png"))
    return results


def choose_target(runs: list[dict], target: float | None) -> tuple[float | None, str]:
    """--target if given, else the plain DDP twin's final loss, else the first DDP twin's."""
    if target is not None:
        return target, "--target"
    twins = [r for r in runs if r["kind"] == "ddp"]
    plain = [r for r in twins if r["hook"] == "none"] or twins
    if not plain:
        return None, "none (no --target and no DDP twin)"
    return plain[0]["final_loss"], f"{plain[0]['name']}'s final loss"


def script_table(results: dict) -> list[str]:
    """The terminal table: the target, then one line per run."""
    from qtrain.bench.host import host_line

    link = results["link"]
    rate = "unshaped links" if link["rate_bps"] is None else f"{link['rate_bps'] / 1e6:g} Mbit/s links"
    target = results["target"]
    lines = [
        f"{results['script']} on {rate} ({link.get('measured_bps', 0) / 1e6:.0f} Mbit/s measured), "
        f"{results['workers']} workers"
        + (", qtrain's shards co-located" if results.get("servers") == "colocated" else "")
        + f", {results['cores']} cores",
        host_line(results["host"]),
        "target: "
        + ("none" if target is None else f"validation loss {target:.4f} ({results['target_from']})"),
        f"{'run':<26}{'steps':>6}{'s/step':>8}{'MB/step':>9}{'final loss':>11}"
        f"{'to target s':>12}{'vs ddp':>8}",
    ]
    plain = next((r for r in results["runs"] if r["kind"] == "ddp" and r["hook"] == "none"), None)
    base = plain["time_to_target_s"] if plain else None
    for r in results["runs"]:
        b = r["bytes_per_step_busiest_link"]
        tt = r["time_to_target_s"]
        speedup = f"{base / tt:.2f}x" if (tt and base) else "-"
        lines.append(
            f"{r['name']:<26}{r['steps']:>6}{r['seconds_per_step']['median_s']:>8.3f}"
            f"{max(b['up'], b['down']) / 1e6:>9.3f}{r['final_loss']:>11.4f}"
            f"{'-' if target is None else 'never' if tt is None else f'{tt:.1f}':>12}{speedup:>8}"
        )
    lines.append(
        "MB/step: the busier direction of the busiest link, median step (qtrain: a serving rank's; "
        "DDP: any rank's); to target: seconds from the end of step 1 to the first evaluation at or "
        "below the target; vs ddp: the plain DDP twin's time to target over the run's"
    )
    return lines
