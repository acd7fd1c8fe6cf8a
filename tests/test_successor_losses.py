"""The contrastive losses of BiasCon and FairKL / epsilon-SupInfoNCE against brute-force
transcriptions of their definitions: plain loops over anchors and pairs in float64, values
and gradients, and the edge cases (no positives, no negatives, empty or one-pair sets)."""

from __future__ import annotations

import math

import pytest
import torch

from endebias.methods.contrastive_losses import (
    bias_contrastive,
    epsilon_supinfonce,
    fairkl,
    soft_bias_contrastive,
)


def _batch(size: int, *, classes: int, biases: int, seed: int, dim: int = 5):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(size, dim, generator=generator, dtype=torch.float64)
    z = torch.nn.functional.normalize(z, dim=1).requires_grad_(True)
    y = torch.randint(classes, (size,), generator=generator)
    b = torch.randint(biases, (size,), generator=generator)
    return z, y, b


def _sim(z, i, j, temperature):
    return sum(z[i, k] * z[j, k] for k in range(z.shape[1])) / temperature


def bias_contrastive_loop(z, y, b, temperature):
    n, total = len(z), 0.0
    for i in range(n):
        positives = [p for p in range(n) if p != i and y[p] == y[i] and b[p] != b[i]]
        denominator = sum(torch.exp(_sim(z, i, a, temperature)) for a in range(n) if a != i)
        terms = [torch.log(torch.exp(_sim(z, i, p, temperature)) / denominator)
                 for p in positives]
        total = total - (sum(terms) / len(terms) if terms else 0.0)
    return total / n


def soft_bias_contrastive_loop(z, y, u, temperature):
    n, total = len(z), 0.0
    for i in range(n):
        denominator = sum(torch.exp(_sim(z, i, a, temperature)) for a in range(n) if a != i)
        weighted, weight_sum = 0.0, 0.0
        for p in range(n):
            if p != i and y[p] == y[i]:
                cosine = _sim(u, i, p, 1.0) / (torch.linalg.norm(u[i]) * torch.linalg.norm(u[p]))
                w = 1 - cosine
                weighted = weighted + w * torch.log(torch.exp(_sim(z, i, p, temperature))
                                                    / denominator)
                weight_sum = weight_sum + w
        if float(weight_sum) != 0:
            total = total - weighted / weight_sum
    return total / n


def epsilon_supinfonce_loop(z, y, temperature, epsilon):
    n, total = len(z), 0.0
    for i in range(n):
        positives = [p for p in range(n) if p != i and y[p] == y[i]]
        negatives = [m for m in range(n) if y[m] != y[i]]
        terms = []
        for p in positives:
            s_ip = _sim(z, i, p, temperature)
            rest = sum(torch.exp(_sim(z, i, m, temperature)) for m in negatives)
            terms.append(torch.log(torch.exp(s_ip) / (torch.exp(s_ip - epsilon) + rest)))
        total = total - (sum(terms) / len(terms) if terms else 0.0)
    return total / n


def _stats(values):
    if not values:
        return 0.0, 0.0
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, torch.sqrt(variance) if float(variance.detach()) > 0 else 0.0


def fairkl_loop(z, y, b, temperature, std_weight):
    sets = {"pa": [], "pc": [], "na": [], "nc": []}
    for i in range(len(z)):
        for j in range(len(z)):
            if i != j:
                key = ("p" if y[i] == y[j] else "n") + ("a" if b[i] == b[j] else "c")
                sets[key].append(_sim(z, i, j, temperature))
    (m_pa, s_pa), (m_pc, s_pc) = _stats(sets["pa"]), _stats(sets["pc"])
    (m_na, s_na), (m_nc, s_nc) = _stats(sets["na"]), _stats(sets["nc"])
    kl = (m_pc - m_pa) ** 2 + (m_na - m_nc) ** 2
    kl = kl + std_weight * ((s_pa - s_pc) ** 2 + (s_na - s_nc) ** 2)
    return kl - m_pc + m_na


def _value_and_grad(fn, z):
    value = fn(z)
    if not (torch.is_tensor(value) and value.requires_grad):  # a sum of no terms
        return float(value), torch.zeros_like(z)
    (grad,) = torch.autograd.grad(value, z, allow_unused=True)
    return float(value.detach()), torch.zeros_like(z) if grad is None else grad


def _check(ours, loop, z):
    value, grad = _value_and_grad(ours, z)
    expected, expected_grad = _value_and_grad(loop, z)
    assert value == pytest.approx(expected, rel=1e-10, abs=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-12)
    assert math.isfinite(value) and torch.isfinite(grad).all()
    return value, grad


@pytest.mark.parametrize(("seed", "temperature"), [(0, 0.07), (1, 0.5), (2, 1.0)])
def test_bias_contrastive_matches_its_definition(seed, temperature):
    z, y, b = _batch(9, classes=2, biases=3, seed=seed)
    value, grad = _check(lambda z: bias_contrastive(z, y, b, temperature=temperature),
                         lambda z: bias_contrastive_loop(z, y, b, temperature), z)
    assert value != 0 and grad.abs().sum() > 0  # the batch has positives: not vacuous


@pytest.mark.parametrize(("seed", "temperature"), [(0, 0.07), (3, 0.5)])
def test_soft_bias_contrastive_matches_its_definition(seed, temperature):
    z, y, _ = _batch(8, classes=2, biases=2, seed=seed)
    u = torch.randn(8, 3, generator=torch.Generator().manual_seed(seed + 10),
                    dtype=torch.float64).abs()  # ReLU-like bias features
    value, _ = _check(lambda z: soft_bias_contrastive(z, y, u, temperature=temperature),
                      lambda z: soft_bias_contrastive_loop(z, y, u, temperature), z)
    assert value != 0


def test_soft_bias_contrastive_without_bias_differences_is_zero():
    z, y, _ = _batch(6, classes=2, biases=2, seed=9)
    same_bias = torch.ones(6, 4, dtype=torch.float64)  # every pair looks alike: no weight
    value, grad = _value_and_grad(lambda z: soft_bias_contrastive(z, y, same_bias,
                                                                  temperature=0.1), z)
    assert value == 0 and torch.isfinite(grad).all() and grad.abs().max() < 1e-12


@pytest.mark.parametrize(("seed", "temperature", "epsilon"),
                         [(0, 0.1, 0.0), (1, 0.1, 0.25), (2, 1.0, 1.5)])
def test_epsilon_supinfonce_matches_its_definition(seed, temperature, epsilon):
    z, y, _ = _batch(8, classes=3, biases=2, seed=seed)
    _check(lambda z: epsilon_supinfonce(z, y, temperature=temperature, epsilon=epsilon),
           lambda z: epsilon_supinfonce_loop(z, y, temperature, epsilon), z)


@pytest.mark.parametrize(("seed", "std_weight"), [(0, 1.0), (1, 0.0), (3, 2.5)])
def test_fairkl_matches_its_definition(seed, std_weight):
    z, y, b = _batch(10, classes=2, biases=2, seed=seed)
    value, _ = _check(lambda z: fairkl(z, y, b, temperature=1.0, std_weight=std_weight),
                      lambda z: fairkl_loop(z, y, b, 1.0, std_weight), z)
    assert value != 0


def test_fairkl_temperature_scales_the_similarities():
    z, y, b = _batch(7, classes=2, biases=2, seed=4)
    _check(lambda z: fairkl(z, y, b, temperature=0.5, std_weight=1.0),
           lambda z: fairkl_loop(z, y, b, 0.5, 1.0), z)


def test_a_batch_without_positives_gives_zero_and_no_nan():
    z, _, _ = _batch(6, classes=2, biases=2, seed=5)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    b = y.clone()  # every same-target pair shares the bias: BiasCon has no positive
    value, grad = _check(lambda z: bias_contrastive(z, y, b, temperature=0.1),
                         lambda z: bias_contrastive_loop(z, y, b, 0.1), z)
    assert value == 0 and grad.abs().sum() == 0
    distinct = torch.arange(6)  # every sample its own class: SupInfoNCE has no positive
    value, grad = _check(lambda z: epsilon_supinfonce(z, distinct, temperature=0.1, epsilon=0.3),
                         lambda z: epsilon_supinfonce_loop(z, distinct, 0.1, 0.3), z)
    assert value == 0 and grad.abs().sum() == 0


def test_a_batch_without_negatives_scores_minus_epsilon():
    z, _, _ = _batch(5, classes=2, biases=2, seed=6)
    one_class = torch.zeros(5, dtype=torch.long)
    value, grad = _check(lambda z: epsilon_supinfonce(z, one_class, temperature=0.1, epsilon=0.4),
                         lambda z: epsilon_supinfonce_loop(z, one_class, 0.1, 0.4), z)
    assert value == pytest.approx(-0.4) and grad.abs().max() < 1e-12


def test_fairkl_with_empty_and_one_pair_sets():
    z, _, _ = _batch(3, classes=2, biases=2, seed=7)
    # pairs: (0,1) positive aligned, (0,2) and (1,2) negative conflicting; pc and na empty.
    y, b = torch.tensor([0, 0, 1]), torch.tensor([0, 0, 1])
    _check(lambda z: fairkl(z, y, b, temperature=1.0, std_weight=1.0),
           lambda z: fairkl_loop(z, y, b, 1.0, 1.0), z)


def test_fairkl_on_identical_features_has_a_finite_gradient():
    z = torch.nn.functional.normalize(torch.ones(6, 4, dtype=torch.float64), dim=1)
    z.requires_grad_(True)
    y, b = torch.tensor([0, 0, 0, 1, 1, 1]), torch.tensor([0, 1, 0, 1, 0, 1])
    value = fairkl(z, y, b, temperature=1.0, std_weight=1.0)  # every std is 0
    (grad,) = torch.autograd.grad(value, z)
    assert torch.isfinite(grad).all() and float(value) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("loss", ["bias_contrastive", "epsilon_supinfonce", "fairkl"])
def test_gradients_match_finite_differences(loss):
    z, y, b = _batch(6, classes=2, biases=2, seed=8, dim=3)
    functions = {
        "bias_contrastive": lambda z: bias_contrastive(z, y, b, temperature=0.2),
        "epsilon_supinfonce": lambda z: epsilon_supinfonce(z, y, temperature=0.2, epsilon=0.1),
        "fairkl": lambda z: fairkl(z, y, b, temperature=1.0, std_weight=1.0),
    }
    assert torch.autograd.gradcheck(functions[loss], (z,))
