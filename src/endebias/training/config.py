"""Training configuration and the named presets (the defaults live here, next to them)."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from endebias.training.bias_labels import check_bias_labels
from endebias.training.presets import (  # noqa: F401  (their home before presets.py)
    DEFAULT_METHOD,
    DEFAULT_MODEL,
    METHOD_DEFAULTS,
    PAPER,
    PRESETS,
    QUICK,
)

SWITCHES = ("auto", "on", "off")


def check_switch(name: str, value: Any) -> str:
    """A fast-path option as one of :data:`SWITCHES`. YAML 1.1 reads ``on``/``off`` as
    booleans, so booleans are accepted too."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if value not in SWITCHES:
        raise ValueError(f"{name} must be one of {', '.join(SWITCHES)}, got {value!r}")
    return value


# Bounds that only stop nonsense: a count beyond this would run until killed (an epoch
# takes seconds at least), and torch's generators take 64-bit seeds (numpy's 63 bits).
MAX_COUNT = 1_000_000
MAX_SEED = 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38


@dataclass
class TrainConfig:
    """Everything that determines a run; recorded as the run's ``config.json``."""

    dataset: str = "biased-mnist"
    # Each benchmark has its own defaults (biased-mnist: rho=0.997); only overrides go here.
    dataset_options: dict[str, Any] = field(default_factory=dict)
    model: str = DEFAULT_MODEL
    model_options: dict[str, Any] = field(default_factory=dict)
    method: str = "vanilla"
    method_options: dict[str, Any] = field(default_factory=dict)
    epochs: int = 80
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    lr_step: int = 20
    lr_gamma: float = 0.1
    seed: int = 42
    train_subset: int | None = None
    eval_subset: int | None = None
    eval_batch_size: int = 1024
    device: str = "auto"
    preset: str | None = None
    # Save the feature-layer outputs of this many fixed unbiased-test images every epoch
    # (for `endebias plot features`); 0 saves nothing.
    save_features: int = 0
    # The GPU fast path (endebias.training.fastpath): "auto" is on for CUDA, off for CPU.
    amp: str = "auto"
    compile: str = "auto"
    channels_last: str = "auto"
    # Training bias labels: the dataset's ("given") or from a bias-capturing model trained
    # first ("pseudo", with pseudo_options; endebias.training.bias_labels).
    bias_labels: str = "given"
    pseudo_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        positive = ("epochs", "batch_size", "lr_step", "eval_batch_size")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
            if value > MAX_COUNT:
                raise ValueError(f"{name} must be at most {MAX_COUNT:,}, got {value!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or not (
                0 <= self.seed <= MAX_SEED):
            raise ValueError(f"seed must be an integer from 0 to 2**63 - 1, got {self.seed!r}")
        if not isinstance(self.save_features, int) or self.save_features < 0:
            raise ValueError(f"save_features must be an integer >= 0, got {self.save_features!r}")
        for name in ("train_subset", "eval_subset"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        # inf and NaN pass comparisons such as lr > 0 (or fail them with a misleading
        # message): every number must be finite, options' numbers included.
        for name in ("lr", "weight_decay", "lr_gamma"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if abs(value) > FLOAT32_MAX:  # the optimiser holds it as a 32-bit float
                raise ValueError(f"{name} must be at most {FLOAT32_MAX:.3g} (the largest "
                                 f"32-bit float), got {value!r}")
        for name in ("dataset_options", "model_options", "method_options"):
            _check_finite(name, getattr(self, name))
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if self.weight_decay < 0 or not 0 < self.lr_gamma <= 1:
            raise ValueError(
                f"need weight_decay >= 0 and 0 < lr_gamma <= 1, got {self.weight_decay!r}, "
                f"{self.lr_gamma!r}"
            )
        for name in ("amp", "compile", "channels_last"):
            setattr(self, name, check_switch(name, getattr(self, name)))
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        self.pseudo_options = check_bias_labels(self.bias_labels, self.pseudo_options)

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        if values["bias_labels"] == "given":
            # Left out at their defaults, so runs (and config hashes) from before these
            # fields existed still match their config.json.
            del values["bias_labels"], values["pseudo_options"]
        elif values["pseudo_options"].get("stage1_model_options") is None:
            # Left out at its default too: pseudo-label runs from before the option
            # existed still match their config.json on --resume.
            del values["pseudo_options"]["stage1_model_options"]
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(
                f"unknown training option {unknown[0]!r}; known: {', '.join(sorted(known))}"
            )
        return cls(**values)


def _check_finite(name: str, value: Any) -> None:
    """No inf or NaN anywhere in an option value (lists and mappings included)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{name} must hold finite numbers, got {value!r}")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_finite(f"{name}.{key}" if name.endswith("options") else name, item)
    elif isinstance(value, list | tuple):
        for item in value:
            _check_finite(name, item)


def infer_method(method_options: dict[str, Any]) -> str:
    """The method a set of options belongs to, when none is named: no options mean
    vanilla; options that only one method has (alpha and beta: EnD) name that method, as
    the official code's ``--alpha 0.1 --beta 0.1`` and its sweep files mean EnD."""
    if not method_options:
        return DEFAULT_METHOD
    from endebias.methods import method_class, method_names  # torch: only when needed

    given = set(method_options)
    owners = [m for m in method_names() if given <= set(method_class(m).defaults)]
    if len(owners) == 1:
        return owners[0]
    names = ", ".join(sorted(given))
    if owners:
        raise ValueError(f"options {names} fit methods {', '.join(owners)}: name one with --method")
    raise ValueError(f"no method has all of the options {names}; name one with --method")


def make_config(preset: str | None = "paper", **overrides: Any) -> TrainConfig:
    """A config from a preset with some options replaced; dict options are merged.

    Without a ``method`` override the method follows from the method options
    (:func:`infer_method`). The preset's defaults for that method's options
    (:data:`METHOD_DEFAULTS`) go under the explicit ones, so ``config.json`` records the
    values the run uses."""
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    overrides = dict(overrides)
    if overrides.get("method") is None:
        overrides["method"] = infer_method(overrides.get("method_options") or {})
    method_defaults = METHOD_DEFAULTS.get(preset or "", {}).get(overrides["method"], {})
    overrides["method_options"] = {**method_defaults, **(overrides.get("method_options") or {})}
    values: dict[str, Any] = dataclasses.asdict(TrainConfig())
    preset_values = dict(PRESETS.get(preset or "", {}))
    if overrides.get("model", values["model"]) != values["model"]:
        # The presets' model options describe SimpleConvNet; another model keeps its own.
        preset_values.pop("model_options", None)
    # Preset first, then the overrides; dict options (model_options...) merge key by key,
    # so overriding one model option keeps the preset's others.
    for layer in (preset_values, overrides):
        for key, value in layer.items():
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                values[key] = {**values[key], **value}
            else:
                values[key] = value
    values["preset"] = preset
    _drop_defaults(values, method_defaults=method_defaults,
                   model_defaults=preset_values.get("model_options") or {})
    return TrainConfig.from_dict(values)


def _drop_defaults(values: dict[str, Any], *, method_defaults: dict[str, Any],
                   model_defaults: dict[str, Any]) -> None:
    """Method and model options spelled at their class's default leave the config, so
    that the same training has one config and one run folder however it was typed. A
    preset's own defaults stay (they differ from the class's, and config.json records
    them)."""
    from endebias.methods import method_class, method_names
    from endebias.models import model_builder, model_names
    from endebias.option_types import builder_defaults, without_defaults

    # Dataset options stay as given here: reports (which cannot read a dataset's defaults
    # without torch) read rho from a sweep's configs. ``train`` drops them itself.
    # Unknown names are left to check_config's one-line errors.
    if values["method"] in method_names():
        values["method_options"] = without_defaults(
            values["method_options"], method_class(values["method"]).defaults,
            keep=list(method_defaults))
    if values["model"] in model_names():
        values["model_options"] = without_defaults(
            values["model_options"], builder_defaults(model_builder(values["model"])),
            keep=list(model_defaults))
