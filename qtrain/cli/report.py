"""The final table a run prints."""

from __future__ import annotations

import typer


def _mb(n: int) -> str:
    return f"{n / 1e6:.3f} MB"


def print_summary(s: dict, out: str, echo=typer.echo) -> None:
    rows = [("algorithm", s["algorithm"]), ("workers", s["workers"]), ("steps", s["steps"])]
    if s.get("stopped_early"):
        rows.append(("stopped early", s.get("stop_reason") or "yes"))
    if "final_test_accuracy" in s:
        rows.append(("test accuracy", f"{s['final_test_accuracy']:.4f}"))
    if s.get("final_test_loss") is not None:  # a library run's loss is the user's: none here
        rows.append(("test loss", f"{s['final_test_loss']:.5f}"))
    if s.get("final_train_loss") is not None:  # serve(evaluate=...) without evaluate_train: none
        rows.append(("train loss", f"{s['final_train_loss']:.5f}"))
    if s.get("final_batch_loss") is not None and s.get("runner") == "library":
        rows.append(("last batch loss", f"{s['final_batch_loss']:.5f}"))
    if "optimum_train_loss" in s:
        rows.append(("optimum train loss", f"{s['optimum_train_loss']:.5f}"))
    rows += [
        ("bytes up", f"{_mb(s['bytes_up'])} ({(s['compression_up'] or 0):.1f}x less than fp32)"),
        ("bytes down", f"{_mb(s['bytes_down'])} ({(s['compression_down'] or 0):.1f}x less than fp32)"),
        ("wall time", f"{s['wall_seconds']:.1f} s"),
        ("params sha256", s["params_sha256"][:16] + "..."),
        ("output", out),
    ]
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        echo(f"{k:<{width}}  {v}")
