"""Group DRO (Sagawa et al., ICLR 2020): minimise a weighted sum of per-group losses
whose weights chase the worst group.

A group is a (target, bias) pair, numbered ``target * num_biases + bias`` as in
:mod:`endebias.metrics`. Every step, with ``loss_g`` the mean cross-entropy of the batch's
samples in group g::

    q_g <- q_g * exp(step_size * (loss_g + C / sqrt(n_g)))   for groups g in the batch
    q   <- q / sum(q)
    loss = sum_g q_g * loss_g                                  (absent groups count 0)

``n_g`` is the number of training samples in group g (at least 1) and ``C`` the
``generalization_adjustment`` (0 turns it off). The weights ``q`` start uniform and live in
a buffer, so a resumed run continues with them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from endebias.methods import Method, register_method
from endebias.metrics import group_counts


@register_method("groupdro")
class GroupDRO(Method):
    defaults = {"step_size": 0.01, "generalization_adjustment": 0.0}
    search_space = {
        "step_size": {"distribution": "log_uniform_values", "min": 1e-3, "max": 1.0},
        "generalization_adjustment": {"distribution": "uniform", "min": 0.0, "max": 4.0},
    }

    def __init__(
        self,
        model: nn.Module,
        *,
        step_size: float,
        generalization_adjustment: float,
        train_targets: Tensor,
        train_biases: Tensor,
        **common,
    ) -> None:
        super().__init__(model, train_targets=train_targets, train_biases=train_biases, **common)
        if not (math.isfinite(step_size) and step_size >= 0):
            raise ValueError(f"step_size must be a finite number >= 0, got {step_size!r}")
        if not (math.isfinite(generalization_adjustment) and generalization_adjustment >= 0):
            raise ValueError(
                f"generalization_adjustment must be a finite number >= 0, "
                f"got {generalization_adjustment!r}"
            )
        self.step_size = float(step_size)
        self.generalization_adjustment = float(generalization_adjustment)
        num_groups = self.num_targets * self.num_biases
        counts = group_counts(
            train_targets,
            train_targets,
            train_biases,
            num_targets=self.num_targets,
            num_biases=self.num_biases,
        )[0].reshape(-1)
        # Small groups get a bonus C / sqrt(n): their training loss underestimates their
        # test loss the most. Groups absent from training never appear in a batch.
        adjustment = self.generalization_adjustment / counts.clamp_min(1).double().sqrt()
        # Derived from the constructor's arguments, so not part of the checkpoint.
        self.register_buffer("group_adjustment", adjustment.float().cpu(), persistent=False)
        self.register_buffer("group_weights", torch.full((num_groups,), 1.0 / num_groups))

    def group_losses(
        self, losses: Tensor, targets: Tensor, biases: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Mean loss per group (0 for groups absent from the batch) and presence mask.

        A one-hot product rather than ``bincount``/``index_add``: no host sync (the output
        size is fixed) and deterministic on GPUs (no atomic adds). Elementwise, not a
        matmul, so bf16 autocast cannot round the sums. When one run spans several
        processes, ``reduce_group_sums`` sums them over processes (autograd-aware): every
        process then weighs the groups of the global batch, and all keep the same ``q``.
        """
        num_groups = self.group_weights.numel()
        groups = targets * self.num_biases + biases
        membership = groups[:, None] == torch.arange(num_groups, device=groups.device)
        sums = torch.where(membership, losses[:, None], 0.0).sum(dim=0)
        stats = torch.stack([sums, membership.sum(dim=0).to(sums.dtype)], dim=1)
        reduce = getattr(self, "reduce_group_sums", None)  # set by a multi-process trainer
        if reduce is not None:
            stats = reduce(stats)
        sums, counts = stats.unbind(dim=1)
        return sums / counts.clamp_min(1), counts > 0

    def training_step(
        self, inputs: Tensor, targets: Tensor, biases: Tensor, indices: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        logits = self.model(inputs)
        losses = nn.functional.cross_entropy(logits, targets, reduction="none")
        group_losses, present = self.group_losses(losses, targets, biases)
        with torch.no_grad():
            exponent = self.step_size * (group_losses + self.group_adjustment) * present
            # Subtracting the max leaves q unchanged after normalising but keeps exp finite.
            weights = self.group_weights * torch.exp(exponent - exponent.max())
            weights = weights / weights.sum()
            self.group_weights.copy_(weights)
        # The fresh `weights` (not the buffer, which the next step overwrites in place)
        # enter the graph as constants, as in the paper's exponentiated-gradient update.
        loss = (weights * group_losses).sum()
        parts = {"ce": losses.mean().detach(), "max_group_weight": weights.max()}
        return loss, logits, parts
