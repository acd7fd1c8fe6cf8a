"""Colored MNIST with colour variance (the "Learning Not to Learn" protocol, Kim et al. 2019).

Each digit class has a fixed mean stroke colour (:data:`MEAN_COLOURS`, RGB in [0, 1]).
A training image's strokes take its class's mean colour plus Gaussian jitter of variance
``sigma2`` per channel; test images take the mean colour of a uniformly random class,
jittered the same way; the background stays black. The colour multiplies the grey level,
so anti-aliased edges keep their shading and a full-intensity stroke pixel shows the
drawn colour exactly.

The bias label is the stroke colour quantised to 8 classes, one bit per RGB channel
(bit set when the stored 8-bit channel is >= 128, i.e. at least half intensity):
``bias = 4 * R + 2 * G + B``. Ten mean colours cannot fall in eight bins, so two pairs
of digits share a bin (orange with yellow, violet with magenta); the bias label is a
coarse view of the colour, as in the protocol.

Colours are clipped to [0, 1] before storage (uint8). Clipping trims the variance of
channels whose mean lies near 0 or 1; the drawn, unclipped colours (:func:`draw_colours`)
have exactly the requested mean and variance.

Splits. ``train``: the 60,000 training images minus a fixed held-out 10,000 (the same
for every seed), coloured by their own class. ``valid``: those held-out 10,000, coloured
test-style (random class colours): disjoint digits, and nearly unbiased like the
validation set of Biased MNIST, so model selection rewards ignoring the colour.
``biased_test``: the 10,000 test images in their own class colours. ``unbiased_test``:
the same test images in random class colours.

Seeding. Each split's colours come from their own generator stream, ``seed * 4 + k``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

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
NUM_BIASES = 8
DEFAULT_SIGMA2 = 0.02
VALID_SIZE = 10_000
VALID_PERMUTATION_SEED = 2_000_003  # fixed: the same held-out digits for every seed
_STREAM = {"train": 0, "valid": 1, "biased_test": 2, "unbiased_test": 3}
_CHUNK = 8192  # images coloured at a time: bounds the int32 temporaries to ~80 MB

# Mean stroke colour per digit. Channels sit at 0.2 / 0.8 rather than 0 / 1 so that the
# jitter is rarely clipped, and far from the 0.5 quantisation threshold; orange and
# violet, the two colours beyond the eight corners, share a bin with yellow / magenta.
MEAN_COLOURS: tuple[tuple[float, float, float], ...] = (
    (0.8, 0.2, 0.2),  # 0 red
    (0.2, 0.8, 0.2),  # 1 green
    (0.2, 0.2, 0.8),  # 2 blue
    (0.8, 0.8, 0.2),  # 3 yellow
    (0.8, 0.2, 0.8),  # 4 magenta
    (0.2, 0.8, 0.8),  # 5 cyan
    (0.8, 0.8, 0.8),  # 6 white
    (0.35, 0.35, 0.35),  # 7 grey: dim but visible on black
    (0.8, 0.6, 0.2),  # 8 orange
    (0.6, 0.2, 0.8),  # 9 violet
)
BIAS_NAMES = ["black", "blue", "green", "cyan", "red", "magenta", "yellow", "white"]


def _check_sigma2(sigma2: Any) -> float:
    if isinstance(sigma2, bool) or not isinstance(sigma2, int | float) or not sigma2 >= 0:
        raise ValueError(f"sigma2 must be a number >= 0, got {sigma2!r}")
    return float(sigma2)


def draw_colours(
    colour_classes: Tensor, *, sigma2: float, generator: torch.Generator
) -> Tensor:
    """Unclipped float colours (N, 3): the mean colour of each entry's class plus
    independent N(0, sigma2) jitter per channel."""
    sigma2 = _check_sigma2(sigma2)
    means = torch.tensor(MEAN_COLOURS, dtype=torch.float64)[colour_classes]
    noise = torch.randn(means.shape, generator=generator, dtype=torch.float64)
    return means + noise * sigma2**0.5


def colours_to_uint8(colours: Tensor) -> Tensor:
    """Float colours in any range → uint8 channels (clipped to [0, 1], rounded)."""
    return (colours.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8)


def quantise(colours_uint8: Tensor) -> Tensor:
    """Bias label of uint8 colours (N, 3): one bit per channel, set at >= 128."""
    bits = (colours_uint8 >= 128).long()
    return bits[:, 0] * 4 + bits[:, 1] * 2 + bits[:, 2]


def colour_digits(images: Tensor, colours_uint8: Tensor) -> Tensor:
    """Grey digits uint8 (N, H, W) times per-image stroke colours uint8 (N, 3) →
    uint8 (N, 3, H, W) on black. Rounded integer arithmetic: grey 255 keeps the colour."""
    if images.ndim != 3 or images.dtype != torch.uint8:
        raise ValueError(
            f"images must be uint8 (N, H, W), got {images.dtype} {tuple(images.shape)}"
        )
    if colours_uint8.shape != (images.shape[0], 3):
        raise ValueError(f"need one colour per image, got {tuple(colours_uint8.shape)}")
    out = torch.empty((images.shape[0], 3, *images.shape[1:]), dtype=torch.uint8)
    for start in range(0, images.shape[0], _CHUNK):
        grey = images[start : start + _CHUNK].to(torch.int32).unsqueeze(1)
        colour = colours_uint8[start : start + _CHUNK].to(torch.int32)[:, :, None, None]
        out[start : start + _CHUNK] = ((grey * colour + 127) // 255).to(torch.uint8)
    return out


def make_split(
    images: Tensor,
    targets: Tensor,
    *,
    random_colours: bool,
    sigma2: float,
    generator: torch.Generator,
) -> Split:
    """Colour one split. ``random_colours=False``: each image in its own class's colour;
    ``True``: in the colour of a uniformly random class (drawn before the jitter)."""
    if random_colours:
        colour_classes = torch.randint(NUM_CLASSES, targets.shape, generator=generator)
    else:
        colour_classes = targets
    colours = colours_to_uint8(draw_colours(colour_classes, sigma2=sigma2, generator=generator))
    return Split(colour_digits(images, colours), targets.clone(), quantise(colours))


def _valid_mask(n_train: int) -> Tensor:
    order = torch.randperm(n_train, generator=torch.Generator().manual_seed(VALID_PERMUTATION_SEED))
    mask = torch.zeros(n_train, dtype=torch.bool)
    mask[order[: min(VALID_SIZE, n_train // 6)]] = True
    return mask


@register_option_check("colored-mnist")
def check_colored_mnist_options(*, sigma2: float = DEFAULT_SIGMA2) -> None:
    _check_sigma2(sigma2)


@register_dataset("colored-mnist")
def build_colored_mnist(
    *,
    data_dir: str | Path | None = None,
    seed: int = 0,
    sigma2: float = DEFAULT_SIGMA2,
    device: torch.device | str | None = None,
    **unknown: Any,
) -> Benchmark:
    """Colored MNIST at colour variance ``sigma2``: ``train`` (own-class colours),
    ``valid`` (held-out training digits, random colours), ``biased_test`` (own-class
    colours) and ``unbiased_test`` (random colours)."""
    if unknown:
        raise ValueError(
            f"colored-mnist: unknown option(s) {', '.join(sorted(unknown))}; known: data_dir,"
            " seed, sigma2, device"
        )
    sigma2 = _check_sigma2(sigma2)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    mnist = load_mnist(data_dir)
    held_out = _valid_mask(len(mnist["train_labels"]))

    def make(split: str, images: Tensor, targets: Tensor, random_colours: bool) -> Split:
        generator = torch.Generator().manual_seed(seed * len(_STREAM) + _STREAM[split])
        made = make_split(
            images, targets, random_colours=random_colours, sigma2=sigma2, generator=generator
        )
        return made.to(device) if device is not None else made

    train_images, train_labels = mnist["train_images"], mnist["train_labels"]
    test_images, test_labels = mnist["test_images"], mnist["test_labels"]
    train = make("train", train_images[~held_out], train_labels[~held_out], False)
    evaluations = {
        "valid": make("valid", train_images[held_out], train_labels[held_out], True),
        "biased_test": make("biased_test", test_images, test_labels, False),
        "unbiased_test": make("unbiased_test", test_images, test_labels, True),
    }
    logger.info(
        "colored-mnist sigma2=%s seed=%s: %s",
        sigma2,
        seed,
        split_sizes(train, evaluations),
    )
    return Benchmark(
        name="colored-mnist",
        train=train,
        evaluations=evaluations,
        num_targets=NUM_CLASSES,
        num_biases=NUM_BIASES,
        input_shape=(3, 28, 28),
        prepare=scale_uint8_images,
        target_names=[str(digit) for digit in range(NUM_CLASSES)],
        bias_names=list(BIAS_NAMES),
        info={
            "sigma2": sigma2,
            "seed": seed,
            "valid": "held-out training digits, random colours",
            "data_dir": str(mnist_folder(resolve_data_dir(data_dir))),
        },
    )
