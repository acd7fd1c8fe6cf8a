"""Feature capture and L2Normalize."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from endebias import L2Normalize, capture_features, end_loss


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(4, 4)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.linear(x))


def small_model() -> nn.Module:
    # Names like "layer.0.relu": a Sequential of blocks, as in ResNet's layer4.1.relu.
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        layer=nn.Sequential(Block(), Block()),
        norm=L2Normalize(),
        head=nn.Linear(4, 3),
    ))


def test_captures_a_nested_layer():
    model = small_model()
    x = torch.randn(5, 4)
    with capture_features(model, "layer.1.relu") as captured:
        model(x)
    expected = model.layer(x)
    torch.testing.assert_close(captured.get(), expected)
    assert captured.get().grad_fn is not None  # kept with its graph, so a loss can train it


def test_gradients_reach_the_captured_layer_and_below():
    model = small_model()
    x = torch.randn(12, 4)
    targets, biases = torch.arange(12) % 3, torch.arange(12) % 2
    with capture_features(model, "norm") as captured:
        model(x)
    end_loss(captured.get(), targets, biases, num_targets=3, num_biases=2).backward()
    for name in ("layer.0.linear.weight", "layer.1.linear.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name
    assert model.head.weight.grad is None  # the loss reads the layer before the head


def test_typo_lists_the_valid_names():
    model = small_model()
    with pytest.raises(ValueError, match="layer.1.relu") as error, capture_features(
        model, "layer.1.rleu"
    ):
        pass
    assert "'layer.1.rleu'" in str(error.value) and "norm" in str(error.value)


def test_empty_name_is_rejected():  # "" names the model itself, not one of its layers
    with pytest.raises(ValueError, match="valid names"), capture_features(small_model(), ""):
        pass


def test_get_before_a_forward_pass_explains():
    with capture_features(small_model(), "norm") as captured, pytest.raises(RuntimeError):
        captured.get()


def test_hook_is_removed_on_exit():
    model = small_model()
    with capture_features(model, "norm") as captured:
        assert len(model.norm._forward_hooks) == 1
        model(torch.randn(2, 4))
    first = captured.get()
    assert not model.norm._forward_hooks
    model(torch.randn(2, 4))
    assert captured.get() is first  # later passes no longer recorded


def test_hook_is_removed_on_exception():
    model = small_model()
    with pytest.raises(KeyError), capture_features(model, "layer.0.relu"):
        model(torch.randn(2, 4))
        raise KeyError("boom")
    assert not model.layer[0].relu._forward_hooks


@pytest.mark.parametrize("shape", [(6, 10), (6, 3, 4, 5)])
def test_l2_normalize_gives_unit_norms(shape):
    x = torch.randn(shape) * 7
    y = L2Normalize()(x)
    assert y.shape == x.shape
    norms = y.reshape(shape[0], -1).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(shape[0]))
    flat = x.reshape(shape[0], -1)  # direction kept: y times |x| gives x back
    torch.testing.assert_close(y.reshape(shape[0], -1) * flat.norm(dim=1, keepdim=True), flat)


def test_l2_normalize_leaves_zero_rows_finite():
    y = L2Normalize()(torch.zeros(2, 3))
    assert torch.equal(y, torch.zeros(2, 3))
