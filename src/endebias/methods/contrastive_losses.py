"""Contrastive losses on a batch of feature vectors, as pure functions (no module state).

Notation: ``z_i`` the L2-normalised features of sample i (the callers normalise), ``y_i``
its target, ``b_i`` its bias label, ``s_ij = z_i . z_j / temperature``. Every sum over j
leaves out j = i. An anchor with no positive contributes 0 to its loss but still counts in
the mean over anchors (as in both papers' code), so a batch without any positive pair gives
a loss of 0, not NaN.

* :func:`bias_contrastive` -- BiasCon (Hong & Yang, NeurIPS 2021): supervised contrastive
  loss whose positives share the target but not the bias.
* :func:`soft_bias_contrastive` -- SoftCon (same paper): BiasCon without bias labels, each
  positive weighted by how far apart a bias-capturing model puts the two samples.
* :func:`epsilon_supinfonce` -- epsilon-SupInfoNCE (Barbano et al., ICLR 2023): each
  positive against the negatives, with a margin epsilon.
* :func:`fairkl` -- FairKL (same paper): match the distribution of similarities of
  bias-aligned pairs to that of bias-conflicting pairs, positives and negatives alike.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _off_diagonal(size: int, device: torch.device) -> Tensor:
    return ~torch.eye(size, dtype=torch.bool, device=device)


def _mean_over_positives(log_prob: Tensor, positives: Tensor) -> Tensor:
    """``mean_i [ -(1/|P_i|) sum_{p in P_i} log_prob[i, p] ]`` with 0 for an empty P_i."""
    counts = positives.sum(dim=1).clamp_min(1)
    per_anchor = torch.where(positives, log_prob, 0.0).sum(dim=1) / counts
    return -per_anchor.mean()


def bias_contrastive(
    features: Tensor, targets: Tensor, biases: Tensor, *, temperature: float
) -> Tensor:
    """``mean_i -(1/|P_i|) sum_{p in P_i} log( exp(s_ip) / sum_{a != i} exp(s_ia) )`` with
    ``P_i = {p != i : y_p = y_i, b_p != b_i}``."""
    similarity = features @ features.T / temperature
    others = _off_diagonal(len(features), features.device)
    positives = (targets[:, None] == targets[None, :]) & (biases[:, None] != biases[None, :])
    log_denominator = torch.logsumexp(similarity.masked_fill(~others, float("-inf")), dim=1)
    return _mean_over_positives(similarity - log_denominator[:, None], positives & others)


def soft_bias_contrastive(
    features: Tensor, targets: Tensor, bias_features: Tensor, *, temperature: float
) -> Tensor:
    """``mean_i -(sum_p w_ip log( exp(s_ip) / sum_{a != i} exp(s_ia) )) / sum_p w_ip`` over
    ``p != i`` with ``y_p = y_i``, ``w_ip = 1 - cos(bias_features_i, bias_features_p)``;
    an anchor whose weights sum to 0 contributes 0."""
    similarity = features @ features.T / temperature
    others = _off_diagonal(len(features), features.device)
    unit = torch.nn.functional.normalize(bias_features, dim=1)
    same = (targets[:, None] == targets[None, :]) & others
    weights = torch.where(same, 1 - unit @ unit.T, 0.0)
    log_denominator = torch.logsumexp(similarity.masked_fill(~others, float("-inf")), dim=1)
    log_prob = torch.where(others, similarity - log_denominator[:, None], 0.0)
    total = weights.sum(dim=1)
    per_anchor = (weights * log_prob).sum(dim=1) / torch.where(total == 0, 1.0, total)
    return -per_anchor.mean()


def epsilon_supinfonce(
    features: Tensor, targets: Tensor, *, temperature: float, epsilon: float
) -> Tensor:
    """``mean_i -(1/|P_i|) sum_{p in P_i} log( exp(s_ip) / (exp(s_ip - eps) + sum_{n in N_i}
    exp(s_in)) )`` with ``P_i = {p != i : y_p = y_i}``, ``N_i = {n : y_n != y_i}``.

    An anchor with positives but no negatives scores ``-eps`` per positive (the ratio is
    ``exp(eps)``)."""
    similarity = features @ features.T / temperature
    others = _off_diagonal(len(features), features.device)
    same = targets[:, None] == targets[None, :]
    negatives = ~same
    has_negative = negatives.any(dim=1, keepdim=True)
    # Rows without negatives get a finite stand-in (never used) so that no -inf reaches
    # logsumexp's backward, where it would turn into NaN.
    masked = similarity.masked_fill(~negatives, float("-inf")).masked_fill(~has_negative, 0.0)
    log_negatives = torch.logsumexp(masked, dim=1, keepdim=True)
    shifted = similarity - epsilon
    log_denominator = torch.where(
        has_negative, torch.logaddexp(shifted, log_negatives), shifted
    )
    return _mean_over_positives(similarity - log_denominator, same & others)


def _mean_and_std(values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and (unbiased) standard deviation of ``values[mask]``: 0 for an empty set, and
    a standard deviation of 0 for a set of one."""
    count = mask.sum()
    mean = torch.where(mask, values, 0.0).sum() / count.clamp_min(1)
    squares = torch.where(mask, (values - mean) ** 2, 0.0).sum()
    variance = squares / (count - 1).clamp_min(1)
    # sqrt has an infinite slope at 0: a set whose values are all equal gets std 0 and no
    # gradient through it rather than NaN.
    std = torch.where(variance > 0, variance.clamp_min(1e-30).sqrt(), 0.0)
    return mean, std


def fairkl(
    features: Tensor,
    targets: Tensor,
    biases: Tensor,
    *,
    temperature: float = 1.0,
    std_weight: float = 1.0,
) -> Tensor:
    """FairKL over the pairs i != j, in four sets: positives (same target) that share the
    bias (``pa``) or not (``pc``), negatives that share the bias (``na``) or not (``nc``).
    With ``mu_S``, ``sigma_S`` the mean and standard deviation of ``s_ij`` over set S::

        (mu_pc - mu_pa)^2 + (mu_na - mu_nc)^2
          + std_weight * ((sigma_pa - sigma_pc)^2 + (sigma_na - sigma_nc)^2)
          - mu_pc + mu_na

    The squared differences are the Gaussian approximation of the KL divergence between
    the aligned and conflicting similarity distributions; the last two terms pull
    bias-conflicting positives together and push bias-aligned negatives apart.
    """
    similarity = features @ features.T / temperature
    others = _off_diagonal(len(features), features.device)
    same_target = targets[:, None] == targets[None, :]
    same_bias = biases[:, None] == biases[None, :]
    mu_pa, sigma_pa = _mean_and_std(similarity, others & same_target & same_bias)
    mu_pc, sigma_pc = _mean_and_std(similarity, others & same_target & ~same_bias)
    mu_na, sigma_na = _mean_and_std(similarity, others & ~same_target & same_bias)
    mu_nc, sigma_nc = _mean_and_std(similarity, others & ~same_target & ~same_bias)
    means = (mu_pc - mu_pa) ** 2 + (mu_na - mu_nc) ** 2
    stds = (sigma_pa - sigma_pc) ** 2 + (sigma_na - sigma_nc) ** 2
    return means + std_weight * stds - mu_pc + mu_na
