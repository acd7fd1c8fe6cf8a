"""Accuracy by (target, bias) group, all from one count matrix.

A group is a (target, bias) pair. ``group_counts`` accumulates, on the device, how many
samples of each group were seen and how many were classified correctly; everything else
(overall, unbiased = mean over groups, bias-aligned, bias-conflicting, worst group, the
per-group accuracy matrix) is derived from those two matrices.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def group_counts(
    predictions: Tensor, targets: Tensor, biases: Tensor, *, num_targets: int, num_biases: int
) -> Tensor:
    """A ``(2, T, C)`` tensor: ``[0]`` samples per group, ``[1]`` correct predictions per group.

    Sync-free (a scatter), so it can be summed over batches on the device and read once.
    """
    if not (predictions.shape == targets.shape == biases.shape) or targets.dim() != 1:
        raise ValueError(
            f"predictions, targets and biases must be equal-length 1-D tensors, got "
            f"{tuple(predictions.shape)}, {tuple(targets.shape)}, {tuple(biases.shape)}"
        )
    group = targets.long() * num_biases + biases.long()
    correct = (predictions == targets).long()
    counts = torch.zeros(2, num_targets * num_biases, dtype=torch.long, device=targets.device)
    counts[0].index_add_(0, group, torch.ones_like(group))
    counts[1].index_add_(0, group, correct)
    return counts.view(2, num_targets, num_biases)


def aligned_groups(train_counts: Tensor) -> Tensor:
    """Bias-aligned groups: for each target, the bias value(s) most frequent in training.

    For Biased MNIST this is colour == digit; for CelebA (blond, female). ``train_counts``
    is the ``(T, C)`` number of training samples per group.
    """
    most = train_counts.max(dim=1, keepdim=True).values
    return (train_counts == most) & (train_counts > 0)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def group_metrics(counts: Tensor, aligned: Tensor | None = None) -> dict[str, object]:
    """Named accuracies from a ``(2, T, C)`` count matrix (as from :func:`group_counts`).

    Keys: ``acc`` (all samples), ``acc_unbiased`` (mean over non-empty groups),
    ``acc_aligned`` / ``acc_conflicting`` (sample accuracy over aligned / other groups,
    when ``aligned`` is given), ``acc_worst_group``, ``group_acc`` (T x C, None if empty),
    ``n`` (samples). Empty subsets give NaN.
    """
    totals = counts[0].double().cpu()
    correct = counts[1].double().cpu()
    seen = totals > 0
    group_acc = torch.where(seen, correct / totals.clamp_min(1), torch.full_like(totals, math.nan))
    per_group = group_acc[seen].tolist()
    total = float(totals.sum())
    metrics: dict[str, object] = {
        "acc": float(correct.sum()) / total if total else math.nan,
        "acc_unbiased": _mean(per_group),
        "acc_worst_group": min(per_group) if per_group else math.nan,
        "n": int(total),
        "group_acc": [[None if math.isnan(v) else v for v in row] for row in group_acc.tolist()],
    }
    if aligned is not None:
        aligned = aligned.cpu().bool()
        for key, mask in (("acc_aligned", aligned), ("acc_conflicting", ~aligned)):
            n = float(totals[mask].sum())
            metrics[key] = float(correct[mask].sum()) / n if n else math.nan
    return metrics
