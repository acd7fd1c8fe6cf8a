"""The data line of a run with --train-subset / --eval-subset gives the sizes it uses."""

from __future__ import annotations

import logging

import torch

from endebias.data import build_dataset
from endebias.training.config import make_config
from endebias.training.fit import load_benchmark


def test_subset_sizes_are_logged_beside_the_full_sizes(caplog) -> None:
    full = build_dataset("synthetic", data_dir=None, seed=3)
    config = make_config("quick", dataset="synthetic", method="vanilla", seed=3,
                         train_subset=100, eval_subset=40)
    caplog.set_level(logging.INFO, logger="endebias.training.loading")
    benchmark = load_benchmark(config, data_dir=None, device=torch.device("cpu"))
    assert len(benchmark.train) == 100
    expected = ", ".join([f"train 100 of {len(full.train)}",
                          *(f"{name} {min(40, len(split))} of {len(split)}"
                            for name, split in full.evaluations.items())])
    assert f"synthetic subsets: {expected}" in [r.getMessage() for r in caplog.records]


def test_no_subset_no_extra_line(caplog) -> None:
    config = make_config("quick", dataset="synthetic", method="vanilla", seed=3)
    caplog.set_level(logging.INFO, logger="endebias.training.loading")
    load_benchmark(config, data_dir=None, device=torch.device("cpu"))
    assert not any("subsets" in r.getMessage() for r in caplog.records)
