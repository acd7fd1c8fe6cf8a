"""A tiny coloured-pattern benchmark for tests, examples and smoke runs (seconds on CPU).

Each class is a fixed random 8x8 binary pattern; an image is its class pattern with each
pixel flipped with probability ``flip`` (10 % by default), rendered like Biased MNIST
(pattern pixels white, the rest in the background colour of its bias label). Colour k is
aligned with class k with probability ``rho`` in training; the valid and unbiased test
sets draw colours uniformly. A larger ``flip`` makes the pattern a noisier cue than the
colour, so that a network trained on it leans on the colour (as on Biased MNIST).
"""

from __future__ import annotations

import torch
from torch import Tensor

from endebias.data import (
    Benchmark,
    Split,
    register_dataset,
    register_option_check,
    scale_uint8_images,
)

_COLOURS = torch.tensor(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [225, 225, 0], [225, 0, 225], [0, 255, 255]],
    dtype=torch.uint8,
)


def _make_split(
    patterns: Tensor, size: int, rho: float, flip: float, generator: torch.Generator
) -> Split:
    num_classes = patterns.shape[0]
    targets = torch.randint(num_classes, (size,), generator=generator)
    flips = torch.rand(size, *patterns.shape[1:], generator=generator) < flip
    images = patterns[targets] ^ flips
    conflicting = torch.rand(size, generator=generator) >= rho
    shift = torch.randint(1, num_classes, (size,), generator=generator)
    biases = torch.where(conflicting, (targets + shift) % num_classes, targets)
    background = _COLOURS[biases][:, :, None, None].expand(-1, -1, *patterns.shape[1:])
    white = torch.full_like(background, 255)
    rendered = torch.where(images[:, None], white, background).contiguous()
    return Split(rendered, targets, biases)


@register_option_check("synthetic")
def check_synthetic_options(
    *, rho: float = 0.99, num_classes: int = 4, flip: float = 0.1, **_sizes: int
) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or not (
        2 <= num_classes <= len(_COLOURS)
    ):
        raise ValueError(
            f"num_classes must be an integer in 2..{len(_COLOURS)}, got {num_classes!r}"
        )
    if isinstance(rho, bool) or not isinstance(rho, int | float) or not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be a number in [0, 1], got {rho!r}")
    if isinstance(flip, bool) or not isinstance(flip, int | float) or not 0.0 <= flip <= 0.5:
        raise ValueError(f"flip must be a number in [0, 0.5], got {flip!r}")


@register_dataset("synthetic")
def build_synthetic(
    *,
    data_dir: str | None = None,
    seed: int = 0,
    rho: float = 0.99,
    num_classes: int = 4,
    flip: float = 0.1,
    train_size: int = 512,
    eval_size: int = 256,
    device: str | None = None,
) -> Benchmark:
    check_synthetic_options(rho=rho, num_classes=num_classes, flip=flip)
    # The class patterns are part of the benchmark's definition: fixed, whatever the seed.
    patterns = torch.rand(num_classes, 8, 8, generator=torch.Generator().manual_seed(1234)) < 0.5
    generator = torch.Generator().manual_seed(seed)
    uniform = 1.0 / num_classes
    splits = {
        "train": _make_split(patterns, train_size, rho, flip, generator),
        "valid": _make_split(patterns, eval_size, uniform, flip, generator),
        "biased_test": _make_split(patterns, eval_size, 1.0, flip, generator),
        "unbiased_test": _make_split(patterns, eval_size, uniform, flip, generator),
    }
    if device is not None:
        splits = {name: split.to(device) for name, split in splits.items()}
    return Benchmark(
        name="synthetic",
        train=splits.pop("train"),
        evaluations=splits,
        num_targets=num_classes,
        num_biases=num_classes,
        input_shape=(3, 8, 8),
        prepare=scale_uint8_images,
        info={"rho": rho},
    )
