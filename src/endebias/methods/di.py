"""Domain-independent training (Wang et al., "Towards Fairness in Visual Recognition:
Effective Strategies for Bias Mitigation", CVPR 2020).

One linear classifier head per bias value on the model's features ``z`` (one linear layer
with ``num_biases * num_targets`` outputs, block b the head of bias b); each sample trains
only the head of its own bias::

    loss      = mean_i CE(head_{b_i}(z_i), y_i)
    inference = argmax_y sum_b log softmax(head_b(z))[y]     (inference "log_probs")
           or   argmax_y sum_b head_b(z)[y]                   (inference "logits")

The bias label is needed in training only: at test time every head votes. "log_probs"
(the product of the heads' probabilities) is what the BiasCon authors' Biased MNIST code
uses; "logits" is Wang et al.'s "sum of outputs". The model's own classifier ``fc`` is
left unused (it gets no gradient).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from endebias.hooks import capture_features
from endebias.methods import Method, register_method
from endebias.methods.features import feature_size, resolve_layer
from endebias.methods.options import check_choice


@register_method("di")
class DomainIndependent(Method):
    defaults = {"inference": "log_probs", "layer": None}
    search_space = {"inference": {"values": ["log_probs", "logits"]}}

    def __init__(self, model: nn.Module, *, inference: str, layer: str | None, **common) -> None:
        super().__init__(model, **common)
        self.inference = check_choice("inference", inference, ("log_probs", "logits"))
        self.layer = resolve_layer(model, layer, "di")
        self.heads = nn.Linear(feature_size(model, "di"), self.num_biases * self.num_targets)

    def head_logits(self, inputs: Tensor) -> Tensor:
        """(N, num_biases, num_targets): every head's logits."""
        with capture_features(self.model, self.layer) as captured:
            self.model(inputs)
        logits = self.heads(captured.get().flatten(1))
        return logits.reshape(len(inputs), self.num_biases, self.num_targets)

    def combine(self, head_logits: Tensor) -> Tensor:
        if self.inference == "log_probs":
            return head_logits.float().log_softmax(dim=2).sum(dim=1)
        return head_logits.sum(dim=1)

    def forward(self, inputs: Tensor) -> Tensor:
        return self.combine(self.head_logits(inputs))

    def training_step(
        self, inputs: Tensor, targets: Tensor, biases: Tensor, indices: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        heads = self.head_logits(inputs)
        own = heads[torch.arange(len(inputs), device=heads.device), biases]
        ce = nn.functional.cross_entropy(own, targets)
        # The accuracy the trainer logs is that of the evaluated (combined) prediction.
        return ce, self.combine(heads.detach()), {"ce": ce.detach()}

