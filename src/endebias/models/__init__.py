"""Models behind a name registry with one constructor signature.

``build_model(name, num_classes=..., input_shape=..., **options)``. Every model names the
layer that EnD reads by default in its ``feature_layer`` attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

ModelBuilder = Callable[..., nn.Module]
_REGISTRY: dict[str, ModelBuilder] = {}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return decorator


def model_names() -> list[str]:
    return sorted(_REGISTRY)


def build_model(
    name: str, *, num_classes: int, input_shape: tuple[int, ...], **options: Any
) -> nn.Module:
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name](num_classes=num_classes, input_shape=input_shape, **options)


from endebias.models import mlp, resnet, simple_conv  # noqa: E402,F401  (registers its models)
