"""What every reproduction shares: run one configuration in the simulator while following
quantities of the server's weights, and write tables and results."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qtrain.config import load_config
from qtrain.engine.simulator import simulate
from qtrain.io import strict_json

CONFIGS = Path(__file__).resolve().parent.parent.parent / "configs"


@dataclass
class Curve:
    """A quantity of the server's weights every ``every`` steps (and at step 0 and the end)."""

    name: str
    fn: object  # (params, dataset) -> float
    every: int
    steps: list[int] = field(default_factory=list)
    values: list[float] = field(default_factory=list)

    def __call__(self, step: int, params: torch.Tensor, dataset, last: int) -> None:
        if step % self.every == 0 or step == last:
            self.steps.append(step)
            self.values.append(float(self.fn(params, dataset)))


def run(base: str, sets: list[str], workers: int, curves: list[Curve] = ()) -> dict:
    """Simulate ``configs/BASE`` with ``--set`` overrides ``sets``; the summary, with each curve's
    ``{"steps": [...], "values": [...]}`` under ``curves``."""
    cfg = load_config(CONFIGS / base, sets)
    last = cfg.train.steps

    def observe(step, params, dataset):
        for c in curves:
            c(step, params, dataset, last)

    summary = simulate(cfg, workers, None, log=lambda _: None, observe=observe)
    summary["curves"] = {c.name: {"steps": c.steps, "values": c.values} for c in curves}
    summary["command"] = f"qtrain simulate configs/{base} --workers {workers} " + " ".join(
        f"--set {s}" for s in sets
    )
    return summary


def write_results(out: Path, results: dict, table: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(strict_json.dumps(results, indent=2, default=_plain) + "\n")
    (out / "table.md").write_text("\n".join(table) + "\n")


def _plain(x):
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    raise TypeError(f"not JSON: {type(x).__name__}")


def figure(rows: int, cols: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        rows, cols, figsize=(5 * cols, 3.8 * rows), constrained_layout=True, squeeze=False
    )
    return plt, fig, axes


def plot_evals(results: dict, key: str, title: str, path: Path, yscale: str = "linear") -> None:
    """Each run's evaluations of ``key`` (e.g. test_accuracy) against the step, one line per run."""
    plt, fig, axes = figure(1, 1)
    ax = axes[0, 0]
    for r in results["runs"]:
        ax.plot([e["step"] for e in r["evals"]], [e[key] for e in r["evals"]], marker="o", label=r["variant"])
    ax.set(title=title, xlabel="step", ylabel=key.replace("_", " "), yscale=yscale)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
