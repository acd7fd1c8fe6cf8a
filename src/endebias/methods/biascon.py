"""Bias-contrastive learning (Hong & Yang, "Unbiased Classification through
Bias-Contrastive and Bias-Balanced Learning", NeurIPS 2021): BiasCon alone (``biascon``)
and with the bias-balanced softmax (``bcbb``, BC+BB).

On the L2-normalised features ``z`` of the model's feature layer::

    biascon: loss = ce_weight * CE(f, y)                     + BC(z, y, b; temperature)
    bcbb:    loss = ce_weight * CE(f + log prior[y, b], y)   + BC(z, y, b; temperature)

BC is :func:`endebias.methods.contrastive_losses.bias_contrastive` (positives: same target,
other bias); the prior is BiasBal's (:mod:`endebias.methods.biasbal`). The contrastive term
runs on the trainer's batch: the authors' code draws a second, re-weighted batch of two
augmented views for it, which this method, seeing one batch, does not (docs/methods.md).
"""

from __future__ import annotations

from torch import Tensor, nn

from endebias.methods import Method, register_method
from endebias.methods.biasbal import adjust_logits, log_bias_prior
from endebias.methods.contrastive_losses import bias_contrastive
from endebias.methods.features import forward_reading_features, resolve_layer
from endebias.methods.options import check_nonnegative, check_positive


@register_method("biascon")
class BiasContrastive(Method):
    name = "biascon"
    defaults = {"temperature": 0.07, "ce_weight": 0.01, "layer": None}
    search_space = {
        "ce_weight": {"distribution": "log_uniform_values", "min": 0.001, "max": 1.0},
        "temperature": {"distribution": "log_uniform_values", "min": 0.05, "max": 1.0},
    }

    def __init__(
        self, model: nn.Module, *, temperature: float, ce_weight: float, layer: str | None,
        **common,
    ) -> None:
        super().__init__(model, **common)
        self.temperature = check_positive("temperature", temperature)
        self.ce_weight = check_nonnegative("ce_weight", ce_weight)
        self.layer = resolve_layer(model, layer, self.name)

    def classification_loss(self, logits: Tensor, targets: Tensor, biases: Tensor) -> Tensor:
        return nn.functional.cross_entropy(logits, targets)

    def training_step(
        self, inputs: Tensor, targets: Tensor, biases: Tensor, indices: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        logits, features = forward_reading_features(
            self.model, self.layer, inputs, detach_classifier=False
        )
        ce = self.classification_loss(logits, targets, biases)
        bc = bias_contrastive(features, targets, biases, temperature=self.temperature)
        loss = self.ce_weight * ce + bc
        return loss, logits, {"ce": ce.detach(), "bias_contrastive": bc.detach()}


@register_method("bcbb")
class BiasContrastiveBalanced(BiasContrastive):
    name = "bcbb"
    defaults = {**BiasContrastive.defaults, "smoothing": 1e-3}
    search_space = {
        **BiasContrastive.search_space,
        "smoothing": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e3},
    }

    def __init__(
        self,
        model: nn.Module,
        *,
        temperature: float,
        ce_weight: float,
        layer: str | None,
        smoothing: float,
        train_targets: Tensor,
        train_biases: Tensor,
        **common,
    ) -> None:
        super().__init__(
            model, temperature=temperature, ce_weight=ce_weight, layer=layer,
            train_targets=train_targets, train_biases=train_biases, **common,
        )
        prior = log_bias_prior(
            train_targets, train_biases, num_targets=self.num_targets,
            num_biases=self.num_biases, smoothing=smoothing,
        )
        # (T, B); derived from the constructor's arguments, so not part of the checkpoint.
        self.register_buffer("log_prior", prior, persistent=False)

    def classification_loss(self, logits: Tensor, targets: Tensor, biases: Tensor) -> Tensor:
        return nn.functional.cross_entropy(adjust_logits(logits, self.log_prior, biases), targets)
