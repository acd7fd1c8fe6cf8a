"""The optimisers of a run: one Adam and one StepLR per optimizer group of its method
(:meth:`endebias.methods.Method.optimizer_groups`).

Per step the trainer zeroes every group's gradients, runs ONE backward of the method's
scalar loss and steps every group; the schedulers step once per epoch. A method whose
networks minimise different objectives routes the gradients inside its loss (``detach``,
a gradient reversal): nothing here knows one method from another.

The checkpoint keeps each group's optimiser and scheduler state under the group's name
(``optimizers`` and ``schedulers``). A checkpoint written before groups existed holds one
optimiser over ``method.parameters()`` (``optimizer``, ``scheduler``); it is cut into the
method's groups by parameter position, which is exact because Adam's state is per
parameter.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from endebias.methods import OptimizerGroup
from endebias.training.config import TrainConfig


@dataclass
class GroupSchedule:
    """One group's optimiser and scheduler, and whether its learning rate is its own."""

    optimizer: torch.optim.Adam
    scheduler: torch.optim.lr_scheduler.StepLR
    own_lr: bool


def check_groups(method: nn.Module, groups: dict[str, OptimizerGroup], *, name: str) -> None:
    """Every parameter of ``method`` in exactly one group, and each group's overrides
    sound; a one-line ValueError naming the method (``name``) otherwise."""
    if not groups:
        raise ValueError(f"method {name!r} declares no optimizer group")
    names = {id(p): n for n, p in method.named_parameters()}
    owner: dict[int, str] = {}
    for group_name, group in groups.items():
        if not group.parameters:
            raise ValueError(f"method {name!r}: optimizer group {group_name!r} has no parameters")
        for parameter in group.parameters:
            key = id(parameter)
            if key not in names:
                raise ValueError(f"method {name!r}: optimizer group {group_name!r} holds a "
                                 "parameter that is not the method's")
            if key in owner:
                raise ValueError(f"method {name!r}: parameter {names[key]!r} is in two optimizer "
                                 f"groups, {owner[key]!r} and {group_name!r}")
            owner[key] = group_name
        _check_overrides(group, f"method {name!r}, optimizer group {group_name!r}")
    missing = [n for key, n in names.items() if key not in owner]
    if missing:
        raise ValueError(f"method {name!r}: parameter {missing[0]!r} is in no optimizer group")


def _check_overrides(group: OptimizerGroup, where: str) -> None:
    for field, positive in (("lr", True), ("weight_decay", False), ("lr_gamma", True)):
        value = getattr(group, field)
        if value is None:
            continue
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise ValueError(f"{where}: {field} must be a finite number, got {value!r}")
        if value < 0 or (positive and value == 0):
            raise ValueError(f"{where}: {field} must be {'> 0' if positive else '>= 0'}, "
                             f"got {value!r}")
    step = group.lr_step
    if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 1):
        raise ValueError(f"{where}: lr_step must be a positive integer, got {step!r}")


class Optimizers:
    """A method's optimiser groups, as the trainer drives them."""

    def __init__(self, method: nn.Module, config: TrainConfig, *, device: torch.device) -> None:
        groups = method.optimizer_groups()
        check_groups(method, groups, name=config.method)
        # Positions in method.parameters(): how a one-optimiser checkpoint numbered them.
        position = {id(p): i for i, p in enumerate(method.parameters())}
        self.positions = {n: [position[id(p)] for p in g.parameters] for n, g in groups.items()}
        self.groups: dict[str, GroupSchedule] = {}
        for group_name, group in groups.items():
            optimizer = torch.optim.Adam(
                group.parameters,
                lr=config.lr if group.lr is None else group.lr,
                weight_decay=config.weight_decay if group.weight_decay is None
                else group.weight_decay,
                fused=True if device.type == "cuda" else None,  # one kernel for the update
            )
            scheduler = torch.optim.lr_scheduler.StepLR(
                optimizer,
                config.lr_step if group.lr_step is None else group.lr_step,
                gamma=config.lr_gamma if group.lr_gamma is None else group.lr_gamma,
            )
            own = any(v is not None for v in (group.lr, group.lr_step, group.lr_gamma))
            self.groups[group_name] = GroupSchedule(optimizer, scheduler, own)

    def zero_grad(self) -> None:
        for group in self.groups.values():
            group.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        for group in self.groups.values():
            group.optimizer.step()

    def end_epoch(self) -> None:
        for group in self.groups.values():
            group.scheduler.step()

    def learning_rates(self) -> dict[str, float]:
        """The epoch record's ``lr`` (the first group's) and ``lr_<group>`` for each
        other group with a learning rate or schedule of its own."""
        first, *others = self.groups.items()
        rates = {"lr": first[1].optimizer.param_groups[0]["lr"]}
        for group_name, group in others:
            if group.own_lr:
                rates[f"lr_{group_name}"] = group.optimizer.param_groups[0]["lr"]
        return rates

    def state_dict(self) -> dict[str, dict[str, Any]]:
        """The checkpoint's ``optimizers`` and ``schedulers``, keyed by group name."""
        return {
            "optimizers": {n: g.optimizer.state_dict() for n, g in self.groups.items()},
            "schedulers": {n: g.scheduler.state_dict() for n, g in self.groups.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a checkpoint's optimiser state: by group, or from one optimiser (older)."""
        if "optimizers" not in state:
            state = split_single_optimizer(state, self.positions)
        if set(state["optimizers"]) != set(self.groups):
            raise ValueError(
                f"the checkpoint's optimizer groups ({', '.join(sorted(state['optimizers']))}) "
                f"are not the method's ({', '.join(self.groups)})"
            )
        for group_name, group in self.groups.items():
            group.optimizer.load_state_dict(state["optimizers"][group_name])
            group.scheduler.load_state_dict(state["schedulers"][group_name])


def split_single_optimizer(
    state: dict[str, Any], positions: dict[str, list[int]]
) -> dict[str, dict[str, Any]]:
    """A checkpoint's one optimiser over all parameters (an older endebias's), cut into
    the groups' (``positions[group]``: its parameters' places in that optimiser)."""
    single, scheduler = state["optimizer"], state["scheduler"]
    if len(single["param_groups"]) != 1:
        raise ValueError("the checkpoint's optimizer has several parameter groups; "
                         "it was not written by endebias")
    settings = single["param_groups"][0]
    optimizers = {}
    for group_name, places in positions.items():
        optimizers[group_name] = {
            "state": {new: copy.deepcopy(single["state"][old])
                      for new, old in enumerate(places) if old in single["state"]},
            "param_groups": [{**copy.deepcopy(settings), "params": list(range(len(places)))}],
        }
    return {"optimizers": optimizers,
            "schedulers": {group_name: copy.deepcopy(scheduler) for group_name in positions}}
