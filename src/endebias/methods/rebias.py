"""ReBias (Bahng et al., ICML 2020): the main model f is trained to be statistically
independent of a network g that is biased by design, while g is trained to stay as
dependent on f as its design allows (a minimax game).

Dependence is measured by the Hilbert-Schmidt independence criterion (HSIC) between the
two networks' features, with Gaussian (RBF) kernels::

    f:  minimise  CE(f(x), y) + hsic_weight      * HSIC(features_f, features_g)
    g:  minimise  CE(g(x), y) - bias_hsic_weight * HSIC(features_f, features_g)

g (``bias_model``, by default ReBias's 1x1 ``bias-conv``) can only learn the bias, so the
dependence f can remove is its dependence on the bias. Both objectives go in one scalar
loss, each HSIC term seeing the other network's features detached, so every network gets
the gradient of its own objective only; each network has its own optimiser group
(``bias_lr``: g's learning rate; unset, the run's). Bahng et al. update g and then f on each
batch; here both are updated from one forward pass. Evaluation uses f alone.

HSIC is the unbiased estimator of Song et al. (JMLR 2012), for a batch of m >= 4::

    HSIC = [tr(K~ L~) + 1'K~1 1'L~1 / ((m-1)(m-2)) - 2/(m-2) 1'K~L~1] / (m (m-3))

with K~, L~ the kernel matrices with their diagonals set to 0 (a batch of fewer than 4
samples adds no HSIC term). Kernel ``k(a, b) = exp(-|a - b|^2 / (2 sigma^2))``;
``kernel_radius`` is sigma: ``median`` (the default, as the paper describes: the median
distance between the batch's samples, computed per network and per batch, detached) or a
fixed number (the public code's Biased MNIST runs used 1).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from endebias.methods import Method, OptimizerGroup, register_method
from endebias.methods.bias_branch import (
    BIAS_MODEL_DEFAULTS,
    build_bias_network,
    feature_layer_of,
    logits_and_features,
)

# Features closer than this everywhere give a radius of this instead of 0 (no 0 / 0).
_SMALLEST_RADIUS = 1e-6


def squared_distances(features: Tensor) -> Tensor:
    """The (m, m) matrix of squared Euclidean distances between the rows of ``features``."""
    flat = features.flatten(1)
    norms = (flat * flat).sum(dim=1)
    return (norms[:, None] + norms[None, :] - 2 * flat @ flat.T).clamp_min(0)


def median_radius(features: Tensor) -> Tensor:
    """The median of the distances between distinct samples (detached): the median
    heuristic for an RBF kernel's radius. ``torch.median`` takes the lower middle value of
    an even count."""
    with torch.no_grad():
        distances = squared_distances(features)
        upper = torch.triu_indices(len(features), len(features), offset=1, device=features.device)
        median = distances[upper[0], upper[1]].median().sqrt()
    return median.clamp_min(_SMALLEST_RADIUS)


def rbf_kernel(features: Tensor, radius: Tensor | float) -> Tensor:
    radius = torch.as_tensor(radius, dtype=features.dtype, device=features.device)
    return torch.exp(-squared_distances(features) / (2 * radius.clamp_min(_SMALLEST_RADIUS) ** 2))


def unbiased_hsic(kernel_x: Tensor, kernel_y: Tensor) -> Tensor:
    """Song et al.'s unbiased HSIC estimator from two (m, m) kernel matrices, m >= 4."""
    m = kernel_x.shape[0]
    if m < 4:
        raise ValueError(f"the unbiased HSIC estimator needs at least 4 samples, got {m}")
    off_diagonal = 1 - torch.eye(m, dtype=kernel_x.dtype, device=kernel_x.device)
    k, l_ = kernel_x * off_diagonal, kernel_y * off_diagonal
    trace = (k * l_).sum()  # tr(K L) for symmetric matrices
    sums = k.sum() * l_.sum() / ((m - 1) * (m - 2))
    cross = 2 * (k.sum(dim=0) * l_.sum(dim=0)).sum() / (m - 2)  # 1'K L 1
    return (trace + sums - cross) / (m * (m - 3))


def rbf_hsic(x: Tensor, y: Tensor, *, radius_x: Tensor | float, radius_y: Tensor | float) -> Tensor:
    return unbiased_hsic(rbf_kernel(x, radius_x), rbf_kernel(y, radius_y))


def check_kernel_radius(value: Any) -> None:
    if isinstance(value, str):
        if value != "median":
            raise ValueError(f"kernel_radius must be 'median' or a number > 0, got {value!r}")
    elif isinstance(value, bool) or not 0 < value < float("inf"):
        raise ValueError(f"kernel_radius must be 'median' or a number > 0, got {value!r}")


@register_method("rebias")
class ReBias(Method):
    uses_bias_labels = False
    defaults = {
        "hsic_weight": 1.0,
        "bias_hsic_weight": 1.0,
        "kernel_radius": "median",
        "bias_lr": None,
        "layer": None,
        **BIAS_MODEL_DEFAULTS,
    }
    search_space = {
        "hsic_weight": {"distribution": "log_uniform_values", "min": 0.1, "max": 10.0},
        "bias_hsic_weight": {"distribution": "log_uniform_values", "min": 0.1, "max": 10.0},
    }

    def __init__(
        self,
        model: nn.Module,
        *,
        hsic_weight: float,
        bias_hsic_weight: float,
        kernel_radius: float | str,
        bias_lr: float | None,
        layer: str | None,
        bias_model: str,
        bias_model_options: dict[str, Any] | None,
        **common,
    ) -> None:
        super().__init__(model, **common)
        for name, value in (("hsic_weight", hsic_weight), ("bias_hsic_weight", bias_hsic_weight)):
            if isinstance(value, bool) or not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        check_kernel_radius(kernel_radius)
        if bias_lr is not None and (isinstance(bias_lr, bool) or not 0 < bias_lr < float("inf")):
            raise ValueError(f"bias_lr must be a number > 0 (or null: the run's lr), got "
                             f"{bias_lr!r}")
        self.hsic_weight = float(hsic_weight)
        self.bias_hsic_weight = float(bias_hsic_weight)
        self.kernel_radius = kernel_radius
        self.bias_lr = None if bias_lr is None else float(bias_lr)
        self.layer = feature_layer_of("rebias", model, layer)
        self.bias_model = build_bias_network(
            "rebias", build_network=self.build_network, bias_model=bias_model,
            bias_model_options=bias_model_options, num_targets=self.num_targets,
            input_shape=self.input_shape,
        )
        self.bias_layer = self.bias_model.feature_layer

    def networks(self) -> list[nn.Module]:
        return [self.model, self.bias_model]

    def optimizer_groups(self) -> dict[str, OptimizerGroup]:
        return {
            "model": OptimizerGroup(list(self.model.parameters())),
            "bias_model": OptimizerGroup(list(self.bias_model.parameters()), lr=self.bias_lr),
        }

    def _radius(self, features: Tensor) -> Tensor | float:
        return median_radius(features) if self.kernel_radius == "median" else self.kernel_radius

    def training_step(
        self, inputs: Tensor, targets: Tensor, biases: Tensor, indices: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        logits, features = logits_and_features(self.model, self.layer, inputs)
        bias_logits, bias_features = logits_and_features(self.bias_model, self.bias_layer, inputs)
        ce = nn.functional.cross_entropy(logits, targets)
        ce_bias_model = nn.functional.cross_entropy(bias_logits, targets)
        loss = ce + ce_bias_model
        parts = {"ce": ce.detach(), "ce_bias_model": ce_bias_model.detach()}
        if len(inputs) >= 4:
            # float32 under bf16 autocast: exponentials of distances lose too much in bf16.
            with torch.autocast(inputs.device.type, enabled=False):
                features, bias_features = features.float(), bias_features.float()
                radius, bias_radius = self._radius(features), self._radius(bias_features)
                hsic_f = rbf_hsic(features, bias_features.detach(), radius_x=radius,
                                  radius_y=bias_radius)
                hsic_g = rbf_hsic(features.detach(), bias_features, radius_x=radius,
                                  radius_y=bias_radius)
            loss = loss + self.hsic_weight * hsic_f - self.bias_hsic_weight * hsic_g
            parts["hsic"] = hsic_f.detach()
        else:
            parts["hsic"] = torch.zeros((), device=ce.device)
        return loss, logits, parts
