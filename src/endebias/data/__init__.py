"""Benchmarks behind one name registry; each yields (x, target, bias) splits.

A benchmark builder takes keyword options (``data_dir``, ``seed`` and its own, such as
``rho``) and returns a :class:`Benchmark`: whole splits as tensors, kept compact (uint8
images) and turned into model inputs per batch by ``benchmark.prepare``. The trainer
only ever sees this contract, so a new benchmark needs no change there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from endebias.option_types import check_options, option_hints
from endebias.registry import Registry


@dataclass
class Split:
    """One split: ``inputs[i]`` has target ``targets[i]`` and bias label ``biases[i]``."""

    inputs: Tensor
    targets: Tensor
    biases: Tensor

    def __post_init__(self) -> None:
        n = self.inputs.shape[0]
        if self.targets.shape != (n,) or self.biases.shape != (n,):
            raise ValueError(
                f"split sizes differ: inputs {tuple(self.inputs.shape)}, "
                f"targets {tuple(self.targets.shape)}, biases {tuple(self.biases.shape)}"
            )

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def to(self, device: torch.device | str) -> Split:
        return Split(self.inputs.to(device), self.targets.to(device), self.biases.to(device))

    def subset(self, indices: Tensor) -> Split:
        return Split(self.inputs[indices], self.targets[indices], self.biases[indices])


def scale_uint8_images(images: Tensor) -> Tensor:
    """uint8 images to floats in [-1, 1]: the paper's ``(x/255 - 0.5) / 0.5``."""
    return images.float() / 127.5 - 1.0


@dataclass
class Benchmark:
    """What the trainer needs to know about a benchmark.

    ``evaluations`` maps an evaluation name (``valid`` first, used for model selection,
    then test sets such as ``biased_test`` and ``unbiased_test``) to its split.
    """

    name: str
    train: Split
    evaluations: dict[str, Split]
    num_targets: int
    num_biases: int
    input_shape: tuple[int, ...]
    prepare: Callable[[Tensor], Tensor] = scale_uint8_images
    target_names: list[str] | None = None
    bias_names: list[str] | None = None
    # (T, C) bool: which (target, bias) groups are bias-aligned. None: for each target, the
    # bias value most frequent in training (right for Biased MNIST; CelebA sets its own).
    aligned: Tensor | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # False for a dataset given without bias labels (a table or image folder with no bias
    # column): every bias label is then 0, there is no unbiased test set, and a method that
    # reads bias labels needs them made first (``--bias-labels pseudo``).
    has_bias_labels: bool = True

    def __post_init__(self) -> None:
        if "valid" not in self.evaluations:
            raise ValueError(f"benchmark {self.name!r} has no 'valid' split for model selection")


def split_sizes(train: Split, evaluations: dict[str, Split]) -> str:
    """``"60000 train, valid 18000, ..."``: the line builders log once their splits exist."""
    return ", ".join([f"{len(train)} train", *(f"{k} {len(v)}" for k, v in evaluations.items())])


BenchmarkBuilder = Callable[..., Benchmark]
_DATASETS: Registry[BenchmarkBuilder] = Registry("dataset")
register_dataset = _DATASETS.register
dataset_names = _DATASETS.names
# The registered builder (its signature lists the dataset's options).
dataset_builder = _DATASETS.get


def build_dataset(name: str, **options: Any) -> Benchmark:
    return dataset_builder(name)(**options)


def default_model(name: str) -> str | None:
    """The model a dataset declares it is made for (tabular: mlp), or None for the
    presets' simple-conv; used when no model is given."""
    return getattr(dataset_builder(name), "default_model", None)


# Checks of a dataset's option values that need no data (a sweep checks its search space's
# corners with them at create, before any agent loads data).
_OPTION_CHECKS: dict[str, Callable[..., None]] = {}
# Options the trainer passes itself, never a user's.
TRAINER_OPTIONS = ("data_dir", "seed", "device")


def register_option_check(name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def decorator(check: Callable[..., None]) -> Callable[..., None]:
        _OPTION_CHECKS[name] = check
        return check

    return decorator


def check_dataset_options(name: str, options: dict[str, Any]) -> None:
    """One line for an unknown, reserved or ill-typed option (its builder's type hints),
    then the values a registered check refuses; no data is loaded."""
    hints = option_hints(dataset_builder(name), skip=TRAINER_OPTIONS)
    check_options("dataset", name, options, hints, reserved=TRAINER_OPTIONS)
    check = _OPTION_CHECKS.get(name)
    if check is not None:
        check(**options)


# Built-in benchmarks register themselves on import; they import the names above.
from endebias.data import celeba, colored_mnist, image_folder, synthetic, tabular  # noqa: E402,F401
from endebias.data.biased_mnist_protocol import biased_mnist  # noqa: E402,F401
