"""Algorithm names users type."""

from __future__ import annotations

from qtrain.algorithms.adam import Adam
from qtrain.algorithms.base import Algorithm
from qtrain.algorithms.ecq_sgd import ECQSGD
from qtrain.algorithms.efficient_adam import EfficientAdam
from qtrain.algorithms.qadam import QAdam
from qtrain.algorithms.qcmd_adagrad import QCMDAdaGrad
from qtrain.algorithms.qrda_adagrad import QRDAAdaGrad
from qtrain.algorithms.sgd import SGD

ALGORITHMS: dict[str, type[Algorithm]] = {
    cls.name: cls for cls in (SGD, Adam, ECQSGD, QAdam, EfficientAdam, QCMDAdaGrad, QRDAAdaGrad)
}


def get_algorithm(hp) -> Algorithm:
    """Build the algorithm named ``hp.name`` from the ``algorithm`` config section."""
    if hp.name not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {hp.name!r}; choose one of {', '.join(ALGORITHMS)}")
    return ALGORITHMS[hp.name](hp)
