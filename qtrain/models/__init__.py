"""Built-in models and user plug-ins (``package.module:function`` returning an ``nn.Module``)."""

from qtrain.models.registry import MODELS, build_model

__all__ = ["MODELS", "build_model"]
