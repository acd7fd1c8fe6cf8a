"""The EnD loss against independent transcriptions of DESIGN.md section 2."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from endebias import EnDLoss, end_loss, end_terms
from pairwise_reference import (
    batch_of,
    dense,
    floats,
    imbalanced,
    official_terms_loop,
    pairwise_terms,
    pairwise_terms_loop,
    pairwise_terms_torch,
)

# (name, batch shape, target values, bias values, conflicting count or None = uniform)
CASES = [
    ("small", (64, 16), [0, 1, 2, 3], [3, 17, 42], None),
    ("wide", (512, 4096), list(range(10)), [3 + 7 * k for k in range(10)], 1),
    ("imbalanced", (2048, 32), [-2, 5, 9], [3, 17, 42], 2),  # 0.1 % conflicting
    ("conv", (96, 4, 3, 3), [0, 1, 2, 3, 4], [3, 17, 42], None),
]


@pytest.mark.parametrize("name, shape, target_values, bias_values, conflicting", CASES)
def test_closed_form_equals_pairwise_sum(name, shape, target_values, bias_values, conflicting):
    rng = np.random.default_rng(len(name))
    if conflicting is None:
        labels = rng.choice(target_values, shape[0]), rng.choice(bias_values, shape[0])
    else:
        labels = imbalanced(rng, shape[0], target_values, bias_values, conflicting)
    features, targets, biases = batch_of(rng, shape, *labels)
    expected = pairwise_terms(features, targets, biases)
    np.testing.assert_allclose(floats(end_terms(features, targets, biases)), expected, atol=1e-10)

    # Counts given: labels must be 0..K-1; extra, empty classes change nothing.
    dense_targets, num_targets = dense(targets)
    dense_biases, num_biases = dense(biases)
    for extra in (0, 3):
        got = end_terms(
            features, dense_targets, dense_biases,
            num_targets=num_targets + extra, num_biases=num_biases + extra,
        )
        np.testing.assert_allclose(floats(got), expected, atol=1e-10)


def test_closed_form_is_exact_for_unnormalised_features():
    rng = np.random.default_rng(1)
    features, targets, biases = batch_of(rng, (128, 8), rng.integers(0, 3, 128),
                                         rng.choice([-4, 0, 9], 128), normalize=False)
    features = 3 * features
    expected = pairwise_terms_loop(features, targets, biases)
    got = end_terms(features, targets, biases, normalize=False)
    np.testing.assert_allclose(floats(got), expected, atol=1e-10)


def test_pairwise_references_agree():  # the vectorised brute force checks the loop
    rng = np.random.default_rng(2)
    batch = batch_of(rng, (80, 5), rng.integers(0, 4, 80), rng.choice([3, 17, 42], 80))
    np.testing.assert_allclose(pairwise_terms(*batch), pairwise_terms_loop(*batch), atol=1e-12)


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("batch, conflicting", [(48, None), (200, 3)])
def test_reference_mode_equals_official_loop(batch, conflicting, normalize):
    rng = np.random.default_rng(batch)
    if conflicting is None:
        labels = rng.choice([-1, 5, 100], batch), rng.choice([3, 17, 42, 8], batch)
    else:
        labels = imbalanced(rng, batch, [0, 1, 2, 3], [3, 17, 42, 8], conflicting)
    features, targets, biases = batch_of(rng, (batch, 6), *labels, normalize=normalize)
    if not normalize:  # Gram entries beyond [-1, 1]: the official clamp matters here
        features = 2 * features
    expected = official_terms_loop(features, targets, biases)
    got = floats(end_terms(features, targets, biases, pairs="reference", normalize=False))
    np.testing.assert_allclose(got, expected, atol=1e-6)
    if normalize:  # DESIGN.md: the official disentangling term is the definition's
        assert got[0] == pytest.approx(pairwise_terms(features, targets, biases)[0], abs=1e-10)


def test_hand_computed_four_samples():
    # z0=(1,0)  z1=(0,1)  z2=(1,0)  z3=(-0.6,-0.8); targets 0 0 1 1; biases 7 5 5 7.
    # Pairs: (0,1) G=0 same target, biases differ -> entangle; (0,3) G=-0.6 bias 7;
    # (1,2) G=0 bias 5; (2,3) G=-0.6 same target -> entangle; (0,2), (1,3) neither.
    # R_perp = (|-0.6| + |0|) / 2 = 0.3
    # R_par  = 1 - ((1 + 0)/2 + (1 - 0.6)/2) / 2 = 1 - (0.5 + 0.2) / 2 = 0.65
    # Reference: only (i=1, j=0) has b_i=5 < b_j=7 -> R_par = 1 - 0.5 = 0.5.
    # alpha=2, beta=0.5: 2 * 0.3 + 0.5 * 0.65 = 0.925.
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [-0.6, -0.8]], dtype=torch.float64)
    targets, biases = torch.tensor([0, 0, 1, 1]), torch.tensor([7, 5, 5, 7])
    assert floats(end_terms(features, targets, biases)) == pytest.approx((0.3, 0.65), abs=1e-12)
    reference = end_terms(features, targets, biases, pairs="reference")
    assert floats(reference) == pytest.approx((0.3, 0.5), abs=1e-12)
    loss = end_loss(features, targets, biases, alpha=2.0, beta=0.5)
    assert loss.item() == pytest.approx(0.925, abs=1e-12)


def test_all_pairs_is_permutation_invariant():
    rng = np.random.default_rng(3)
    features, targets, biases = batch_of(rng, (100, 7), rng.integers(0, 4, 100),
                                         rng.choice([3, 17, 42], 100))
    order = torch.tensor(rng.permutation(100))
    np.testing.assert_allclose(
        floats(end_terms(features[order], targets[order], biases[order])),
        floats(end_terms(features, targets, biases)),
        atol=1e-12,
    )


@pytest.mark.parametrize("pairs", ["all", "reference"])
def test_zero_weights_give_exactly_zero(pairs):
    rng = np.random.default_rng(4)
    batch = batch_of(rng, (30, 5), rng.integers(0, 3, 30), rng.integers(0, 3, 30))
    assert end_loss(*batch, alpha=0.0, beta=0.0, pairs=pairs).item() == 0.0


def test_orthogonal_same_bias_features_give_zero_perp():
    rng = np.random.default_rng(5)
    biases = np.repeat([3, 17, 42], [5, 8, 6])
    # Rows of a different random orthogonal matrix for each bias group.
    rows = [np.linalg.qr(rng.standard_normal((8, 8)))[0][: n] for n in (5, 8, 6)]
    features = torch.tensor(np.concatenate(rows))
    r_perp, r_par = end_terms(features, torch.tensor(rng.integers(0, 2, 19)), torch.tensor(biases))
    assert abs(r_perp.item()) < 1e-12 and r_par.item() > 0


def test_identical_same_target_features_give_zero_par():
    rng = np.random.default_rng(6)
    targets = rng.integers(0, 3, 40)
    directions = rng.standard_normal((3, 10))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    features = torch.tensor(directions[targets])
    r_perp, r_par = end_terms(features, torch.tensor(targets), torch.tensor(rng.integers(0, 4, 40)))
    assert abs(r_par.item()) < 1e-12 and r_perp.item() > 0


EDGE_CASES = {  # name: (targets, biases)
    "one sample": ([4], [9]),
    "one bias class": ([0, 1, 0, 1, 2], [5, 5, 5, 5, 5]),
    "one target, one bias": ([2, 2, 2], [8, 8, 8]),
    "all singletons": ([0, 1, 2, 3], [10, 20, 30, 40]),
    "distinct biases, one target": ([1, 1, 1], [0, 1, 2]),
    "singleton groups and a pair": ([0, 0, 1], [0, 1, 1]),
}


@pytest.mark.parametrize("pairs", ["all", "reference"])
@pytest.mark.parametrize("name", EDGE_CASES)
def test_edge_cases_are_zero_where_no_pairs_and_have_finite_gradients(name, pairs):
    targets, biases = EDGE_CASES[name]
    rng = np.random.default_rng(7)
    features, targets, biases = batch_of(rng, (len(targets), 3), targets, biases)
    features.requires_grad_(True)
    r_perp, r_par = end_terms(features, targets, biases, pairs=pairs)
    brute_force = pairwise_terms_loop if pairs == "all" else official_terms_loop
    expected = brute_force(features.detach(), targets, biases)  # 0 where no pairs exist
    np.testing.assert_allclose(floats((r_perp, r_par)), expected, atol=1e-10)
    (r_perp + r_par).backward()
    assert torch.isfinite(features.grad).all()
    counts = end_terms(features, *map(lambda x: dense(x)[0], (targets, biases)), pairs=pairs,
                       num_targets=5, num_biases=5)
    np.testing.assert_allclose(floats(counts), expected, atol=1e-10)


@pytest.mark.parametrize("case", ["uniform", "imbalanced", "singletons", "counts", "reduced"])
def test_gradient_equals_autograd_of_the_definition(case):
    rng = np.random.default_rng(9)
    batch = 8 if case == "singletons" else 300
    labels = (rng.integers(0, 4, batch), rng.choice([3, 17, 42], batch))
    if case == "imbalanced":
        labels = imbalanced(rng, batch, [0, 1, 2], [3, 17, 42], 1)
    if case == "singletons":
        labels = (np.arange(batch) % 2, np.arange(batch) + 5)
    features, targets, biases = batch_of(rng, (batch, 2, 3), *labels)
    options = {}
    if case in ("counts", "reduced"):
        biases = dense(biases)[0]
        options = {"num_targets": 4, "num_biases": 3}
    if case == "reduced":
        options["reduce_group_sums"] = lambda sums: sums.clone()
    loss = end_loss(features.requires_grad_(True), targets, biases, alpha=0.7, beta=1.9,
                    normalize=False, **options)  # the definition's gradient, no projection
    got = torch.autograd.grad(loss, features)[0]
    r_perp, r_par = pairwise_terms_torch(features, targets, biases)
    expected = torch.autograd.grad(0.7 * r_perp + 1.9 * r_par, features)[0]
    torch.testing.assert_close(got, expected, atol=1e-12, rtol=1e-9)


def test_no_pairs_gives_exactly_zero_in_float32():  # not a rounding residue
    features = torch.randn(6, 33) * 3
    for pairs in ("all", "reference"):
        terms = end_terms(features, torch.arange(6), torch.arange(6) + 10, pairs=pairs)
        assert floats(terms) == (0.0, 0.0)


@pytest.mark.parametrize("pairs, normalize, reduced",
                         [("all", False, False), ("all", True, False), ("reference", True, False),
                          ("all", False, True)])
def test_gradcheck(pairs, normalize, reduced):
    rng = np.random.default_rng(8)
    features, targets, biases = batch_of(rng, (10, 4), rng.integers(0, 3, 10),
                                         rng.choice([3, 17], 10), normalize=False)
    features.requires_grad_(True)
    options = {}
    if reduced:  # as in a second process adding its group sums: autograd passes through
        others = torch.rand(3 * 2, 4 + 2, dtype=torch.float64) + 1
        options = {"reduce_group_sums": lambda sums: sums + others,
                   "num_targets": 3, "num_biases": 2}
        biases = dense(biases)[0]

    def loss(f: torch.Tensor) -> torch.Tensor:
        return end_loss(f, targets, biases, alpha=0.7, beta=1.3, pairs=pairs, normalize=normalize,
                        **options)

    assert torch.autograd.gradcheck(loss, (features,))


@settings(max_examples=40, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    batch=st.integers(1, 24),
    sample_shape=st.sampled_from([(1,), (5,), (2, 3), (2, 2, 2)]),
    target_pool=st.lists(st.integers(-50, 50), min_size=1, max_size=4, unique=True),
    bias_pool=st.lists(st.integers(-50, 1000), min_size=1, max_size=5, unique=True),
)
def test_properties(seed, batch, sample_shape, target_pool, bias_pool):
    rng = np.random.default_rng(seed)
    labels = rng.choice(target_pool, batch), rng.choice(bias_pool, batch)
    features, targets, biases = batch_of(rng, (batch, *sample_shape), *labels)
    got = floats(end_terms(features, targets, biases))
    np.testing.assert_allclose(got, pairwise_terms_loop(features, targets, biases), atol=1e-10)
    assert all(-1e-12 <= term <= 1 + 1e-12 for term in got)  # unit features: both in [0, 1]
    reference = floats(end_terms(features, targets, biases, pairs="reference"))
    np.testing.assert_allclose(reference, official_terms_loop(features, targets, biases), atol=1e-6)
    (dense_targets, num_targets), (dense_biases, num_biases) = dense(targets), dense(biases)
    with_counts = end_terms(features, dense_targets, dense_biases,
                            num_targets=num_targets, num_biases=num_biases)
    np.testing.assert_allclose(floats(with_counts), got, atol=1e-12)


def _valid() -> dict:
    return {"features": torch.randn(4, 3), "targets": torch.tensor([0, 1, 0, 1]),
            "biases": torch.tensor([2, 2, 3, 3])}


INVALID = [  # (override, argument the message must name first)
    ({"targets": torch.tensor([0, 1, 0])}, "targets"),
    ({"biases": torch.tensor([0, 1, 0, 1, 1])}, "biases"),
    ({"biases": torch.zeros(4, 1, dtype=torch.long)}, "biases"),
    ({"targets": torch.tensor([0.0, 1.0, 0.0, 1.0])}, "targets"),
    ({"biases": torch.tensor([True, False, True, False])}, "biases"),
    ({"targets": [0, 1, 0, 1]}, "targets"),
    ({"features": torch.randn(4)}, "features"),
    ({"features": torch.ones(4, 3, dtype=torch.long)}, "features"),
    ({"pairs": "upper"}, "pairs"),
    ({"num_targets": 0}, "num_targets"),
    ({"num_targets": 2.0}, "num_targets"),
    ({"num_targets": True}, "num_targets"),
    ({"num_biases": -1}, "num_biases"),
]


@pytest.mark.parametrize("override, argument", INVALID)
def test_validation_errors_name_the_argument(override, argument):
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        end_loss(**{**_valid(), **override})


def test_module_validates_pairs_and_equals_function():
    with pytest.raises(ValueError, match=r"^pairs\b"):
        EnDLoss(pairs="upper")
    batch = _valid()
    for pairs in ("all", "reference"):
        module = EnDLoss(alpha=0.3, beta=2.0, pairs=pairs, num_targets=2, num_biases=4)
        expected = end_loss(**batch, alpha=0.3, beta=2.0, pairs=pairs, num_targets=2, num_biases=4)
        assert module(**batch).item() == expected.item()


@pytest.mark.parametrize("shape", [(12, 6), (12, 2, 3, 3)])
def test_normalize_option_equals_normalising_first(shape):
    features, targets, biases = torch.randn(shape) * 5, torch.arange(12) % 3, torch.arange(12) % 4
    unit = torch.nn.functional.normalize(features.reshape(12, -1), dim=1)
    for pairs in ("all", "reference"):
        inside = end_loss(features, targets, biases, normalize=True, pairs=pairs)
        assert inside.item() == pytest.approx(end_loss(unit, targets, biases, pairs=pairs).item())


def _counted_loss(features: torch.Tensor, targets: torch.Tensor, biases: torch.Tensor):
    return end_loss(features, targets, biases, alpha=0.5, beta=2.0, num_targets=3, num_biases=4)


def _compiled_matches_eager(backend: str) -> None:
    # fullgraph=True turns any graph break into an error: a host sync (.item(), unique,
    # a Python branch on a tensor value) cannot hide in the counted path.
    compiled = torch.compile(_counted_loss, fullgraph=True, backend=backend)
    features = torch.nn.functional.normalize(torch.randn(32, 8), dim=1).requires_grad_(True)
    targets, biases = torch.randint(3, (32,)), torch.randint(4, (32,))
    value = compiled(features, targets, biases)
    value.backward()
    grad, features.grad = features.grad, None
    expected = _counted_loss(features, targets, biases)
    expected.backward()
    torch.testing.assert_close(value, expected)
    torch.testing.assert_close(grad, features.grad)
    biases[0] = 4  # the range check is compiled too: a device-side assertion
    with pytest.raises(RuntimeError, match=r"biases has values outside 0\.\.3 \(num_biases=4\)"):
        compiled(features, targets, biases)


def test_compiles_as_one_graph_with_counts_given():
    _compiled_matches_eager("aot_eager")  # traces forward and backward, no codegen: fast


@pytest.mark.slow
def test_compiles_with_inductor():  # cold cache: ~20 s of C++ code generation on 2 cores
    _compiled_matches_eager("inductor")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_step_with_counts_makes_no_host_sync():
    device = torch.device("cuda")
    raw = torch.randn(256, 128, device=device, requires_grad=True)
    targets = torch.randint(10, (256,), device=device)
    biases = torch.randint(10, (256,), device=device)
    torch.cuda.synchronize(device)
    torch.cuda.set_sync_debug_mode("error")  # any synchronising call raises
    try:
        loss = end_loss(raw, targets, biases, normalize=True, num_targets=10, num_biases=10)
        loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert torch.isfinite(raw.grad).all()
