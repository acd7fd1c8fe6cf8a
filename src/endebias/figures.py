"""Figures that more than one layer draws, as PNG bytes: the target x bias accuracy
matrix is a page of ``endebias report`` and an image of the TensorBoard mirror
(:mod:`endebias.training.tracking`), which sits below the report. matplotlib only, no
torch."""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def figure_png(fig: plt.Figure, *, dpi: int = 100) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def as_matrix(rows: Sequence[Sequence[float | None]]) -> np.ndarray:
    """A ``*_group_acc`` record (lists, None for an empty group) as floats with NaN."""
    return np.array([[math.nan if v is None else v for v in row] for row in rows], dtype=float)


def group_matrix_png(
    rows: Sequence[Sequence[float | None]], *, title: str, target: str = "target",
    bias: str = "bias",
) -> bytes:
    """A target x bias accuracy matrix (digit x colour on Biased MNIST) as a heat map with
    each group's accuracy written in its cell; empty groups stay blank. ``target`` and
    ``bias`` label the axes (the dataset's names for them, e.g. ``target (digit)``)."""
    matrix = 100 * as_matrix(rows)
    targets, biases = matrix.shape
    size = max(3.6, 0.42 * max(targets, biases) + 1.6)
    fig, axis = plt.subplots(figsize=(size + 0.9, size))
    image = axis.imshow(matrix, vmin=0, vmax=100, cmap="viridis")
    for (row, column), value in np.ndenumerate(matrix):
        if not math.isnan(value):
            colour = "black" if value > 60 else "white"  # readable on viridis
            axis.text(column, row, f"{value:.0f}", ha="center", va="center", fontsize=7,
                      color=colour)
    axis.set(xlabel=bias, ylabel=target)
    axis.set_title(textwrap.fill(title, 48), fontsize=9)
    axis.set_xticks(range(biases))
    axis.set_yticks(range(targets))
    fig.colorbar(image, ax=axis, fraction=0.046)
    return figure_png(fig)
