"""Per-rank log files: ``OUT/logs/rank-N.log``."""

from __future__ import annotations

import logging
from pathlib import Path


def open_rank_log(out: Path, rank: int) -> logging.Logger:
    (out / "logs").mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"qtrain.rank{rank}")
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for h in list(logger.handlers):
        logger.removeHandler(h)
    handler = logging.FileHandler(out / "logs" / f"rank-{rank}.log", mode="a")
    handler.setFormatter(logging.Formatter(f"%(asctime)s rank {rank} %(levelname)s %(message)s"))
    logger.addHandler(handler)
    return logger
