"""The EnD loss as a PyTorch user meets it: label ranges, higher-order gradients, empty
batches, the normalisation default and its warning, returned terms, the module's options."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import endebias.regularizer as regularizer
from endebias import EnDLoss, EnDTerms, end_loss, end_terms
from pairwise_reference import batch_of, floats, pairwise_terms_loop, pairwise_terms_torch

COUNTED = {"num_targets": 3, "num_biases": 3}


def _labelled_batch(size: int = 12) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(size)
    features = torch.randn(size, 5, generator=generator, dtype=torch.float64)
    return features, torch.arange(size) % 3, (torch.arange(size) // 2) % 3


@pytest.mark.parametrize("argument, value, found", [
    ("biases", 3, "from 0 to 3"), ("biases", -1, "from -1 to 2"), ("targets", 9, "from 0 to 9"),
])
def test_labels_outside_the_given_count_are_an_error(argument, value, found):
    features, targets, biases = _labelled_batch()
    labels = {"targets": targets.clone(), "biases": biases.clone()}
    labels[argument][4] = value
    count = "num_targets" if argument == "targets" else "num_biases"
    message = rf"^{argument} has values {found}, outside 0\.\.2 \({count}=3\)"
    with pytest.raises(ValueError, match=message):
        end_loss(features, **labels, **COUNTED)
    only_that_count = {count: 3}  # the check goes with each count on its own
    with pytest.raises(ValueError, match=message):
        end_loss(features, **labels, **only_that_count)


def _counted_loss(features, targets, biases):
    return end_loss(features, targets, biases, alpha=0.5, beta=2.0, **COUNTED)


def test_the_range_check_runs_on_the_device_under_compile():
    # A device-side assertion (no host sync): fullgraph=True would refuse a host read.
    compiled = torch.compile(_counted_loss, fullgraph=True, backend="aot_eager")
    features, targets, biases = _labelled_batch()
    torch.testing.assert_close(compiled(features, targets, biases),
                               _counted_loss(features, targets, biases))
    biases = biases.clone()
    biases[0] = 3
    with pytest.raises(RuntimeError, match=r"biases has values outside 0\.\.2 \(num_biases=3\)"):
        compiled(features, targets, biases)


def _gradient_penalty(loss_of, weight: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """A gradient penalty, as in WGAN-GP: the squared norm of d loss / d weight."""
    (grad,) = torch.autograd.grad(loss_of(inputs @ weight), weight, create_graph=True)
    return grad.square().sum()


@pytest.mark.parametrize("case", ["closed form", "counts", "reference", "reduced"])
def test_second_order_gradients_are_exact(case):
    rng = np.random.default_rng(11)
    features, targets, biases = batch_of(rng, (9, 3), rng.integers(0, 3, 9),
                                         rng.integers(0, 2, 9), normalize=False)
    options = {"pairs": "reference"} if case == "reference" else {}
    if case in ("counts", "reduced"):
        options = {"num_targets": 3, "num_biases": 2}
    if case == "reduced":
        options["reduce_group_sums"] = lambda sums: sums * 1.0

    def loss(f: torch.Tensor) -> torch.Tensor:
        return end_loss(f, targets, biases, alpha=0.7, beta=1.3, normalize=False, **options)

    assert torch.autograd.gradgradcheck(loss, (features.requires_grad_(True),))
    if case != "reference":  # against the definition, differentiated twice by autograd
        weight = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)

        def definition(f: torch.Tensor) -> torch.Tensor:
            r_perp, r_par = pairwise_terms_torch(f, targets, biases)
            return 0.7 * r_perp + 1.3 * r_par

        got = torch.autograd.grad(_gradient_penalty(loss, weight, features.detach()), weight)
        expected = torch.autograd.grad(
            _gradient_penalty(definition, weight, features.detach()), weight)
        torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-9)


@pytest.mark.parametrize("options", [{}, COUNTED, {"pairs": "reference"}, {"normalize": False}])
@pytest.mark.parametrize("shape", [(0, 6), (0, 2, 3, 3)])
def test_an_empty_batch_gives_zero_and_a_zero_gradient(options, shape):
    features = torch.randn(shape, requires_grad=True)
    empty = torch.zeros(0, dtype=torch.long)
    loss, r_perp, r_par = end_loss(features, empty, empty, return_terms=True, **options)
    assert (loss.item(), r_perp.item(), r_par.item()) == (0.0, 0.0, 0.0)
    loss.backward()
    assert features.grad is not None and features.grad.shape == shape


def test_an_empty_batch_still_joins_the_reduction():  # other processes wait for its sums
    seen = []
    end_loss(torch.randn(0, 4, requires_grad=True), torch.zeros(0, dtype=torch.long),
             torch.zeros(0, dtype=torch.long), num_targets=2, num_biases=2,
             reduce_group_sums=lambda sums: seen.append(sums.shape) or sums)
    assert seen == [(4, 6)]


def test_features_are_normalised_by_default():
    rng = np.random.default_rng(12)
    unit, targets, biases = batch_of(rng, (40, 6), rng.integers(0, 3, 40), rng.integers(0, 3, 40))
    scaled = unit * torch.linspace(0.1, 9.0, 40, dtype=torch.float64)[:, None]
    expected = pairwise_terms_loop(unit, targets, biases)  # the definition on cosines
    np.testing.assert_allclose(floats(end_terms(scaled, targets, biases)), expected, atol=1e-12)
    module = EnDLoss()(scaled, targets, biases)
    assert module.item() == pytest.approx(sum(expected), abs=1e-12)


@pytest.fixture
def unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a fresh process: the unit-norm check has not run yet."""
    monkeypatch.setattr(regularizer, "_unit_norm_checked", False)


def test_unnormalised_features_without_normalize_warn_once(unchecked):
    features, targets, biases = _labelled_batch()
    with pytest.warns(UserWarning, match=r"not unit-norm \(norms from .*normalize=False") as seen:
        EnDLoss(normalize=False)(3 * features, targets, biases)
    assert seen[0].filename == __file__  # the user's line, not the library's
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not per step: checked on the first call only
        end_loss(3 * features, targets, biases, normalize=False)


def test_unit_features_do_not_warn(unchecked):
    features, targets, biases = _labelled_batch()
    unit = torch.nn.functional.normalize(features, dim=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        end_loss(unit, targets, biases, normalize=False)
        end_loss(3 * features, targets, biases)  # normalize=True: nothing to warn about
    assert regularizer._unit_norm_checked


def test_return_terms_gives_the_loss_and_both_terms():
    features, targets, biases = _labelled_batch()
    r_perp, r_par = end_terms(features, targets, biases)
    got = end_loss(features, targets, biases, alpha=0.2, beta=3.0, return_terms=True)
    assert isinstance(got, EnDTerms)
    assert (got.r_perp.item(), got.r_par.item()) == (r_perp.item(), r_par.item())
    assert got.loss.item() == pytest.approx(0.2 * r_perp.item() + 3.0 * r_par.item(), abs=1e-15)
    module = EnDLoss(alpha=0.2, beta=3.0)
    assert module(features, targets, biases, return_terms=True) == got


def test_module_takes_the_weights_by_keyword_as_the_function_does():
    with pytest.raises(TypeError):
        EnDLoss(0.1, 0.2)  # type: ignore[misc]


def test_module_repr_shows_every_option():
    def all_reduce(sums: torch.Tensor) -> torch.Tensor:
        return sums

    text = repr(EnDLoss(alpha=0.1, beta=0.2, pairs="reference", normalize=False, num_targets=10,
                        num_biases=7, reduce_group_sums=all_reduce))
    for option in ("alpha=0.1", "beta=0.2", "pairs='reference'", "normalize=False",
                   "num_targets=10", "num_biases=7", "reduce_group_sums=all_reduce"):
        assert option in text


def test_forward_and_the_counts_are_documented():
    assert EnDLoss.forward.__doc__ and "return_terms" in EnDLoss.forward.__doc__
    assert "one only" in " ".join((end_terms.__doc__ or "").split())  # one count without the other
