"""Worker and server rules of the four papers and the baselines, each with an explicit state dict."""

from qtrain.algorithms.base import Algorithm
from qtrain.algorithms.registry import ALGORITHMS, get_algorithm

__all__ = ["ALGORITHMS", "Algorithm", "get_algorithm"]
