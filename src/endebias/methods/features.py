"""What methods with extra heads need from the wrapped model: the layer they read and the
width of its output.

Every built-in model declares ``feature_layer`` (the normalised pooled features) and
classifies them with a linear layer ``fc``; a method's heads (DI's per-bias classifiers,
LNL's bias predictor) read the same features, so their input width is ``fc.in_features``.
"""

from __future__ import annotations

from torch import nn


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
