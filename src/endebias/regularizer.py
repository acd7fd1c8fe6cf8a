"""The EnD regulariser (Tartaglione et al., CVPR 2021) in closed form.

With z_i the flattened features of sample i and G_ij = <z_i, z_j>:

* R_perp (disentangling) = sum_c |sum_{i<j, b_i=b_j=c} G_ij| / M_perp
* R_par  (entangling)    = 1 - mean over pairs {y_i=y_j, b_i!=b_j} of (1 + G_ij) / 2

For any group g with feature sum s_g, sum_{i<j in g} G_ij = (||s_g||^2 - sum_g ||z_i||^2) / 2,
so both terms follow from per-(target, bias) feature sums: one scatter of the batch into
T*C rows, O(B*F) work and no B x B Gram matrix. When the caller gives `num_targets` and
`num_biases`, nothing here reads a tensor value on the host, so the loss costs no device
synchronisation and traces cleanly under `torch.compile`.

The closed form has a hand-written backward pass (first-order gradients only), except
with ``reduce_group_sums``, where autograd differentiates through the reducer.

`pairs="reference"` reproduces the official code's arithmetic (docs/design.md section 2): a
clamped Gram matrix, and an entangling term over only the pairs (i, j) with i later than j
in the batch and b_i < b_j.

Several processes, one global batch. Because the terms depend on the batch only through
the per-group sums, ``reduce_group_sums`` (closed form only) may replace the local
``(T*C, F+2)`` sums by their sum over processes, e.g. an autograd-aware all-reduce; every
process then computes the loss of the *global* batch, and gradients flow back to each
process's own samples (see ``endebias.training.distributed``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

Pairs = Literal["all", "reference"]
_PAIRS = ("all", "reference")
GroupSumsReducer = Callable[[Tensor], Tensor]


def _check_inputs(
    features: Tensor,
    targets: Tensor,
    biases: Tensor,
    pairs: str,
    num_targets: int | None,
    num_biases: int | None,
    reduce_group_sums: GroupSumsReducer | None = None,
) -> None:
    """Shape and dtype checks only: reading values would cost a host sync per call."""
    if not isinstance(features, Tensor) or features.dim() < 2:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"features must be a tensor of shape (B, ...) with B samples, got {shape}")
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point, got dtype {features.dtype}")
    batch = features.shape[0]
    for name, labels in (("targets", targets), ("biases", biases)):
        if not isinstance(labels, Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(labels).__name__}")
        if labels.dim() != 1 or labels.shape[0] != batch:
            raise ValueError(
                f"{name} must have shape ({batch},) to match features {tuple(features.shape)}, "
                f"got {tuple(labels.shape)}"
            )
        if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
            raise ValueError(f"{name} must be an integer tensor, got dtype {labels.dtype}")
    if pairs not in _PAIRS:
        raise ValueError(f"pairs must be one of {_PAIRS}, got {pairs!r}")
    for name, count in (("num_targets", num_targets), ("num_biases", num_biases)):
        invalid = not isinstance(count, int) or isinstance(count, bool) or count < 1
        if count is not None and invalid:
            raise ValueError(f"{name} must be a positive int or None, got {count!r}")
    if reduce_group_sums is not None:
        if pairs != "all":
            raise ValueError(
                "reduce_group_sums needs pairs='all': the reference pair selection depends on "
                "the order of samples within one batch, which per-group sums do not keep"
            )
        if num_targets is None or num_biases is None:
            # Without them each process would number its own labels 0..K-1 and the rows
            # of the summed tensors would not describe the same groups.
            raise ValueError("reduce_group_sums needs num_targets and num_biases")


def _dense_labels(labels: Tensor, num_classes: int | None) -> tuple[Tensor, int]:
    """Map arbitrary integer labels to 0..K-1; trust them as such when K is given."""
    if num_classes is not None:
        return labels.long(), num_classes
    uniques, dense = torch.unique(labels, return_inverse=True)  # host sync: K is data-dependent
    return dense, int(uniques.numel())


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
    more than the arithmetic. First-order gradients only."""

    @staticmethod
    def forward(ctx, flat: Tensor, targets: Tensor, biases: Tensor, num_targets: int,
                num_biases: int) -> tuple[Tensor, Tensor]:
        group = targets * num_biases + biases
        r_perp, r_par, saved = _terms(_group_sums(flat, group, num_targets * num_biases),
                                      num_targets, num_biases)
        ctx.save_for_backward(flat, group, biases, *saved)
        return r_perp, r_par

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_perp: Tensor, grad_par: Tensor) -> tuple[Tensor | None, ...]:
        flat, group, biases, per_bias, rest, twice_same, twice_perp_pairs, twice_par_pairs = (
            ctx.saved_tensors
        )
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


def _closed_form(
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


def _reference(
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


def end_terms(
    features: Tensor,
    targets: Tensor,
    biases: Tensor,
    *,
    pairs: Pairs = "all",
    normalize: bool = False,
    num_targets: int | None = None,
    num_biases: int | None = None,
    reduce_group_sums: GroupSumsReducer | None = None,
) -> tuple[Tensor, Tensor]:
    """The unweighted EnD terms ``(r_perp, r_par)`` as 0-d tensors.

    Args:
        features: ``(B, ...)`` features, flattened per sample. The caller L2-normalises
            them (the paper's models end the hooked block with :class:`L2Normalize`),
            or passes ``normalize=True``.
        targets, biases: ``(B,)`` integer labels with any values. With ``num_targets`` /
            ``num_biases`` given they must already be ``0..K-1`` and the loss makes no
            host synchronisation.
        pairs: ``"all"`` (the definition, closed form) or ``"reference"`` (the official
            code's pair selection, O(B^2)).
        reduce_group_sums: applied to the ``(T*C, F+2)`` per-group sums (feature sums,
            squared-norm sums, counts) right after they are formed; a sum over processes
            gives the loss of the global batch. Needs ``pairs="all"`` and both counts.

    Half-precision features (e.g. under autocast) are summed in float32: the closed form
    subtracts nearly equal sums, which bfloat16 cannot resolve.
    """
    _check_inputs(features, targets, biases, pairs, num_targets, num_biases, reduce_group_sums)
    flat = features.reshape(features.shape[0], -1)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    if normalize:
        flat = nn.functional.normalize(flat, dim=1)
    dense_targets, num_targets = _dense_labels(targets, num_targets)
    dense_biases, num_biases = _dense_labels(biases, num_biases)
    if pairs == "reference":
        # Autocast would run the Gram product in bf16 (and index_add would then refuse to
        # mix it with float32): the official arithmetic is float32 throughout.
        with torch.autocast(flat.device.type, enabled=False):
            return _reference(flat, dense_targets, dense_biases, num_biases)
    return _closed_form(
        flat, dense_targets, dense_biases, num_targets, num_biases, reduce_group_sums
    )


def end_loss(
    features: Tensor,
    targets: Tensor,
    biases: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    pairs: Pairs = "all",
    normalize: bool = False,
    num_targets: int | None = None,
    num_biases: int | None = None,
    reduce_group_sums: GroupSumsReducer | None = None,
) -> Tensor:
    """``alpha * r_perp + beta * r_par``; see :func:`end_terms` for the arguments."""
    r_perp, r_par = end_terms(
        features,
        targets,
        biases,
        pairs=pairs,
        normalize=normalize,
        num_targets=num_targets,
        num_biases=num_biases,
        reduce_group_sums=reduce_group_sums,
    )
    return alpha * r_perp + beta * r_par


class EnDLoss(nn.Module):
    """Module wrapper of :func:`end_loss` holding the weights and options."""

    def __init__(
        self,
        alpha: float = 1.0,
        beta: float = 1.0,
        *,
        pairs: Pairs = "all",
        normalize: bool = False,
        num_targets: int | None = None,
        num_biases: int | None = None,
        reduce_group_sums: GroupSumsReducer | None = None,
    ) -> None:
        super().__init__()
        if pairs not in _PAIRS:
            raise ValueError(f"pairs must be one of {_PAIRS}, got {pairs!r}")
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.pairs: Pairs = pairs
        self.normalize = normalize
        self.num_targets = num_targets
        self.num_biases = num_biases
        self.reduce_group_sums = reduce_group_sums

    def forward(self, features: Tensor, targets: Tensor, biases: Tensor) -> Tensor:
        return end_loss(
            features,
            targets,
            biases,
            alpha=self.alpha,
            beta=self.beta,
            pairs=self.pairs,
            normalize=self.normalize,
            num_targets=self.num_targets,
            num_biases=self.num_biases,
            reduce_group_sums=self.reduce_group_sums,
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, beta={self.beta}, pairs={self.pairs!r}"
