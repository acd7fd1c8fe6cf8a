"""Generalised cross-entropy alone: a model made biased on purpose.

``GCE(p, y) = (1 - p_y**q) / q`` weights each sample's gradient by ``p_y**q``, so training
leans on the samples the model already gets right: the easy, bias-aligned ones. LfF trains
its biased twin this way; here it is a method of its own, the bias-capturing stage of
``--bias-labels pseudo`` (endebias.training.pseudo_label_stages). Not a debiasing method.
"""

from __future__ import annotations

from torch import Tensor, nn

from endebias.methods import Method, register_method
from endebias.methods.lff import generalized_cross_entropy


@register_method("gce")
class GeneralizedCrossEntropy(Method):
    # Named gce_q, not q, so that a bare q option still names LfF (config.infer_method).
    defaults = {"gce_q": 0.7}
    uses_bias_labels = False

    def __init__(self, model: nn.Module, *, gce_q: float, **common) -> None:
        super().__init__(model, **common)
        if isinstance(gce_q, bool) or not 0 < gce_q <= 1:
            raise ValueError(f"gce_q must be in (0, 1], got {gce_q!r}")
        self.q = float(gce_q)

    def training_step(
        self, inputs: Tensor, targets: Tensor, biases: Tensor, indices: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        logits = self.model(inputs)
        gce = generalized_cross_entropy(logits, targets, q=self.q).mean()
        ce = nn.functional.cross_entropy(logits.detach(), targets)
        return gce, logits, {"gce": gce.detach(), "ce": ce}
