"""The bias-capturing network (``bias-conv``): ReBias's 1x1 SimpleConvNet sees colours but
not shapes. Synthetic 8x8 tasks, seconds on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from endebias.models import build_model, model_names


def _bars(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Shape only: class 0 a horizontal bar, class 1 a vertical bar, each 6 white pixels
    on a black 8x8 image at a random row/column. Every image holds the same colours in the
    same amounts, so only where the pixels are tells the classes apart."""
    targets = torch.randint(2, (count,), generator=generator)
    positions = torch.randint(1, 7, (count,), generator=generator)
    images = -torch.ones(count, 3, 8, 8)
    for index, (target, where) in enumerate(zip(targets.tolist(), positions.tolist(), strict=True)):
        if target == 0:
            images[index, :, where, 1:7] = 1.0
        else:
            images[index, :, 1:7, where] = 1.0
    return images, targets


def _colours(count: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour only: the class is the background colour (4 classes); the white foreground
    pixels are drawn at random, so there is no shape to learn."""
    palette = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, -1]])
    targets = torch.randint(4, (count,), generator=generator)
    images = palette[targets][:, :, None, None].expand(count, 3, 8, 8).clone()
    foreground = torch.rand(count, 1, 8, 8, generator=generator) < 0.3
    images = torch.where(foreground, torch.ones_like(images), images)
    return images, targets


def _train_accuracy(model: nn.Module, data, *, steps: int = 60) -> float:
    images, targets = data
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        batch = slice((step * 32) % len(images), (step * 32) % len(images) + 32)
        loss = nn.functional.cross_entropy(model(images[batch]), targets[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        return (model(images).argmax(1) == targets).float().mean().item()


def _model(name: str, num_classes: int, **options) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, num_classes=num_classes, input_shape=(3, 8, 8), **options)


def test_it_is_reBias_biased_simple_conv():
    model = _model("bias-conv", 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64, 128]
    assert all(c.kernel_size == (1, 1) and c.padding == (0, 0) for c in convs)
    assert not any(isinstance(m, nn.Tanh) for m in model.modules())
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 4
    assert model.feature_layer == "pooled" and model.fc.in_features == 128
    assert "bias-conv" in model_names()


def test_moving_pixels_around_changes_nothing():
    """A one-pixel receptive field followed by average pooling: the logits depend on which
    colours an image holds, not where. Any permutation of the pixel positions leaves them
    unchanged (up to the order of the pooling sum)."""
    model = _model("bias-conv", 10).eval()
    images = torch.randn(5, 3, 8, 8)
    shuffle = torch.randperm(64, generator=torch.Generator().manual_seed(1))
    shuffled = images.flatten(2)[:, :, shuffle].reshape(5, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(images), model(shuffled), atol=1e-5)
        assert not torch.allclose(model(images), model(images.flip(0)), atol=1e-3)


def test_it_cannot_learn_a_shape_only_task_that_a_7x7_network_learns():
    data = _bars(256, torch.Generator().manual_seed(0))
    biased = _model("bias-conv", 2)
    accuracy = _train_accuracy(biased, data)
    with torch.no_grad():
        logits = biased(data[0])
    # Every image gets the same logits, whatever its class: chance, exactly.
    assert torch.allclose(logits, logits[:1].expand_as(logits), atol=1e-5)
    assert accuracy == pytest.approx((data[1] == logits[0].argmax()).float().mean().item())
    assert 0.4 < accuracy < 0.6
    # The task is learnable: a network that sees shapes solves it with the same budget.
    shapes = _model("simple-conv", 2, channels=[8, 16], kernel_size=7)
    assert _train_accuracy(shapes, data) > 0.95


def test_it_learns_a_colour_only_task():
    data = _colours(256, torch.Generator().manual_seed(0))
    assert _train_accuracy(_model("bias-conv", 4), data) == 1.0


def test_options_are_validated_in_one_line():
    with pytest.raises(ValueError, match=r"'bias-conv' takes images .* shape \(7,\)"):
        build_model("bias-conv", num_classes=2, input_shape=(7,))
    with pytest.raises(ValueError, match="channels must be a non-empty list"):
        build_model("bias-conv", num_classes=2, input_shape=(3, 8, 8), channels=[8, 0])
    with pytest.raises(ValueError, match="model 'bias-conv' has no option 'kernel_size'"):
        build_model("bias-conv", num_classes=2, input_shape=(3, 8, 8), kernel_size=3)
