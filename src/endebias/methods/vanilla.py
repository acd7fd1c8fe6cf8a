"""Plain empirical risk minimisation: cross-entropy only."""

from __future__ import annotations

from torch import Tensor, nn

from endebias.methods import Method, register_method


@register_method("vanilla")
class Vanilla(Method):
    packable = True
    uses_bias_labels = False
    def training_step(
        self, inputs: Tensor, targets: Tensor, biases: Tensor, indices: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        logits = self.model(inputs)
        loss, parts = self.output_loss(logits, None, targets, biases)
        return loss, logits, parts

    def output_loss(
        self, logits: Tensor, features: Tensor | None, targets: Tensor, biases: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        ce = nn.functional.cross_entropy(logits, targets)
        return ce, {"ce": ce.detach()}
