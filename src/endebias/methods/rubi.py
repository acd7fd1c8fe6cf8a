"""RUBi (Cadene et al., NeurIPS 2019): a bias-only branch masks the main model's logits
during training, so the samples the bias already explains teach the main model less.

As Bahng et al. (ICML 2020) adapted it to images, whose Table 1 row the EnD paper quotes:
the bias-only branch is a network g of its own (``bias_model``, by default the 1x1
``bias-conv``) trained by its own cross-entropy, and a linear mask head ``c`` reads g's
pooled features *detached* (RUBi's "no gradient into the question encoder"). Per batch,
with f the main model's logits::

    m     = c(features_g.detach())                    (the bias-only logits)
    fused = f * sigmoid(m)                            (the mask, per class)
    loss  = CE(fused, y) + bias_loss_weight * CE(m, y) + CE(g(x), y)

f learns from the fused loss only (no plain cross-entropy); the mask head from both of
its terms; g from its own cross-entropy only. When the bias branch is confident and right
the mask keeps the target's logit and the fused loss is small whatever f does, so f's
gradient comes mostly from the samples the bias gets wrong. Evaluation uses f alone.

Bahng et al. update g and then f with two Adam optimisers on each batch; here one step
updates all three from the same forward pass (the same learning rate and schedule for all,
as theirs). RUBi's original extra classifier on the mask (``c_q``) is left out, as theirs.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from endebias.methods import Method, register_method
from endebias.methods.bias_branch import (
    BIAS_MODEL_DEFAULTS,
    build_bias_network,
    feature_size,
    logits_and_features,
)


def rubi_loss(
    logits: Tensor, mask_logits: Tensor, targets: Tensor, *, bias_loss_weight: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(CE(logits * sigmoid(mask_logits)) + w * CE(mask_logits), fused CE, mask CE)``."""
    fused = nn.functional.cross_entropy(logits * torch.sigmoid(mask_logits), targets)
    bias_only = nn.functional.cross_entropy(mask_logits, targets)
    return fused + bias_loss_weight * bias_only, fused, bias_only


@register_method("rubi")
class RUBi(Method):
    uses_bias_labels = False
    defaults = {"bias_loss_weight": 1.0, **BIAS_MODEL_DEFAULTS}
    search_space = {
        "bias_loss_weight": {"distribution": "log_uniform_values", "min": 0.1, "max": 10.0},
    }

    def __init__(
        self,
        model: nn.Module,
        *,
        bias_loss_weight: float,
        bias_model: str,
        bias_model_options: dict[str, Any] | None,
        **common,
    ) -> None:
        super().__init__(model, **common)
        if isinstance(bias_loss_weight, bool) or not 0 <= bias_loss_weight < float("inf"):
            raise ValueError(f"bias_loss_weight must be a finite number >= 0, got "
                             f"{bias_loss_weight!r}")
        self.bias_loss_weight = float(bias_loss_weight)
        self.bias_model = build_bias_network(
            "rubi", build_network=self.build_network, bias_model=bias_model,
            bias_model_options=bias_model_options, num_targets=self.num_targets,
            input_shape=self.input_shape,
        )
        self.bias_layer = self.bias_model.feature_layer
        width = feature_size(self.bias_model, self.bias_layer, self.input_shape)
        self.mask_head = nn.Linear(width, self.num_targets)

    def networks(self) -> list[nn.Module]:
        return [self.model, self.bias_model]

    def training_step(
        self, inputs: Tensor, targets: Tensor, biases: Tensor, indices: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        logits = self.model(inputs)
        bias_logits, bias_features = logits_and_features(self.bias_model, self.bias_layer, inputs)
        mask_logits = self.mask_head(bias_features.detach())
        loss, fused, bias_only = rubi_loss(
            logits, mask_logits, targets, bias_loss_weight=self.bias_loss_weight
        )
        ce_bias_model = nn.functional.cross_entropy(bias_logits, targets)
        parts = {
            "ce": nn.functional.cross_entropy(logits.detach(), targets),
            "ce_fused": fused.detach(),
            "ce_bias_branch": bias_only.detach(),
            "ce_bias_model": ce_bias_model.detach(),
        }
        return loss + ce_bias_model, logits, parts
