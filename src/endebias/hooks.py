"""Capture the output of any named submodule during forward passes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn


class L2Normalize(nn.Module):
    """Normalise each sample's flattened features to unit L2 norm (the paper's "pattern norm").

    Models place it right before the layer EnD reads, so the Gram entries are cosines.
    """

    def __init__(self, eps: float = 1e-12) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(x.shape[0], -1)
        return nn.functional.normalize(flat, dim=1, eps=self.eps).reshape(x.shape)


class CapturedFeatures:
    """Holds the latest output of the hooked layer (``.value``), or ``None`` before a pass."""

    def __init__(self, layer_name: str) -> None:
        self.layer_name = layer_name
        self.value: Tensor | None = None

    def get(self) -> Tensor:
        if self.value is None:
            raise RuntimeError(
                f"no features captured from layer {self.layer_name!r}: run a forward pass first"
            )
        return self.value


def find_layer(model: nn.Module, layer_name: str) -> nn.Module:
    """The submodule called ``layer_name`` (dotted, e.g. ``layer4.1.relu``), or a ValueError
    listing the valid names."""
    modules = dict(model.named_modules())
    if layer_name not in modules or layer_name == "":
        valid = ", ".join(name for name in modules if name)
        raise ValueError(f"model has no layer named {layer_name!r}; valid names: {valid}")
    return modules[layer_name]


@contextmanager
def capture_features(model: nn.Module, layer_name: str) -> Iterator[CapturedFeatures]:
    """Record the output of ``model.<layer_name>`` on every forward pass inside the block.

    The output is kept with its autograd graph, so a loss on it trains the layers below.
    The hook is removed on exit, also when the block raises.
    """
    layer = find_layer(model, layer_name)
    captured = CapturedFeatures(layer_name)

    def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        captured.value = output

    handle = layer.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()
