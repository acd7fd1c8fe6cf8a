"""Models behind a name registry with one constructor signature.

``build_model(name, num_classes=..., input_shape=..., **options)``. Every model names the
layer that EnD reads by default in its ``feature_layer`` attribute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from endebias.option_types import check_options, option_hints
from endebias.registry import Registry

ModelBuilder = Callable[..., nn.Module]
_MODELS: Registry[ModelBuilder] = Registry("model")
register_model = _MODELS.register
model_names = _MODELS.names
# The registered builder (its signature lists the model's options).
model_builder = _MODELS.get


def init_conv_and_norm(model: nn.Module) -> None:
    """The initialisation SimpleConvNet and torchvision's ResNet share: convolutions
    Kaiming-normal (fan_out, relu), BatchNorm weight 1 and bias 0."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def check_widths(model: str, name: str, widths: Any) -> None:
    """A list of layer widths: non-empty, each a positive integer."""
    bad = [w for w in widths if isinstance(w, bool) or not isinstance(w, int) or w < 1]
    if not widths or bad:
        raise ValueError(f"model {model!r}: option {name} must be a non-empty list of positive "
                         f"widths, got {list(widths)!r}")


def build_model(
    name: str, *, num_classes: int, input_shape: tuple[int, ...], **options: Any
) -> nn.Module:
    check_model_options(name, options)
    return _MODELS.get(name)(num_classes=num_classes, input_shape=input_shape, **options)


def check_model_options(name: str, options: dict[str, Any]) -> None:
    """An unknown or ill-typed option is one line listing the model's options, not a
    TypeError from inside a layer's constructor (no model is built)."""
    reserved = ("num_classes", "input_shape")
    check_options("model", name, options, option_hints(_MODELS.get(name), skip=reserved),
                  reserved=reserved)


from endebias.models import bias_conv, mlp, resnet, simple_conv  # noqa: E402,F401  (registers)
