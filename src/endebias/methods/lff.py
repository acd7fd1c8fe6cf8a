"""Learning from Failure (Nam et al., NeurIPS 2020): a biased twin learns the shortcut on
purpose; the debiased model up-weights the samples the twin finds hard.

Per step, with CE_d, CE_b each model's per-sample cross-entropy:

* the twin trains on the generalised cross-entropy ``GCE(p, y) = (1 - p_y**q) / q``, whose
  gradient ``p_y**q * grad CE`` favours the samples it already gets right (the easy,
  bias-aligned ones), so it becomes biased on purpose;
* per-sample exponential moving averages of CE_b and CE_d over training (buffers indexed by
  the sample's index in the train split; the first sighting initialises the average)::

      L <- decay * L + (1 - decay) * CE     (L <- CE the first time a sample is seen)

* each average divided by its maximum over the training samples of the same class, then the
  relative difficulty ``w = L_b / (L_b + L_d + 1e-8)`` (detached);
* ``loss = mean(w * CE_d) + mean(GCE_b)``.

The twin is ``copy.deepcopy(model)`` with its parameters drawn afresh (see
:func:`fresh_copy`), trained by its own optimiser (group ``biased_model``; the run's
settings, so the arithmetic is that of one Adam over both). Evaluation uses the debiased
model only.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from endebias.methods import Method, OptimizerGroup, register_method


def generalized_cross_entropy(logits: Tensor, targets: Tensor, *, q: float) -> Tensor:
    """Per-sample ``(1 - p_y**q) / q`` with ``p = softmax(logits)``.

    This is the loss itself, not the authors' code's surrogate ``q * p_y**q.detach() * CE``:
    the gradients differ only by the constant factor q, which Adam's per-parameter
    scaling cancels (the twin's parameters get no other gradient), and this form's value
    is a readable loss in [0, 1/q]. ``p_y**q`` is ``exp(q * log p_y)`` for stability.
    """
    log_p = torch.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    return -torch.expm1(q * log_p) / q


def fresh_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` with freshly drawn parameters.

    Every submodule with a ``reset_parameters`` method is reset, children before parents,
    so a model that defines its own ``reset_parameters`` has the last word; otherwise layers
    get PyTorch's default initialisation (for SimpleConvNet's convolutions that is not its
    own Kaiming-normal, which is fine for a model meant to be biased). The draws come from
    the global generator, which the trainer seeds before building, so runs are reproducible.
    """
    twin = copy.deepcopy(model)
    for module in reversed(list(twin.modules())):
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            reset()
    return twin


@register_method("lff")
class LearningFromFailure(Method):
    uses_bias_labels = False
    defaults = {"q": 0.7, "ema_decay": 0.7}
    search_space = {
        "q": {"distribution": "uniform", "min": 0.1, "max": 1.0},
        "ema_decay": {"distribution": "uniform", "min": 0.5, "max": 0.99},
    }

    def __init__(
        self,
        model: nn.Module,
        *,
        q: float,
        ema_decay: float,
        train_targets: Tensor,
        train_biases: Tensor,
        **common,
    ) -> None:
        super().__init__(model, train_targets=train_targets, train_biases=train_biases, **common)
        if not 0 < q <= 1:
            raise ValueError(f"q must be in (0, 1], got {q!r}")
        if not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay!r}")
        if train_targets.dim() != 1 or len(train_targets) == 0:
            raise ValueError("method 'lff' needs the (non-empty, 1-D) train_targets")
        self.q = float(q)
        self.ema_decay = float(ema_decay)
        self.biased_model = fresh_copy(model)
        size = len(train_targets)
        # Derived from the constructor's arguments, so not part of the checkpoint.
        self.register_buffer("train_targets", train_targets.long().cpu(), persistent=False)
        self.register_buffer("loss_ema_biased", torch.zeros(size))
        self.register_buffer("loss_ema_debiased", torch.zeros(size))
        self.register_buffer("seen", torch.zeros(size, dtype=torch.bool))

    def networks(self) -> list[nn.Module]:
        return [self.model, self.biased_model]

    def optimizer_groups(self) -> dict[str, OptimizerGroup]:
        return {
            "model": OptimizerGroup(list(self.model.parameters())),
            "biased_model": OptimizerGroup(list(self.biased_model.parameters())),
        }

    def _record(self, indices: Tensor, ce_biased: Tensor, ce_debiased: Tensor) -> None:
        """Fold this batch's losses into the averages, in place.

        The batch is scattered into dense length-N vectors and the update is masked over
        the whole buffer: O(N) per step, negligible next to a forward pass, and with it
        ``reduce_group_sums`` (set when one run spans several processes) can sum the
        vectors over processes, so that every process records the whole global batch and
        the buffers stay identical everywhere. No host sync either way.
        """
        new = ce_biased.new_zeros(3, self.seen.numel())
        new[:, indices] = torch.stack([ce_biased, ce_debiased, torch.ones_like(ce_biased)])
        reduce = getattr(self, "reduce_group_sums", None)  # set by a multi-process trainer
        if reduce is not None:
            new = reduce(new)
        in_batch = new[2] > 0
        for ema, losses in ((self.loss_ema_biased, new[0]), (self.loss_ema_debiased, new[1])):
            blended = self.ema_decay * ema + (1 - self.ema_decay) * losses
            ema.copy_(torch.where(in_batch, torch.where(self.seen, blended, losses), ema))
        self.seen.logical_or_(in_batch)

    def _class_max(self, ema: Tensor) -> Tensor:
        """Maximum of ``ema`` over each class's training samples; a scatter, so no host sync.
        Unseen samples hold 0 and losses are >= 0, so they never raise a maximum."""
        maxima = torch.zeros(self.num_targets, dtype=ema.dtype, device=ema.device)
        return maxima.scatter_reduce(0, self.train_targets, ema, reduce="amax")

    def relative_difficulty(self, targets: Tensor, indices: Tensor, ce_biased: Tensor,
                            ce_debiased: Tensor) -> Tensor:
        """Record this batch's losses in the averages and return the weights ``w``."""
        with torch.no_grad():
            self._record(indices, ce_biased.float(), ce_debiased.float())
            ema_b, ema_d = self.loss_ema_biased[indices], self.loss_ema_debiased[indices]
            # Clamped so a class whose losses all underflow to 0 gives w = 0, not NaN.
            tiny = torch.finfo(ema_b.dtype).tiny
            ema_b = ema_b / self._class_max(self.loss_ema_biased)[targets].clamp_min(tiny)
            ema_d = ema_d / self._class_max(self.loss_ema_debiased)[targets].clamp_min(tiny)
            return ema_b / (ema_b + ema_d + 1e-8)

    def training_step(
        self, inputs: Tensor, targets: Tensor, biases: Tensor, indices: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        logits = self.model(inputs)
        logits_biased = self.biased_model(inputs)
        ce = nn.functional.cross_entropy(logits, targets, reduction="none")
        ce_biased = nn.functional.cross_entropy(logits_biased, targets, reduction="none")
        weights = self.relative_difficulty(targets, indices, ce_biased.detach(), ce.detach())
        weighted_ce = (weights * ce).mean()
        gce = generalized_cross_entropy(logits_biased, targets, q=self.q).mean()
        parts = {
            "ce": ce.mean().detach(),
            "weighted_ce": weighted_ce.detach(),
            "gce_biased": gce.detach(),
            "ce_biased": ce_biased.mean().detach(),
            "mean_weight": weights.mean(),
        }
        return weighted_ce + gce, logits, parts
