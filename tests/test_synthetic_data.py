"""The synthetic benchmark's pattern noise (``flip``): its definition and its checks."""

from __future__ import annotations

import pytest
import torch

from endebias.data import build_dataset

PATTERN_SEED = 1234  # the benchmark's fixed class patterns (data/synthetic.py)


def _patterns(num_classes: int = 4) -> torch.Tensor:
    generator = torch.Generator().manual_seed(PATTERN_SEED)
    return torch.rand(num_classes, 8, 8, generator=generator) < 0.5


def _white(split) -> torch.Tensor:
    """(N, 8, 8) bool: the pixels rendered white in every channel."""
    return (split.inputs == 255).all(dim=1)


def test_flip_zero_renders_each_class_pattern_exactly():
    train = build_dataset("synthetic", seed=0, flip=0.0, train_size=64, eval_size=8).train
    assert torch.equal(_white(train), _patterns()[train.targets])


@pytest.mark.parametrize("flip", [0.1, 0.35])
def test_flip_is_the_share_of_pixels_that_differ_from_the_pattern(flip):
    train = build_dataset("synthetic", seed=0, flip=flip, train_size=2048, eval_size=8).train
    differs = (_white(train) != _patterns()[train.targets]).float().mean().item()
    assert abs(differs - flip) < 0.01, differs


def test_the_default_flip_is_the_benchmark_as_it_was():
    default = build_dataset("synthetic", seed=3, train_size=128, eval_size=16)
    explicit = build_dataset("synthetic", seed=3, flip=0.1, train_size=128, eval_size=16)
    assert torch.equal(default.train.inputs, explicit.train.inputs)
    assert torch.equal(default.evaluations["unbiased_test"].inputs,
                       explicit.evaluations["unbiased_test"].inputs)


@pytest.mark.parametrize("flip", [-0.1, 0.6, True, "0.2", float("nan")])
def test_a_bad_flip_is_refused_by_name(flip):
    with pytest.raises(ValueError, match=r"^flip must be a number in \[0, 0.5\], got"):
        build_dataset("synthetic", seed=0, flip=flip, train_size=8, eval_size=8)
