"""Learning Not to Learn (Kim et al., CVPR 2019): a bias predictor reads the model's
features; the features are trained to leave it uncertain and, through a gradient
reversal, to make its job hard.

With ``z`` the model's features, ``h`` the bias predictor (a two-layer MLP on z) and
``q = softmax(h(z))``::

    loss = CE(f, y)
         + entropy_weight * mean_i sum_b q_ib log q_ib     (h frozen: trains the features)
         + CE(h(R(z)), b)                                   (trains h; R reverses the
                                                             gradient, times reversal_weight)

The middle term is minus the entropy of the predicted bias distribution, the paper's
stand-in for the mutual information between features and bias: minimising it makes the
features uninformative to h. The last term trains h to predict the bias while R turns its
gradient round for the features. The authors' code makes two optimiser steps per batch
(one per term group); here one loss carries both, with h's parameters detached in the
middle term so that it trains only the features.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from endebias.hooks import capture_features
from endebias.methods import Method, OptimizerGroup, register_method
from endebias.methods.features import feature_size, resolve_layer
from endebias.methods.options import check_nonnegative


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inputs: Tensor, scale: float) -> Tensor:  # type: ignore[override]
        ctx.scale = scale
        return inputs.view_as(inputs)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return -ctx.scale * grad, None


def reverse_gradient(inputs: Tensor, scale: float = 1.0) -> Tensor:
    """Identity forward; the gradient is multiplied by ``-scale`` on the way back."""
    return _ReverseGradient.apply(inputs, scale)


@register_method("lnl")
class LearningNotToLearn(Method):
    # The authors' code: entropy weight (their lambda) 0.01, gradient reversal scale 0.1;
    # the BiasCon authors' Biased MNIST harness keeps the 0.1 and weighs entropy 1. A
    # reversal of scale 1 diverged on our synthetic data (the features win the game by
    # making the bias loss unbounded and the target accuracy falls to chance).
    defaults = {"entropy_weight": 0.01, "reversal_weight": 0.1, "layer": None}
    search_space = {
        "entropy_weight": {"distribution": "log_uniform_values", "min": 0.001, "max": 10.0},
        "reversal_weight": {"distribution": "log_uniform_values", "min": 0.01, "max": 1.0},
    }

    def __init__(
        self, model: nn.Module, *, entropy_weight: float, reversal_weight: float,
        layer: str | None, **common,
    ) -> None:
        super().__init__(model, **common)
        self.entropy_weight = check_nonnegative("entropy_weight", entropy_weight)
        self.reversal_weight = check_nonnegative("reversal_weight", reversal_weight)
        self.layer = resolve_layer(model, layer, "lnl")
        width = feature_size(model, "lnl")
        self.bias_predictor = nn.Sequential(
            nn.Linear(width, width), nn.ReLU(), nn.Linear(width, self.num_biases)
        )

    def optimizer_groups(self) -> dict[str, OptimizerGroup]:
        # As the authors' code: the bias predictor has its own optimiser, with the same
        # learning rate, weight decay and schedule as the model's.
        return {
            "model": OptimizerGroup(list(self.model.parameters())),
            "bias_predictor": OptimizerGroup(list(self.bias_predictor.parameters())),
        }

    def training_step(
        self, inputs: Tensor, targets: Tensor, biases: Tensor, indices: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        with capture_features(self.model, self.layer) as captured:
            logits = self.model(inputs)
        features = captured.get().flatten(1)
        ce = nn.functional.cross_entropy(logits, targets)
        frozen = {k: v.detach() for k, v in self.bias_predictor.named_parameters()}
        log_q = functional_call(self.bias_predictor, frozen, (features,)).float().log_softmax(1)
        neg_entropy = (log_q.exp() * log_q).sum(dim=1).mean()
        bias_logits = self.bias_predictor(reverse_gradient(features, self.reversal_weight))
        bias_ce = nn.functional.cross_entropy(bias_logits, biases)
        loss = ce + self.entropy_weight * neg_entropy + bias_ce
        parts = {"ce": ce.detach(), "neg_entropy": neg_entropy.detach(),
                 "ce_bias_predictor": bias_ce.detach()}
        return loss, logits, parts
