"""One rank of a torch DistributedDataParallel peer run for ``qtrain bench network``.

The peer trains what the qtrain config trains, as data-parallel DDP over gloo (no server): the same
dataset, the same shard and batch order per worker (qtrain's ShardSampler), the same model and
initial weights, and ``torch.optim.Adam`` with the config's learning rate on every rank. The
gradient all-reduce runs with no hook, with ``fp16_compress_hook`` or with the PowerSGD hook
(Vogels et al., NeurIPS 2019) at a given rank. PowerSGD runs with a single DDP bucket
(``bucket_cap_mb`` large): with DDP's default buckets it hung over gloo at 4 ranks.

``python -m qtrain.bench.ddp_peer CONFIG --rank R --world W --master HOST:PORT --hook none|fp16|
powersgd:RANK --steps N --out FILE [--set key=value ...]``; rank 0 writes FILE (JSON): the wall time
at the end of every step and every evaluation.
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _hook(name: str):
    """(comm hook, its state, DDP bucket_cap_mb) for ``none``, ``fp16`` or ``powersgd:RANK``."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

    if name == "none":
        return None, None, 25
    if name == "fp16":
        return default_hooks.fp16_compress_hook, None, 25
    if name.startswith("powersgd:"):
        state = powerSGD_hook.PowerSGDState(
            process_group=None, matrix_approximation_rank=int(name.split(":")[1]), start_powerSGD_iter=2
        )
        return powerSGD_hook.powerSGD_hook, state, 10_000
    raise ValueError(f"unknown DDP hook {name!r}: none, fp16 or powersgd:RANK")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qtrain.bench.ddp_peer")
    parser.add_argument("config")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--master", required=True)
    parser.add_argument("--hook", default="none")
    parser.add_argument("--steps", type=int, required=True)
    parser.add_argument("--eval-every", type=int, default=0)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--out", required=True)
    parser.add_argument("--wire-device", default=None, help="this rank's link: count its bytes")
    parser.add_argument("--set", action="append", default=[])
    a = parser.parse_args(argv)

    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from qtrain.config import load_config
    from qtrain.engine.flat import loss_fn
    from qtrain.engine.setup import build_sampler, build_setup
    from qtrain.io import strict_json
    from qtrain.io.net_counters import NetCounters
    from qtrain.models import build_model
    from qtrain.seeding import derive_seed

    cfg = load_config(a.config, a.set)
    warmup = min(a.warmup, a.steps)
    torch.set_num_threads(cfg.runtime.threads or torch.get_num_threads())
    setup = build_setup(cfg, a.world)
    ds = setup.dataset
    torch.manual_seed(derive_seed(cfg.seed, "model"))
    model = build_model(cfg.model.name, ds.input_shape, ds.outputs, cfg.model.hidden, cfg.model.kwargs)
    dist.init_process_group("gloo", init_method=f"tcp://{a.master}", rank=a.rank, world_size=a.world)
    hook, state, bucket_mb = _hook(a.hook)
    ddp = DDP(model, bucket_cap_mb=bucket_mb)
    if hook is not None:
        ddp.register_comm_hook(state, hook)
    opt = torch.optim.Adam(ddp.parameters(), lr=cfg.algorithm.lr)
    sampler = build_sampler(setup, a.rank)
    counters = NetCounters(a.wire_device) if a.wire_device else None
    step_end, evals = [], []
    dist.barrier()
    start, paused = time.perf_counter(), 0.0  # evaluation time is kept out of the clock
    for step in range(1, a.steps + 1):
        idx = sampler.next_batch()
        opt.zero_grad(set_to_none=False)
        loss_fn(ddp(ds.x_train[idx]), ds.y_train[idx], ds.task).backward()
        opt.step()
        step_end.append(time.perf_counter() - start - paused)
        if counters is not None and step == warmup:
            counters.delta()  # count from the end of the warm-up
        due = a.eval_every and step % a.eval_every == 0
        if a.rank == 0 and (due or step == a.steps):
            t0 = time.perf_counter()
            evals.append({"step": step, "wall_s": step_end[-1], **_evaluate(model, ds)})
            paused += time.perf_counter() - t0
    wire = counters.delta() if counters is not None else (0, 0)
    dist.barrier()
    if a.rank == 0:
        result = {"hook": a.hook, "world": a.world, "step_end_s": step_end, "evals": evals}
        result["wire_bytes"] = {"rx": wire[0], "tx": wire[1], "after_step": warmup}
        partial = f"{a.out}.partial"  # renamed when whole: the bench reads a complete file or none
        with open(partial, "w") as f:
            f.write(strict_json.dumps(result))
        os.replace(partial, a.out)
    dist.destroy_process_group()
    return 0


def _evaluate(model, ds) -> dict:
    """The test split, as the qtrain server evaluates it (engine.flat.evaluate_module)."""
    import torch

    from qtrain.engine.flat import evaluate_module

    ev = evaluate_module(model, ds.x_test, ds.y_test, ds.task, torch.device("cpu"))
    model.train()
    return {f"test_{k}": v for k, v in ev.items()}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
