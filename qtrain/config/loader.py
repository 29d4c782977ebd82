"""Load YAML into the typed :class:`~qtrain.config.schema.Config`; every error names key and source."""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from qtrain.config.bounded_yaml import MAX_CONFIG_BYTES, MAX_NODES, check_written, load_yaml, read_config_file
from qtrain.config.errors import ConfigError
from qtrain.config.schema import Config

__all__ = ["ConfigError", "dump_yaml", "from_yaml_text", "load_config", "parse_overrides", "to_dict"]


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints are accepted as floats, and so are
    strings such as ``1e-3`` that YAML 1.1 reads as text)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if inner == [int, str]:  # a count or a word (runtime.servers: 2 or colocated)
            return value if isinstance(value, str) else _coerce(value, int, where)
        return _coerce(value, inner[0], where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list of {_type_name(item)}, got {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
        if not math.isfinite(number):  # .nan and .inf would slip past every range check
            raise ConfigError(f"{where} must be a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, bool):  # YAML 1.1 reads on/off/yes/no as booleans: the auto|on|off keys
            return "on" if value else "off"
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config annotation {tp!r} at {where}")  # a bug in schema.py


def _build(cls, raw: Any, where: str):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'the top level'} must be a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in hints:
            path = f"{where}.{key}" if where else str(key)
            raise ConfigError(f"unknown key '{path}' (valid keys here: {', '.join(names)})")
    kwargs = {}
    for name in names:
        if name in raw:
            kwargs[name] = _coerce(raw[name], hints[name], f"{where}.{name}" if where else name)
    return cls(**kwargs)


def parse_overrides(items: list[str], nodes: int = MAX_NODES) -> list[tuple[str, Any]]:
    """``["a.b=1", "c=x"]`` -> ``[("a.b", 1), ("c", "x")]``, values parsed as YAML scalars/lists by
    the bounded reader: the key's own nesting counts towards its depth bound, and the values share
    the ``nodes`` budget (what the config file left of ``MAX_NODES``)."""
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key.sub=value")
        key = key.strip()
        value, used = load_yaml(text, f"--set {key}", tuple(key.split(".")), nodes)
        nodes -= used
        out.append((key, value))
    return out


def _apply_override(cfg: Config, key: str, value: Any) -> None:
    parts = key.split(".")
    target = cfg
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(target) or part not in {f.name for f in dataclasses.fields(target)}:
            valid = (
                ", ".join(f.name for f in dataclasses.fields(target))
                if dataclasses.is_dataclass(target)
                else ""
            )
            raise ConfigError(f"--set {key}: unknown key '{'.'.join(parts[: i + 1])}' (valid: {valid})")
        if i == len(parts) - 1:
            tp = typing.get_type_hints(type(target))[part]
            setattr(target, part, _coerce(value, tp, f"--set {key}"))
            return
        child = getattr(target, part)
        if isinstance(child, dict):  # a free-form mapping (model.kwargs): the rest of the key is its
            _set_nested(child, parts[i + 1 :], value)
            return
        target = child


def _set_nested(mapping: dict, keys: list[str], value: Any) -> None:
    """``mapping[k1][k2]... = value``, making the inner mappings on the way."""
    for k in keys[:-1]:
        inner = mapping.get(k)
        if not isinstance(inner, dict):
            inner = mapping[k] = {}
        mapping = inner
    mapping[keys[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Read ``path`` (None: all defaults), apply ``--set`` overrides, validate. Raises ConfigError.
    The file and the ``--set`` values go through the bounded reader (``bounded_yaml``)."""
    budget = MAX_NODES
    if path is None:
        cfg = Config()
    else:
        from qtrain.shipped import config_names, resolve_config

        p = resolve_config(path)
        if p.is_dir():
            raise ConfigError(f"config file {str(p)!r} is a directory, not a YAML file")
        if not os.path.exists(p):  # a FIFO or a device exists: read_config_file names what it is
            names = ", ".join(config_names())
            raise ConfigError(f"config file {str(p)!r} does not exist (shipped configs, by name: {names})")
        raw, used = load_yaml(read_config_file(p), str(p))
        budget -= used
        try:
            cfg = _build(Config, raw, "")
        except ConfigError as exc:
            raise ConfigError(f"{p}: {exc}") from exc
    from qtrain.config.validate import validate

    items = list(overrides or [])
    parsed = parse_overrides(items, budget)
    base = copy.deepcopy(cfg) if parsed else None
    for key, value in parsed:
        _apply_override(cfg, key, value)
    source = str(path) if path else "defaults"
    try:
        validate(cfg, source=source)
    except ConfigError as exc:
        culprit = _culprit(base, items, parsed, validate, str(exc)[len(source) + 2 :]) if parsed else None
        if culprit is not None:
            raise culprit from None
        raise
    check_written(to_dict(cfg), dump_yaml(cfg), source)
    return cfg


def _culprit(base: Config, items: list[str], parsed: list, validate, problem: str) -> ConfigError | None:
    """When the file alone is valid and its overrides make it invalid: ``problem`` (the final
    error, without its source) named after the first ``--set`` from which on it holds."""
    try:
        validate(base, source="")
    except ConfigError:
        return None  # the file itself is wrong
    for item, (key, value) in zip(items, parsed, strict=True):
        _apply_override(base, key, value)
        try:
            validate(base, source="")
        except ConfigError as exc:
            if str(exc).endswith(problem):
                return ConfigError(f"--set {item}: {problem}")
    return None


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def from_yaml_text(text: str, source: str = "the checkpoint's /config") -> Config:
    """Rebuild a Config from the text :func:`dump_yaml` wrote: a checkpoint's /config, read when
    resuming or inspecting. ``source`` names it in errors (``CHECKPOINT: /config``). The text goes
    through the bounded reader: a checkpoint's digest can be resealed around any text. What
    :func:`load_config` accepts is within its bounds written out (``check_written``)."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"{source}: {len(text)} characters; a config is at most {MAX_CONFIG_BYTES} bytes (1 MiB)"
        )
    raw, _ = load_yaml(text, source)
    try:
        return _build(Config, raw, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
