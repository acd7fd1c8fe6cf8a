"""A parsed sweep: its parameters, where each goes in the training config, and a check of
the configs at the corners of the search space (so that a bad value fails at create, not
at trial 7). No torch here unless a parameter must be looked up among a method's options."""

from __future__ import annotations

import dataclasses
import inspect
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from endebias.training.config import TrainConfig, make_config

# Sweep parameter names that are options of the method or of the dataset, as on the
# `train` command line; any other option is reached as method_options.X / dataset_options.X.
SHORTCUTS = {"alpha": "method_options", "beta": "method_options", "rho": "dataset_options"}
NESTED = ("method_options", "dataset_options", "model_options")


class SweepFileError(ValueError):
    """A sweep file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Parameter:
    """One sweep parameter; ``home`` is where it goes in the training config."""

    name: str
    home: tuple[str, ...]
    kind: str
    value: Any = None
    values: tuple[Any, ...] = ()
    low: float = 0.0
    high: float = 0.0
    q: float | None = None

    @property
    def searched(self) -> bool:
        return self.kind != "constant"

    def grid_values(self) -> list[Any] | None:
        """Every value, for a grid search; None for a continuous distribution."""
        if self.kind == "constant":
            return [self.value]
        if self.kind == "categorical":
            return list(self.values)
        if self.kind == "int_uniform":
            return list(range(int(self.low), int(self.high) + 1))
        if self.kind == "q_uniform":
            steps = round((self.high - self.low) / self.q)
            return [self.low + k * self.q for k in range(steps + 1)]
        return None

    def extremes(self) -> list[Any]:
        """The values that validation tries (a bad corner fails at create, not at trial 7)."""
        if self.kind == "constant":
            return [self.value]
        if self.kind == "categorical":
            return list(self.values)
        return [self.low, self.high]


@dataclass
class SweepSpec:
    """A validated sweep file. ``definition`` is the (number-coerced) mapping it came from,
    stored with the study so that every agent rebuilds the same search."""

    name: str
    method: str
    parameters: dict[str, Parameter]
    run_cap: int | None
    early_terminate: dict[str, Any] | None
    optuna: dict[str, Any]
    definition: dict[str, Any]
    source: str
    metric: str = "valid_acc"
    goal: str = "maximize"
    constants: dict[str, Any] = field(default_factory=dict)
    # An agent's own budget (``sweep agent --epochs/--train-subset/--eval-subset``), over
    # every trial's values, so that each trial's config records what it trained.
    budget: dict[str, Any] = field(default_factory=dict)

    def with_budget(self, budget: dict[str, Any] | None) -> SweepSpec:
        return dataclasses.replace(self, budget=dict(budget or {}))

    def overrides(
        self, sampled: dict[str, Any], *, constants: bool = True
    ) -> tuple[str | None, dict[str, Any]]:
        """(preset, make_config overrides) for the constants plus the sampled values
        (``constants=False``: the given values alone)."""
        overrides: dict[str, Any] = {}
        values = {
            **{p.name: p.value for p in self.parameters.values() if constants and not p.searched},
            **sampled,
        }
        # The official CLI's `local` flag: the paper preset, which a file without a preset
        # runs anyway (place_parameters allows it as a constant true or false only).
        values.pop("local", None)
        preset = values.pop("preset", "paper")
        for name, value in values.items():
            home = self.parameters[name].home
            if len(home) == 1:
                overrides[home[0]] = value
            else:
                overrides.setdefault(home[0], {})[home[1]] = value
        if constants:
            overrides.update(self.budget)
        return preset, overrides

    def grid_size(self) -> int | None:
        if self.method != "grid":
            return None
        return math.prod(len(p.grid_values() or []) for p in self.parameters.values())


Fail = Callable[[str, str], SweepFileError]


def place_parameters(spec: SweepSpec, fail: Fail) -> None:
    """Give each parameter its place in the config: a top-level field, a shortcut (alpha,
    beta, rho), a dotted ``method_options.X``, or a declared option of the method/dataset."""
    fields = set(TrainConfig.__dataclass_fields__) - set(NESTED)
    try:
        # No method parameter: the method follows from its options (alpha and beta mean
        # EnD, as in the official sweep files), so every method's options may be named.
        possible_methods = _possible(spec, "method", None) or _all_methods()
        methods = {m: _method_options(m) for m in possible_methods}
        datasets = {d: _dataset_options(d) for d in _possible(spec, "dataset", TrainConfig.dataset)}
    except ValueError as error:
        raise fail("parameters", str(error)) from None
    for name, parameter in list(spec.parameters.items()):
        head, _, tail = name.partition(".")
        if name == "local":
            if parameter.searched or not isinstance(parameter.value, bool):
                raise fail(f"parameters.{name}", "the official CLI's flag: a constant true or "
                           f"false (it means the paper preset), got {parameter.value!r}")
            home: tuple[str, ...] = (name,)
        elif name in fields:
            home = (name,)
        elif head in NESTED and tail:
            home = (head, tail)
        elif name in SHORTCUTS:
            home = (SHORTCUTS[name], name)
        elif any(name in options for options in methods.values()):
            home = ("method_options", name)
        elif any(name in options for options in datasets.values()):
            home = ("dataset_options", name)
        else:
            raise fail(
                f"parameters.{name}",
                "not a training option (use method_options.X or "
                f"dataset_options.X for other options); top-level: {', '.join(sorted(fields))}",
            )
        spec.parameters[name] = dataclasses.replace(parameter, home=home)


def _method_options(name: str) -> set[str]:
    from endebias.methods import method_class  # torch: only when a sweep is created or run

    return set(method_class(name).defaults)


def _dataset_options(name: str) -> set[str]:
    """The keyword options of a dataset's builder, less those the trainer passes itself."""
    from endebias.data import dataset_builder

    builder = dataset_builder(name)
    return set(inspect.signature(builder).parameters) - {"data_dir", "seed", "device"}


def _possible(spec: SweepSpec, name: str, default: str | None) -> list[str]:
    parameter = spec.parameters.get(name)
    if parameter:
        return [str(v) for v in parameter.extremes()]
    return [default] if default is not None else []


def _all_methods() -> list[str]:
    from endebias.methods import method_names

    return method_names()


# Parameters that decide which other options exist; a culprit is looked for with these set.
STRUCTURAL = ("preset", "dataset", "model", "method")


def _refusal(spec: SweepSpec, values: dict[str, Any], *, constants: bool = True) -> str | None:
    """Why a trial with these parameter values would be refused, or None. The config is
    built and checked as a trial would (training.validation: method, model and dataset
    options too), without loading any data."""
    from endebias.training.validation import check_config  # torch: only at create

    preset, overrides = spec.overrides(values, constants=constants)
    try:
        check_config(make_config(preset, **overrides))
    except (ValueError, TypeError) as error:
        return str(error)
    return None


def _culprit(spec: SweepSpec, values: dict[str, Any]) -> str:
    """The parameter to blame for a refused combination: with the structural parameters as
    given, the first parameter that is refused on its own (else the first searched one)."""
    structure = {k: v for k, v in values.items() if k in STRUCTURAL}
    for name in STRUCTURAL:
        if name in structure and _refusal(spec, {name: structure[name]}, constants=False):
            return name
    for name, value in values.items():
        if name not in STRUCTURAL and _refusal(
            spec, {**structure, name: value}, constants=False
        ):
            return name
    searched = [p.name for p in spec.parameters.values() if p.searched]
    return (searched or list(values) or ["preset"])[0]


def check_configs(spec: SweepSpec, fail: Fail) -> None:
    """Build and check the config at every corner of the search space (each range's min and
    max, every categorical value), so that a bad value (epochs: 0, rho: 1.5, an option the
    method lacks, a negative alpha) fails at create, naming its key, rather than in a trial.
    """
    searched = [p for p in spec.parameters.values() if p.searched]
    constants = {p.name: p.value for p in spec.parameters.values() if not p.searched}
    low = {p.name: p.extremes()[0] for p in searched}
    tries = [low] + [{**low, p.name: v} for p in searched for v in p.extremes()[1:]]
    for sampled in tries:
        problem = _refusal(spec, sampled)
        if problem is not None:
            culprit = _culprit(spec, {**constants, **sampled})
            raise fail(f"parameters.{culprit}", problem)
    spec.constants = constants


def grid_search_space(spec: SweepSpec) -> dict[str, list[Any]]:
    """The searched parameters' values, for Optuna's GridSampler (constants are not asked)."""
    return {p.name: p.grid_values() or [] for p in spec.parameters.values() if p.searched}


def all_grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    space = grid_search_space(spec)
    return [dict(zip(space, combo, strict=True)) for combo in itertools.product(*space.values())]
