"""Models behind a name registry with one constructor signature.

``build_model(name, num_classes=..., input_shape=..., **options)``. Every model names the
layer that EnD reads by default in its ``feature_layer`` attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from endebias.registry import Registry

ModelBuilder = Callable[..., nn.Module]
_MODELS: Registry[ModelBuilder] = Registry("model")
register_model = _MODELS.register
model_names = _MODELS.names


def build_model(
    name: str, *, num_classes: int, input_shape: tuple[int, ...], **options: Any
) -> nn.Module:
    builder = _MODELS.get(name)
    return builder(num_classes=num_classes, input_shape=input_shape, **options)


from endebias.models import mlp, resnet, simple_conv  # noqa: E402,F401  (registers its models)
