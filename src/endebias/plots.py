"""Figures from run records only (no torch import)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from endebias.results import Run  # noqa: E402


def _group_matrix(run: Run, split: str) -> np.ndarray | None:
    best = run.best or {}
    matrix = best.get(f"{split}_group_acc")
    if matrix is None:
        return None
    return np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)


def plot_comparison(
    runs: dict[str, Run], path: str | Path, *, split: str = "unbiased_test"
) -> Path:
    """Accuracy per epoch on ``split`` for every run, then each run's target x bias accuracy
    matrix at its best-by-valid epoch as a heat map."""
    path = Path(path)
    fig, axes = plt.subplots(1, 1 + len(runs), figsize=(4.6 * (1 + len(runs)), 4.2))
    curves = axes[0]
    for label, run in runs.items():
        epochs = [r["epoch"] for r in run.history]
        curves.plot(epochs, [100 * r[f"{split}_acc"] for r in run.history], marker="o", label=label)
    curves.set(xlabel="epoch", ylabel=f"{split.replace('_', ' ')} accuracy (%)", ylim=(0, 100))
    curves.grid(alpha=0.3)
    curves.legend()
    for axis, (label, run) in zip(axes[1:], runs.items(), strict=True):
        matrix = _group_matrix(run, split)
        if matrix is None:
            axis.set_axis_off()
            continue
        image = axis.imshow(100 * matrix, vmin=0, vmax=100, cmap="viridis")
        axis.set(
            xlabel="bias (colour)",
            ylabel="target (digit)",
            title=f"{label}: accuracy per group (%)",
        )
        axis.set_xticks(range(matrix.shape[1]))
        axis.set_yticks(range(matrix.shape[0]))
        fig.colorbar(image, ax=axis, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
