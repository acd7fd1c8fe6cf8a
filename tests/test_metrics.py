import itertools
import math

import pytest
import torch

from endebias.metrics import aligned_groups, group_counts, group_metrics


def brute_force_counts(predictions, targets, biases, num_targets, num_biases):
    totals = [[0] * num_biases for _ in range(num_targets)]
    correct = [[0] * num_biases for _ in range(num_targets)]
    for p, t, b in zip(predictions.tolist(), targets.tolist(), biases.tolist(), strict=True):
        totals[t][b] += 1
        correct[t][b] += int(p == t)
    return totals, correct


def test_group_counts_match_a_loop():
    generator = torch.Generator().manual_seed(0)
    targets = torch.randint(0, 4, (300,), generator=generator)
    biases = torch.randint(0, 3, (300,), generator=generator)
    predictions = torch.randint(0, 4, (300,), generator=generator)
    counts = group_counts(predictions, targets, biases, num_targets=4, num_biases=3)
    totals, correct = brute_force_counts(predictions, targets, biases, 4, 3)
    assert counts[0].tolist() == totals
    assert counts[1].tolist() == correct


def test_group_metrics_hand_computed():
    # Groups (t, b): (0,0): 3 seen, 3 right; (0,1): 1 seen, 0 right;
    #                (1,0): 2 seen, 1 right; (1,1): 4 seen, 4 right.
    counts = torch.tensor([[[3, 1], [2, 4]], [[3, 0], [1, 4]]])
    aligned = torch.tensor([[True, False], [False, True]])
    metrics = group_metrics(counts, aligned)
    assert metrics["acc"] == pytest.approx(8 / 10)
    assert metrics["acc_unbiased"] == pytest.approx((1 + 0 + 0.5 + 1) / 4)
    assert metrics["acc_aligned"] == pytest.approx(7 / 7)
    assert metrics["acc_conflicting"] == pytest.approx(1 / 3)
    assert metrics["acc_worst_group"] == 0.0
    assert metrics["n"] == 10
    assert metrics["group_acc"] == [[1.0, 0.0], [0.5, 1.0]]


def test_empty_groups_are_left_out_of_the_means():
    counts = torch.tensor([[[2, 0], [0, 0]], [[1, 0], [0, 0]]])
    metrics = group_metrics(counts, torch.eye(2, dtype=torch.bool))
    assert metrics["acc_unbiased"] == pytest.approx(0.5)
    assert metrics["acc_worst_group"] == pytest.approx(0.5)
    assert math.isnan(metrics["acc_conflicting"])
    assert metrics["group_acc"] == [[0.5, None], [None, None]]


def test_aligned_groups_are_the_most_frequent_bias_per_target():
    train_counts = torch.tensor([[90, 5, 5], [1, 1, 98], [0, 0, 0]])
    assert aligned_groups(train_counts).tolist() == [
        [True, False, False],
        [False, False, True],
        [False, False, False],
    ]


def test_group_counts_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="equal-length"):
        group_counts(
            torch.zeros(3, dtype=torch.long),
            torch.zeros(4, dtype=torch.long),
            torch.zeros(4, dtype=torch.long),
            num_targets=2,
            num_biases=2,
        )


@pytest.mark.parametrize("num_targets,num_biases", list(itertools.product([1, 3], [1, 5])))
def test_counts_sum_to_batch(num_targets, num_biases):
    targets = torch.arange(20) % num_targets
    biases = torch.arange(20) % num_biases
    counts = group_counts(targets, targets, biases, num_targets=num_targets, num_biases=num_biases)
    assert int(counts[0].sum()) == 20 and int(counts[1].sum()) == 20
