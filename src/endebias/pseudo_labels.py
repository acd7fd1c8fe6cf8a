"""Pseudo bias labels from a bias-capturing model, for EnD when a dataset has no bias labels.

A model trained to be biased on purpose (a few epochs of plain or generalised
cross-entropy) encodes the shortcut first. Two ways to turn it into bias labels:

* ``"cluster"``: k-means of its features within each target class; a sample's label is
  its (target, cluster) pair numbered globally, clusters ordered largest first, so the
  first cluster of every target is the bulk of it (the bias-aligned samples, when the
  model captured the bias) and the others gather the samples that look different;
* ``"predictions"``: the class the biased model predicts, which for a model that reads
  the shortcut alone is the bias value aligned with that class.

Usage in your own loop::

    labels = pseudo_bias_labels(biased_model, images, targets, labelling="cluster", k=2)
    ... end_loss(features, targets, labels[batch], num_biases=int(labels.max()) + 1, ...)
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from endebias.hooks import capture_features

LABELLINGS = ("cluster", "predictions")


def _squared_distances(points: Tensor, centres: Tensor) -> Tensor:
    return torch.cdist(points, centres).square()


def kmeans(
    points: Tensor, k: int, *, seed: int = 0, restarts: int = 8, iterations: int = 100
) -> tuple[Tensor, float]:
    """Seeded k-means (k-means++ starts, Lloyd's iterations, best of ``restarts`` by
    inertia). Returns each point's cluster in ``0..k-1`` and the inertia (sum of squared
    distances to the centres). Deterministic for a given seed."""
    if points.dim() != 2 or len(points) == 0:
        raise ValueError(f"points must be a non-empty (N, F) matrix, got {tuple(points.shape)}")
    if not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    points = points.double()
    k = min(k, len(points))
    generator = torch.Generator().manual_seed(seed)
    best_labels, best_inertia = None, float("inf")
    for _ in range(restarts):
        first = int(torch.randint(len(points), (1,), generator=generator))
        centres = points[first : first + 1]
        for _ in range(1, k):
            nearest = _squared_distances(points, centres).min(dim=1).values
            if float(nearest.sum()) == 0:  # every point is on a centre: any one will do
                pick = int(torch.randint(len(points), (1,), generator=generator))
            else:
                pick = int(torch.multinomial(nearest, 1, generator=generator))
            centres = torch.cat([centres, points[pick : pick + 1]])
        labels = None
        for _ in range(iterations):
            distances = _squared_distances(points, centres)
            new_labels = distances.argmin(dim=1)
            if labels is not None and torch.equal(new_labels, labels):
                break
            labels = new_labels
            sums = torch.zeros_like(centres).index_add_(0, labels, points)
            sizes = torch.bincount(labels, minlength=k)
            # An emptied cluster restarts at the point farthest from its centre, so k stays k.
            for empty in torch.nonzero(sizes == 0).flatten().tolist():
                far = int(distances.min(dim=1).values.argmax())
                sums[empty], sizes[empty] = points[far], 1
            centres = sums / sizes[:, None]
        assert labels is not None
        inertia = float(_squared_distances(points, centres).min(dim=1).values.sum())
        if inertia < best_inertia - 1e-12:
            best_labels, best_inertia = labels, inertia
    assert best_labels is not None
    return best_labels, best_inertia


def silhouette(points: Tensor, labels: Tensor) -> float:
    """Mean silhouette coefficient (Euclidean; points in singleton clusters score 0).
    O(N^2): pass a sample of a few thousand points."""
    points = points.double()
    distances = torch.cdist(points, points)
    clusters = labels.unique()
    if len(clusters) < 2:
        return 0.0
    one_hot = (labels[:, None] == clusters[None, :]).double()
    sizes = one_hot.sum(dim=0)
    mean_to = distances @ one_hot  # (N, clusters): summed distance to each cluster
    own = (labels[:, None] == clusters[None, :]).long().argmax(dim=1)
    own_size = sizes[own]
    a = mean_to.gather(1, own[:, None]).squeeze(1) / (own_size - 1).clamp_min(1)
    others = mean_to / sizes
    others.scatter_(1, own[:, None], float("inf"))
    b = others.min(dim=1).values
    score = (b - a) / torch.maximum(a, b).clamp_min(1e-12)
    score = torch.where(own_size > 1, score, torch.zeros_like(score))
    return float(score.mean())


def choose_k(
    points: Tensor, *, candidates: range = range(2, 6), seed: int = 0, sample: int = 2000
) -> int:
    """The k in ``candidates`` with the highest mean silhouette of its k-means clustering,
    scored on a seeded sample of at most ``sample`` points."""
    generator = torch.Generator().manual_seed(seed)
    chosen = points
    if len(points) > sample:
        chosen = points[torch.randperm(len(points), generator=generator)[:sample]]
    scores = {}
    for k in candidates:
        if k >= len(chosen):
            break
        labels, _ = kmeans(chosen, k, seed=seed)
        scores[k] = silhouette(chosen, labels)
    return max(scores, key=lambda k: (scores[k], -k)) if scores else 1


def cluster_within_targets(
    features: Tensor, targets: Tensor, *, k: int | str = 2, seed: int = 0
) -> Tensor:
    """k-means within each target class; labels numbered target by target, clusters in
    each target ordered by size (largest first). ``k="auto"`` picks k per target by
    :func:`choose_k`."""
    if k != "auto" and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise ValueError(f"k must be a positive integer or 'auto', got {k!r}")
    features, targets = features.reshape(len(features), -1).cpu(), targets.cpu()
    labels = torch.empty(len(targets), dtype=torch.long)
    offset = 0
    for target in targets.unique().tolist():
        members = torch.nonzero(targets == target).flatten()
        points = features[members].double()
        count = choose_k(points, seed=seed + target) if k == "auto" else k
        clusters, _ = kmeans(points, count, seed=seed + target)
        sizes = torch.bincount(clusters, minlength=count)
        # Rank clusters by size (ties by index), so label offset + 0 is the largest.
        rank = torch.empty_like(sizes)
        rank[sorted(range(len(sizes)), key=lambda c: (-int(sizes[c]), c))] = torch.arange(
            len(sizes)
        )
        labels[members] = offset + rank[clusters]
        offset += int((sizes > 0).sum())
    return labels


@torch.no_grad()
def model_outputs(
    model: nn.Module,
    inputs: Tensor,
    *,
    layer: str | None = None,
    prepare: Callable[[Tensor], Tensor] | None = None,
    batch_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """The features of ``layer`` (default: ``model.feature_layer``), flattened, and the
    predicted classes, in eval mode and in batches; ``prepare`` maps stored inputs to
    model inputs (a benchmark's ``prepare``)."""
    layer = layer or getattr(model, "feature_layer", None)
    if layer is None:
        raise ValueError("the model declares no feature_layer: pass layer=...")
    was_training = model.training
    model.eval()
    features, predictions = [], []
    try:
        with capture_features(model, layer) as captured:
            for start in range(0, len(inputs), batch_size):
                batch = inputs[start : start + batch_size]
                logits = model(prepare(batch) if prepare else batch)
                features.append(captured.get().reshape(len(batch), -1).float().cpu())
                predictions.append(logits.argmax(dim=1).cpu())
    finally:
        model.train(was_training)
    return torch.cat(features), torch.cat(predictions)


def pseudo_bias_labels(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    labelling: str = "predictions",
    k: int | str = 2,
    layer: str | None = None,
    prepare: Callable[[Tensor], Tensor] | None = None,
    batch_size: int = 1024,
    seed: int = 0,
) -> Tensor:
    """Pseudo bias labels (long, on the CPU, one per sample, numbered from 0) from a
    trained bias-capturing ``model``. See the module's docstring for the two labellings;
    ``k`` (clusters per target, or ``"auto"``) and ``layer`` apply to ``"cluster"``."""
    if labelling not in LABELLINGS:
        raise ValueError(f"labelling must be one of {', '.join(LABELLINGS)}, got {labelling!r}")
    if targets.dim() != 1 or len(targets) != len(inputs) or len(targets) == 0:
        raise ValueError(
            f"need one target per input, got {len(targets)} targets for {len(inputs)} inputs"
        )
    if labelling == "predictions":
        return _predictions(model, inputs, prepare=prepare, batch_size=batch_size)
    features, _ = model_outputs(model, inputs, layer=layer, prepare=prepare, batch_size=batch_size)
    return cluster_within_targets(features, targets, k=k, seed=seed)


@torch.no_grad()
def _predictions(
    model: nn.Module, inputs: Tensor, *, prepare: Callable[[Tensor], Tensor] | None,
    batch_size: int,
) -> Tensor:
    was_training = model.training
    model.eval()
    try:
        return torch.cat([
            model(prepare(batch) if prepare else batch).argmax(dim=1).cpu()
            for batch in inputs.split(batch_size)
        ]).long()
    finally:
        model.train(was_training)
