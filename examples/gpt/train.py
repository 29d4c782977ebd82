"""``train_ddp.py`` on qtrain (the "after"): ``mpiexec -n 3 python examples/gpt/train.py`` (rank 0
serves, ranks 1-2 train). The algorithm and codecs come from --config (configs/adam.yaml: AdamW in
full precision, as DDP; configs/efficient-adam.yaml: 1-bit both ways). docs/library.md ("A GPT,
from DDP to qtrain") walks through the diff."""

import argparse
import contextlib
import json
import math
import os
import sys

import torch

import qtrain

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from data import CharData  # noqa: E402
from model import GPT, GPTConfig  # noqa: E402


def arguments():
    p = argparse.ArgumentParser()
    p.add_argument("--n-layer", type=int, default=2)
    p.add_argument("--n-head", type=int, default=4)
    p.add_argument("--n-embd", type=int, default=128)
    p.add_argument("--block-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16, help="windows per worker per micro-step")
    p.add_argument("--accumulate", type=int, default=1, help="micro-steps per optimizer step")
    p.add_argument("--max-iters", type=int, default=300)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-lr", type=float, default=1e-4)
    p.add_argument("--warmup-iters", type=int, default=30)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0, help="0: no clipping")
    p.add_argument("--eval-interval", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out-json", default=None, help="write [[step, val_loss], ...] here")
    p.add_argument("--config", default=os.path.join(os.path.dirname(__file__), "configs", "adam.yaml"))
    p.add_argument("--set", action="append", default=[], help="a config override, key=value")
    p.add_argument("--out", default=None, help="qtrain's run directory (trace, checkpoints)")
    p.add_argument("--resume", default=None, help="auto: continue from the newest checkpoint in --out")
    return p.parse_args()


def get_lr(it, args):
    """nanoGPT's schedule: linear warm-up to lr, then cosine decay to min_lr at max_iters."""
    if it < args.warmup_iters:
        return args.lr * (it + 1) / (args.warmup_iters + 1)
    ratio = (it - args.warmup_iters) / max(1, args.max_iters - args.warmup_iters)
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (args.lr - args.min_lr)


def main():
    args = arguments()
    steps = [f"train.steps={args.max_iters}", f"train.eval_every={args.eval_interval}"]
    sess = qtrain.init(args.config, steps + args.set, out=args.out, resume=args.resume)
    data = CharData()
    cfg = GPTConfig(args.n_layer, args.n_head, args.n_embd, args.block_size, data.vocab_size)
    torch.manual_seed(args.seed)
    model = GPT(cfg)
    evaluate = lambda m: {"loss": data.val_loss(m, args.block_size)}  # noqa: E731
    if sess.is_server:  # rank 0 serves, and evaluates its parameters every eval_interval steps
        report(sess.serve(model=model, evaluate=evaluate), args)
        return
    optim_groups = model.optim_groups(args.weight_decay)  # decay matrices, not biases and gains
    # runtime.servers=colocated: every rank trains and serves, and rank 0 evaluates (no server)
    evaluate = evaluate if sess.config.runtime.colocated else None
    opt = sess.optimizer(optim_groups, model=model, lr=args.lr, betas=(0.9, 0.99), overlap=False,
                         evaluate=evaluate)  # fmt: skip
    gen = torch.Generator().manual_seed(args.seed + sess.worker_index)  # this worker's own batches
    start = 0
    if sess.resumed_extra:  # continue the batches where the checkpoint left them
        gen.set_state(sess.resumed_extra["generator"])
        start = sess.resumed_extra["iter"]

    for it in range(start, args.max_iters):
        lr = get_lr(it, args)
        for g in opt.param_groups:
            g["lr"] = lr
        for micro in range(args.accumulate):
            x, y = data.get_batch("train", args.batch_size, args.block_size, gen)
            last = micro == args.accumulate - 1
            with contextlib.nullcontext() if last else opt.no_sync():  # send on the last only
                _, loss = model(x, y)
                (loss / args.accumulate).backward()
        if args.grad_clip:
            opt.clip_grad_norm_(args.grad_clip)  # the norm of the workers' mean gradient, as DDP's
        opt.step(loss=loss)  # the mean gradient's step; the loss goes to qtrain's trace
        opt.zero_grad(set_to_none=True)
        if sess.checkpoint_due:  # checkpoint.every, the last step, or an agreed stop
            sess.checkpoint(extra={"generator": gen.get_state(), "iter": it + 1})
        if sess.should_stop:
            break
    report(sess.close(), args)  # the summary on a co-located run's rank 0, else None


def report(summary, args):
    """The lead's validation losses (None: this rank does not lead, e.g. runtime.servers > 1)."""
    if summary is None:
        return
    losses = [(e["step"], e["test_loss"]) for e in summary["evals"]]
    for step, loss in losses:
        print(f"step {step} val_loss {loss:.4f}", flush=True)
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(losses, f)


if __name__ == "__main__":
    main()
