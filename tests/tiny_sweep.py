"""A finished two-trial sweep on the synthetic benchmark (seconds on CPU), for the tests of
what reads a sweep afterwards: optuna-dashboard and the HTML report."""

from __future__ import annotations

from pathlib import Path

import yaml

from endebias.cli.main import main


def run_tiny_sweep(folder: Path, *, sweep_id: str = "tiny", trials: int = 2) -> str:
    """Create and finish the sweep under ``folder``; returns its SQLite storage URL."""
    sweep_file = folder / "tiny.yaml"
    sweep_file.write_text(yaml.safe_dump({"method": "random", "run_cap": trials, "parameters": {
        "alpha": {"min": 0.0, "max": 1.0}, "beta": {"min": 0.0, "max": 1.0},
        "method": {"value": "end"}, "dataset": {"value": "synthetic"},
        "preset": {"value": "quick"}, "epochs": {"value": 2}, "train_size": {"value": 128},
        "eval_size": {"value": 64}, "model_options.channels": {"value": [8, 16]}}}))
    storage = f"sqlite:///{folder}/runs/sweeps.db"
    runs = str(folder / "runs")
    assert main(["sweep", "create", str(sweep_file), "--storage", storage, "--id", sweep_id]) == 0
    assert main(["sweep", "agent", sweep_id, "--storage", storage, "--runs", runs,
                 "--agent-id", "0"]) == 0
    return storage
