"""Random views of uint8 images for contrastive methods, drawn per image on the images'
device from an explicit generator (so a run's views are a function of its seed).

:func:`augment_images` is the augmentation of the bias-contrastive authors' Biased MNIST
code (Hong & Yang, NeurIPS 2021), written for batches of tensors:

1. a rotation by an angle drawn uniformly from [-max_degrees, max_degrees] about the
   image's centre, nearest-neighbour sampling, the corners it uncovers black;
2. with probability ``jitter_p``, a colour jitter: brightness, contrast and saturation
   factors drawn from [1 - s, 1 + s], a hue shift from [-hue, hue] (in turns), the four
   applied in an order drawn per image.

The jitter's blends follow the usual definitions (brightness scales; contrast blends with
the image's mean grey level; saturation blends with each pixel's grey level, grey =
0.299 R + 0.587 G + 0.114 B; hue rotates H in HSV), computed in floats and rounded to
uint8 once at the end (an image library rounds after each step: values may differ by one).
Single-channel images get the rotation, brightness and contrast only.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

GREY_WEIGHTS = (0.299, 0.587, 0.114)


def grey(images: Tensor) -> Tensor:
    """(N, 3, H, W) floats -> (N, 1, H, W) grey levels."""
    red, green, blue = images.unbind(dim=1)
    r, g, b = GREY_WEIGHTS
    return (r * red + g * green + b * blue)[:, None]


def rgb_to_hsv(images: Tensor) -> Tensor:
    """(N, 3, H, W) RGB in [0, 1] -> HSV, each in [0, 1] (H in turns)."""
    high, _ = images.max(dim=1)
    low, _ = images.min(dim=1)
    spread = high - low
    red, green, blue = images.unbind(dim=1)
    safe = torch.where(spread > 0, spread, torch.ones_like(spread))
    hue = torch.where(
        high == red, ((green - blue) / safe) % 6,
        torch.where(high == green, (blue - red) / safe + 2, (red - green) / safe + 4),
    )
    hue = torch.where(spread > 0, hue / 6, torch.zeros_like(hue))
    saturation = torch.where(high > 0, spread / torch.where(high > 0, high, 1.0), 0.0)
    return torch.stack([hue, saturation, high], dim=1)


def hsv_to_rgb(images: Tensor) -> Tensor:
    """Inverse of :func:`rgb_to_hsv`."""
    hue, saturation, value = images.unbind(dim=1)
    sector = hue * 6
    # The standard piecewise form: channel k = v - v s max(0, min(q, 4 - q, 1)),
    # q = (k_offset + 6h) mod 6 with offsets 5, 3, 1 for R, G, B.
    channels = []
    for offset in (5.0, 3.0, 1.0):
        q = (offset + sector) % 6
        channels.append(value - value * saturation * torch.clamp(torch.minimum(q, 4 - q), 0, 1))
    return torch.stack(channels, dim=1)


def rotate(images: Tensor, degrees: Tensor) -> Tensor:
    """Each (C, H, W) image rotated counter-clockwise by its angle, nearest-neighbour,
    uncovered pixels 0. ``images`` float (N, C, H, W); ``degrees`` (N,)."""
    n, _, height, width = images.shape
    radians = degrees.to(images.dtype) * (math.pi / 180)
    cos, sin = radians.cos(), radians.sin()
    # Normalised coordinates span [-1, 1] on both axes: scale the off-diagonal terms so
    # that the rotation is a rotation in pixels on a non-square image.
    theta = torch.zeros(n, 2, 3, dtype=images.dtype, device=images.device)
    theta[:, 0, 0], theta[:, 0, 1] = cos, -sin * height / width
    theta[:, 1, 0], theta[:, 1, 1] = sin * width / height, cos
    grid = torch.nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    return torch.nn.functional.grid_sample(images, grid, mode="nearest", padding_mode="zeros",
                                           align_corners=False)


def _jitter_ops(images: Tensor, factors: Tensor) -> list[Tensor]:
    """The four jitter operations on ``images`` (floats in [0, 1]), each image with its own
    factors (N, 4): brightness, contrast, saturation, hue shift."""
    def per_image(column: int) -> Tensor:
        return factors[:, column].view(-1, 1, 1, 1)

    brightness = (images * per_image(0)).clamp(0, 1)
    colour = images.shape[1] == 3
    grey_levels = grey(images) if colour else images
    mean = grey_levels.mean(dim=(1, 2, 3), keepdim=True)
    contrast = (per_image(1) * images + (1 - per_image(1)) * mean).clamp(0, 1)
    if not colour:
        return [brightness, contrast, images, images]
    saturation = (per_image(2) * images + (1 - per_image(2)) * grey_levels).clamp(0, 1)
    hsv = rgb_to_hsv(images)
    shifted = torch.cat([(hsv[:, :1] + per_image(3)) % 1.0, hsv[:, 1:]], dim=1)
    return [brightness, contrast, saturation, hsv_to_rgb(shifted).clamp(0, 1)]


def colour_jitter(images: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """Floats in [0, 1] (N, C, H, W), factors (N, 4), order (N, 4) a permutation of the
    four operations per image."""
    for position in range(4):
        results = _jitter_ops(images, factors)
        step = order[:, position]
        images = torch.stack(results)[step, torch.arange(len(images), device=images.device)]
    return images


def augment_images(
    images: Tensor,
    generator: torch.Generator,
    *,
    max_degrees: float = 20.0,
    jitter_p: float = 0.8,
    strength: float = 0.4,
    hue: float = 0.1,
) -> Tensor:
    """One random view of each uint8 image (N, C, H, W), as uint8 on the same device."""
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"augment_images takes uint8 images (N, C, H, W), got {images.dtype} "
                         f"of shape {tuple(images.shape)}")
    n, device = len(images), images.device

    def uniform(low: float, high: float) -> Tensor:  # drawn on the CPU: device-independent
        return (low + (high - low) * torch.rand(n, generator=generator)).to(device)

    floats = images.float() / 255
    views = rotate(floats, uniform(-max_degrees, max_degrees))
    factors = torch.stack([uniform(1 - strength, 1 + strength) for _ in range(3)]
                          + [uniform(-hue, hue)], dim=1)
    order = torch.argsort(torch.rand(n, 4, generator=generator), dim=1).to(device)
    jittered = torch.rand(n, generator=generator).to(device) < jitter_p
    views = torch.where(jittered.view(-1, 1, 1, 1), colour_jitter(views, factors, order), views)
    return (views * 255).round().clamp(0, 255).to(torch.uint8)
