"""Figures from run records only (no torch import)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from endebias.report.protocol import axis_labels  # noqa: E402
from endebias.report.results import Row, option_names  # noqa: E402
from endebias.report.runs import Run, load_run  # noqa: E402


def _group_matrix(run: Run, split: str) -> np.ndarray | None:
    best = run.best or {}
    matrix = best.get(f"{split}_group_acc")
    if matrix is None:
        return None
    return np.array([[np.nan if v is None else v for v in row] for row in matrix], dtype=float)


def plot_comparison(
    runs: dict[str, Run], path: str | Path, *, split: str = "unbiased_test", title: str = ""
) -> Path:
    """Accuracy per epoch on ``split`` for every run, then each run's target x bias accuracy
    matrix at its best-by-valid epoch as a heat map (its title names that epoch); ``title``
    goes above the whole figure."""
    path = Path(path)
    fig, axes = plt.subplots(1, 1 + len(runs), figsize=(4.6 * (1 + len(runs)), 4.2))
    if title:
        fig.suptitle(title)
    curves = axes[0]
    for label, run in runs.items():
        epochs = [r["epoch"] for r in run.history]
        curves.plot(epochs, [100 * r[f"{split}_acc"] for r in run.history], marker="o", label=label)
    curves.set(xlabel="epoch", ylabel=f"{split.replace('_', ' ')} accuracy (%)", ylim=(0, 100))
    curves.xaxis.set_major_locator(MaxNLocator(integer=True))
    curves.grid(alpha=0.3)
    curves.legend()
    for axis, (label, run) in zip(axes[1:], runs.items(), strict=True):
        matrix = _group_matrix(run, split)
        if matrix is None:
            axis.set_axis_off()
            continue
        image = axis.imshow(100 * matrix, vmin=0, vmax=100, cmap="viridis")
        target, bias = axis_labels(run.config)
        axis.set(
            xlabel=f"{bias}; white: no test images",
            ylabel=target,
            title=f"{label}: accuracy per group (%)\nepoch {run.best['epoch']} (best valid)",
        )
        axis.set_xticks(range(matrix.shape[1]))
        axis.set_yticks(range(matrix.shape[0]))
        fig.colorbar(image, ax=axis, fraction=0.046)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --- Sweep figures (rows from endebias.report.results) ------------------------------------


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


AXIS_LABELS = {"alpha": "alpha (disentangling)", "beta": "beta (entangling)"}


def numeric_options(rows: list[Row]) -> list[str]:
    """The rows' method options that are numbers wherever set (the plottable ones)."""
    def is_number(value: object) -> bool:
        return isinstance(value, int | float) and not isinstance(value, bool)

    return [name for name in option_names(rows)
            if all(is_number(r.options[name]) for r in rows if name in r.options)]


def _spans_decades(values: list[float]) -> bool:
    """A log axis for options searched on a log scale (step sizes, smoothing)."""
    return bool(values) and min(values) > 0 and max(values) / min(values) >= 100


def plot_search_space(rows: list[Row], path: str | Path, *, title: str = "") -> Path | None:
    """Each run at its first two numeric method options (alpha and beta for EnD), coloured
    by unbiased test accuracy: where the method works. With one option, that option against
    unbiased accuracy; with none, no figure (None)."""
    names = numeric_options(rows)[:2]
    if not names:
        return None
    points = [r for r in rows if all(n in r.options for n in names)
              and r.unbiased_test_acc is not None]
    fig, axis = plt.subplots(figsize=(5.4, 4.4))
    sizes = [60 if r.state == "COMPLETE" else 25 for r in points]
    xs = [r.options[names[0]] for r in points]
    if len(names) == 2:
        ys = [r.options[names[1]] for r in points]
        if points:
            scatter = axis.scatter(xs, ys, c=[100 * r.unbiased_test_acc for r in points],
                                   cmap="viridis", s=sizes, edgecolors="black", linewidths=0.4)
            fig.colorbar(scatter, ax=axis, label="unbiased test accuracy (%)")
        axis.set_ylabel(AXIS_LABELS.get(names[1], names[1]))
        if _spans_decades(ys):
            axis.set_yscale("log")
    else:
        axis.scatter(xs, [100 * r.unbiased_test_acc for r in points], s=sizes,
                     edgecolors="black", linewidths=0.4)
        axis.set_ylabel("unbiased test accuracy (%)")
    axis.set_xlabel(AXIS_LABELS.get(names[0], names[0]))
    if _spans_decades(xs):
        axis.set_xscale("log")
    axis.set_title(title or f"{' - '.join(names)} (small dots: not complete)")
    axis.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_valid_vs_unbiased(rows: list[Row], path: str | Path, *, title: str = "") -> Path:
    """Valid accuracy against unbiased test accuracy: does validation select well?"""
    points = [r for r in rows if r.valid_acc is not None and r.unbiased_test_acc is not None]
    fig, axis = plt.subplots(figsize=(5, 4.4))
    for state, marker in (("COMPLETE", "o"), ("PRUNED", "x"), ("RUNNING", "^"), ("FAIL", "s")):
        chosen = [r for r in points if r.state == state]
        if chosen:
            axis.scatter([100 * r.valid_acc for r in chosen],
                         [100 * r.unbiased_test_acc for r in chosen],
                         marker=marker, label=state.lower())
    if points:
        low = min(100 * min(r.valid_acc, r.unbiased_test_acc) for r in points)
        axis.plot([low, 100], [low, 100], color="grey", lw=0.8, ls="--", label="y = x")
        axis.legend()
    axis.set(xlabel="valid accuracy (%)", ylabel="unbiased test accuracy (%)",
             title=title or "does validation select well?")
    axis.grid(alpha=0.3)
    return _save(fig, Path(path))


def plot_learning_curves(
    rows: list[Row], path: str | Path, *, top: int = 3, title: str = ""
) -> Path:
    """Valid (solid) and unbiased test (dashed) accuracy per epoch of the top runs."""
    fig, axis = plt.subplots(figsize=(6, 4.4))
    # The runs the summary counts (top complete ones), else whatever has records.
    with_records = [r for r in rows if r.run_dir and Path(r.run_dir, "metrics.jsonl").exists()]
    shown = ([r for r in with_records if r.state == "COMPLETE"] or with_records)[:top]
    for index, row in enumerate(shown):
        history = [h for h in load_run(row.run_dir).history if h.get("valid_acc") is not None]
        epochs = [h["epoch"] for h in history]
        colour = f"C{index}"
        setting = ", ".join(f"{k} {row.options[k]:.3g}" for k in numeric_options([row])[:2])
        label = f"{row.id}: {setting}" if setting else row.id
        axis.plot(epochs, [100 * h["valid_acc"] for h in history], color=colour, label=label,
                  marker="o", markersize=3)
        axis.plot(epochs, [100 * (h.get("unbiased_test_acc") or float("nan")) for h in history],
                  color=colour, ls="--", marker="o", markersize=3)
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set(xlabel="epoch", ylabel="accuracy (%)",
             title=title or f"top {top} runs: valid (solid), unbiased test (dashed)")
    axis.grid(alpha=0.3)
    if shown:
        axis.legend(fontsize=8)
    return _save(fig, Path(path))


def plot_sweep(name: str, rows: list[Row], folder: str | Path, *, top: int = 3) -> list[Path]:
    folder = Path(folder)
    searched = numeric_options(rows)[:2]
    space = plot_search_space(rows, folder / f"{name}_{'_'.join(searched)}.png",
                              title=f"{name}: {'-'.join(searched)} plane" if len(searched) == 2
                              else f"{name}: {''.join(searched)}")
    return [p for p in (
        space,
        plot_valid_vs_unbiased(rows, folder / f"{name}_valid_vs_unbiased.png"),
        plot_learning_curves(rows, folder / f"{name}_curves.png", top=top),
    ) if p is not None]
