"""Training methods behind a name registry with one constructor signature.

A method wraps a model and defines the training loss; the trainer calls
``training_step`` and ``forward`` and never branches on a method's name::

    method = build_method(name, model=model, num_targets=T, num_biases=C,
                          train_targets=..., train_biases=..., input_shape=...,
                          build_network=..., **hyperparameters)
    loss, logits, parts = method.training_step(inputs, targets, biases, indices)

``parts`` holds named 0-d loss components (``ce``, ``r_perp``...) for logging. A method is
an ``nn.Module`` whose ``state_dict`` holds everything a resumed run needs. Its
``optimizer_groups()`` say how its parameters are trained: the trainer builds one Adam and
one StepLR per group (the run config's values unless the group overrides them), and every
parameter is in exactly one group. A method that owns a second network (LfF's biased
twin) gives it a group of its own, with its own optimiser state in the checkpoint.

A method that draws batches of its own (BiasCon's re-weighted batch of two augmented views)
reads the training split from ``training_rows`` (:class:`TrainingRows`), which the trainer
sets on the method, on the training device, before the first step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from torch import Tensor, nn

from endebias.option_types import check_options, option_hints
from endebias.registry import Registry


@dataclass(frozen=True)
class OptimizerGroup:
    """Parameters trained by one Adam and one StepLR; ``None`` takes the run config's value."""

    parameters: list[nn.Parameter]
    lr: float | None = None
    weight_decay: float | None = None
    lr_step: int | None = None  # StepLR step, in epochs
    lr_gamma: float | None = None


@dataclass(frozen=True, eq=False)
class TrainingRows:
    """The training split as the trainer holds it, for methods that draw batches of their
    own: ``inputs`` in stored form (uint8 images, float rows) on the training device, and
    ``prepare``, which turns stored rows into model inputs exactly as the trainer's own
    batches are turned (scaling, memory layout)."""

    inputs: Tensor
    targets: Tensor
    biases: Tensor
    prepare: Callable[[Tensor], Tensor]

    def __deepcopy__(self, memo: dict) -> TrainingRows:
        return self  # read-only data: a copied method (a trial step) shares it

    def __len__(self) -> int:
        return len(self.targets)


@dataclass(frozen=True)
class FirstStage:
    """A run that a method needs trained before its own (JTT's ERM model, a bias-only
    network), declared by :meth:`Method.first_stage`. It trains in its own run folder,
    ``RUN/<name>``, with the run's data, seed, optimiser and schedule, and this stage's
    method, options, epochs and (if given) model; ``model_options`` are laid over the
    run's when the model is the run's."""

    name: str
    method: str = "vanilla"
    method_options: dict[str, Any] = field(default_factory=dict)
    epochs: int | None = None  # None: the run's
    model: str | None = None  # None: the run's
    model_options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StageResult:
    """What a finished first stage hands the method's constructor (as ``first_stage``):
    the stage's trained method, in evaluation mode, and its logits on the training split
    (row i: the sample whose ``indices`` entry is i)."""

    method: nn.Module
    train_logits: Tensor


class Method(nn.Module):
    """Base class: subclasses set ``defaults`` (hyper-parameter -> default value) and
    ``search_space`` (sweep-file ``parameters`` entries) and implement ``training_step``."""

    defaults: ClassVar[dict[str, Any]] = {}
    search_space: ClassVar[dict[str, dict[str, Any]]] = {}
    # Set by the trainer when one run spans several processes: a sum over processes
    # (autograd-aware). Methods whose loss couples the samples of a batch (EnD) pass it to
    # their loss so the loss is that of the global batch; per-sample losses ignore it.
    reduce_group_sums: Callable[[Tensor], Tensor] | None = None
    # Set by the trainer before training (see TrainingRows); None outside a trainer.
    training_rows: TrainingRows | None = None
    # Whether the loss reads the training bias labels; --bias-labels pseudo needs one that does.
    uses_bias_labels: ClassVar[bool] = True
    # Whether the method can train as a member of a pack (endebias.training.packed), where
    # one network computes every member's logits and features: its loss is a function of
    # those alone (``output_loss``), and ``detaches_classifier`` says whether its
    # classifier reads the features detached.
    packable: ClassVar[bool] = False
    detaches_classifier: bool = False

    def __init__(
        self,
        model: nn.Module,
        *,
        num_targets: int,
        num_biases: int,
        train_targets: Tensor,
        train_biases: Tensor,
        input_shape: tuple[int, ...] | None = None,
        build_network: Callable[..., nn.Module] | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.num_targets = num_targets
        self.num_biases = num_biases
        # For methods that build a network of their own (a bias-only branch): the shape of
        # one input, and ``build_network(name, **options)``, a registered model made for
        # this run's inputs and classes. The caller (the trainer) passes the builder, so
        # that methods never import the models package.
        self.input_shape = None if input_shape is None else tuple(input_shape)
        self.build_network = build_network

    @classmethod
    def first_stage(cls, options: dict[str, Any]) -> FirstStage | None:
        """The run this method needs trained first, given its options (defaults included),
        or None. The trainer trains it (resumed and locked as any run) and passes its
        :class:`StageResult` to ``__init__`` as the keyword ``first_stage``."""
        return None

    def output_loss(
        self, logits: Tensor, features: Tensor | None, targets: Tensor, biases: Tensor
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """A packable method's loss and its logged parts, from the logits and the feature
        layer's L2-normalised output (``training_step`` computes both and calls this)."""
        raise NotImplementedError(f"{type(self).__name__} is not packable")

    def forward(self, inputs: Tensor) -> Tensor:
        """Logits used for evaluation."""
        return self.model(inputs)

    def networks(self) -> list[nn.Module]:
        """The networks the method runs on every training step, the ones ``--compile``
        compiles. Default: ``model``; a method with a network of its own trained beside it
        (a bias-only branch, a biased twin) adds it, since on CPU that network often costs
        more per step than the main one."""
        return [self.model]

    def optimizer_groups(self) -> dict[str, OptimizerGroup]:
        """Named groups of parameters, each with its own optimiser and schedule; every
        parameter of the method in exactly one. Default: all of them in ``model``."""
        return {"model": OptimizerGroup(list(self.parameters()))}

    def training_step(
        self, inputs: Tensor, targets: Tensor, biases: Tensor, indices: Tensor
    ) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        raise NotImplementedError


MethodClass = type[Method]
_METHODS: Registry[MethodClass] = Registry("method")
register_method = _METHODS.register
method_names = _METHODS.names
method_class = _METHODS.get


def build_method(
    name: str,
    *,
    model: nn.Module,
    num_targets: int,
    num_biases: int,
    train_targets: Tensor,
    train_biases: Tensor,
    input_shape: tuple[int, ...] | None = None,
    build_network: Callable[..., nn.Module] | None = None,
    first_stage: StageResult | None = None,
    **hyperparameters: Any,
) -> Method:
    cls = method_class(name)
    # The options are the class's defaults, typed by its constructor's hints.
    hints = option_hints(cls)
    hints = {key: hints.get(key, Any) for key in sorted(cls.defaults)}
    check_options("method", name, hyperparameters, hints)
    options = {**cls.defaults, **hyperparameters}
    if first_stage is not None:  # only a method that declares a first stage takes it
        options["first_stage"] = first_stage
    return cls(
        model,
        num_targets=num_targets,
        num_biases=num_biases,
        train_targets=train_targets,
        train_biases=train_biases,
        input_shape=input_shape,
        build_network=build_network,
        **options,
    )


# Register the built-in methods.
from endebias.methods import (  # noqa: E402,F401
    biasbal,
    biascon,
    di,
    end,
    fairkl,
    gce,
    groupdro,
    hex,
    jtt,
    learned_mixin,
    lff,
    lnl,
    rebias,
    rubi,
    sd,
    softcon,
    vanilla,
)
