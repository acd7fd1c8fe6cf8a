"""The labels of the fixed test images whose features a run saves (``--save-features``),
and their repair: ``features/labels.npz`` depends only on the run's config and data, so
a damaged one is written again from them, finished run or not."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from endebias.data import Benchmark, Split
from endebias.training import records
from endebias.training.config import TrainConfig
from endebias.training.loading import load_benchmark, random_subset

FEATURES = "features"
LABELS = "labels.npz"


def feature_split(benchmark: Benchmark, count: int) -> Split:
    """The images whose features are saved: a fixed subset (seed 1) of the unbiased test
    split, or of the validation split where there is none."""
    split = benchmark.evaluations.get("unbiased_test", benchmark.evaluations["valid"])
    return random_subset(split, count, 1)


def write_labels(folder: Path, split: Split) -> None:
    """``folder/labels.npz`` for ``split``, written atomically unless it already holds
    exactly these labels (a missing, damaged or stale file is written again)."""
    targets, biases = split.targets.cpu().numpy(), split.biases.cpu().numpy()
    labels = folder / LABELS
    if not _labels_match(labels, targets, biases):
        records.atomic_write(
            labels, lambda handle: np.savez(handle, targets=targets, biases=biases)
        )


def repair_labels(run_dir: Path, *, data_dir: str | None) -> Path:
    """Write ``run_dir/features/labels.npz`` again from the run's config and its data."""
    config = TrainConfig.from_dict(records.read_json_object(run_dir / records.CONFIG))
    if not config.save_features:
        raise ValueError(f"{run_dir} was not trained with --save-features: no labels to write")
    benchmark = load_benchmark(config, data_dir=data_dir, device=torch.device("cpu"))
    write_labels(run_dir / FEATURES, feature_split(benchmark, config.save_features))
    return run_dir / FEATURES / LABELS


def _labels_match(path: Path, targets: Any, biases: Any) -> bool:
    try:
        with np.load(path) as saved:
            return bool(np.array_equal(saved["targets"], targets)
                        and np.array_equal(saved["biases"], biases))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False
