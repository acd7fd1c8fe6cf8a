"""The EnD regulariser (Tartaglione et al., CVPR 2021): the public functions and module,
their input checks and options. The arithmetic is in :mod:`endebias.closed_form`: O(B*F)
from per-(target, bias) feature sums, no B x B Gram matrix; with `num_targets` and
`num_biases` given, no host synchronisation, and it traces under `torch.compile`.

`pairs="reference"` reproduces the official code's arithmetic (docs/design.md section 2).
``reduce_group_sums`` (closed form only) sums the per-group sums over processes, so that
every process computes the loss of the global batch (``endebias.training.distributed``).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Literal, NamedTuple, overload

import torch
from torch import Tensor, nn

from endebias.closed_form import GroupSumsReducer, closed_form_terms, reference_terms

Pairs = Literal["all", "reference"]
_PAIRS = ("all", "reference")


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


def _check_label_range(labels: Tensor, count: int, name: str, count_name: str) -> None:
    """Labels must lie in 0..count-1 when the count is given: a value outside would land in
    another group's row (a wrong loss, no error) or past the last one. CPU tensors are read
    (there is no device to wait for) to name the values found; elsewhere, and under
    torch.compile, a device-side assertion keeps the step free of host synchronisation."""
    if labels.numel() == 0:
        return
    allowed = f"0..{count - 1} ({count_name}={count})"
    if labels.device.type == "cpu" and not torch.compiler.is_compiling():
        low, high = (int(value) for value in torch.aminmax(labels))
        if low < 0 or high >= count:
            raise ValueError(f"{name} has values from {low} to {high}, outside {allowed}")
        return
    low, high = torch.aminmax(labels)
    # On CPU under torch.compile this raises with the message; on a GPU it fails at a later
    # kernel launch as CUDA's generic device-side assert (the kernel drops the message).
    torch._assert_async((low >= 0) & (high < count), f"{name} has values outside {allowed}")


def _dense_labels(
    labels: Tensor, num_classes: int | None, name: str, count_name: str
) -> tuple[Tensor, int]:
    """Map arbitrary integer labels to 0..K-1; trust them as such when K is given."""
    if num_classes is not None:
        _check_label_range(labels, num_classes, name, count_name)
        return labels.long(), num_classes
    uniques, dense = torch.unique(labels, return_inverse=True)  # host sync: K is data-dependent
    return dense, int(uniques.numel())


class EnDTerms(NamedTuple):
    """What ``end_loss(..., return_terms=True)`` returns: the weighted loss and its two
    unweighted terms, so that logging them needs no second call."""

    loss: Tensor
    r_perp: Tensor
    r_par: Tensor


# Read once per process: checking every step would cost a host sync per step on a GPU.
_unit_norm_checked = False
_UNIT_NORM_TOLERANCE = 1e-2  # bfloat16 unit vectors are within ~2e-3 of norm 1


# The warning points at the user's line: the first frame outside endebias and torch.nn.
_INTERNAL_DIRS = tuple(str(Path(module.__file__).parent) for module in (sys.modules[__package__],
                                                                        torch.nn))


def _first_outside_caller() -> int:
    frame, level = sys._getframe(1), 1  # level 1: the function that calls warnings.warn
    while frame.f_back is not None and frame.f_code.co_filename.startswith(_INTERNAL_DIRS):
        frame, level = frame.f_back, level + 1
    return level


def _warn_once_if_not_unit_norm(flat: Tensor) -> None:
    global _unit_norm_checked
    if torch.compiler.is_compiling() or _unit_norm_checked:
        return
    _unit_norm_checked = True
    norms = torch.linalg.vector_norm(flat.detach().float(), dim=1)
    low, high = (float(value) for value in torch.aminmax(norms))
    if max(abs(low - 1), abs(high - 1)) > _UNIT_NORM_TOLERANCE:
        warnings.warn(
            f"EnD features are not unit-norm (norms from {low:.3g} to {high:.3g}) and "
            "normalize=False: the Gram entries are not cosines and r_par can leave [0, 1]; "
            "pass normalize=True or end the layer with endebias.L2Normalize "
            "(checked on the first call only)",
            stacklevel=_first_outside_caller(),
        )


def end_terms(
    features: Tensor,
    targets: Tensor,
    biases: Tensor,
    *,
    pairs: Pairs = "all",
    normalize: bool = True,
    num_targets: int | None = None,
    num_biases: int | None = None,
    reduce_group_sums: GroupSumsReducer | None = None,
) -> tuple[Tensor, Tensor]:
    """The unweighted EnD terms ``(r_perp, r_par)`` as 0-d tensors.

    Args:
        features: ``(B, ...)`` features, flattened per sample; ``B = 0`` gives two zeros
            whose gradient is zeros of the features' shape.
        targets, biases: ``(B,)`` integer labels with any values.
        pairs: ``"all"`` (the definition, closed form) or ``"reference"`` (the official
            code's pair selection, O(B^2)).
        normalize: L2-normalise each sample's features first, so that the Gram entries are
            cosines as the definition assumes. On by default because most layers do not
            normalise; ``False`` reads the features as they are, for a layer that ends with
            :class:`~endebias.L2Normalize` (the paper's models, and this project's own
            training, which passes ``False``). With ``False``, the first call in a process
            warns if the features are not unit-norm.
        num_targets, num_biases: the number of target / bias classes. A label tensor whose
            count is given must hold ``0..K-1`` (checked: a ``ValueError`` on CPU, a
            device-side assertion elsewhere and under ``torch.compile``); one whose count
            is not given may hold any values and is numbered by ``torch.unique``, which
            waits for the device. Give both for a step with no host synchronisation;
            giving one only is allowed and spares that tensor's ``unique``.
        reduce_group_sums: applied to the ``(T*C, F+2)`` per-group sums (feature sums,
            squared-norm sums, counts) right after they are formed; a sum over processes
            gives the loss of the global batch. Needs ``pairs="all"`` and both counts.

    Half-precision features (e.g. under autocast) are summed in float32: the closed form
    subtracts nearly equal sums, which bfloat16 cannot resolve.

    Gradients of any order are exact: the closed form's hand-written backward gives way to
    autograd when the backward pass records a graph (``create_graph=True``).
    """
    _check_inputs(features, targets, biases, pairs, num_targets, num_biases, reduce_group_sums)
    flat = features.flatten(1)  # not reshape(B, -1), which cannot infer -1 when B = 0
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    dense_targets, num_targets = _dense_labels(targets, num_targets, "targets", "num_targets")
    dense_biases, num_biases = _dense_labels(biases, num_biases, "biases", "num_biases")
    if flat.shape[0] == 0 and reduce_group_sums is None:
        # (An empty process still joins the reduction below: the others wait for it.)
        zero = flat.sum() * 0
        return zero, zero.clone()
    if normalize:
        flat = nn.functional.normalize(flat, dim=1)
    elif flat.shape[0] > 0:
        _warn_once_if_not_unit_norm(flat)
    if pairs == "reference":
        # Autocast would run the Gram product in bf16 (and index_add would then refuse to
        # mix it with float32): the official arithmetic is float32 throughout.
        with torch.autocast(flat.device.type, enabled=False):
            return reference_terms(flat, dense_targets, dense_biases, num_biases)
    return closed_form_terms(
        flat, dense_targets, dense_biases, num_targets, num_biases, reduce_group_sums
    )


@overload
def end_loss(
    features: Tensor, targets: Tensor, biases: Tensor, *, alpha: float = ..., beta: float = ...,
    pairs: Pairs = ..., normalize: bool = ..., num_targets: int | None = ...,
    num_biases: int | None = ..., reduce_group_sums: GroupSumsReducer | None = ...,
    return_terms: Literal[False] = ...,
) -> Tensor: ...


@overload
def end_loss(
    features: Tensor, targets: Tensor, biases: Tensor, *, alpha: float = ..., beta: float = ...,
    pairs: Pairs = ..., normalize: bool = ..., num_targets: int | None = ...,
    num_biases: int | None = ..., reduce_group_sums: GroupSumsReducer | None = ...,
    return_terms: Literal[True],
) -> EnDTerms: ...


def end_loss(
    features: Tensor,
    targets: Tensor,
    biases: Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    pairs: Pairs = "all",
    normalize: bool = True,
    num_targets: int | None = None,
    num_biases: int | None = None,
    reduce_group_sums: GroupSumsReducer | None = None,
    return_terms: bool = False,
) -> Tensor | EnDTerms:
    """The EnD regulariser ``alpha * r_perp + beta * r_par`` (a 0-d tensor), or with
    ``return_terms=True`` an :class:`EnDTerms` ``(loss, r_perp, r_par)``.

    ``alpha`` weighs the disentangling term (same-bias features orthogonal), ``beta`` the
    entangling term (same-target features aligned across biases); see :func:`end_terms`
    for the other arguments.
    """
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
    loss = alpha * r_perp + beta * r_par
    return EnDTerms(loss, r_perp, r_par) if return_terms else loss


class EnDLoss(nn.Module):
    """Module form of :func:`end_loss`: holds the weights and options, takes them by the
    same keywords (``EnDLoss(alpha=0.1, beta=0.1, num_targets=10, num_biases=10)``)."""

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        beta: float = 1.0,
        pairs: Pairs = "all",
        normalize: bool = True,
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

    def forward(
        self, features: Tensor, targets: Tensor, biases: Tensor, *, return_terms: bool = False
    ) -> Tensor | EnDTerms:
        """``end_loss(features, targets, biases, ...)`` with this module's options: the
        weighted loss, or with ``return_terms=True`` an :class:`EnDTerms`
        ``(loss, r_perp, r_par)``."""
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
            return_terms=return_terms,
        )

    def extra_repr(self) -> str:
        reducer = self.reduce_group_sums
        reducer_name = None if reducer is None else getattr(reducer, "__name__", repr(reducer))
        return (
            f"alpha={self.alpha}, beta={self.beta}, pairs={self.pairs!r}, "
            f"normalize={self.normalize}, num_targets={self.num_targets}, "
            f"num_biases={self.num_biases}, reduce_group_sums={reducer_name}"
        )
