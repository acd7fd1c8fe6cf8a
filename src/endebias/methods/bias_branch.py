"""The bias-only network that RUBi, LearnedMixin and ReBias train beside the main model.

It is any registered model (option ``bias_model``, default ``bias-conv``: ReBias's 1x1
SimpleConvNet, which sees colours but not shapes), built by the ``build_network`` the
trainer hands the method (the model registry, for the run's input shape and class count),
with ``bias_model_options`` laid over the model's defaults. Its parameters are drawn
from the global generator right after the main model's, so a seeded run is reproducible.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from endebias.hooks import capture_features, find_layer

BIAS_MODEL_DEFAULTS: dict[str, Any] = {"bias_model": "bias-conv", "bias_model_options": None}


def build_bias_network(
    method: str,
    *,
    build_network: Callable[..., nn.Module] | None,
    bias_model: str,
    bias_model_options: dict[str, Any] | None,
    num_targets: int,
    input_shape: tuple[int, ...] | None,
) -> nn.Module:
    """The bias-only network, checked on a forward pass of zeros in eval mode (no
    statistics updated, no random numbers drawn): a network that cannot take the inputs
    fails here, in one line naming it, not inside the first training step."""
    if input_shape is None or build_network is None:
        raise ValueError(f"method {method!r} builds a bias-only network: it needs input_shape "
                         "and build_network (the trainer passes both)")
    if bias_model_options is not None and not isinstance(bias_model_options, dict):
        raise ValueError(
            f"bias_model_options must be a mapping such as {{channels: [8, 16]}}, got "
            f"{bias_model_options!r}"
        )
    try:
        network = build_network(bias_model, **(bias_model_options or {}))
    except ValueError as error:  # an unknown model or option, inputs it does not take
        raise ValueError(f"method {method!r}: bias_model {bias_model!r}: {error} (another "
                         f"one: --method-option bias_model=NAME)") from None
    layer = getattr(network, "feature_layer", None)
    if layer is None:
        raise ValueError(f"bias_model {bias_model!r} declares no feature_layer")
    network.eval()
    try:
        with torch.no_grad():
            logits, _ = logits_and_features(network, layer, torch.zeros(2, *input_shape))
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(
            f"method {method!r}: bias_model {bias_model!r} cannot take inputs of shape "
            f"{tuple(input_shape)}: {reason} (another one: --method-option bias_model=NAME)"
        ) from None
    finally:
        network.train()
    if tuple(logits.shape) != (2, num_targets):
        raise ValueError(f"bias_model {bias_model!r} gives outputs of shape "
                         f"{tuple(logits.shape)[1:]}, expected ({num_targets},)")
    return network


def logits_and_features(network: nn.Module, layer: str, inputs: Tensor) -> tuple[Tensor, Tensor]:
    """One forward pass: the logits and the flattened output of ``layer``."""
    with capture_features(network, layer) as captured:
        logits = network(inputs)
    return logits, captured.get().flatten(1)


def feature_size(network: nn.Module, layer: str, input_shape: tuple[int, ...]) -> int:
    """The width of ``layer``'s flattened output, from a forward pass of zeros in eval mode
    (the heads that read the features are sized with it)."""
    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            _, features = logits_and_features(network, layer, torch.zeros(2, *input_shape))
    finally:
        network.train(was_training)
    return features.shape[1]


def feature_layer_of(method: str, model: nn.Module, layer: str | None) -> str:
    """``layer``, or the layer the model declares; a layer the model lacks is refused."""
    chosen = layer or getattr(model, "feature_layer", None)
    if chosen is None:
        raise ValueError(f"method {method!r} needs layer=...: the model declares no feature_layer")
    find_layer(model, chosen)
    return chosen
