"""Biased MNIST (ReBias / EnD protocol, docs/design.md §3): white digits on a background
colour that agrees with the digit for a fraction ``rho`` of each class.

Seeding. Every random choice comes from an explicit ``torch.Generator``. The split that
the validation images are drawn from is fixed (:data:`VALID_PERMUTATION_SEED`), so every
run scores on the same digits whatever its seed; the colours of each split come from
their own stream, seeded ``seed * 3 + k`` with k = 0 (train), 1 (valid), 2 (test), so
that changing one split's size never shifts another split's colours and no two
(seed, split) pairs share a stream.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from endebias.data import (
    Benchmark,
    Split,
    register_dataset,
    register_option_check,
    scale_uint8_images,
    split_sizes,
)
from endebias.data.mnist import load_mnist, mnist_folder, resolve_data_dir

logger = logging.getLogger(__name__)

NUM_CLASSES = 10

# Background colour per bias label; index = the digit the colour is aligned with.
COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0),
    (0, 255, 0),
    (0, 0, 255),
    (225, 225, 0),
    (225, 0, 225),
    (0, 255, 255),
    (255, 128, 0),
    (255, 0, 128),
    (128, 0, 255),
    (128, 128, 128),
)
_COLOUR_NAMES = (
    "red",
    "green",
    "blue",
    "yellow",
    "magenta",
    "cyan",
    "orange",
    "pink",
    "violet",
    "grey",
)

SPLITS = ("train", "valid", "test")
VALIDATIONS = ("official", "heldout")
VALID_RHO = 0.1  # the validation set is nearly unbiased, whatever the training rho
VALID_PERMUTATION_SEED = 1_000_003  # fixed: the same validation digits for every seed
_STREAM = {"train": 0, "valid": 1, "test": 2}


def _check_protocol(rho: float, n_confusing: int) -> float:
    """Validate the colouring options; returns rho as a Python float."""
    if isinstance(rho, bool) or not isinstance(rho, int | float) or not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be a number in [0, 1], got {rho!r}")
    if isinstance(n_confusing, bool) or not isinstance(n_confusing, int):
        raise ValueError(f"n_confusing must be an integer in 1..9, got {n_confusing!r}")
    if not 1 <= n_confusing <= NUM_CLASSES - 1:
        raise ValueError(f"n_confusing must be in 1..9, got {n_confusing}")
    return float(rho)


def colour_names() -> list[str]:
    """Human names of :data:`COLOURS`, in bias-label order."""
    return list(_COLOUR_NAMES)


def assign_colours(
    labels: Tensor, rho: float, *, n_confusing: int = 9, generator: torch.Generator
) -> Tensor:
    """Bias label (colour index) for each sample, following the protocol exactly.

    For each class c in 0..9: shuffle its indices; the first ``int(n_c * rho)`` get
    colour c; the rest are cut into consecutive chunks of
    ``ceil((n_c - int(n_c * rho)) / n_confusing)`` and chunk k gets ``others[k]``, a
    shuffle of ``(c + 1 .. c + n_confusing) mod 10``. Per class the generator draws the
    index shuffle first, then the colour shuffle.
    """
    rho = _check_protocol(rho, n_confusing)
    if labels.ndim != 1 or labels.dtype.is_floating_point:
        raise ValueError(
            f"labels must be a 1-d integer tensor, got {labels.dtype} {tuple(labels.shape)}"
        )
    cpu_labels = labels.cpu()
    if cpu_labels.numel() and (cpu_labels.min() < 0 or cpu_labels.max() >= NUM_CLASSES):
        raise ValueError("labels must be digits 0..9")

    # numpy finds the class members: torch's nonzero is slow when threads contend.
    label_array = cpu_labels.numpy()
    biases = torch.empty(cpu_labels.shape, dtype=torch.int64)
    for c in range(NUM_CLASSES):
        members = torch.from_numpy(np.flatnonzero(label_array == c))
        n_c = members.numel()
        members = members[torch.randperm(n_c, generator=generator)]
        # Python float product and int() truncation, as in the reference code: the
        # exact count of aligned samples depends on it (100 * 0.29 gives 28, not 29).
        n_aligned = int(n_c * rho)
        candidates = [(c + 1 + k) % NUM_CLASSES for k in range(n_confusing)]
        others = torch.tensor(candidates)[torch.randperm(n_confusing, generator=generator)]
        # index_fill_/index_copy_ rather than indexed assignment: same result, and far
        # cheaper on a busy multi-threaded CPU.
        biases.index_fill_(0, members[:n_aligned], c)
        n_conflicting = n_c - n_aligned
        if n_conflicting:
            chunk = -(-n_conflicting // n_confusing)  # ceil, in exact integer arithmetic
            chunk_colour = others[torch.arange(n_conflicting) // chunk]
            biases.index_copy_(0, members[n_aligned:], chunk_colour)
    return biases.to(labels.device)


def render(images: Tensor, biases: Tensor) -> Tensor:
    """Colour MNIST digits: uint8 (N, H, W) → uint8 (N, 3, H, W).

    Any non-zero pixel becomes white; every zero pixel takes the background colour of
    its sample's bias label. Anti-aliased edge pixels therefore turn fully white, which
    is what the reference rendering does.
    """
    if images.ndim != 3 or images.dtype != torch.uint8:
        raise ValueError(
            f"images must be uint8 (N, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    if biases.shape != images.shape[:1]:
        raise ValueError(f"need one bias per image, got {tuple(biases.shape)} for {len(images)}")
    table = torch.tensor(COLOURS, dtype=torch.uint8, device=images.device)
    background = table[biases.to(images.device)][:, :, None, None]  # (N, 3, 1, 1)
    white = torch.full((), 255, dtype=torch.uint8, device=images.device)
    foreground = (images != 0).unsqueeze(1)  # (N, 1, H, W)
    return torch.where(foreground, white, background).contiguous()


def _generator(seed: int, split: str) -> torch.Generator:
    return torch.Generator().manual_seed(seed * len(_STREAM) + _STREAM[split])


def _valid_indices(n_train: int) -> Tensor:
    """The fixed 30 % of the training images used for validation (sorted)."""
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(VALID_PERMUTATION_SEED))
    return order[: n_train * 3 // 10].sort().values


def _check_options(
    split: str, validation: str, *, rho: float = 1.0, n_confusing: int = 9, seed: int = 0
) -> None:
    """Fail on bad arguments before the (slow) data loading."""
    _check_protocol(rho, n_confusing)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if validation not in VALIDATIONS:
        raise ValueError(
            f"unknown validation {validation!r}; choose one of {', '.join(VALIDATIONS)}"
        )


def _make_split(
    mnist: dict[str, Tensor],
    *,
    split: str,
    rho: float,
    n_confusing: int,
    seed: int,
    validation: str,
) -> tuple[Tensor, Tensor, Tensor]:
    _check_options(split, validation)
    if split == "test":
        images, targets = mnist["test_images"], mnist["test_labels"]
    else:
        images, targets = mnist["train_images"], mnist["train_labels"]
        chosen = _valid_indices(len(targets))
        if split == "valid":
            images, targets, rho = images[chosen], targets[chosen], VALID_RHO
        elif validation == "heldout":
            keep = torch.ones(len(targets), dtype=torch.bool)
            keep[chosen] = False
            images, targets = images[keep], targets[keep]
    biases = assign_colours(
        targets, rho, n_confusing=n_confusing, generator=_generator(seed, split)
    )
    return render(images, biases), targets.clone(), biases


def biased_mnist(
    root: str | Path | None = None,
    *,
    split: str,
    rho: float,
    n_confusing: int = 9,
    seed: int = 0,
    validation: str = "official",
    download: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """One Biased MNIST split as ``(images uint8 (N, 3, 28, 28), targets, biases)``.

    ``split``: ``train`` (60,000 images at ``rho``), ``valid`` or ``test`` (10,000 test
    images at ``rho``: 1.0 gives the biased test set, 0.1 the unbiased one).

    ``valid`` is a fixed 30 % (18,000) of the *training* images re-coloured at rho=0.1;
    the ``rho`` argument is ignored for it. With ``validation="official"`` (the paper's
    protocol) those digits also stay in ``train``; with ``"heldout"`` they are removed
    from it, and ``train`` keeps the other 70 % (42,000).

    ``root`` is the data directory (see :func:`endebias.data.mnist.resolve_data_dir`).
    """
    _check_options(split, validation, rho=rho, n_confusing=n_confusing, seed=seed)
    mnist = load_mnist(root, download=download)
    return _make_split(
        mnist, split=split, rho=rho, n_confusing=n_confusing, seed=seed, validation=validation
    )


@register_option_check("biased-mnist")
def check_biased_mnist_options(
    *, rho: float = 0.997, n_confusing: int = 9, validation: str = "official"
) -> None:
    _check_options("train", validation, rho=rho, n_confusing=n_confusing)


@register_dataset("biased-mnist")
def build_biased_mnist(
    *,
    data_dir: str | Path | None = None,
    rho: float = 0.997,
    seed: int = 0,
    n_confusing: int = 9,
    validation: str = "official",
    device: torch.device | str | None = None,
    **unknown: Any,
) -> Benchmark:
    """The EnD benchmark: train at ``rho``; ``valid`` (rho=0.1, model selection);
    ``biased_test`` (rho=1.0) and ``unbiased_test`` (rho=0.1)."""
    if unknown:
        raise ValueError(
            f"biased-mnist: unknown option(s) {', '.join(sorted(unknown))}; known: data_dir,"
            " rho, seed, n_confusing, validation, device"
        )
    _check_options("train", validation, rho=rho, n_confusing=n_confusing, seed=seed)
    mnist = load_mnist(data_dir)
    common = {"n_confusing": n_confusing, "seed": seed, "validation": validation}

    def make(split: str, split_rho: float) -> Split:
        inputs, targets, biases = _make_split(mnist, split=split, rho=split_rho, **common)
        made = Split(inputs, targets, biases)
        return made.to(device) if device is not None else made

    train = make("train", rho)
    evaluations = {
        "valid": make("valid", VALID_RHO),
        "biased_test": make("test", 1.0),
        "unbiased_test": make("test", VALID_RHO),
    }
    logger.info(
        "biased-mnist rho=%s seed=%s: %s",
        rho,
        seed,
        split_sizes(train, evaluations),
    )
    return Benchmark(
        name="biased-mnist",
        train=train,
        evaluations=evaluations,
        num_targets=NUM_CLASSES,
        num_biases=NUM_CLASSES,
        input_shape=(3, 28, 28),
        prepare=scale_uint8_images,
        target_names=[str(digit) for digit in range(NUM_CLASSES)],
        bias_names=colour_names(),
        info={
            "rho": rho,
            "seed": seed,
            "n_confusing": n_confusing,
            "validation": validation,
            "valid_rho": VALID_RHO,
            "unbiased_test_rho": VALID_RHO,
            "data_dir": str(mnist_folder(resolve_data_dir(data_dir))),
        },
    )
