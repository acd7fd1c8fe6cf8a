"""The report's figures as PNG bytes, for pages that embed them rather than keep files
(no torch import: everything here reads run records). The group-accuracy heat map, which
the TensorBoard mirror draws too, is in :mod:`endebias.figures`."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from endebias.figures import as_matrix, figure_png  # noqa: E402
from endebias.report.runs import Run  # noqa: E402


def mean_group_matrix(runs: Sequence[Run], split: str) -> list[list[float | None]] | None:
    """The runs' best-epoch matrices on ``split`` averaged cell by cell (seeds of one
    setting); None when no run has one."""
    found = [as_matrix(run.best[f"{split}_group_acc"]) for run in runs
             if run.best and run.best.get(f"{split}_group_acc")]
    if not found or len({m.shape for m in found}) != 1:
        return None
    mean = np.mean(np.stack(found), axis=0)
    return [[None if math.isnan(v) else float(v) for v in row] for row in mean]


def history_png(run: Run, *, title: str) -> bytes:
    """One run per epoch: loss (left axis) and every split's accuracy (right axis)."""
    history = run.history
    epochs = [h["epoch"] for h in history]
    fig, (losses, accuracies) = plt.subplots(1, 2, figsize=(10, 3.8))
    for key in [k for k in (history[0] if history else {}) if k.startswith("train_")
                and k not in ("train_acc", "train_seconds")]:
        values = [h.get(key) for h in history]
        if all(isinstance(v, int | float) for v in values):
            losses.plot(epochs, values, marker="o", markersize=3, label=key[6:])
    losses.set(xlabel="epoch", ylabel="training loss (and its parts)", title=title)
    first = history[0] if history else {}
    accuracy_keys = [k for k, v in first.items() if k.endswith("_acc")
                     and not k.startswith("train_") and not isinstance(v, list)]
    for key in ["train_acc", *accuracy_keys]:
        values = [100 * v if isinstance(v, int | float) else math.nan
                  for v in (h.get(key) for h in history)]
        accuracies.plot(epochs, values, marker="o", markersize=3, label=key.removesuffix("_acc"))
    if run.best is not None:
        accuracies.axvline(run.best["epoch"], color="grey", ls=":", lw=1, label="best by valid")
    accuracies.set(xlabel="epoch", ylabel="accuracy (%)", ylim=(0, 100))
    for axis in (losses, accuracies):
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=8)
    return figure_png(fig)


def method_bars_png(
    labels: Sequence[str], stats: dict[str, Sequence[tuple[float, float] | None]], *, title: str
) -> bytes:
    """Grouped bars: one group per method, one bar per metric (mean ± std, percent)."""
    fig, axis = plt.subplots(figsize=(max(6.0, 1.3 * len(labels) + 2), 4.2))
    width = 0.8 / max(1, len(stats))
    for index, (metric, values) in enumerate(stats.items()):
        xs = [i + (index - (len(stats) - 1) / 2) * width for i in range(len(labels))]
        means = [math.nan if v is None else v[0] for v in values]
        errors = [0.0 if v is None else v[1] for v in values]
        axis.bar(xs, means, width, yerr=errors, capsize=3, label=metric)
    axis.set_xticks(range(len(labels)))
    axis.set_xticklabels(labels, rotation=20, ha="right", fontsize=8)
    axis.set(ylabel="accuracy (%)", ylim=(0, 100))
    axis.set_title(textwrap.fill(title, 70), fontsize=10)
    axis.grid(alpha=0.3, axis="y")
    axis.legend(fontsize=8)
    return figure_png(fig)
