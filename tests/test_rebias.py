"""ReBias: the unbiased HSIC estimator against a brute-force U-statistic (values and
gradients, float64), the median heuristic, the minimax's gradient routing and optimiser
groups, and option checks."""

from __future__ import annotations

import itertools
import statistics
from functools import partial

import pytest
import torch
from torch import nn

from endebias.data import build_dataset
from endebias.methods import build_method
from endebias.methods.rebias import median_radius, rbf_hsic, rbf_kernel, unbiased_hsic
from endebias.models import build_model


def brute_force_hsic(k: torch.Tensor, l_: torch.Tensor) -> torch.Tensor:
    """Song et al.'s U-statistic over every ordered 4-tuple of distinct samples (i, j, q, r):
    the mean of K_ij L_ij + K_ij L_qr - 2 K_ij L_iq. Written with loops, independently of
    the closed form it checks; differentiable, for the gradient check."""
    m = k.shape[0]
    total = k.new_zeros(())
    count = 0
    for i, j, q, r in itertools.permutations(range(m), 4):
        total = total + k[i, j] * l_[i, j] + k[i, j] * l_[q, r] - 2 * k[i, j] * l_[i, q]
        count += 1
    return total / count


def brute_force_kernel(x: torch.Tensor, radius: float) -> torch.Tensor:
    m = len(x)
    rows = [[torch.exp(-((x[i] - x[j]) ** 2).sum() / (2 * radius**2)) for j in range(m)]
            for i in range(m)]
    return torch.stack([torch.stack(row) for row in rows])


def _features(seed: int, m: int = 7, width: int = 3) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(m, width, generator=generator, dtype=torch.float64)


@pytest.mark.parametrize("m", [4, 5, 7])
def test_the_estimator_equals_the_brute_force_u_statistic_in_value_and_gradient(m):
    x = _features(0, m).requires_grad_(True)
    y = (_features(1, m, 2) + x[:, :2] ** 2).detach().requires_grad_(True)  # dependent
    fast = rbf_hsic(x, y, radius_x=1.3, radius_y=0.7)
    slow = brute_force_hsic(brute_force_kernel(x, 1.3), brute_force_kernel(y, 0.7))
    assert fast.item() == pytest.approx(slow.item(), rel=1e-10, abs=1e-14)
    fast_grads = torch.autograd.grad(fast, (x, y))
    slow_grads = torch.autograd.grad(slow, (x, y))
    for a, b in zip(fast_grads, slow_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


def test_the_kernel_and_the_median_heuristic_match_hand_computations():
    x = _features(2, 6)
    torch.testing.assert_close(rbf_kernel(x, 0.9), brute_force_kernel(x, 0.9))
    distances = [((x[i] - x[j]) ** 2).sum().sqrt().item()
                 for i in range(6) for j in range(i + 1, 6)]  # 15 pairs: an odd count
    assert median_radius(x).item() == pytest.approx(statistics.median(distances), rel=1e-12)
    assert not median_radius(x.requires_grad_(True)).requires_grad  # a constant, detached
    assert median_radius(torch.ones(5, 3)).item() == pytest.approx(1e-6)  # never 0


def test_hsic_sees_dependence_and_not_independence():
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(256, 4, generator=generator, dtype=torch.float64)
    independent = torch.randn(256, 4, generator=generator, dtype=torch.float64)
    radius = median_radius(x)
    dependent = rbf_hsic(x, torch.tanh(x), radius_x=radius, radius_y=median_radius(x.tanh()))
    unrelated = rbf_hsic(x, independent, radius_x=radius, radius_y=median_radius(independent))
    assert dependent > 0.01 and abs(unrelated) < 0.002 and dependent > 20 * abs(unrelated)
    with pytest.raises(ValueError, match="at least 4 samples, got 3"):
        unbiased_hsic(torch.ones(3, 3), torch.ones(3, 3))


# ------------------------------------------------------------------ the method ---


def _benchmark():
    return build_dataset("synthetic", seed=0, rho=0.99, train_size=256, eval_size=64)


def _method(benchmark, **options):
    torch.manual_seed(0)
    model = build_model("simple-conv", num_classes=benchmark.num_targets,
                        input_shape=benchmark.input_shape, channels=[8, 16], kernel_size=3)
    return build_method(
        "rebias", model=model, num_targets=benchmark.num_targets,
        num_biases=benchmark.num_biases, train_targets=benchmark.train.targets,
        train_biases=benchmark.train.biases, input_shape=benchmark.input_shape,
        build_network=partial(build_model, num_classes=benchmark.num_targets,
                              input_shape=benchmark.input_shape),
        **{"bias_model_options": {"channels": [8, 16]}, **options},
    )


def _grads(method, loss, prefix):
    named = [(n, p) for n, p in method.named_parameters() if n.startswith(prefix)]
    grads = torch.autograd.grad(loss, [p for _, p in named], retain_graph=True,
                                allow_unused=True)
    return {n: torch.zeros_like(p) if g is None else g
            for (n, p), g in zip(named, grads, strict=True)}


@pytest.mark.parametrize("kernel_radius", ["median", 1.0])
def test_each_network_gets_the_gradient_of_its_own_side_of_the_minimax(kernel_radius):
    """f: CE_f + lambda * HSIC; g: CE_g - lambda_g * HSIC. Summed into one loss with the
    other side detached, the gradients split exactly so."""
    benchmark = _benchmark()
    method = _method(benchmark, hsic_weight=2.0, bias_hsic_weight=0.5,
                     kernel_radius=kernel_radius)
    inputs = benchmark.prepare(benchmark.train.inputs[:32])
    targets = benchmark.train.targets[:32]
    loss, logits, parts = method.training_step(inputs, targets, benchmark.train.biases[:32],
                                               torch.arange(32))
    # The same forward pass by hand (BatchNorm in train mode: the same batch statistics).
    from endebias.methods.bias_branch import logits_and_features

    f_logits, f_features = logits_and_features(method.model, method.layer, inputs)
    g_logits, g_features = logits_and_features(method.bias_model, "pooled", inputs)
    radii = [median_radius(f_features), median_radius(g_features)] \
        if kernel_radius == "median" else [1.0, 1.0]
    hsic = rbf_hsic(f_features, g_features, radius_x=radii[0], radius_y=radii[1])
    ce_f = nn.functional.cross_entropy(f_logits, targets)
    ce_g = nn.functional.cross_entropy(g_logits, targets)
    assert parts["hsic"].item() == pytest.approx(hsic.item(), rel=1e-5)
    assert loss.item() == pytest.approx((ce_f + ce_g + 1.5 * hsic).item(), rel=1e-5)
    for prefix, objective in (("model.", ce_f + 2.0 * hsic), ("bias_model.", ce_g - 0.5 * hsic)):
        expected = _grads(method, objective, prefix)
        for name, grad in _grads(method, loss, prefix).items():
            torch.testing.assert_close(grad, expected[name], rtol=1e-4, atol=1e-6, msg=name)


def test_two_optimiser_groups_and_a_small_last_batch():
    benchmark = _benchmark()
    method = _method(benchmark, bias_lr=3e-4)
    groups = method.optimizer_groups()
    assert set(groups) == {"model", "bias_model"}
    assert groups["model"].lr is None and groups["bias_model"].lr == 3e-4
    together = {id(p) for g in groups.values() for p in g.parameters}
    assert together == {id(p) for p in method.parameters()}
    assert len(together) == sum(len(g.parameters) for g in groups.values())
    inputs = benchmark.prepare(benchmark.train.inputs[:3])
    loss, _, parts = method.training_step(inputs, benchmark.train.targets[:3],
                                          benchmark.train.biases[:3], torch.arange(3))
    assert torch.isfinite(loss) and parts["hsic"].item() == 0.0


def test_a_step_of_f_lowers_the_dependence_and_a_step_of_g_raises_it():
    """The minimax's two directions on one batch of planted-bias data: with the HSIC terms
    weighted far above the cross-entropies, a small gradient step of f's parameters lowers
    HSIC(f, g) and a small step of g's parameters raises it. A fixed kernel radius: the
    median radius is a constant of each step that moves with the features."""
    benchmark = _benchmark()
    inputs = benchmark.prepare(benchmark.train.inputs[:64])
    targets, biases = benchmark.train.targets[:64], benchmark.train.biases[:64]

    def hsic_now(method) -> float:
        with torch.no_grad():
            parts = method.training_step(inputs, targets, biases, torch.arange(64))[2]
            return parts["hsic"].item()

    for side, weights in (("model.", {"hsic_weight": 1e3, "bias_hsic_weight": 0.0}),
                          ("bias_model.", {"hsic_weight": 0.0, "bias_hsic_weight": 1e3})):
        method = _method(benchmark, kernel_radius=1.0, **weights)
        before = hsic_now(method)
        loss, _, _ = method.training_step(inputs, targets, biases, torch.arange(64))
        step = _grads(method, loss, side)
        with torch.no_grad():
            for name, parameter in method.named_parameters():
                if name in step:
                    parameter -= 1e-3 * step[name]
        after = hsic_now(method)
        assert (after < 0.9 * before) if side == "model." else (after > 1.05 * before), side


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hsic_weight": -1.0}, "hsic_weight must be a finite number >= 0"),
        ({"bias_hsic_weight": float("nan")}, "option bias_hsic_weight must be float, got nan"),
        ({"kernel_radius": "mean"}, "kernel_radius must be 'median' or a number > 0"),
        ({"kernel_radius": 0.0}, "kernel_radius must be 'median' or a number > 0"),
        ({"kernel_radius": True}, "kernel_radius"),
        ({"bias_lr": 0.0}, "bias_lr must be a number > 0"),
        ({"bias_lr": "fast"}, "option bias_lr must be float or None"),
        ({"layer": "nope"}, "no layer named 'nope'"),
        ({"bias_model": "nope"}, "unknown model 'nope'"),
    ],
)
def test_bad_options_are_refused_in_one_line(options, message):
    with pytest.raises(ValueError, match=message) as error:
        _method(_benchmark(), **options)
    assert "\n" not in str(error.value)
