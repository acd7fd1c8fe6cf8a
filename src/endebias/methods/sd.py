"""Spectral decoupling (Pezeshki et al., "Gradient Starvation: A Learning Proclivity in
Neural Networks", NeurIPS 2021): cross-entropy plus an L2 penalty on the logits.

    loss = mean_i CE(f_i, y_i) + (sd_lambda / 2) * mean_i || f_i - sd_gamma ||^2

Penalising the logits rather than the weights decouples the features' learning dynamics:
a feature learnt first (the bias) no longer starves the others of gradient once it has
made the training loss small. No bias labels are read.
"""

from __future__ import annotations

from torch import Tensor, nn

from endebias.methods import Method, register_method
from endebias.methods.options import check_finite, check_nonnegative


@register_method("sd")
class SpectralDecoupling(Method):
    uses_bias_labels = False
    defaults = {"sd_lambda": 0.1, "sd_gamma": 0.0}
    search_space = {
        "sd_lambda": {"distribution": "log_uniform_values", "min": 1e-3, "max": 10.0},
        "sd_gamma": {"distribution": "uniform", "min": 0.0, "max": 5.0},
    }

    def __init__(self, model: nn.Module, *, sd_lambda: float, sd_gamma: float, **common) -> None:
        super().__init__(model, **common)
        self.sd_lambda = check_nonnegative("sd_lambda", sd_lambda)
        self.sd_gamma = check_finite("sd_gamma", sd_gamma)

    def training_step(
        self, inputs: Tensor, targets: Tensor, biases: Tensor, indices: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        logits = self.model(inputs)
        ce = nn.functional.cross_entropy(logits, targets)
        penalty = 0.5 * ((logits.float() - self.sd_gamma) ** 2).sum(dim=1).mean()
        loss = ce + self.sd_lambda * penalty
        return loss, logits, {"ce": ce.detach(), "logit_penalty": penalty.detach()}
