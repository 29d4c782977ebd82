"""Efficient-Adam against Adam on a character-level language model: the perplexity gap of two-way
1-bit quantization with two-way error feedback (Chen et al., 2023; see efficient_adam.py for the
image half).

Data: the King James Bible as Debian's ``bible-kjv`` prints it (``bible -f
Genesis1:1-Revelation22:21``: one verse per line with its reference), its first 1,000,000
characters; the last 5% of the 64-character windows are the test split. Model: a 2-block
transformer of width 128, 4 heads (models/transformer.py, 424k parameters). Chosen here: 4
workers, batch 32 windows each, 500 steps, lr 0.002, ``sign`` both ways with one scale per 512
(and a third run whose first 100 steps go uncompressed: ``algorithm.uncompressed_steps``),
one thread like every reproduction (``make reproduce`` runs two side by side on the 2-core
machine; results are fixed for a fixed thread count). 1,000 steps on two threads had not finished
after 41 minutes beside the other reproductions on the 2026-11-30 host, too long for the hour
``make reproduce`` is allowed.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from qtrain.reproduce.runs import plot_evals, run, write_results

CHARACTERS = 1_000_000
WARMUP_SHARE = 5  # the warm-up variant sends its first steps / 5 uncompressed (DeepSpeed: 15-25%)
VARIANTS = {
    "Adam, fp32": ("adam.yaml", False),
    "Efficient-Adam 1-bit, EF both sides": ("efficient-adam.yaml", False),
    "Efficient-Adam 1-bit, first 20% of the steps uncompressed": ("efficient-adam.yaml", True),
}


def kjv_text(directory: Path, characters: int) -> Path:
    """The first ``characters`` characters of the KJV as ``bible`` prints it, cached as a file."""
    path = directory / f"kjv-{characters}.txt"
    if path.is_file():
        return path
    if shutil.which("bible") is None:
        raise ValueError(
            "the language-model reproduction needs Debian's bible-kjv (apt-get install bible-kjv)"
        )
    text = subprocess.run(
        ["bible", "-f", "Genesis1:1-Revelation22:21"], capture_output=True, text=True, check=True
    ).stdout
    if len(text) < characters:
        raise ValueError(f"`bible` printed {len(text)} characters, fewer than the {characters} needed")
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(text[:characters], encoding="utf-8")
    return path


def settings(data: Path, steps: int, every: int) -> list[str]:
    """The ``--set`` overrides of every variant: the model, the text and the run's length."""
    return [
        "model.name=transformer",
        "model.hidden=[128,128]",
        "data.name=text",
        f"data.path={data}",
        "data.context=64",
        "data.test_fraction=0.05",
        f"train.steps={steps}",
        f"train.eval_every={every}",
    ]


def reproduce(out: Path, quick: bool = False) -> dict:
    steps, every, characters = (4, 2, 20_000) if quick else (500, 50, CHARACTERS)
    data = kjv_text(out.parent / "data", characters)
    common = settings(data, steps, every)
    results = {"settings": {"steps": steps, "workers": 4, "batch": 32, "characters": characters}, "runs": []}
    for name, (base, warm) in VARIANTS.items():
        s = run(
            base,
            [*common, f"algorithm.uncompressed_steps={max(1, steps // WARMUP_SHARE)}"] if warm else common,
            4,
        )
        results["runs"].append(
            {
                "variant": name,
                "command": s["command"],
                "test_perplexity": s["final_test_perplexity"],
                "train_perplexity": s["final_train_perplexity"],
                "test_accuracy": s["final_test_accuracy"],
                "bytes_up_per_step_worker": s["bytes_up"] / steps / 4,
                "bytes_down_per_step_worker": s["bytes_down"] / steps / 4,
                "evals": s["evals"],
                "curves": {},
            }
        )
    write_results(out, results, _table(results))
    plot_evals(
        results,
        "test_perplexity",
        "Character transformer on the KJV, 4 workers: test perplexity",
        out / "efficient-adam-lm.png",
        yscale="log",
    )
    return results


def _table(results: dict) -> list[str]:
    base = results["runs"][0]["test_perplexity"]
    lines = [
        "| variant | test perplexity | ratio to Adam | train perplexity | test accuracy per character "
        "| uplink bytes/step/worker | downlink bytes/step/worker |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results["runs"]:
        lines.append(
            f"| {r['variant']} | {r['test_perplexity']:.3f} | {r['test_perplexity'] / base:.3f} | "
            f"{r['train_perplexity']:.3f} | {r['test_accuracy']:.4f} | {r['bytes_up_per_step_worker']:.0f} | "
            f"{r['bytes_down_per_step_worker']:.0f} |"
        )
    return lines
