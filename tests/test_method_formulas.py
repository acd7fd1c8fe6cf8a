"""The baselines' key formulas against hand computations in plain Python floats
(independent of the code), and a step split over two simulated processes."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from endebias.methods import build_method
from endebias.methods.lff import fresh_copy, generalized_cross_entropy
from endebias.models import build_model

# ------------------------------------------------------------------- Group DRO ---


def _ce(logits: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in logits)) - logits[target]


def _build_tiny(name: str, model: nn.Module, targets, biases, *, num_targets=2, num_biases=2,
                **options):
    return build_method(
        name, model=model, num_targets=num_targets, num_biases=num_biases,
        train_targets=torch.tensor(targets), train_biases=torch.tensor(biases), **options,
    )


def test_groupdro_weight_update_matches_hand_computation():
    # Training groups (target, bias) -> g = 2 * target + bias: n = [3, 1, 0, 4].
    train_targets = [0, 0, 0, 0, 1, 1, 1, 1]
    train_biases = [0, 0, 0, 1, 1, 1, 1, 1]
    method = _build_tiny("groupdro", nn.Identity(), train_targets, train_biases,
                         step_size=0.5, generalization_adjustment=1.0)
    logits = [[2.0, -1.0], [0.5, 0.2], [-0.3, 0.9], [1.5, 0.0]]
    targets, biases = [0, 0, 0, 1], [0, 0, 1, 1]  # groups 0, 0, 1, 3; group 2 absent
    n = [3, 1, 1, 4]  # group 2 has no training sample; the adjustment divides by max(n, 1)
    ce = [_ce(row, t) for row, t in zip(logits, targets, strict=True)]
    group_loss = [(ce[0] + ce[1]) / 2, ce[2], 0.0, ce[3]]
    present = [True, True, False, True]

    weights = [0.25] * 4
    for _ in range(2):  # the second step builds on the first's weights
        raw = [
            w * math.exp(0.5 * (loss + 1 / math.sqrt(count))) if here else w
            for w, loss, count, here in zip(weights, group_loss, n, present, strict=True)
        ]
        weights = [v / sum(raw) for v in raw]
        loss, out, parts = method.training_step(
            torch.tensor(logits), torch.tensor(targets), torch.tensor(biases), torch.arange(4)
        )
        assert method.group_weights.tolist() == pytest.approx(weights, rel=1e-6)
        expected = sum(w * g for w, g in zip(weights, group_loss, strict=True))
        assert float(loss) == pytest.approx(expected, rel=1e-6)
        assert float(parts["ce"]) == pytest.approx(sum(ce) / 4, rel=1e-6)
    assert weights[2] < 0.25 and weights[1] > weights[0]  # the check is not vacuous


def test_groupdro_zero_step_size_keeps_uniform_weights():
    method = _build_tiny("groupdro", nn.Identity(), [0, 1], [0, 1], step_size=0.0)
    method.training_step(torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 0, 1]),
                         torch.tensor([0, 1, 1, 1, 0, 0]), torch.arange(6))
    assert method.group_weights.tolist() == [0.25] * 4


def test_groupdro_huge_losses_stay_finite():
    method = _build_tiny("groupdro", nn.Identity(), [0, 1], [0, 1], step_size=1.0)
    logits = torch.tensor([[0.0, 300.0], [300.0, 0.0]])  # CE = 300 for both samples
    loss, _, _ = method.training_step(logits, torch.tensor([0, 1]), torch.tensor([0, 1]),
                                      torch.arange(2))
    assert torch.isfinite(loss) and torch.isfinite(method.group_weights).all()


# ------------------------------------------------------------------------ LfF ---


def _gce(logits: list[float], target: int, q: float) -> float:
    p = math.exp(logits[target]) / sum(math.exp(v) for v in logits)
    return (1 - p**q) / q


def test_gce_value_and_gradient():
    logits = torch.tensor([[1.0, -0.5, 0.3], [0.2, 0.1, 2.5], [-3.0, 4.0, 0.0]])
    targets = torch.tensor([0, 1, 1])
    for q in (0.7, 1.0, 0.2):
        values = generalized_cross_entropy(logits, targets, q=q)
        expected = [_gce(row, t, q) for row, t in zip(logits.tolist(), targets.tolist(),
                                                       strict=True)]
        assert values.tolist() == pytest.approx(expected, rel=1e-5)
    # The paper's gradient: d GCE / d logits = p_y**q * d CE / d logits.
    x = logits.clone().requires_grad_(True)
    (grad_gce,) = torch.autograd.grad(generalized_cross_entropy(x, targets, q=0.7).sum(), x)
    (grad_ce,) = torch.autograd.grad(
        nn.functional.cross_entropy(x, targets, reduction="sum"), x
    )
    p_y = torch.softmax(logits, 1).gather(1, targets[:, None])
    torch.testing.assert_close(grad_gce, p_y**0.7 * grad_ce)


def test_lff_twin_is_a_fresh_copy():
    torch.manual_seed(0)
    model = build_model(
        "simple-conv", num_classes=3, input_shape=(3, 8, 8), channels=[4, 8], kernel_size=3
    )
    model.blocks[1].running_mean.fill_(5.0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    twin = fresh_copy(model)
    assert type(twin) is type(model)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    weights = dict(twin.named_parameters())
    for key, value in model.named_parameters():
        assert value.shape == weights[key].shape
        assert value.data_ptr() != weights[key].data_ptr()
    assert not torch.equal(twin.fc.weight, model.fc.weight)
    assert torch.equal(twin.blocks[1].running_mean, torch.zeros(4))  # BN statistics reset too


def test_lff_sample_weights_and_loss_match_hand_computation():
    train_targets = [0, 1, 0, 1, 0]
    method = _build_tiny("lff", nn.Linear(2, 2, bias=False), train_targets, [0] * 5,
                         q=0.7, ema_decay=0.6)
    inputs = [[1.0, 0.5], [-0.5, 1.0], [2.0, -1.0], [0.3, 0.3], [-1.0, -2.0]]
    ema = {"b": [0.0] * 5, "d": [0.0] * 5}
    seen = [False] * 5

    def logits(weights, x):
        return [sum(w * v for w, v in zip(row, x, strict=True)) for row in weights]

    steps = [  # (debiased weights, biased weights, batch indices)
        ([[1.0, -1.0], [0.5, 2.0]], [[0.2, 0.1], [-0.3, 0.4]], [0, 1, 2]),
        ([[0.4, 0.3], [-1.0, 0.8]], [[1.5, -0.5], [0.1, 0.9]], [2, 3, 4]),
    ]
    all_weights, blended = [], 0
    for w_d, w_b, batch in steps:
        method.model.weight.data.copy_(torch.tensor(w_d))
        method.biased_model.weight.data.copy_(torch.tensor(w_b))
        ce_d = [_ce(logits(w_d, inputs[i]), train_targets[i]) for i in batch]
        ce_b = [_ce(logits(w_b, inputs[i]), train_targets[i]) for i in batch]
        for i, new_d, new_b in zip(batch, ce_d, ce_b, strict=True):
            for key, new in (("d", new_d), ("b", new_b)):
                ema[key][i] = 0.6 * ema[key][i] + 0.4 * new if seen[i] else new
            blended += seen[i]
            seen[i] = True
        maxima = {
            key: {c: max(v for v, t in zip(ema[key], train_targets, strict=True) if t == c)
                  for c in (0, 1)}
            for key in ema
        }
        w = []
        for i in batch:
            c = train_targets[i]
            norm_b, norm_d = ema["b"][i] / maxima["b"][c], ema["d"][i] / maxima["d"][c]
            w.append(norm_b / (norm_b + norm_d + 1e-8))
        all_weights += w
        gce = [_gce(logits(w_b, inputs[i]), train_targets[i], 0.7) for i in batch]
        expected = sum(a * b for a, b in zip(w, ce_d, strict=True)) / len(batch)
        expected += sum(gce) / len(batch)

        loss, out, parts = method.training_step(
            torch.tensor([inputs[i] for i in batch]),
            torch.tensor([train_targets[i] for i in batch]),
            torch.zeros(len(batch), dtype=torch.long),
            torch.tensor(batch),
        )
        assert method.loss_ema_debiased.tolist() == pytest.approx(ema["d"], rel=1e-5)
        assert method.loss_ema_biased.tolist() == pytest.approx(ema["b"], rel=1e-5)
        assert method.seen.tolist() == seen
        assert float(parts["mean_weight"]) == pytest.approx(sum(w) / len(w), rel=1e-5)
        assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
        torch.testing.assert_close(out, torch.tensor([logits(w_d, inputs[i]) for i in batch]))
    # Not vacuous: an average was blended, and the class maxima (some from samples outside
    # the batch) gave weights other than 1/2.
    assert blended == 1 and len({round(v, 6) for v in all_weights}) >= 3


def test_lff_weights_do_not_train_the_debiased_model_through_w():
    method = _build_tiny("lff", nn.Linear(2, 2), [0, 1, 0], [0, 1, 1])
    loss, _, _ = method.training_step(torch.randn(3, 2), torch.tensor([0, 1, 0]),
                                      torch.tensor([0, 1, 1]), torch.arange(3))
    loss.backward()
    # Each model gets gradient from its own loss only, both nonzero.
    assert method.model.weight.grad.abs().sum() > 0
    assert method.biased_model.weight.grad.abs().sum() > 0


# -------------------------------------------------------------------- BiasBal ---


def test_biasbal_logit_adjustment_matches_hand_computation():
    # T = 2, B = 3; n[0] = [3, 1, 0], n[1] = [0, 2, 2]: empty groups stay finite.
    train_targets = [0, 0, 0, 0, 1, 1, 1, 1]
    train_biases = [0, 0, 0, 1, 1, 1, 2, 2]
    s = 0.5
    method = _build_tiny("biasbal", nn.Identity(), train_targets, train_biases,
                         num_biases=3, smoothing=s)
    counts = [[3, 1, 0], [0, 2, 2]]
    prior = [[(n + s) / (sum(row) + 3 * s) for n in row] for row in counts]
    logits = [[0.3, -0.2], [1.0, 1.5], [-0.7, 0.4]]
    targets, biases = [0, 1, 1], [2, 1, 0]
    adjusted = [[row[y] + math.log(prior[y][b]) for y in range(2)]
                for row, b in zip(logits, biases, strict=True)]
    expected = sum(_ce(row, t) for row, t in zip(adjusted, targets, strict=True)) / 3

    loss, out, _ = method.training_step(torch.tensor(logits), torch.tensor(targets),
                                        torch.tensor(biases), torch.arange(3))
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(out, torch.tensor(logits))  # training reports unadjusted logits
    torch.testing.assert_close(method(torch.tensor(logits)), torch.tensor(logits))  # as evaluation
    assert torch.isfinite(method.log_prior).all()


# ------------------------------------------------- one run over several processes ---


def _as_two_ranks(build, shares):
    """Run one step as two processes would, with ``reduce_group_sums`` summing over them.

    The processes run one after the other: a first pass records what each one hands to
    the reducer (that does not depend on the reduction), a second pass adds the other
    process's tensors, which is what an all-reduce returns.
    """
    handed: list[list[torch.Tensor]] = [[], []]
    for rank in (0, 1):
        method = build()
        method.reduce_group_sums = lambda x, r=rank: handed[r].append(x.detach().clone()) or x
        method.training_step(*shares[rank])
    runs = []
    for rank in (0, 1):
        method = build()
        others = iter(handed[1 - rank])
        method.reduce_group_sums = lambda x, o=others: x + next(o)
        runs.append((method, method.training_step(*shares[rank])))
    return runs


def _global_batch(seed: int, size: int = 12, classes: int = 3, train_size: int = 20):
    generator = torch.Generator().manual_seed(seed)
    return (
        torch.randn(size, 2, generator=generator),
        torch.randint(classes, (size,), generator=generator),
        torch.randint(classes, (size,), generator=generator),
        torch.randperm(train_size, generator=generator)[:size],
    )


@pytest.mark.parametrize("name", ["groupdro", "lff"])
def test_two_processes_make_the_step_of_the_global_batch(name):
    train = torch.arange(20) % 3

    def build():
        torch.manual_seed(0)
        method = build_method(name, model=nn.Linear(2, 3), num_targets=3, num_biases=3,
                              train_targets=train, train_biases=train.flip(0))
        method.training_step(*_global_batch(seed=1))  # state to build on (EMAs, weights)
        return method

    batch = _global_batch(seed=2)
    reference = build()
    expected, _, _ = reference.training_step(*batch)
    shares = [tuple(t[:5] for t in batch), tuple(t[5:] for t in batch)]
    runs = _as_two_ranks(build, shares)
    for method, _ in runs:
        for key, value in reference.state_dict().items():
            torch.testing.assert_close(method.state_dict()[key], value, msg=key)
    losses = [float(step[0].detach()) for _, step in runs]
    if name == "groupdro":  # the loss couples the batch: each process computes the global one
        assert losses == pytest.approx([float(expected.detach())] * 2, rel=1e-6)
    else:  # per-sample: the shares' losses average to the global one
        mean = float(expected.detach())
        assert (5 * losses[0] + 7 * losses[1]) / 12 == pytest.approx(mean, rel=1e-6)
