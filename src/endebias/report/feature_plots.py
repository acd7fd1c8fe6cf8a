"""Pictures of the learned feature space: the features a run saved every epoch (see
``TrainConfig.save_features``), projected to 2-D by PCA, as a GIF and a final PNG,
coloured by target and by bias label (numpy, matplotlib and Pillow; no torch).

Each epoch gets its own PCA (the main directions change as the network learns); the 2-D
frame is then rotated/reflected onto the previous one (orthogonal Procrustes), so that
the animation shows the clusters moving rather than the axes flipping.
"""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

FEATURES = "features"
LABELS = "labels.npz"
_EPOCH_FILE = re.compile(r"epoch_(\d+)\.npy")


def load_features(run_dir: str | Path) -> tuple[dict[int, np.ndarray], np.ndarray, np.ndarray]:
    """({epoch: features (n, d)}, targets (n,), biases (n,)) from ``run_dir/features``."""
    folder = Path(run_dir) / FEATURES
    if not (folder / LABELS).exists():
        raise FileNotFoundError(
            f"{run_dir} has no saved features ({FEATURES}/{LABELS}); train with --save-features N"
        )
    targets, biases = _read_labels(folder / LABELS)
    epochs = {}
    for path in folder.glob("epoch_*.npy"):
        match = _EPOCH_FILE.fullmatch(path.name)
        if match:
            epochs[int(match.group(1))] = _read_array(path)
    if not epochs:
        raise FileNotFoundError(f"{folder} holds no epoch_NNN.npy files")
    for epoch, features in epochs.items():
        if features.ndim != 2 or len(features) != len(targets):
            raise ValueError(
                f"{folder}/epoch_{epoch:03d}.npy: shape {features.shape} does not "
                f"match {len(targets)} labels"
            )
    return dict(sorted(epochs.items())), targets, biases


class DamagedLabels(ValueError):
    """``labels.npz`` cannot be read; ``endebias plot features`` writes it again from the
    run's config and data (endebias.training.feature_labels)."""


def _read_labels(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The saved labels, checked: a damaged file is named, with what fixes it."""
    try:
        with np.load(path) as labels:
            targets, biases = labels["targets"], labels["biases"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:
        raise DamagedLabels(f"{path}: damaged ({type(error).__name__})") from None
    if targets.ndim != 1 or targets.shape != biases.shape:
        raise DamagedLabels(f"{path}: damaged (targets {targets.shape}, biases {biases.shape})")
    return targets, biases


def _read_array(path: Path) -> np.ndarray:
    try:
        return np.load(path)
    except (OSError, ValueError, EOFError) as error:
        raise ValueError(f"{path}: damaged ({type(error).__name__}); delete it to plot the "
                         "other epochs") from None


def pca_2d(features: np.ndarray) -> np.ndarray:
    """The centred features on their two main directions (SVD)."""
    centred = features - features.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    projected = centred @ vt[:2].T
    if projected.shape[1] < 2:  # one-dimensional features: pad for a 2-D picture
        projected = np.pad(projected, ((0, 0), (0, 2 - projected.shape[1])))
    return projected


def align(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Rotate/reflect ``points`` (n, 2) to best match ``reference`` (orthogonal Procrustes)."""
    u, _, vt = np.linalg.svd(points.T @ reference)
    return points @ (u @ vt)


def project_epochs(epochs: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    projected: dict[int, np.ndarray] = {}
    previous = None
    for epoch, features in epochs.items():
        points = pca_2d(features.astype(np.float64))
        if previous is not None:
            points = align(points, previous)
        projected[epoch] = previous = points
    return projected


def _frame(points: np.ndarray, targets: np.ndarray, biases: np.ndarray, title: str) -> plt.Figure:
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4))
    limit = np.abs(points).max() * 1.05 or 1.0
    for axis, labels, name in ((axes[0], targets, "target"), (axes[1], biases, "bias")):
        count = int(labels.max()) + 1  # one colour per label value
        cmap = plt.get_cmap("tab10" if count <= 10 else "tab20", count)
        scatter = axis.scatter(
            points[:, 0], points[:, 1], c=labels, cmap=cmap, vmin=-0.5, vmax=count - 0.5, s=8,
            alpha=0.8,
        )
        axis.set(
            title=f"coloured by {name}",
            xlim=(-limit, limit),
            ylim=(-limit, limit),
            xticks=[],
            yticks=[],
        )
        fig.colorbar(scatter, ax=axis, ticks=range(count), fraction=0.046)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _to_image(fig: plt.Figure) -> Image.Image:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def plot_features(
    run_dir: str | Path, out_dir: str | Path | None = None, *, frame_ms: int = 400
) -> tuple[Path, Path]:
    """Write ``features.gif`` (one frame per epoch) and ``features.png`` (the last epoch)
    into ``out_dir`` (default: the run folder); return both paths."""
    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir
    out.mkdir(parents=True, exist_ok=True)
    epochs, targets, biases = load_features(run_dir)
    projected = project_epochs(epochs)
    name = run_dir.name
    frames = [
        _to_image(_frame(points, targets, biases, f"{name}: epoch {epoch} (PCA)"))
        for epoch, points in projected.items()
    ]
    gif, png = out / "features.gif", out / "features.png"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=frame_ms, loop=0)
    last_epoch = max(projected)
    fig = _frame(projected[last_epoch], targets, biases, f"{name}: epoch {last_epoch} (PCA)")
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return gif, png
