"""How the members of one training are built and stepped: the only place that knows
whether K >= 1 runs train as one method each (a solo run, K = 1) or as one packed network
(:mod:`endebias.training.packed`). The loop (:mod:`endebias.training.loop`) sees a stepper:

* ``step(inputs, targets, biases, indices)`` -> per-member losses ``(K,)``, logits
  ``(B, K, classes)`` and loss parts ``{name: (K,)}``;
* ``logits(inputs)`` -> evaluation logits ``(B, K, classes)``;
* ``optimizers`` (:class:`~endebias.training.optimizers.Optimizers`), stepped once per
  batch after one backward of the members' summed losses;
* ``checkpoint(position)`` -> member ``position``'s method, optimiser and scheduler state
  in the solo format, so that any member's folder resumes solo or packed alike;
* ``without(positions)`` -> the same training without the members that left.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from endebias.methods import Method
from endebias.training import distributed
from endebias.training.config import TrainConfig
from endebias.training.distributed import DistContext
from endebias.training.fastpath import FastPath
from endebias.training.optimizers import Optimizers
from endebias.training.packed import (
    PackedMethod,
    build_packed,
    check_packable,
    join_optimizer_states,
    member_optimizer_state,
    member_state,
)


class SoloStepper:
    """One method trained on its own (K = 1), in one process or, under torchrun, with its
    step inside DistributedDataParallel."""

    members = 1
    extra_record: dict[str, Any] = {}

    def __init__(self, method: Method, config: TrainConfig, *, device: torch.device,
                 fast: FastPath, context: DistContext | None) -> None:
        self.method, self.fast, self.context = method, fast, context
        self.optimizers = Optimizers(method, config, device=device)
        self._step = distributed.wrap_step(method, context, device)

    def train(self) -> None:
        self.method.train()

    def eval(self) -> None:
        self.method.eval()

    def step(self, inputs: Tensor, targets: Tensor, biases: Tensor,
             indices: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        loss, logits, parts = self._step(inputs, targets, biases, indices)
        return loss.reshape(1), logits[:, None], {k: v.reshape(1) for k, v in parts.items()}

    def logits(self, inputs: Tensor) -> Tensor:
        return self.method(inputs)[:, None]

    def load(self, states: Sequence[dict[str, Any]]) -> None:
        self.method.load_state_dict(states[0]["method"])
        self.optimizers.load_state_dict(states[0])

    def checkpoint(self, position: int) -> dict[str, Any]:
        return {"method": self.method.state_dict(), **self.optimizers.state_dict()}

    def without(self, leaving: set[int]) -> None:
        return None  # the only member left: nothing trains on


class PackedStepper:
    """K SimpleConvNet runs that differ only in their loss weights, as one packed network
    over the shared batch (one Adam over the packed parameters: Adam is per element, so
    each member's update is its solo update)."""

    def __init__(self, solos: Sequence[Method], configs: Sequence[TrainConfig],
                 states: Sequence[dict[str, Any]], *, benchmark_shape: tuple[int, int],
                 device: torch.device, fast: FastPath) -> None:
        for config in configs:
            check_packable(config)  # the packing limit: one check, here
        self.solos, self.configs, self.device, self.fast = list(solos), list(configs), device, fast
        self.context = None  # packs train in one process
        self.shape = benchmark_shape
        num_classes, in_channels = benchmark_shape
        self.packed: PackedMethod = build_packed(
            self.solos, [s["method"] for s in states], model_options=configs[0].model_options,
            num_classes=num_classes, in_channels=in_channels,
        ).to(device)
        fast.apply(self.packed)
        self.names = [name for name, _ in self.packed.named_parameters()]
        self.optimizers = Optimizers(self.packed, configs[0], device=device)
        if any(key in states[0] for key in ("optimizers", "optimizer")):  # resumed
            groups = [_model_group(state) for state in states]
            self.optimizers.load_state_dict({
                "optimizers": {"model": join_optimizer_states([g[0] for g in groups], self.names)},
                "schedulers": {"model": groups[0][1]},
            })

    @property
    def members(self) -> int:
        return self.packed.members

    @property
    def extra_record(self) -> dict[str, Any]:
        # Seconds are the whole pack's: one epoch of a member cost seconds / pack_size.
        return {"pack_size": self.members}

    def train(self) -> None:
        self.packed.train()

    def eval(self) -> None:
        self.packed.eval()

    def step(self, inputs: Tensor, targets: Tensor, biases: Tensor,
             indices: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        return self.packed.training_step(inputs, targets, biases)

    def logits(self, inputs: Tensor) -> Tensor:
        return self.packed(inputs)

    def checkpoint(self, position: int) -> dict[str, Any]:
        size = self.members
        state = self.optimizers.state_dict()
        return {
            "method": member_state(self.packed.state_dict(), position, size),
            "optimizers": {"model": member_optimizer_state(
                state["optimizers"]["model"], self.names, position, size)},
            "schedulers": state["schedulers"],
        }

    def without(self, leaving: set[int]) -> PackedStepper | None:
        """The pack rebuilt from the other members' weights and optimiser state."""
        keep = [p for p in range(self.members) if p not in leaving]
        if not keep:
            return None
        return PackedStepper([self.solos[p] for p in keep], [self.configs[p] for p in keep],
                             [self.checkpoint(p) for p in keep], benchmark_shape=self.shape,
                             device=self.device, fast=self.fast)


def _model_group(state: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A member checkpoint's optimiser and scheduler state: its one group, "model" (an
    older checkpoint's one optimiser is the same thing)."""
    if "optimizers" not in state:
        return state["optimizer"], state["scheduler"]
    if set(state["optimizers"]) != {"model"}:
        raise ValueError("a packed run has one optimizer group, 'model', not "
                         f"{', '.join(sorted(state['optimizers']))}")
    return state["optimizers"]["model"], state["schedulers"]["model"]


Stepper = SoloStepper | PackedStepper
