"""FairKL with epsilon-SupInfoNCE (Barbano et al., "Unbiased Supervised Contrastive
Learning", ICLR 2023): the successor of EnD by the same authors.

On the L2-normalised features ``z`` of the model's feature layer (for SimpleConvNet the
Tanh-activated, pooled, normalised features, the same vectors the official code contrasts
for its SimpleConvNet: there the projection head is the identity)::

    loss = infonce_weight * eps-SupInfoNCE(z, y; temperature, epsilon)
         + fairkl_weight  * FairKL(z, y, b; temperature 1, std_weight)
         + CE(classifier(z), y)          (ce_weight 0: the classifier alone learns from it)
     or  + ce_weight * CE(classifier(z), y)   (ce_weight > 0: it trains the encoder too)

The losses are in :mod:`endebias.methods.contrastive_losses`. With ``ce_weight`` 0 (the
official default, ``beta`` 0) the encoder learns only from the contrastive terms and the
classifier reads detached features, as the official code's separate classifier optimiser
with the encoder's gradients cleared does.
"""

from __future__ import annotations

from torch import Tensor, nn

from endebias.methods import Method, register_method
from endebias.methods.contrastive_losses import epsilon_supinfonce, fairkl
from endebias.methods.features import forward_reading_features, resolve_layer
from endebias.methods.options import check_nonnegative, check_positive


@register_method("fairkl")
class FairKL(Method):
    packable = True
    defaults = {
        "temperature": 0.1,
        "epsilon": 0.0,
        "infonce_weight": 1.0,
        # Best of 0.1, 1 and 10 in a pilot on quick Biased MNIST at rho 0.997 (6,000
        # training images, 3 epochs, seed 1: 11.1, 14.3, 20.3 % unbiased; docs/results.md).
        "fairkl_weight": 10.0,
        "std_weight": 1.0,
        "ce_weight": 0.0,
        "layer": None,
    }
    search_space = {
        "fairkl_weight": {"distribution": "log_uniform_values", "min": 0.01, "max": 10.0},
        "epsilon": {"distribution": "uniform", "min": 0.0, "max": 0.5},
        "temperature": {"distribution": "log_uniform_values", "min": 0.05, "max": 1.0},
    }

    def __init__(
        self,
        model: nn.Module,
        *,
        temperature: float,
        epsilon: float,
        infonce_weight: float,
        fairkl_weight: float,
        std_weight: float,
        ce_weight: float,
        layer: str | None,
        **common,
    ) -> None:
        super().__init__(model, **common)
        self.temperature = check_positive("temperature", temperature)
        self.epsilon = check_nonnegative("epsilon", epsilon)
        self.infonce_weight = check_nonnegative("infonce_weight", infonce_weight)
        self.fairkl_weight = check_nonnegative("fairkl_weight", fairkl_weight)
        self.std_weight = check_nonnegative("std_weight", std_weight)
        self.ce_weight = check_nonnegative("ce_weight", ce_weight)
        self.layer = resolve_layer(model, layer, "fairkl")
        self.detaches_classifier = self.ce_weight == 0

    def training_step(
        self, inputs: Tensor, targets: Tensor, biases: Tensor, indices: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        logits, features = forward_reading_features(
            self.model, self.layer, inputs, detach_classifier=self.detaches_classifier
        )
        loss, parts = self.output_loss(logits, features, targets, biases)
        return loss, logits, parts

    def output_loss(
        self, logits: Tensor, features: Tensor, targets: Tensor, biases: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        ce = nn.functional.cross_entropy(logits, targets)
        infonce = epsilon_supinfonce(
            features, targets, temperature=self.temperature, epsilon=self.epsilon
        )
        kl = fairkl(features, targets, biases, temperature=1.0, std_weight=self.std_weight)
        loss = (self.ce_weight or 1.0) * ce + self.infonce_weight * infonce
        loss = loss + self.fairkl_weight * kl
        return loss, {"ce": ce.detach(), "infonce": infonce.detach(), "fairkl": kl.detach()}
