"""The bias-contrastive authors' second batch (Hong & Yang, NeurIPS 2021): a batch drawn
apart from the trainer's, over-sampling the rare (target, bias) groups, each image seen
in two random views (:mod:`endebias.methods.views`).

Sample i is drawn, with replacement, with probability proportional to::

    w_i = min( 1 / P(b_i | y_i),  oversample_ratio * min_j 1 / P(b_j | y_j) )

(P from the training split's counts), so at rho 0.997 a bias-conflicting image is drawn
``oversample_ratio`` times as often as an aligned one instead of about 3,000 times;
``oversample_ratio`` 1 draws uniformly. Without bias labels (SoftCon) the weights come from
a bias-capturing model's features instead: :func:`soft_oversampling_weights`.

Each draw comes from a generator seeded with the run's own seed (taken from the global
generator when the method is built, i.e. from the config's seed) and the number of draws
so far; both travel in the method's ``state_dict``, so a resumed run draws what the
uninterrupted one would.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from endebias.methods import TrainingRows
from endebias.methods.options import check_positive
from endebias.methods.views import augment_images


def check_draw_options(contrast_batch: int, oversample_ratio: float) -> None:
    """The options of a drawn contrastive batch, refused in one line when out of range."""
    if isinstance(contrast_batch, bool) or not isinstance(contrast_batch, int) \
            or contrast_batch < 0:
        raise ValueError(f"contrast_batch must be an integer >= 0 (0: the trainer's batch), "
                         f"got {contrast_batch!r}")
    if not check_positive("oversample_ratio", oversample_ratio) >= 1:
        raise ValueError(f"oversample_ratio must be >= 1 (1: uniform), got {oversample_ratio}")


def oversampling_weights(
    targets: Tensor, biases: Tensor, *, num_targets: int, num_biases: int, ratio: float
) -> Tensor:
    """``w_i`` above, float64 on the CPU."""
    targets, biases = targets.cpu().long(), biases.cpu().long()
    counts = torch.zeros(num_targets, num_biases, dtype=torch.float64)
    counts.index_put_((targets, biases), torch.ones(len(targets), dtype=torch.float64),
                      accumulate=True)
    given_target = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    weights = 1 / given_target[targets, biases]
    return weights.clamp(max=float(ratio * weights.min()))


def soft_oversampling_weights(bias_features: Tensor, targets: Tensor, *, ratio: float) -> Tensor:
    """SoftCon's draw weights, float64 on the CPU: how unlike the other samples of its
    target the bias-capturing model sees sample i::

        w_i = sum_{r : y_r = y_i} 1 - cos(u_i, u_r)  =  n_{y_i} - û_i · sum_{r : y_r = y_i} û_r

        w_i <- min(w_i, ratio * min_{w_j > 0} w_j)

    A sample the bias model sees as typical of its target (aligned) gets a small weight,
    a conflicting one a large weight. The authors' code sums over 1,024 random samples of
    the target instead; on Biased MNIST at rho 0.997 (about 18 conflicting rows in 6,000
    per digit) such a set often holds none, the smallest weight falls to feature noise and
    the cap then flattens every weight (0.3 % of draws conflicting, as without
    over-sampling); the sum over all of them is exact, as cheap, and draws 2.7 %
    (docs/methods.md). Where every weight is 0 (one feature for all) the draw is uniform."""
    unit = torch.nn.functional.normalize(bias_features.detach().double().cpu(), dim=1)
    targets = targets.cpu().long()
    sums = torch.zeros(int(targets.max()) + 1, unit.shape[1], dtype=torch.float64)
    sums.index_add_(0, targets, unit)
    counts = torch.bincount(targets).double()
    weights = (counts[targets] - (unit * sums[targets]).sum(dim=1)).clamp_min(0)
    positive = weights[weights > 0]
    if len(positive) == 0:
        return torch.ones_like(weights)
    return weights.clamp(max=float(ratio * positive.min()))


class ContrastBatches(nn.Module):
    """Draws ``size`` training rows with probability proportional to ``weights`` and returns
    two views of each (augmented, or the rows twice) with their targets, biases and row
    numbers. ``weights`` may be set after construction, before the first draw (SoftCon's
    need the training rows, which the trainer hands over after building the method)."""

    def __init__(self, weights: Tensor | None, *, size: int, augment: bool) -> None:
        super().__init__()
        self.size, self.augment = size, augment
        self.weights = weights
        self.seed = int(torch.randint(0, 2**62, (1,)))
        self.draws = 0

    def get_extra_state(self) -> Tensor:  # a tensor, as every other entry of a state_dict
        return torch.tensor([self.seed, self.draws], dtype=torch.int64)

    def set_extra_state(self, state: Tensor) -> None:
        self.seed, self.draws = (int(value) for value in state.tolist())

    def check_rows(self, rows: TrainingRows | None) -> TrainingRows:
        if rows is None:
            raise ValueError("contrast_batch > 0 draws from the training split, which only "
                             "the trainer provides (set contrast_batch=0 to contrast the "
                             "trainer's batch)")
        return rows

    def draw(self, rows: TrainingRows | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Model inputs of both views, their targets and biases, and the drawn row numbers
        (once each: the views are the first and second half of the rest)."""
        rows = self.check_rows(rows)
        if self.weights is None:
            raise RuntimeError("ContrastBatches.draw before its weights were set")
        if len(rows) != len(self.weights):
            raise ValueError(f"the training split has {len(rows)} rows, the method was built "
                             f"for {len(self.weights)}")
        if self.augment and (rows.inputs.dtype != torch.uint8 or rows.inputs.dim() != 4):
            raise ValueError(f"augment=true takes uint8 images (N, C, H, W), and this "
                             f"dataset's rows are {rows.inputs.dtype} of shape "
                             f"{tuple(rows.inputs.shape[1:])}: set augment=false "
                             "(--method-option augment=false)")
        generator = torch.Generator().manual_seed(self.seed + self.draws)
        self.draws += 1
        chosen = torch.multinomial(self.weights, self.size, replacement=True,
                                   generator=generator).to(rows.targets.device)
        stored = rows.inputs[chosen]
        if self.augment:
            views = [augment_images(stored, generator), augment_images(stored, generator)]
        else:
            views = [stored, stored]
        inputs = rows.prepare(torch.cat(views))
        return inputs, rows.targets[chosen].repeat(2), rows.biases[chosen].repeat(2), chosen
