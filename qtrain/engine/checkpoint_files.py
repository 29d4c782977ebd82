"""A run's checkpoint, loaded and trusted only when it checks out: the digest and the guarded
HDF5 walk (``io.checkpoint.read_checkpoint``), then the layout its own config implies
(``io.checkpoint_layout``). ``--resume``, ``checkpoint inspect`` and ``checkpoint export`` read
through here, so each says "verified" of the same things."""

from __future__ import annotations

from pathlib import Path

import torch

from qtrain.algorithms.links import resolve_links
from qtrain.config.loader import ConfigError, from_yaml_text
from qtrain.engine.param_groups import with_momentum
from qtrain.io.checkpoint import CheckpointError, read_checkpoint
from qtrain.io.checkpoint_layout import CheckpointExpectation, check_checkpoint_layout


def expectation(config_text: str, path) -> CheckpointExpectation:
    """What a checkpoint written with the resolved config ``config_text`` holds: the algorithm's
    server and worker state names and which sides keep error feedback."""
    try:
        cfg = from_yaml_text(config_text, f"{path}: /config")  # the bounded reader: digests reseal
        algorithm, uplink, downlink = resolve_links(cfg)
    except ConfigError as exc:  # names the file, the item and the bound
        raise CheckpointError(str(exc)) from None
    except Exception as exc:  # noqa: BLE001 - a crafted config fails in the schema in many ways
        why = " ".join(str(exc).split())[:200]  # YAML's errors span lines
        raise CheckpointError(f"{path}: /config is not a config this qtrain can run ({why})") from None
    cpu = torch.device("cpu")
    server_state = frozenset(algorithm.init_server_state(0, cpu))
    return CheckpointExpectation(
        algorithm=algorithm.name,
        server_state=server_state,
        worker_state=frozenset(algorithm.init_worker_state(0, cpu)),
        server_error=downlink.error_feedback,
        worker_error=uplink.error_feedback,
        # a library run's param groups may give momentum to an SGD-type rule the config gives none
        server_optional=frozenset(state_with_momentum(algorithm, cpu)) - server_state,
    )


def state_with_momentum(algorithm, device) -> dict:
    """The server state of ``algorithm`` when some param group has momentum (SGD-type rules keep
    a momentum buffer then; the other rules' state does not depend on it)."""
    return with_momentum(algorithm, 1.0).init_server_state(0, device)


def load_run_checkpoint(path) -> tuple[dict, dict]:
    """(tree, root attributes) of a run's checkpoint that passed every check; else CheckpointError."""
    tree, meta = read_checkpoint(Path(path))
    config = tree.get("config")
    if not isinstance(config, str):
        raise CheckpointError(f"{path}: /config: missing or not text")
    check_checkpoint_layout(tree, meta, path, expectation(config, path))
    return tree, meta
