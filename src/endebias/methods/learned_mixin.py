"""LearnedMixin (+H) (Clark et al., EMNLP 2019): a product of experts of the main model and
a bias-only model, the bias expert's weight learned per sample by the main model.

Per batch, with f the main model's logits, h its features (option ``layer``, by default the
layer the model declares), ``log p_b`` the bias-only network's log-probabilities::

    gate    = softplus(w . h + b)                   (>= 0, one number per sample)
    bias    = gate * log p_b                        (log p_b detached: a fixed expert)
    loss_pe = CE(log_softmax(f) + bias, y)          (the product of experts)
    H       = mean over samples of the entropy of softmax(bias)
    loss    = loss_pe + entropy_weight * H + CE(g(x), y)

Without H the main model can switch the bias expert off (gate 0); the entropy penalty
("+H") pushes the gated bias distribution to stay peaked, so the gate cannot shrink to 0.
``entropy_weight`` 0 is plain LearnedMixin; the default 0.36 is the weight of Bahng et
al.'s (ICML 2020) runs, the Table 1 row the EnD paper quotes. Evaluation uses f alone.

Clark et al. train the bias-only model first and keep it fixed; Bahng et al. pre-train g
for 5 epochs and then freeze it. Here g (``bias_model``, by default the 1x1 ``bias-conv``)
trains jointly by its own cross-entropy from the first step, and the product of experts
reads it detached, so the main model's loss never changes g; early in training the bias
expert is therefore weaker than a pre-trained one (on Biased MNIST the colour is learnt in
a fraction of the first epoch).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from endebias.methods import Method, register_method
from endebias.methods.bias_branch import (
    BIAS_MODEL_DEFAULTS,
    build_bias_network,
    feature_layer_of,
    feature_size,
    logits_and_features,
)


def learned_mixin_loss(
    logits: Tensor, gate_logits: Tensor, bias_log_probs: Tensor, targets: Tensor, *,
    entropy_weight: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(loss_pe + entropy_weight * H, loss_pe, H, gate)``, ``gate_logits`` of shape (B, 1)."""
    gate = nn.functional.softplus(gate_logits)
    bias = gate * bias_log_probs
    product = nn.functional.cross_entropy(logits.log_softmax(dim=1) + bias, targets)
    bias_log_softmax = bias.log_softmax(dim=1)
    entropy = -(bias_log_softmax.exp() * bias_log_softmax).sum(dim=1).mean()
    return product + entropy_weight * entropy, product, entropy, gate


@register_method("learned-mixin")
class LearnedMixin(Method):
    uses_bias_labels = False
    defaults = {"entropy_weight": 0.36, "layer": None, **BIAS_MODEL_DEFAULTS}
    search_space = {
        "entropy_weight": {"distribution": "uniform", "min": 0.0, "max": 1.0},
    }

    def __init__(
        self,
        model: nn.Module,
        *,
        entropy_weight: float,
        layer: str | None,
        bias_model: str,
        bias_model_options: dict[str, Any] | None,
        **common,
    ) -> None:
        super().__init__(model, **common)
        if isinstance(entropy_weight, bool) or not 0 <= entropy_weight < float("inf"):
            raise ValueError(f"entropy_weight must be a finite number >= 0, got "
                             f"{entropy_weight!r}")
        self.entropy_weight = float(entropy_weight)
        self.layer = feature_layer_of("learned-mixin", model, layer)
        self.bias_model = build_bias_network(
            "learned-mixin", build_network=self.build_network, bias_model=bias_model,
            bias_model_options=bias_model_options, num_targets=self.num_targets,
            input_shape=self.input_shape,
        )
        self.bias_layer = self.bias_model.feature_layer
        self.gate = nn.Linear(feature_size(model, self.layer, self.input_shape), 1)

    def networks(self) -> list[nn.Module]:
        return [self.model, self.bias_model]

    def training_step(
        self, inputs: Tensor, targets: Tensor, biases: Tensor, indices: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        logits, features = logits_and_features(self.model, self.layer, inputs)
        bias_logits = self.bias_model(inputs)
        loss, product, entropy, gate = learned_mixin_loss(
            logits, self.gate(features), bias_logits.detach().log_softmax(dim=1), targets,
            entropy_weight=self.entropy_weight,
        )
        ce_bias_model = nn.functional.cross_entropy(bias_logits, targets)
        parts = {
            "ce": nn.functional.cross_entropy(logits.detach(), targets),
            "ce_product": product.detach(),
            "entropy": entropy.detach(),
            "mean_gate": gate.detach().mean(),
            "ce_bias_model": ce_bias_model.detach(),
        }
        return loss + ce_bias_model, logits, parts
