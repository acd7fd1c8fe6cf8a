"""`endebias plot features`: PCA of the features a run saved per epoch, GIF + PNG."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from endebias.cli.main import main
from endebias.report.feature_plots import align, load_features, pca_2d, plot_features


def fake_run(tmp_path, *, epochs: int = 3, n: int = 60, dim: int = 16):
    """Features whose target clusters separate more every epoch."""
    rng = np.random.default_rng(0)
    targets = np.arange(n) % 3
    biases = (np.arange(n) // 3) % 3
    centres = rng.normal(size=(3, dim))
    folder = tmp_path / "run" / "features"
    folder.mkdir(parents=True)
    np.savez(folder / "labels.npz", targets=targets, biases=biases)
    for epoch in range(1, epochs + 1):
        features = epoch * centres[targets] + rng.normal(size=(n, dim))
        np.save(folder / f"epoch_{epoch:03d}.npy", features.astype(np.float32))
    return tmp_path / "run"


def test_pca_finds_the_main_direction():
    rng = np.random.default_rng(1)
    direction = np.array([3.0, 4.0, 0.0]) / 5
    data = rng.normal(size=(500, 1)) * 10 * direction + rng.normal(size=(500, 3)) * 0.1 + 7
    projected = pca_2d(data)
    centred = data - data.mean(axis=0)
    # The first coordinate carries (almost) all the variance, along `direction`.
    assert np.var(projected[:, 0]) > 100 * np.var(projected[:, 1])
    assert abs(np.corrcoef(projected[:, 0], centred @ direction)[0, 1]) > 0.999


def test_align_undoes_a_rotation_and_a_reflection():
    rng = np.random.default_rng(2)
    points = rng.normal(size=(50, 2))
    angle = 1.1
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = points @ rotation @ np.diag([1.0, -1.0])
    np.testing.assert_allclose(align(moved, points), points, atol=1e-10)


def test_plot_features_writes_a_gif_with_one_frame_per_epoch(tmp_path, capsys):
    run_dir = fake_run(tmp_path, epochs=3)
    assert main(["plot", "features", str(run_dir), "--out", str(tmp_path / "pictures")]) == 0
    printed = capsys.readouterr().out.split()
    gif, png = tmp_path / "pictures" / "features.gif", tmp_path / "pictures" / "features.png"
    assert printed == [str(gif), str(png)]
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.n_frames == 3
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width > image.height > 200
    # Default output: the run folder itself.
    assert plot_features(run_dir) == (run_dir / "features.gif", run_dir / "features.png")


def test_missing_or_mismatched_features_are_clear_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["plot", "features", str(tmp_path / "empty")]) == 2
    assert "has no saved features" in capsys.readouterr().err
    run_dir = fake_run(tmp_path, epochs=1)
    np.save(run_dir / "features" / "epoch_002.npy", np.zeros((5, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="epoch_002.npy: shape"):
        load_features(run_dir)


@pytest.mark.slow
def test_features_saved_by_a_real_run(tmp_path):
    from endebias.training.config import make_config
    from endebias.training.fit import fit

    config = make_config("quick", dataset="synthetic", method="end", epochs=2, save_features=40,
                         dataset_options={"train_size": 128, "eval_size": 64},
                         model_options={"channels": [8, 16]}, method_options={"alpha": 0.5})
    fit(config, tmp_path / "run", progress=False)
    epochs, targets, biases = load_features(tmp_path / "run")
    assert sorted(epochs) == [1, 2] and epochs[1].shape == (40, 16) and len(biases) == 40
    gif, _ = plot_features(tmp_path / "run")
    with Image.open(gif) as image:
        assert image.n_frames == 2
