"""Tiny sweeps on the synthetic benchmark (about a second per epoch on CPU): the sweep file
the agent tests share, and a finished two-trial sweep for the tests of what reads a sweep
afterwards (optuna-dashboard, the HTML report)."""

from __future__ import annotations

from pathlib import Path

import yaml

from endebias.cli.main import main

# Short heartbeats, so that a killed agent's trial goes stale within seconds.
FAST_HEARTBEATS = {"seed": 7, "n_startup_trials": 2, "heartbeat_interval": 1, "grace_period": 3}


def tiny_sweep_spec(*, run_cap: int, epochs: int, method: str = "bayes",
                    train_size: int = 256, eval_size: int = 128,
                    optuna: dict | None = None, **parameters: dict) -> dict:
    """EnD searched over alpha and beta in [0, 1] on the synthetic benchmark with a small
    network; ``parameters`` add or replace sweep parameters."""
    return {
        "method": method,
        "metric": {"name": "valid_acc", "goal": "maximize"},
        "run_cap": run_cap,
        **({"optuna": optuna} if optuna else {}),
        "parameters": {
            "alpha": {"distribution": "uniform", "min": 0.0, "max": 1.0},
            "beta": {"distribution": "uniform", "min": 0.0, "max": 1.0},
            "method": {"value": "end"},
            "dataset": {"value": "synthetic"},
            "preset": {"value": "quick"},
            "epochs": {"value": epochs},
            "train_size": {"value": train_size},
            "eval_size": {"value": eval_size},
            "model_options.channels": {"value": [8, 16]},
            **parameters,
        },
    }


def write_sweep_file(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec))
    return path


def run_tiny_sweep(folder: Path, *, sweep_id: str = "tiny", trials: int = 2) -> str:
    """Create and finish the sweep under ``folder``; returns its SQLite storage URL."""
    sweep_file = write_sweep_file(folder / "tiny.yaml", tiny_sweep_spec(
        run_cap=trials, epochs=2, method="random", train_size=128, eval_size=64))
    storage = f"sqlite:///{folder}/runs/sweeps.db"
    runs = str(folder / "runs")
    assert main(["sweep", "create", str(sweep_file), "--storage", storage, "--id", sweep_id]) == 0
    assert main(["sweep", "agent", sweep_id, "--storage", storage, "--runs", runs,
                 "--agent-id", "0"]) == 0
    return storage
