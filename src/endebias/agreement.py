"""How well one labelling of samples agrees with another, up to renaming the labels.

Used to score pseudo bias labels against the true ones where a dataset has them:
normalised mutual information, and accuracy after the best one-to-one matching of
pseudo labels to true labels (an exact assignment, the Hungarian algorithm). numpy only,
so the torch-free report code can use it too.
"""

from __future__ import annotations

import math

import numpy as np


def contingency(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """``table[i, j]`` = samples labelled ``i`` in ``first`` and ``j`` in ``second``
    (labels are non-negative integers; the table is as wide as the largest label + 1)."""
    first, second = np.asarray(first), np.asarray(second)
    if first.shape != second.shape or first.ndim != 1:
        raise ValueError(
            f"labellings must be equal-length 1-D arrays, got {first.shape} and {second.shape}"
        )
    if len(first) and (first.min() < 0 or second.min() < 0):
        raise ValueError("labels must be non-negative integers")
    rows = int(first.max()) + 1 if len(first) else 0
    cols = int(second.max()) + 1 if len(second) else 0
    table = np.zeros((rows, cols), dtype=np.int64)
    np.add.at(table, (first.astype(np.int64), second.astype(np.int64)), 1)
    return table


def _min_cost_assignment(cost: np.ndarray) -> list[int]:
    """For an n x m cost matrix with n <= m, the column of each row in a one-to-one
    assignment of least total cost (shortest augmenting paths with potentials, O(n^2 m))."""
    n, m = cost.shape
    row_pot = np.zeros(n + 1)
    col_pot = np.zeros(m + 1)
    owner = np.zeros(m + 1, dtype=np.int64)  # owner[j]: row (1-based) on column j; 0 = free
    way = np.zeros(m + 1, dtype=np.int64)
    for row in range(1, n + 1):
        owner[0] = row
        col = 0
        slack = np.full(m + 1, math.inf)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[col] = True
            current = owner[col]
            free = ~used[1:]
            reduced = cost[current - 1] - row_pot[current] - col_pot[1:]
            better = free & (reduced < slack[1:])
            slack[1:][better] = reduced[better]
            way[1:][better] = col
            candidates = np.where(free, slack[1:], math.inf)
            next_col = int(np.argmin(candidates)) + 1
            delta = candidates[next_col - 1]
            row_pot[owner[used]] += delta
            col_pot[used] -= delta
            slack[~used] -= delta
            col = next_col
            if owner[col] == 0:
                break
        while col:  # flip the augmenting path
            previous = way[col]
            owner[col] = owner[previous]
            col = previous
    assignment = [-1] * n
    for col in range(1, m + 1):
        if owner[col]:
            assignment[owner[col] - 1] = col - 1
    return assignment


def best_matching(score: np.ndarray) -> list[tuple[int, int]]:
    """The one-to-one pairs (row, column) of greatest total ``score``; min(rows, columns)
    pairs. Exact (not greedy), so ties aside it is what trying every matching finds."""
    score = np.asarray(score, dtype=np.float64)
    if score.ndim != 2:
        raise ValueError(f"score must be a 2-D matrix, got shape {score.shape}")
    if score.size == 0:
        return []
    if not np.isfinite(score).all():
        raise ValueError("score must be finite")
    transposed = score.shape[0] > score.shape[1]
    matrix = score.T if transposed else score
    columns = _min_cost_assignment(matrix.max() - matrix)
    pairs = [(row, col) for row, col in enumerate(columns)]
    return sorted((c, r) for r, c in pairs) if transposed else pairs


def matched_accuracy(pseudo: np.ndarray, true: np.ndarray) -> float:
    """Fraction of samples whose pseudo label is matched to their true label by the best
    one-to-one matching; pseudo labels left unmatched (more of them than true labels)
    count as wrong."""
    table = contingency(pseudo, true)
    if table.sum() == 0:
        return math.nan
    return float(sum(table[r, c] for r, c in best_matching(table))) / float(table.sum())


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_information(pseudo: np.ndarray, true: np.ndarray) -> float:
    """Mutual information divided by the mean of the two entropies (natural log): 1 for
    labellings equal up to renaming, 0 for independent ones. Two constant labellings
    agree perfectly (1.0)."""
    table = contingency(pseudo, true).astype(np.float64)
    total = table.sum()
    if total == 0:
        return math.nan
    h_pseudo, h_true = _entropy(table.sum(axis=1)), _entropy(table.sum(axis=0))
    if h_pseudo == 0 and h_true == 0:
        return 1.0
    outer = np.outer(table.sum(axis=1), table.sum(axis=0))
    nonzero = table > 0
    mutual = float((table[nonzero] / total * np.log(table[nonzero] * total / outer[nonzero])).sum())
    return max(0.0, mutual / ((h_pseudo + h_true) / 2))


def label_agreement(pseudo: np.ndarray, true: np.ndarray) -> dict[str, float | int]:
    """``nmi``, ``matched_acc`` and the number of distinct labels on each side."""
    pseudo, true = np.asarray(pseudo), np.asarray(true)
    return {
        "nmi": normalized_mutual_information(pseudo, true),
        "matched_acc": matched_accuracy(pseudo, true),
        "num_pseudo_labels": len(np.unique(pseudo)),
        "num_true_labels": len(np.unique(true)),
    }
