"""A character-level GPT on the King James Bible with plain torch DDP (the "before"), nanoGPT's
recipe: AdamW with two parameter groups, warm-up and cosine decay, clipping, accumulation.
``torchrun --nproc_per_node 2 examples/gpt/train_ddp.py``; ``train.py`` beside it is the same
script on qtrain, and docs/library.md ("A GPT, from DDP to qtrain") walks through the diff."""

import argparse
import contextlib
import json
import math
import os
import sys

import torch
import torch.distributed as dist
from torch import nn

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
    return p.parse_args()


def get_lr(it, args):
    """nanoGPT's schedule: linear warm-up to lr, then cosine decay to min_lr at max_iters."""
    if it < args.warmup_iters:
        return args.lr * (it + 1) / (args.warmup_iters + 1)
    ratio = (it - args.warmup_iters) / max(1, args.max_iters - args.warmup_iters)
    return args.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (args.lr - args.min_lr)


def main():
    args = arguments()
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    data = CharData()
    cfg = GPTConfig(args.n_layer, args.n_head, args.n_embd, args.block_size, data.vocab_size)
    torch.manual_seed(args.seed)
    model = GPT(cfg)
    losses = []  # (step, val_loss), on rank 0
    val_loss = lambda m: data.val_loss(m, args.block_size)  # noqa: E731
    ddp = nn.parallel.DistributedDataParallel(model)
    optim_groups = model.optim_groups(args.weight_decay)  # decay matrices, not biases and gains
    opt = torch.optim.AdamW(optim_groups, lr=args.lr, betas=(0.9, 0.99))
    gen = torch.Generator().manual_seed(args.seed + rank)  # this worker's own batches

    for it in range(args.max_iters):
        lr = get_lr(it, args)
        for g in opt.param_groups:
            g["lr"] = lr
        for micro in range(args.accumulate):
            x, y = data.get_batch("train", args.batch_size, args.block_size, gen)
            last = micro == args.accumulate - 1
            with contextlib.nullcontext() if last else ddp.no_sync():  # all-reduce on the last only
                _, loss = ddp(x, y)
                (loss / args.accumulate).backward()
        if args.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if rank == 0 and ((it + 1) % args.eval_interval == 0 or it + 1 == args.max_iters):
            losses.append((it + 1, val_loss(model)))
            print(f"step {it + 1} val_loss {losses[-1][1]:.4f}", flush=True)
    if rank == 0 and args.out_json:
        with open(args.out_json, "w") as f:
            json.dump(losses, f)
    dist.barrier()  # tear gloo down together: a rank that leaves while rank 0 evaluates can abort
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
