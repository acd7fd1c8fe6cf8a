"""Label agreement: exact matching against brute force, NMI against hand-computed values."""

import itertools
import math

import numpy as np
import pytest

from endebias.agreement import (
    best_matching,
    contingency,
    label_agreement,
    matched_accuracy,
    normalized_mutual_information,
)


def brute_force_best(score: np.ndarray) -> float:
    """The best total over every one-to-one matching (rows <= columns or transposed)."""
    if score.shape[0] > score.shape[1]:
        score = score.T
    rows, cols = score.shape
    return max(
        sum(score[r, c] for r, c in zip(range(rows), chosen, strict=True))
        for chosen in itertools.permutations(range(cols), rows)
    )


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (4, 6), (6, 4), (5, 5), (2, 7)])
def test_best_matching_equals_brute_force(shape):
    rng = np.random.default_rng(sum(shape))
    for trial in range(30):
        # Small integers make ties common, which is where greedy matching goes wrong.
        score = rng.integers(0, 4 if trial % 2 else 100, size=shape).astype(float)
        pairs = best_matching(score)
        assert len(pairs) == min(shape)
        assert len({r for r, _ in pairs}) == len(pairs) == len({c for _, c in pairs})
        assert sum(score[r, c] for r, c in pairs) == pytest.approx(brute_force_best(score))


def test_best_matching_beats_greedy_on_a_hand_case():
    # Greedy takes (0, 0) = 10 and is left with (1, 1) = 1: 11. The best is 9 + 8 = 17.
    score = np.array([[10.0, 9.0], [8.0, 1.0]])
    assert sorted(best_matching(score)) == [(0, 1), (1, 0)]


def test_matched_accuracy_hand_cases():
    true = np.array([0, 0, 0, 1, 1, 2])
    assert matched_accuracy(np.array([5, 5, 5, 3, 3, 4]), true) == 1.0  # renamed labels
    # Pseudo 0 holds {0,0,1}, pseudo 1 holds {0,1,2}: best is 0->0 (2) + 1->1 or 1->2 (1).
    assert matched_accuracy(np.array([0, 0, 1, 0, 1, 1]), true) == pytest.approx(3 / 6)
    # More pseudo labels than true ones: true 0 is split over pseudo 0, 1, 2, of which one
    # is matched (1 sample); 3 -> 1 (2), 4 -> 2 (1); the two unmatched samples count as wrong.
    assert matched_accuracy(np.array([0, 1, 2, 3, 3, 4]), true) == pytest.approx(4 / 6)


def test_nmi_hand_cases():
    true = np.array([0, 0, 1, 1])
    assert normalized_mutual_information(np.array([1, 1, 0, 0]), true) == pytest.approx(1.0)
    assert normalized_mutual_information(np.array([0, 1, 0, 1]), true) == pytest.approx(0.0)
    assert normalized_mutual_information(np.zeros(4, int), np.zeros(4, int)) == 1.0
    # pseudo [0,0,0,1] vs true [0,0,1,1]: MI = 1/2 ln 4/3 + 1/4 ln 2/3... by hand:
    # p(0,0)=1/2, p(0,1)=1/4, p(1,1)=1/4; p_pseudo=(3/4,1/4); p_true=(1/2,1/2).
    mi = 0.5 * math.log(0.5 / (0.75 * 0.5)) + 0.25 * math.log(0.25 / (0.75 * 0.5)) \
        + 0.25 * math.log(0.25 / (0.25 * 0.5))
    h_pseudo = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    h_true = math.log(2)
    expected = mi / ((h_pseudo + h_true) / 2)
    assert normalized_mutual_information(np.array([0, 0, 0, 1]), true) == pytest.approx(expected)


def test_label_agreement_keys_and_counts():
    result = label_agreement(np.array([0, 0, 2, 2]), np.array([1, 1, 0, 0]))
    assert result == {"nmi": pytest.approx(1.0), "matched_acc": 1.0,
                      "num_pseudo_labels": 2, "num_true_labels": 2}


def test_argument_validation():
    with pytest.raises(ValueError, match="equal-length"):
        contingency(np.array([0, 1]), np.array([0]))
    with pytest.raises(ValueError, match="non-negative"):
        contingency(np.array([0, -1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="2-D"):
        best_matching(np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="finite"):
        best_matching(np.array([[1.0, math.nan]]))
    assert best_matching(np.zeros((0, 3))) == []
    assert math.isnan(matched_accuracy(np.array([], int), np.array([], int)))
