"""Typed run configuration: YAML files validated into dataclasses, with ``--set key=value`` overrides."""

from qtrain.config.loader import ConfigError, dump_yaml, load_config, parse_overrides, to_dict
from qtrain.config.schema import (
    AlgorithmConfig,
    Config,
    DataConfig,
    LinkConfig,
    ModelConfig,
    RuntimeConfig,
    TrainConfig,
)

__all__ = [
    "AlgorithmConfig",
    "Config",
    "ConfigError",
    "DataConfig",
    "LinkConfig",
    "ModelConfig",
    "RuntimeConfig",
    "TrainConfig",
    "dump_yaml",
    "load_config",
    "parse_overrides",
    "to_dict",
]
