"""Independent brute-force transcriptions of DESIGN.md section 2, and batch builders,
for the tests.

The references work on float64 numpy arrays and spell the definitions out pair by pair;
none of it shares code or algebra with the library's closed form.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np
import torch


def _flat64(features) -> np.ndarray:
    array = np.asarray(features, dtype=np.float64)
    return array.reshape(array.shape[0], -1)


def pairwise_terms_loop(features, targets, biases) -> tuple[float, float]:
    """(R_perp, R_par) by a plain Python loop over the unordered pairs i < j."""
    z = _flat64(features)
    gram = (z @ z.T).tolist()
    y = [int(v) for v in targets]
    b = [int(v) for v in biases]

    same_bias_sums: dict[int, float] = {}
    perp_pairs = 0
    cross_bias_similarity = 0.0
    par_pairs = 0
    for i, j in combinations(range(len(y)), 2):
        if b[i] == b[j]:
            same_bias_sums[b[i]] = same_bias_sums.get(b[i], 0.0) + gram[i][j]
            perp_pairs += 1
        if y[i] == y[j] and b[i] != b[j]:
            cross_bias_similarity += (1.0 + gram[i][j]) / 2.0
            par_pairs += 1
    r_perp = sum(abs(s) for s in same_bias_sums.values()) / perp_pairs if perp_pairs else 0.0
    r_par = 1.0 - cross_bias_similarity / par_pairs if par_pairs else 0.0
    return r_perp, r_par


def pairwise_terms(features, targets, biases) -> tuple[float, float]:
    """The same sums over pairs, vectorised with numpy masks over the i < j pair list
    (for batches where the Python loop would be slow)."""
    z = _flat64(features)
    y = np.asarray(targets)
    b = np.asarray(biases)
    i, j = np.triu_indices(len(y), k=1)
    similarity = (z @ z.T)[i, j]  # G_ij, one entry per unordered pair

    same_bias = b[i] == b[j]
    perp_pairs = int(same_bias.sum())
    r_perp = 0.0
    if perp_pairs:
        total = sum(abs(similarity[same_bias & (b[i] == c)].sum()) for c in np.unique(b))
        r_perp = float(total) / perp_pairs

    cross = (y[i] == y[j]) & ~same_bias
    par_pairs = int(cross.sum())
    r_par = 1.0 - float(((1.0 + similarity[cross]) / 2.0).sum()) / par_pairs if par_pairs else 0.0
    return r_perp, r_par


def pairwise_terms_torch(features: torch.Tensor, targets, biases):
    """The definition over masks of the i < j pairs, in torch, so autograd differentiates
    it: the yardstick for the library's hand-written backward pass."""
    z = features.reshape(features.shape[0], -1)
    gram = z @ z.T
    y, b = torch.as_tensor(targets), torch.as_tensor(biases)
    upper = torch.ones_like(gram, dtype=torch.bool).triu(diagonal=1)
    same_bias = upper & (b[:, None] == b[None, :])
    per_class = [(gram * (same_bias & (b[:, None] == c))).sum().abs() for c in b.unique()]
    r_perp = torch.stack(per_class).sum() / same_bias.sum().clamp_min(1)
    cross = upper & (y[:, None] == y[None, :]) & ~same_bias
    mean = ((1 + gram) / 2 * cross).sum() / cross.sum().clamp_min(1)
    r_par = (1 - mean) * cross.any()
    return r_perp, r_par


def official_terms_loop(features, targets, biases) -> tuple[float, float]:
    """The official algorithm as DESIGN.md section 2 describes it, loop by loop.

    Gram clamped to [-1, 1]. Disentangling as in the definition (pairs i > j, same bias,
    absolute value per bias class). Entangling: for each target class, for each bias
    class c, for each later bias class c' (sorted order), the pairs with sample i later
    than j in the batch, b_i = c, b_j = c'; averaged over all those pairs.
    """
    z = _flat64(features)
    gram = np.clip(z @ z.T, -1.0, 1.0).tolist()
    y = [int(v) for v in targets]
    b = [int(v) for v in biases]
    batch = len(y)
    target_classes = sorted(set(y))
    bias_classes = sorted(set(b))

    disentangle = 0.0
    perp_pairs = 0
    for c in bias_classes:
        class_sum = 0.0
        for i in range(batch):
            for j in range(i):
                if b[i] == c and b[j] == c:
                    class_sum += gram[i][j]
                    perp_pairs += 1
        disentangle += abs(class_sum)
    r_perp = disentangle / perp_pairs if perp_pairs else 0.0

    entangle = 0.0
    par_pairs = 0
    for t in target_classes:
        members = [k for k in range(batch) if y[k] == t]
        for index, c in enumerate(bias_classes):
            for later in bias_classes[index + 1 :]:
                for i in members:
                    for j in members:
                        if j < i and b[i] == c and b[j] == later:
                            entangle += (1.0 + gram[i][j]) / 2.0
                            par_pairs += 1
    r_par = 1.0 - entangle / par_pairs if par_pairs else 0.0
    return r_perp, r_par


def batch_of(rng, shape, targets, biases, *, normalize=True):
    """Float64 features of ``shape`` (unit norm per sample unless told) and label tensors."""
    features = rng.standard_normal(shape)
    if normalize:
        flat = features.reshape(shape[0], -1)
        features = (flat / np.linalg.norm(flat, axis=1, keepdims=True)).reshape(shape)
    return torch.tensor(features), torch.tensor(targets), torch.tensor(biases)


def floats(pair) -> tuple[float, float]:
    return float(pair[0].detach()), float(pair[1].detach())


def dense(labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    values, inverse = np.unique(labels.numpy(), return_inverse=True)
    return torch.tensor(inverse), len(values)


def imbalanced(rng, batch, target_values, bias_values, conflicting):
    """Each target aligned with one bias value; exactly ``conflicting`` samples are not."""
    targets = rng.choice(target_values, size=batch)
    lookup = dict(zip(target_values, bias_values, strict=False))
    biases = np.array([lookup[t] for t in targets])
    for k in rng.choice(batch, size=conflicting, replace=False):
        biases[k] = rng.choice([v for v in bias_values if v != biases[k]])
    return targets, biases
