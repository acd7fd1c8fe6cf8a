"""The bias-contrastive authors' second batch (Hong & Yang, NeurIPS 2021): a batch drawn
apart from the trainer's, over-sampling the rare (target, bias) groups, each image seen
in two random views (:mod:`endebias.methods.views`).

Sample i is drawn, with replacement, with probability proportional to::

    w_i = min( 1 / P(b_i | y_i),  oversample_ratio * min_j 1 / P(b_j | y_j) )

(P from the training split's counts), so at rho 0.997 a bias-conflicting image is drawn
``oversample_ratio`` times as often as an aligned one instead of about 3,000 times;
``oversample_ratio`` 1 draws uniformly.

Each draw comes from a generator seeded with the run's own seed (taken from the global
generator when the method is built, i.e. from the config's seed) and the number of draws
so far; both travel in the method's ``state_dict``, so a resumed run draws what the
uninterrupted one would.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from endebias.methods import TrainingRows
from endebias.methods.views import augment_images


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


class ContrastBatches(nn.Module):
    """Draws ``size`` training rows by :func:`oversampling_weights` and returns two views of
    each (augmented, or the rows twice) with their targets and biases."""

    def __init__(self, targets: Tensor, biases: Tensor, *, num_targets: int, num_biases: int,
                 size: int, ratio: float, augment: bool) -> None:
        super().__init__()
        self.size, self.augment = size, augment
        self.weights = oversampling_weights(targets, biases, num_targets=num_targets,
                                            num_biases=num_biases, ratio=ratio)
        self.seed = int(torch.randint(0, 2**62, (1,)))
        self.draws = 0

    def get_extra_state(self) -> Tensor:  # a tensor, as every other entry of a state_dict
        return torch.tensor([self.seed, self.draws], dtype=torch.int64)

    def set_extra_state(self, state: Tensor) -> None:
        self.seed, self.draws = (int(value) for value in state.tolist())

    def draw(self, rows: TrainingRows | None) -> tuple[Tensor, Tensor, Tensor]:
        if rows is None:
            raise ValueError("contrast_batch > 0 draws from the training split, which only "
                             "the trainer provides (set contrast_batch=0 to contrast the "
                             "trainer's batch)")
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
        return inputs, rows.targets[chosen].repeat(2), rows.biases[chosen].repeat(2)
