"""One rank of a user's own DDP script, timed for ``qtrain bench network --script``.

``torchrun ... -m qtrain.bench.ddp_twin --result FILE [--hook H] [--wire-device DEV]
[--pattern REGEX] -- SCRIPT ARGS`` runs SCRIPT as ``python SCRIPT ARGS`` would (as
``__main__``, its directory first on ``sys.path``), unchanged, with three things added from the
outside:

- a **comm hook** on every ``DistributedDataParallel`` the script builds: none, torch's
  ``fp16_compress_hook``, or ``powerSGD_hook`` (Vogels et al., NeurIPS 2019) at rank R, its
  first S iterations uncompressed (``start_powerSGD_iter``, PowerSGD's warm start). With PowerSGD
  the DDP module gets a single bucket (``bucket_cap_mb`` large), as :mod:`qtrain.bench.ddp_peer`
  does: with DDP's default buckets PowerSGD hung over gloo at 4 ranks;
- a **step clock**: torch's global optimizer step post-hook records when every ``step()`` ends
  (and reads the link's byte counters there);
- the **validation losses**: each line the script prints that matches ``--pattern`` (named
  groups ``step`` and ``loss``; the default reads ``step 50 val_loss 2.53`` and nanoGPT's
  ``step 250: train loss 1.21, val loss 1.30``) is recorded with the time at which that step's
  ``step()`` ended, so the evaluation itself is not in its own time.

Rank 0 writes FILE (JSON) when the script returns: ``step_end_s`` (seconds since the end of the
first step), ``link_bytes`` (received + sent by this rank's link since the end of the first step,
at every step end) and ``evals`` ([{step, wall_s, bytes, loss}]).
"""

from __future__ import annotations

import argparse
import io
import os
import re
import runpy
import sys
import time

DEFAULT_PATTERN = (
    r"step\s*:?\s*(?P<step>\d+)\b.*?\bval(?:idation)?[ _]loss\s*[:=]?\s*"
    r"(?P<loss>[-+]?(?:\d+\.?\d*(?:[eE][-+]?\d+)?|nan|inf))"
)


def hook_spec(name: str) -> tuple[str, int, int]:
    """``none`` | ``fp16`` | ``powersgd:RANK[:START]`` -> (kind, rank, start iteration); a
    ValueError names a bad one. START defaults to torch's own default, 10."""
    parts = name.split(":")
    if name in ("none", "fp16"):
        return name, 0, 0
    if parts[0] == "powersgd" and len(parts) in (2, 3) and all(p.isdigit() for p in parts[1:]):
        rank, start = int(parts[1]), int(parts[2]) if len(parts) == 3 else 10
        if rank > 0 and start >= 2:  # torch's PowerSGDState requires start_powerSGD_iter > 1
            return "powersgd", rank, start
    raise ValueError(
        f"unknown DDP hook {name!r}: none, fp16 or powersgd:RANK[:START] (RANK >= 1, START >= 2)"
    )


class LineWatcher(io.TextIOBase):
    """A text stream that passes everything to ``target`` and calls ``on_match(match)`` for every
    whole line matching ``pattern``."""

    def __init__(self, target, pattern: re.Pattern, on_match):
        self.target, self.pattern, self.on_match = target, pattern, on_match
        self._partial = ""

    def write(self, text: str) -> int:
        self.target.write(text)
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            m = self.pattern.search(line)
            if m:
                self.on_match(m)
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def fileno(self) -> int:
        return self.target.fileno()

    @property
    def encoding(self):
        return self.target.encoding


class StepClock:
    """Step ends (seconds since the first one) and the link's bytes at each, from torch's global
    optimizer step post-hook; the evaluations matched on the script's output."""

    def __init__(self, counters=None):
        self.counters = counters
        self.ends: list[float] = []  # perf_counter at each step end
        self.link: list[int] = []  # rx + tx at each step end
        self.evals: list[dict] = []
        self.unmatched: list[int] = []  # evaluation lines naming a step that did not run

    def step_ended(self, *_args) -> None:
        self.ends.append(time.perf_counter())
        if self.counters is not None:
            self.link.append(sum(self.counters.read()))

    def evaluated(self, match: re.Match) -> None:
        step, loss = int(match.group("step")), float(match.group("loss"))
        if not 1 <= step <= len(self.ends):
            self.unmatched.append(step)
            return
        self.evals.append(
            {
                "step": step,
                "wall_s": self.ends[step - 1] - self.ends[0],
                "bytes": self.link[step - 1] - self.link[0] if self.link else None,
                "loss": loss,
            }
        )

    def result(self) -> dict:
        return {
            "step_end_s": [t - self.ends[0] for t in self.ends],
            "link_bytes": [b - self.link[0] for b in self.link],
            "evals": self.evals,
            "unmatched_eval_steps": self.unmatched,
        }


def _hooked_ddp(kind: str, rank: int, start: int):
    """Patch ``DistributedDataParallel.__init__`` to register the hook on every DDP module."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook
    from torch.nn.parallel import DistributedDataParallel as DDP

    init = DDP.__init__

    def __init__(self, *args, **kwargs):
        if kind == "powersgd":
            kwargs["bucket_cap_mb"] = 10_000
        init(self, *args, **kwargs)
        if kind == "fp16":
            self.register_comm_hook(None, default_hooks.fp16_compress_hook)
        elif kind == "powersgd":
            state = powerSGD_hook.PowerSGDState(
                process_group=None, matrix_approximation_rank=rank, start_powerSGD_iter=start
            )
            self.register_comm_hook(state, powerSGD_hook.powerSGD_hook)

    DDP.__init__ = __init__


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("qtrain.bench.ddp_twin: usage: ... -- SCRIPT [ARGS]", file=sys.stderr)
        return 2
    cut = argv.index("--")
    parser = argparse.ArgumentParser(prog="qtrain.bench.ddp_twin")
    parser.add_argument("--result", required=True)
    parser.add_argument("--hook", default="none")
    parser.add_argument("--wire-device", default=None)
    parser.add_argument("--pattern", default=DEFAULT_PATTERN)
    a = parser.parse_args(argv[:cut])
    script, script_args = argv[cut + 1], argv[cut + 2 :]

    from torch.optim.optimizer import register_optimizer_step_post_hook

    from qtrain.io import strict_json
    from qtrain.io.net_counters import NetCounters

    kind, rank, start = hook_spec(a.hook)
    if kind != "none":
        _hooked_ddp(kind, rank, start)
    clock = StepClock(NetCounters(a.wire_device) if a.wire_device else None)
    register_optimizer_step_post_hook(clock.step_ended)
    sys.stdout = LineWatcher(sys.stdout, re.compile(a.pattern), clock.evaluated)
    sys.argv = [script, *script_args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:  # the script's own sys.exit(): 0 and None are a normal end
        if exc.code not in (0, None):
            raise
    sys.stdout.flush()
    if int(os.environ.get("RANK", "0")) == 0:
        result = {"hook": a.hook, "script": script, "args": script_args, **clock.result()}
        partial = f"{a.result}.partial"  # renamed when whole: the bench reads a complete file or none
        with open(partial, "w") as f:
            f.write(strict_json.dumps(result))
        os.replace(partial, a.result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
