"""Read run records and lay them out as tables (no torch import: records are JSON)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from endebias import records


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    done: bool
    error: str | None


def load_run(run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    config_path = run_dir / records.CONFIG
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no {records.CONFIG})")
    best_path, error_path = run_dir / records.BEST, run_dir / records.ERROR
    return Run(
        path=run_dir,
        config=records.read_json(config_path),
        history=records.read_metrics(run_dir),
        best=records.read_json(best_path) if best_path.exists() else None,
        done=(run_dir / records.DONE).exists(),
        error=records.read_json(error_path)["message"] if error_path.exists() else None,
    )


def percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


SIDE_BY_SIDE = [
    ("biased", "biased_test_acc"),
    ("unbiased", "unbiased_test_acc"),
    ("aligned", "unbiased_test_acc_aligned"),
    ("conflicting", "unbiased_test_acc_conflicting"),
    ("worst group", "unbiased_test_acc_worst_group"),
]


def side_by_side_table(runs: dict[str, Run]) -> str:
    """A markdown table: one row per run (its best-by-valid epoch), accuracies in percent.

    Aligned / conflicting / worst group are measured on the unbiased test set, where every
    (digit, colour) group is populated.
    """
    header = ["run", "epoch", "valid"] + [name for name, _ in SIDE_BY_SIDE]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, run in runs.items():
        best = run.best or {}
        cells = [label, str(best.get("epoch", "-")), percent(best.get("valid_acc"))]
        cells += [percent(best.get(key)) for _, key in SIDE_BY_SIDE]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
