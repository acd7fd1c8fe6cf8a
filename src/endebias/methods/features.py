"""What methods with extra heads or feature losses need from the wrapped model: the layer
they read, the width of its output, and one forward pass that returns both.

Every built-in model declares ``feature_layer`` (the normalised pooled features) and
classifies them with a linear layer ``fc``; a method's heads (DI's per-bias classifiers,
LNL's bias predictor) read the same features, so their input width is ``fc.in_features``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from endebias.hooks import find_layer


def resolve_layer(model: nn.Module, layer: str | None, method: str) -> str:
    """The layer a method reads: ``layer`` if given, else the model's ``feature_layer``."""
    resolved = layer or getattr(model, "feature_layer", None)
    if resolved is None:
        raise ValueError(f"method {method!r} needs layer=...: the model declares no feature_layer")
    return resolved


def feature_size(model: nn.Module, method: str) -> int:
    """The width of the features the model's classifier ``fc`` reads."""
    classifier = getattr(model, "fc", None)
    if not isinstance(classifier, nn.Linear):
        raise ValueError(
            f"method {method!r} needs a model whose classifier is a linear layer named 'fc' "
            "(all built-in models have one)"
        )
    return classifier.in_features


def forward_reading_features(
    model: nn.Module, layer: str, inputs: Tensor, *, detach_classifier: bool
) -> tuple[Tensor, Tensor]:
    """The logits and the flattened, L2-normalised output of ``layer`` (half precision
    raised to float32). With ``detach_classifier`` the layers after ``layer`` see it
    detached, so a loss on the logits trains only them."""
    captured: list[Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor | None:
        captured.append(output)
        return output.detach() if detach_classifier else None

    _, module = find_layer(model, layer)
    handle = module.register_forward_hook(hook)
    try:
        logits = model(inputs)
    finally:
        handle.remove()
    features = captured[-1].flatten(1)
    if features.dtype in (torch.bfloat16, torch.float16):
        features = features.float()  # the losses run in float32 under autocast
    return logits, nn.functional.normalize(features, dim=1)
