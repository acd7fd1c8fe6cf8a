"""Soft bias-contrastive learning (SoftCon; Hong & Yang, NeurIPS 2021): BiasCon for data
without bias labels. A bias-capturing model, trained first, stands in for the labels:
two samples of the same target are a positive pair in proportion to how differently that
model sees them.

1. A first stage (``RUN/bias_model/``, :class:`endebias.methods.FirstStage`): vanilla
   cross-entropy for ``bias_epochs`` epochs on ``bias_model`` (default the 1x1 ``bias-conv``,
   which sees colour and little else), as the authors' kernel-size-1 SimpleConvNet.
2. The run, with ``u`` that model's (frozen) features and ``z`` the main model's::

       w_ip = 1 - cos(u_i, u_p)           for p != i with y_p = y_i
       SoftCon = mean_i -(sum_p w_ip log( exp(s_ip) / sum_{a != i} exp(s_ia) )) / sum_p w_ip
       loss = ce_weight * CE(f, y) + SoftCon(z; temperature)

The authors precompute ``u`` once and draw a second, re-weighted batch of two augmented
views for the contrastive term; here ``u`` is computed per batch by the frozen model and
the term runs on the trainer's batch (BiasCon draws its own: docs/methods.md).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from endebias.hooks import capture_features
from endebias.methods import FirstStage, Method, StageResult, register_method
from endebias.methods.contrastive_losses import soft_bias_contrastive
from endebias.methods.features import forward_reading_features, resolve_layer
from endebias.methods.options import check_nonnegative, check_positive


@register_method("softcon")
class SoftBiasContrastive(Method):
    uses_bias_labels = False
    defaults = {"temperature": 0.07, "ce_weight": 0.01, "layer": None,
                "bias_model": "bias-conv", "bias_epochs": 1}
    search_space = {
        "ce_weight": {"distribution": "log_uniform_values", "min": 0.001, "max": 1.0},
        "temperature": {"distribution": "log_uniform_values", "min": 0.05, "max": 1.0},
    }

    @classmethod
    def first_stage(cls, options: dict[str, Any]) -> FirstStage:
        return FirstStage("bias_model", method="vanilla", epochs=options["bias_epochs"],
                          model=options["bias_model"])

    def __init__(
        self,
        model: nn.Module,
        *,
        temperature: float,
        ce_weight: float,
        layer: str | None,
        bias_model: str,
        bias_epochs: int,
        first_stage: StageResult,
        **common,
    ) -> None:
        super().__init__(model, **common)
        self.temperature = check_positive("temperature", temperature)
        self.ce_weight = check_nonnegative("ce_weight", ce_weight)
        if isinstance(bias_epochs, bool) or not isinstance(bias_epochs, int) or bias_epochs < 1:
            raise ValueError(f"bias_epochs must be a positive integer, got {bias_epochs!r}")
        self.layer = resolve_layer(model, layer, "softcon")
        # The stage's network, frozen: in the checkpoint, never trained.
        self.bias_network = getattr(first_stage.method, "model", first_stage.method)
        self.bias_network.requires_grad_(False).eval()
        self.bias_layer = resolve_layer(self.bias_network, None, "softcon")

    def train(self, mode: bool = True) -> SoftBiasContrastive:
        super().train(mode)
        self.bias_network.eval()  # frozen, BatchNorm statistics included
        return self

    def training_step(
        self, inputs: Tensor, targets: Tensor, biases: Tensor, indices: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        with torch.no_grad(), capture_features(self.bias_network, self.bias_layer) as captured:
            self.bias_network(inputs)
        bias_features = captured.get().float().flatten(1)
        logits, features = forward_reading_features(
            self.model, self.layer, inputs, detach_classifier=False
        )
        ce = nn.functional.cross_entropy(logits, targets)
        soft = soft_bias_contrastive(features, targets, bias_features,
                                     temperature=self.temperature)
        loss = self.ce_weight * ce + soft
        return loss, logits, {"ce": ce.detach(), "soft_contrastive": soft.detach()}
