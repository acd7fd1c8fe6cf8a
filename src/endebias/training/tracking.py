"""Optional experiment trackers, off by default. The run folder's records remain the
source of truth; a tracker only mirrors them for people who want their dashboards.

Each tracker reads what it logs from the run folder (``metrics.jsonl`` and ``best.json``),
so it carries exactly the keys of the records, and a resumed run's tracker starts with the
epochs that were already on record.

* Weights & Biases runs in offline mode unless ``WANDB_MODE`` says otherwise (its sweeps
  need an account; logging does not): ``wandb sync`` uploads the runs later.
* TensorBoard writes one event file per run into ``RUN/tensorboard/``:
  ``tensorboard --logdir runs`` shows every run below ``runs``.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from endebias.training import records

log = logging.getLogger(__name__)

TENSORBOARD_FOLDER = "tensorboard"


class Tracker(Protocol):
    def log(self, record: dict[str, Any]) -> None: ...

    def finish(self, best: dict[str, Any] | None, *, state: str) -> None: ...


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def numbers(record: dict[str, Any]) -> dict[str, float | int]:
    """The record's finite numbers (the group matrices and missing values left out)."""
    return {k: v for k, v in record.items() if _is_number(v) and k != "epoch"}


class WandbRun:
    """One run mirrored to a W&B run: per-epoch numbers, then the best epoch as summary."""

    def __init__(
        self, *, project: str, name: str, group: str | None, config: dict[str, Any], folder: Path
    ) -> None:
        try:
            import wandb
        except ImportError:
            raise RuntimeError("--wandb needs the wandb package: pip install wandb") from None
        folder.mkdir(parents=True, exist_ok=True)
        self._run = wandb.init(
            project=project,
            name=name,
            group=group,
            config=config,
            dir=str(folder),
            mode=os.environ.get("WANDB_MODE", "offline"),
        )

    def log(self, record: dict[str, Any]) -> None:
        # commit=True writes the step now: a step left pending would be flushed at finish
        # and overwrite the best epoch's summary with the last epoch's numbers.
        self._run.log(numbers(record), step=int(record["epoch"]), commit=True)

    def finish(self, best: dict[str, Any] | None, *, state: str) -> None:
        """Close the W&B run; its summary is the best-by-valid epoch, as in ``best.json``."""
        if best is not None:
            self._run.summary.update({**numbers(best), "epoch": best["epoch"]})
        self._run.summary.update({"state": state})
        self._run.finish(exit_code=0 if state in ("COMPLETE", "PRUNED") else 1)


class TensorBoardRun:
    """One event file per run: every number per epoch, and at the best epoch each split's
    target x bias accuracy matrix (digit x colour on Biased MNIST) as an image."""

    def __init__(self, *, folder: Path) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise RuntimeError(
                "--tensorboard needs the tensorboard package: pip install tensorboard"
            ) from None
        # The events mirror the records, and this run replays them all: files from an
        # earlier attempt would only repeat the same epochs.
        for old in folder.glob("events.out.tfevents.*"):
            old.unlink()
        self._writer = SummaryWriter(log_dir=str(folder))

    def log(self, record: dict[str, Any]) -> None:
        step = int(record["epoch"])
        for key, value in numbers(record).items():
            self._writer.add_scalar(key, value, step)
        self._writer.flush()

    def finish(self, best: dict[str, Any] | None, *, state: str) -> None:
        if best is not None:
            from endebias.figures import group_matrix_png

            for key, matrix in best.items():
                if key.endswith("_group_acc") and matrix:
                    split = key.removesuffix("_group_acc")
                    title = f"{split} accuracy per group (%), epoch {best['epoch']}"
                    self._writer.add_image(
                        key, _png_to_array(group_matrix_png(matrix, title=title)),
                        int(best["epoch"]), dataformats="HWC",
                    )
        self._writer.add_text("state", state)
        self._writer.close()


def _png_to_array(png: bytes):
    import io

    import numpy as np
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


class RunMirror:
    """The trackers of one run, fed from its folder's records.

    :meth:`on_epoch` fits :func:`endebias.training.fit.fit`'s callback; the trackers open
    at the first epoch, so a run that fails its checks leaves no tracker run behind, and
    :meth:`finish` opens them for a finished run that ``--resume`` returned at once.
    """

    def __init__(self, run_dir: Path, openers: list[Callable[[], Tracker]]) -> None:
        self.run_dir = Path(run_dir)
        self._openers = openers
        self._trackers: list[Tracker] | None = None
        self._logged: set[int] = set()

    def on_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        self._catch_up()

    def _catch_up(self) -> None:
        if self._trackers is None:
            self._trackers = [open_tracker() for open_tracker in self._openers]
        for record in records.read_metrics(self.run_dir):
            if record["epoch"] not in self._logged:
                for tracker in self._trackers:
                    tracker.log(record)
                self._logged.add(record["epoch"])

    def finish(self, *, state: str) -> None:
        if self._trackers is None and state != "COMPLETE":
            return  # nothing ran: no tracker run for a failed start
        self._catch_up()
        best_path = self.run_dir / records.BEST
        best = records.read_json(best_path) if best_path.exists() else None
        for tracker in self._trackers or []:
            tracker.finish(best, state=state)


def run_mirror(
    run_dir: str | Path,
    *,
    config: dict[str, Any],
    name: str,
    wandb_project: str | None = None,
    wandb_group: str | None = None,
    wandb_dir: str | Path | None = None,
    tensorboard: bool = False,
) -> RunMirror | None:
    """The mirror a run was asked for, or None when no tracker was asked for.

    Missing packages fail here, before any training: one line naming the package.
    """
    run_dir = Path(run_dir)
    openers: list[Callable[[], Tracker]] = []
    if wandb_project is not None:
        _require("wandb", "--wandb")
        folder = Path(wandb_dir) if wandb_dir is not None else run_dir
        openers.append(lambda: WandbRun(project=wandb_project, name=name, group=wandb_group,
                                        config=config, folder=folder))
    if tensorboard:
        _require("tensorboard", "--tensorboard")
        openers.append(lambda: TensorBoardRun(folder=run_dir / TENSORBOARD_FOLDER))
    return RunMirror(run_dir, openers) if openers else None


def require_trackers(*, wandb_project: str | None, tensorboard: bool) -> None:
    """Fail at once, before any training, when a tracker's package is missing."""
    if wandb_project is not None:
        _require("wandb", "--wandb")
    if tensorboard:
        _require("tensorboard", "--tensorboard")


def _require(package: str, option: str) -> None:
    import importlib

    try:
        importlib.import_module(package)
    except ImportError:
        raise RuntimeError(f"{option} needs the {package} package: pip install {package}") from None
