"""Model names users type, and plug-ins given as ``package.module:function``."""

from __future__ import annotations

import importlib

from torch import nn

from qtrain.models.resnet import resnet20
from qtrain.models.simple import lenet, logreg, mlp
from qtrain.models.transformer import transformer

MODELS = {"logreg": logreg, "mlp": mlp, "lenet": lenet, "resnet20": resnet20, "transformer": transformer}


def _parents(module_name: str) -> list[str]:
    parts = module_name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _plugin(spec: str):
    module_name, _, func_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name not in (module_name, *_parents(module_name)):  # the plug-in's own import failed
            raise ValueError(f"model plug-in {spec!r} raised ImportError: {exc}") from exc
        raise ValueError(f"model plug-in {spec!r}: cannot import module {module_name!r} ({exc})") from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise ValueError(f"model plug-in {spec!r}: module {module_name!r} has no function {func_name!r}")
    return func


def _call_plugin(name: str, build):
    """``build()``, with whatever the plug-in's code raises (on import or in its function) as one
    ValueError naming the plug-in: a traceback from user code under ``simulate``, three under MPI,
    and a ``sys.exit(0)`` that ended ``simulate`` with status 0 having trained nothing, once."""
    try:
        return build()
    except ValueError as exc:
        if str(exc).startswith(f"model plug-in {name!r}"):
            raise
        raise ValueError(f"model plug-in {name!r} raised ValueError: {_one_line(exc)}") from exc
    except SystemExit as exc:
        raise ValueError(
            f"model plug-in {name!r} called sys.exit({exc.code!r}) while building the model"
        ) from None
    except Exception as exc:  # noqa: BLE001 - user code: any failure is the plug-in's
        raise ValueError(f"model plug-in {name!r} raised {type(exc).__name__}: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:300] or "(no message)"


def build_model(name: str, input_shape: tuple[int, ...], outputs: int, hidden=None, kwargs=None) -> nn.Module:
    """Built-in models get (input_shape, outputs, hidden); a plug-in ``pkg.mod:fn`` is called as
    ``fn(input_shape=..., outputs=..., **kwargs)`` and must return an ``nn.Module``."""
    if ":" in name:
        model = _call_plugin(
            name, lambda: _plugin(name)(input_shape=input_shape, outputs=outputs, **(kwargs or {}))
        )
        if not isinstance(model, nn.Module):
            raise ValueError(f"model plug-in {name!r} returned {type(model).__name__}, not an nn.Module")
        return model
    if name not in MODELS:
        raise ValueError(
            f"unknown model {name!r}; choose one of {', '.join(MODELS)} or package.module:function"
        )
    if kwargs:
        raise ValueError(
            f"model.kwargs {sorted(kwargs)}: the built-in model {name!r} takes no kwargs "
            "(they go to plug-in models, package.module:function; built-ins take model.hidden)"
        )
    return MODELS[name](input_shape, outputs, hidden=hidden)
