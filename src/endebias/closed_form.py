"""The arithmetic of the EnD terms (Tartaglione et al., CVPR 2021), on flattened features
and labels already numbered 0..K-1; :mod:`endebias.regularizer` checks the inputs.

With z_i the flattened features of sample i and G_ij = <z_i, z_j>:

* R_perp (disentangling) = sum_c |sum_{i<j, b_i=b_j=c} G_ij| / M_perp
* R_par  (entangling)    = 1 - mean over pairs {y_i=y_j, b_i!=b_j} of (1 + G_ij) / 2

For any group g with feature sum s_g, sum_{i<j in g} G_ij = (||s_g||^2 - sum_g ||z_i||^2) / 2,
so both terms follow from per-(target, bias) feature sums: one scatter of the batch into
T*C rows, O(B*F) work and no B x B Gram matrix. Nothing here reads a tensor value on the
host, so the loss costs no device synchronisation and traces cleanly under `torch.compile`.

The closed form has a hand-written backward pass, except with ``reduce_group_sums``,
where autograd differentiates through the reducer. Second-order gradients are exact: when
the backward pass itself runs with grad mode on (``create_graph=True``, as in a gradient
penalty), it differentiates the same arithmetic with autograd instead.

`reference_terms` reproduces the official code's arithmetic (docs/design.md section 2): a
clamped Gram matrix, and an entangling term over only the pairs (i, j) with i later than j
in the batch and b_i < b_j.

Several processes, one global batch. Because the terms depend on the batch only through
the per-group sums, ``reduce_group_sums`` may replace the local ``(T*C, F+2)`` sums by
their sum over processes, e.g. an autograd-aware all-reduce; every process then computes
the loss of the *global* batch, and gradients flow back to each process's own samples (see
``endebias.training.distributed``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

GroupSumsReducer = Callable[[Tensor], Tensor]


def _safe_ratio(numerator: Tensor, count: Tensor) -> Tensor:
    """numerator / count, or 0 where count is 0, without a Python branch on tensor values."""
    return torch.where(count > 0, numerator / count.clamp_min(1), torch.zeros_like(numerator))


def _group_sums(flat: Tensor, group: Tensor, num_groups: int) -> Tensor:
    """(T*C, F+2): per (target, bias) group, the feature sum, the sum of squared norms and
    the sample count."""
    # Contiguous buffers: index_add_ into a column slice is ~7x slower on CPU.
    feature_sums = flat.new_zeros(num_groups, flat.shape[1]).index_add_(0, group, flat)
    # vector_norm reduces without the (B, F) temporary of (flat * flat).sum(1).
    squared_norms = torch.linalg.vector_norm(flat, dim=1).square()
    extras = torch.stack([squared_norms, torch.ones_like(squared_norms)], dim=1)
    extra_sums = flat.new_zeros(num_groups, 2).index_add_(0, group, extras)
    return torch.cat([feature_sums, extra_sums], dim=1)


def _terms(sums: Tensor, num_targets: int, num_biases: int) -> tuple[Tensor, Tensor, tuple]:
    """(r_perp, r_par) from the group sums, and what the backward pass needs. The norm and
    count columns ride along through the features' reductions (one op for all three)."""
    width = sums.shape[1] - 2
    table = sums.view(num_targets, num_biases, width + 2)

    # Disentangling. Per bias class c: twice the same-bias Gram sum is
    # ||s_c||^2 - sum |z_i|^2 and twice the pair count is n_c^2 - n_c.
    per_bias = table.sum(dim=0)  # (C, F+2)
    squares = per_bias.square()
    twice_same_bias = squares[:, :width].sum(dim=1) - per_bias[:, width]
    bias_counts = per_bias[:, width + 1]
    # One sample, no pair: masked, as the two sums above may differ by rounding.
    twice_same_bias = torch.where(bias_counts > 1, twice_same_bias, 0.0)
    twice_perp_pairs = (squares[:, width + 1] - bias_counts).sum()
    r_perp = twice_same_bias.abs().sum() / twice_perp_pairs.clamp_min(1)

    # Entangling. Twice the cross-bias Gram sum is sum_tc <s_tc, s_t - s_tc>: a product,
    # not ||s_t||^2 - sum_c ||s_tc||^2, so that a few conflicting samples in a large
    # batch do not vanish in a difference of large numbers. Counts: pairs, likewise.
    rest = table.sum(dim=1, keepdim=True) - table  # (T, C, F+2)
    products = (table * rest).sum(dim=(0, 1))
    twice_cross, twice_par_pairs = products[:width].sum(), products[width + 1]
    # 1 - mean of (1 + G) / 2 over the M_par pairs = 1/2 - (sum of G) / (2 M_par)
    mean_term = twice_cross / (2 * twice_par_pairs.clamp_min(1))
    r_par = torch.where(twice_par_pairs > 0, 0.5 - mean_term, 0.0)
    return r_perp, r_par, (per_bias, rest, twice_same_bias, twice_perp_pairs, twice_par_pairs)


class _ClosedForm(torch.autograd.Function):
    """Both terms as one autograd node with a hand-written backward: the loss is a few
    dozen tiny ops, where autograd's bookkeeping (and its (B, F) temporaries) would cost
    more than the arithmetic."""

    @staticmethod
    def forward(ctx, flat: Tensor, targets: Tensor, biases: Tensor, num_targets: int,
                num_biases: int) -> tuple[Tensor, Tensor]:
        group = targets * num_biases + biases
        r_perp, r_par, saved = _terms(_group_sums(flat, group, num_targets * num_biases),
                                      num_targets, num_biases)
        ctx.save_for_backward(flat, group, biases, *saved)
        ctx.counts = (num_targets, num_biases)
        return r_perp, r_par

    @staticmethod
    def backward(ctx, grad_perp: Tensor, grad_par: Tensor) -> tuple[Tensor | None, ...]:
        flat, group, biases, per_bias, rest, twice_same, twice_perp_pairs, twice_par_pairs = (
            ctx.saved_tensors
        )
        if torch.is_grad_enabled():
            # create_graph=True: the tensors saved in forward carry no graph, so the
            # gradient below would be a constant. Autograd of the same arithmetic is exact.
            return _differentiable_gradient(flat, group, ctx.counts, grad_perp, grad_par)
        width = flat.shape[1]
        # r_perp = sum_c |P_c| / (2 M_perp), P_c = ||s_c||^2 - sum_{b_i=c} |z_i|^2, so
        # d r_perp / d z_i = 2 sign(P_c) (s_c - z_i) / (2 M_perp) with c = b_i.
        perp_weight = grad_perp * twice_same.sign() / twice_perp_pairs.clamp_min(1)  # (C,)
        # r_par = 1/2 - X / (2 * 2 M_par), X = sum_tc <s_tc, s_t - s_tc>: dX/dz_i = 2 rest_tc.
        par_weight = torch.where(twice_par_pairs > 0, grad_par / twice_par_pairs, 0.0)
        per_group = rest[..., :width] * -par_weight  # (T, C, F): the part shared by a group
        per_group.addcmul_(per_bias[:, :width], perp_weight.unsqueeze(1), value=2)
        grad = per_group.view(-1, width).index_select(0, group)
        own = perp_weight.index_select(0, biases).unsqueeze(1)
        return grad.addcmul_(flat, own, value=-2), None, None, None, None


def _differentiable_gradient(
    flat: Tensor, group: Tensor, counts: tuple[int, int], grad_perp: Tensor, grad_par: Tensor
) -> tuple[Tensor | None, ...]:
    num_targets, num_biases = counts
    with torch.enable_grad():
        r_perp, r_par, _ = _terms(_group_sums(flat, group, num_targets * num_biases),
                                  num_targets, num_biases)
        (grad,) = torch.autograd.grad((r_perp, r_par), flat, (grad_perp, grad_par),
                                      create_graph=True)
    return grad, None, None, None, None


def closed_form_terms(
    flat: Tensor, targets: Tensor, biases: Tensor, num_targets: int, num_biases: int,
    reduce_group_sums: GroupSumsReducer | None = None,
) -> tuple[Tensor, Tensor]:
    if reduce_group_sums is None:
        return _ClosedForm.apply(flat, targets, biases, num_targets, num_biases)
    # Same arithmetic with autograd's backward, which passes through the reducer (the
    # backward of an all-reduce sums the gradients over processes).
    group = targets * num_biases + biases
    sums = reduce_group_sums(_group_sums(flat, group, num_targets * num_biases))
    r_perp, r_par, _ = _terms(sums, num_targets, num_biases)
    return r_perp, r_par


def reference_terms(
    flat: Tensor, targets: Tensor, biases: Tensor, num_biases: int
) -> tuple[Tensor, Tensor]:
    batch = flat.shape[0]
    gram = (flat @ flat.T).clamp(-1, 1)
    index = torch.arange(batch, device=flat.device)
    earlier = index[:, None] > index[None, :]  # row sample comes later in the batch
    same_bias = biases[:, None] == biases[None, :]

    perp_mask = earlier & same_bias
    row_sums = (gram * perp_mask).sum(dim=1)
    per_bias = flat.new_zeros(num_biases).index_add(0, biases, row_sums)
    perp_pairs = perp_mask.sum().to(flat.dtype)
    r_perp = _safe_ratio(per_bias.abs().sum(), perp_pairs)

    same_target = targets[:, None] == targets[None, :]
    par_mask = earlier & same_target & (biases[:, None] < biases[None, :])
    par_pairs = par_mask.sum().to(flat.dtype)
    mean_similarity = _safe_ratio(((1 + gram) / 2 * par_mask).sum(), par_pairs)
    r_par = torch.where(par_pairs > 0, 1 - mean_similarity, torch.zeros_like(mean_similarity))
    return r_perp, r_par
