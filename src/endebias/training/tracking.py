"""Optional experiment trackers, off by default. The run folder's records remain the
source of truth; a tracker only mirrors them for people who want their dashboards.

Weights & Biases runs in offline mode unless ``WANDB_MODE`` says otherwise (its sweeps
need an account; logging does not): ``wandb sync`` uploads the runs later.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from endebias.training import records


class WandbRun:
    """One trial mirrored to a W&B run: per-epoch numbers, then the best epoch as summary."""

    def __init__(
        self, *, project: str, name: str, group: str, config: dict[str, Any], folder: Path
    ) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        try:
            import wandb
        except ImportError:
            raise RuntimeError("--wandb needs the wandb package: pip install wandb") from None
        self._run = wandb.init(
            project=project,
            name=name,
            group=group,
            config=config,
            dir=str(folder),
            mode=os.environ.get("WANDB_MODE", "offline"),
        )

    def log(self, record: dict[str, Any]) -> None:
        numbers = {k: v for k, v in record.items() if _is_number(v) and k != "epoch"}
        self._run.log(numbers, step=int(record["epoch"]))

    def finish(self, run_dir: Path, *, state: str) -> None:
        """Close the W&B run with the best-by-valid epoch on record as its summary."""
        best_path = Path(run_dir) / records.BEST
        if best_path.exists():
            best = records.read_json(best_path)
            self._run.summary.update({f"best_{k}": v for k, v in best.items() if _is_number(v)})
        self._run.summary.update({"state": state})
        self._run.finish(exit_code=0 if state in ("COMPLETE", "PRUNED") else 1)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
