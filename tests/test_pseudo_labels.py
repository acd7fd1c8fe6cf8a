"""Pseudo bias labels, the Python API: k-means, silhouette, and recovering a planted bias."""

import itertools

import pytest
import torch
from torch import nn

from endebias.agreement import label_agreement
from endebias.pseudo_labels import (
    choose_k,
    cluster_within_targets,
    kmeans,
    pseudo_bias_labels,
    silhouette,
)


def blobs(centres: list[list[float]], sizes: list[int], *, spread: float = 0.05, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    points = torch.cat([
        torch.tensor(c) + spread * torch.randn(n, len(c), generator=generator)
        for c, n in zip(centres, sizes, strict=True)
    ])
    truth = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    return points, truth


def inertia_of(points: torch.Tensor, labels: torch.Tensor) -> float:
    total = 0.0
    for cluster in labels.unique():
        members = points[labels == cluster].double()
        total += float(((members - members.mean(dim=0)) ** 2).sum())
    return total


def test_kmeans_finds_planted_blobs_and_is_deterministic():
    points, truth = blobs([[0, 0], [3, 0], [0, 3]], [50, 30, 5])
    labels, inertia = kmeans(points, 3, seed=1)
    assert label_agreement(labels.numpy(), truth.numpy())["matched_acc"] == 1.0
    assert inertia == pytest.approx(inertia_of(points, labels))
    again, _ = kmeans(points, 3, seed=1)
    assert torch.equal(labels, again)


def test_kmeans_reaches_the_best_partition_found_by_brute_force():
    generator = torch.Generator().manual_seed(3)
    points = torch.randn(9, 2, generator=generator)
    best = min(
        inertia_of(points, torch.tensor((0, *split)))
        for split in itertools.product((0, 1), repeat=8)
        if 1 in split
    )
    _, inertia = kmeans(points, 2, seed=0, restarts=20)
    assert inertia == pytest.approx(best)


def test_kmeans_edge_cases_and_validation():
    same = torch.ones(5, 3)
    labels, inertia = kmeans(same, 2, seed=0)  # fewer distinct points than clusters
    assert labels.shape == (5,) and inertia == pytest.approx(0.0)
    labels, _ = kmeans(torch.randn(2, 3), 5, seed=0)  # k above the number of points
    assert sorted(labels.tolist()) == [0, 1]
    with pytest.raises(ValueError, match="k must be"):
        kmeans(torch.randn(4, 2), 0)
    with pytest.raises(ValueError, match="non-empty"):
        kmeans(torch.randn(0, 2), 2)


def brute_force_silhouette(points: torch.Tensor, labels: torch.Tensor) -> float:
    scores = []
    for i in range(len(points)):
        own = [j for j in range(len(points)) if labels[j] == labels[i] and j != i]
        if not own:
            scores.append(0.0)
            continue
        a = sum(float(torch.dist(points[i], points[j])) for j in own) / len(own)
        b = min(
            sum(float(torch.dist(points[i], points[j])) for j in range(len(points))
                if labels[j] == c) / int((labels == c).sum())
            for c in labels.unique().tolist() if c != labels[i]
        )
        scores.append((b - a) / max(a, b))
    return sum(scores) / len(scores)


def test_silhouette_matches_the_definition():
    generator = torch.Generator().manual_seed(4)
    points = torch.randn(14, 3, generator=generator).double()
    labels = torch.tensor([0, 0, 1, 1, 1, 2, 2, 2, 2, 0, 1, 2, 3, 0])  # cluster 3: singleton
    assert silhouette(points, labels) == pytest.approx(brute_force_silhouette(points, labels))


def test_choose_k_picks_the_planted_number_of_clusters():
    points, _ = blobs([[0, 0], [4, 0], [0, 4]], [40, 40, 40])
    assert choose_k(points, seed=0) == 3


def planted(num_targets: int = 3, per_target: int = 60, conflicting: int = 6, seed: int = 0):
    """Features that encode the bias alone: one-hot of the bias value plus noise. Each
    target has ``conflicting`` samples whose bias is another target's."""
    generator = torch.Generator().manual_seed(seed)
    targets = torch.arange(num_targets).repeat_interleave(per_target)
    biases = targets.clone()
    for target in range(num_targets):
        start = target * per_target
        biases[start : start + conflicting] = (target + 1 + torch.arange(conflicting) % (
            num_targets - 1)) % num_targets
    features = nn.functional.one_hot(biases, num_targets).float()
    features += 0.05 * torch.randn(len(targets), num_targets, generator=generator)
    return features, targets, biases


def test_clusters_within_targets_recover_a_planted_bias():
    features, targets, biases = planted()
    labels = cluster_within_targets(features, targets, k=2, seed=0)
    # Per target: the largest cluster (label 2t) is the aligned samples, the other the rest.
    conflicting = (biases != targets).long()
    assert torch.equal(labels, 2 * targets + conflicting)
    # With k = 3 (= the bias values present in each target) the bias itself is recovered.
    labels = cluster_within_targets(features, targets, k=3, seed=0)
    agreement = label_agreement(labels.numpy(), (targets * 3 + biases).numpy())
    assert agreement["matched_acc"] == 1.0 and agreement["nmi"] == pytest.approx(1.0)
    auto = cluster_within_targets(features, targets, k="auto", seed=0)
    assert label_agreement(auto.numpy(), (targets * 3 + biases).numpy())["matched_acc"] == 1.0
    with pytest.raises(ValueError, match="k must be"):
        cluster_within_targets(features, targets, k="many")


class BiasReader(nn.Module):
    """A "bias-capturing model" that reads the bias alone: its feature layer passes the
    planted features through, and it predicts the bias value."""

    feature_layer = "features"

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return 10 * self.features(inputs)


def test_pseudo_bias_labels_from_a_model_recover_the_planted_bias():
    features, targets, biases = planted()
    model = BiasReader().train()
    predicted = pseudo_bias_labels(model, features, targets, labelling="predictions",
                                   batch_size=7)
    assert torch.equal(predicted, biases)
    clustered = pseudo_bias_labels(model, features, targets, labelling="cluster", k=2,
                                   batch_size=7, prepare=lambda x: x)
    assert torch.equal(clustered, 2 * targets + (biases != targets).long())
    assert model.training  # the mode is restored


def test_pseudo_bias_labels_validation():
    features, targets, _ = planted()
    with pytest.raises(ValueError, match="labelling must be"):
        pseudo_bias_labels(BiasReader(), features, targets, labelling="votes")
    with pytest.raises(ValueError, match="one target per input"):
        pseudo_bias_labels(BiasReader(), features, targets[:-1])
    with pytest.raises(ValueError, match="feature_layer"):
        pseudo_bias_labels(nn.Linear(3, 3), features, targets, labelling="cluster")
