"""The LM reproduction (qtrain reproduce efficient-adam-lm: a 2-block character transformer on the
KJV, 4 simulated workers, batch 32, lr 0.002, sign both ways) for 1,000 steps, with and without an
uncompressed warm-up: test perplexity at every 50 steps, so the gap at 500 and 1,000 steps is read
from one run per variant (no schedule: the run of 500 steps is the first half of this one).

    python benchmarks/lm_warmup.py OUT_JSON VARIANT   (VARIANT: adam | efficient-adam | warmup-N)

Runs one variant per call, single-threaded, so two can share the 2-core host."""

import json
import sys
import time
from pathlib import Path

from qtrain.bench.host import describe_host
from qtrain.reproduce.efficient_adam_lm import CHARACTERS, kjv_text, settings
from qtrain.reproduce.runs import run

STEPS, EVERY = 1000, 50


def main(out: str, variant: str) -> None:
    data = kjv_text(Path("runs/reproduce/data"), CHARACTERS)
    common = settings(data, STEPS, EVERY)
    base = "adam.yaml" if variant == "adam" else "efficient-adam.yaml"
    if variant.startswith("warmup-"):
        common.append(f"algorithm.uncompressed_steps={int(variant.split('-')[1])}")
    t0 = time.time()
    s = run(base, common, 4)
    result = {
        "variant": variant,
        "command": s["command"],
        "host": describe_host(),
        "seconds": time.time() - t0,
        "evals": s["evals"],
        "bytes_up": s["bytes_up"],
        "bytes_down": s["bytes_down"],
        "final_test_perplexity": s["final_test_perplexity"],
    }
    Path(out).write_text(json.dumps(result, indent=1, default=str))


if __name__ == "__main__":
    main(*sys.argv[1:])
