"""Bias-balanced softmax (Hong & Yang, NeurIPS 2021): train through the training set's
bias prior so the logits themselves need not learn it.

With ``n[y, b]`` the number of training samples of target y and bias b, ``B`` the number of
bias values and ``s`` the ``smoothing`` pseudo-count::

    prior[y, b] = (n[y, b] + s) / (sum_b' n[y, b'] + s * B)         ~ p_train(bias=b | target=y)
    adjusted[i, y] = logits[i, y] + log prior[y, b_i]
    loss = mean_i CE(adjusted[i], y_i)

Evaluation uses the unadjusted logits, i.e. a classifier for data where bias and target are
independent. The smoothing keeps groups absent from training finite: their log-prior is
about ``log(s / n_y)``, which all but removes that class from those samples' softmax.

The authors' code adds ``log p_train(y | b)`` instead. For one sample the two differ by
``log p_train(y) - log p_train(b)``; the second term is the same for every class and
cancels in the softmax, so the two agree whenever the classes are balanced, as in Biased
MNIST. With unbalanced classes ours leaves the class prior in the logits.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from endebias.methods import Method, register_method
from endebias.metrics import group_counts


def log_bias_prior(
    train_targets: Tensor, train_biases: Tensor, *, num_targets: int, num_biases: int,
    smoothing: float,
) -> Tensor:
    """``log prior[y, b]`` (T, B) as above, float32; refuses a smoothing that is not > 0."""
    if not (math.isfinite(smoothing) and smoothing > 0):
        raise ValueError(
            f"smoothing must be a finite number > 0 (empty groups would get log 0), "
            f"got {smoothing!r}"
        )
    counts = group_counts(
        train_targets, train_targets, train_biases,
        num_targets=num_targets, num_biases=num_biases,
    )[0].double().cpu()
    totals = counts.sum(dim=1, keepdim=True)
    prior = (counts + smoothing) / (totals + smoothing * num_biases)
    return prior.log().float()


def adjust_logits(logits: Tensor, log_prior: Tensor, biases: Tensor) -> Tensor:
    """``logits[i, y] + log prior[y, biases[i]]``, in float32: under bf16 autocast a
    log-prior near -15 would otherwise be rounded to a multiple of 1/16."""
    return logits.float() + log_prior[:, biases].T


@register_method("biasbal")
class BiasBalancedSoftmax(Method):
    defaults = {"smoothing": 1e-3}
    # Wide on purpose: the best pseudo-count depends on the group sizes. On quick Biased
    # MNIST at rho 0.997 (about 2 training images per rare group) unbiased accuracy rises
    # from 1e-4 to about 8 and collapses by 100 (docs/results.md).
    search_space = {
        "smoothing": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1e3},
    }

    def __init__(
        self,
        model: nn.Module,
        *,
        smoothing: float,
        train_targets: Tensor,
        train_biases: Tensor,
        **common,
    ) -> None:
        super().__init__(model, train_targets=train_targets, train_biases=train_biases, **common)
        self.smoothing = float(smoothing)
        prior = log_bias_prior(
            train_targets, train_biases, num_targets=self.num_targets,
            num_biases=self.num_biases, smoothing=self.smoothing,
        )
        # (T, B); derived from the constructor's arguments, so not part of the checkpoint.
        self.register_buffer("log_prior", prior, persistent=False)

    def adjust(self, logits: Tensor, biases: Tensor) -> Tensor:
        return adjust_logits(logits, self.log_prior, biases)

    def training_step(
        self, inputs: Tensor, targets: Tensor, biases: Tensor, indices: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        logits = self.model(inputs)
        ce = nn.functional.cross_entropy(self.adjust(logits, biases), targets)
        # The unadjusted logits are returned: the trainer's accuracy is the evaluated model's.
        return ce, logits, {"ce": ce.detach()}
