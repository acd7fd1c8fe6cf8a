"""Feature capture and L2Normalize."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from endebias import L2Normalize, capture_features, end_loss
from endebias.hooks import guard_hooks_under_compile


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


def test_typo_suggests_the_closest_names_only():
    model = nn.Sequential(OrderedDict(
        (f"block{index}", nn.Sequential(OrderedDict(relu=nn.ReLU(), conv=nn.Identity())))
        for index in range(60)
    ))
    with pytest.raises(ValueError) as error, capture_features(model, "block17.rleu"):
        pass
    message = str(error.value)
    assert "'block17.rleu'" in message and "block17.relu" in message
    assert "block42.conv" not in message and len(message) < 300  # not all 180 names


def test_empty_name_is_rejected():  # "" names the model itself, not one of its layers
    with pytest.raises(ValueError, match="no layer named ''"), capture_features(small_model(), ""):
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


class Siamese(nn.Module):
    """One encoder applied to two inputs in one forward pass."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.encoder = nn.Linear(4, 3)
        self.head = nn.Linear(6, 2)

    def forward(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.encoder(left), self.encoder(right)], dim=1))


def test_a_layer_called_twice_keeps_both_outputs():
    model, left, right = Siamese(), torch.randn(5, 4), torch.randn(5, 4)
    with capture_features(model, "encoder") as captured:
        model(left, right)
    with pytest.raises(RuntimeError, match=r"layer 'encoder' ran 2 times.*get_all\(\)"):
        captured.get()
    first, second = captured.get_all()
    torch.testing.assert_close(first, model.encoder(left))
    torch.testing.assert_close(second, model.encoder(right))


def test_each_forward_pass_starts_a_new_capture():  # a block may span a training loop
    model = small_model()
    inputs = [torch.randn(3, 4), torch.randn(3, 4)]
    with capture_features(model, "norm") as captured:
        for x in inputs:
            model(x)
            assert len(captured.get_all()) == 1
            torch.testing.assert_close(captured.get(), model.norm(model.layer(x)))


def _loss_of(model: nn.Module, captured, x, targets, biases) -> torch.Tensor:
    logits = model(x)
    return nn.functional.cross_entropy(logits, targets) + end_loss(
        captured.get(), targets, biases, num_targets=3, num_biases=2)


def test_capture_inside_a_fullgraph_compiled_model_and_step():
    model = small_model()
    x, targets, biases = torch.randn(8, 4), torch.arange(8) % 3, torch.arange(8) % 2
    with capture_features(model, "layer.1.relu") as captured:
        eager = _loss_of(model, captured, x, targets, biases)
        # The whole step (forward, capture, loss) as one graph: any break would raise.
        step = torch.compile(_loss_of, fullgraph=True, backend="aot_eager")
        compiled = step(model, captured, x, targets, biases)
    torch.testing.assert_close(compiled, eager)
    (eager_grad,) = torch.autograd.grad(eager, model.layer[0].linear.weight)
    (compiled_grad,) = torch.autograd.grad(compiled, model.layer[0].linear.weight)
    torch.testing.assert_close(compiled_grad, eager_grad)

    compiled_model = torch.compile(model, fullgraph=True, backend="aot_eager")
    with capture_features(compiled_model, "layer.1.relu") as captured:  # _orig_mod.layer...
        compiled_model(x)
    torch.testing.assert_close(captured.get(), model.layer(x))


class LightningLike(nn.Module):  # a LightningModule keeps the network as self.model
    def __init__(self) -> None:
        super().__init__()
        self.model = small_model()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


@pytest.mark.parametrize("wrap", ["compile", "data_parallel", "lightning", "module_object"])
def test_finds_the_layer_through_wrappers(wrap):
    x = torch.randn(4, 4)
    if wrap == "lightning":
        wrapper = LightningLike()
        model = wrapper.model
    else:
        model = small_model()
        wrapper = {"compile": lambda: torch.compile(model, backend="eager"),
                   "data_parallel": lambda: nn.DataParallel(model),  # DDP's module. naming
                   "module_object": lambda: model}[wrap]()
    layer = model.layer[1].relu if wrap == "module_object" else "layer.1.relu"
    with capture_features(wrapper, layer) as captured:
        wrapper(x)
    torch.testing.assert_close(captured.get(), model.layer(x))
    assert captured.layer_name.endswith("layer.1.relu")


def test_a_wrapper_prefix_on_an_unwrapped_model_is_accepted():
    model = small_model()
    with capture_features(model, "_orig_mod.norm") as captured:
        model(torch.randn(2, 4))
    assert captured.layer_name == "norm"


def test_a_module_outside_the_model_is_rejected():
    with pytest.raises(ValueError, match="not a submodule"), capture_features(
        small_model(), nn.ReLU()
    ):
        pass


def test_an_ambiguous_unwrapped_name_is_an_error():
    outer = nn.Module()
    outer.module, outer.model = small_model(), small_model()
    with pytest.raises(ValueError, match="ambiguous.*module.norm.*model.norm"), capture_features(
        outer, "norm"
    ):
        pass


def test_get_and_get_all_have_docstrings():
    from endebias import CapturedFeatures

    assert CapturedFeatures.get.__doc__ and CapturedFeatures.get_all.__doc__


def test_a_second_compiled_model_of_one_class_still_runs_the_capture_hook(monkeypatch):
    """Dynamo skips hook guards by default: a model compiled and run without the hook
    leaves a graph that a second model of the same class would reuse, capturing nothing.
    ``guard_hooks_under_compile`` (the trainer's ``--compile`` calls it) prevents that."""
    import torch._dynamo.config

    class Net(nn.Module):  # a class of its own: no graph cached by another test
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Linear(6, 5), nn.ReLU())
            self.head = nn.Linear(5, 2)

        def forward(self, x):
            return self.head(self.body(x))

    monkeypatch.setattr(torch._dynamo.config, "skip_nnmodule_hook_guards", True)
    guard_hooks_under_compile()
    assert torch._dynamo.config.skip_nnmodule_hook_guards is False
    x = torch.randn(4, 6)
    first, second = Net(), Net()
    first.compile(backend="eager")
    first(x)  # traced without any hook
    second.compile(backend="eager")
    with capture_features(second, "body") as captured:
        second(x)
    torch.testing.assert_close(captured.get(), second.body(x))
