"""Training a run: :func:`fit` trains ``config`` into ``run_dir``, after the stages the
config declares (:mod:`endebias.training.stages`): pseudo bias labels' bias-capturing
model, a method's own first stage. A run without stages is one
:func:`~endebias.training.run.fit_run`; K runs that can share every batch train as one
pack with :func:`~endebias.training.run.fit_packed`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from endebias.training.config import TrainConfig
from endebias.training.epoch import NonFiniteLossError
from endebias.training.loading import load_benchmark, resolve_device
from endebias.training.pseudo_label_stages import pseudo_label_stage
from endebias.training.run import (
    EpochCallback,
    RunAlreadyExistsError,
    existing_run,
    fit_packed,
    fit_run,
    summary_line,
)
from endebias.training.stages import Stage, method_stages, run_in_stages
from endebias.training.validation import check_config

__all__ = [
    "NonFiniteLossError", "RunAlreadyExistsError", "existing_run", "fit", "fit_packed",
    "fit_run", "load_benchmark", "planned_stages", "resolve_device", "summary_line",
]


def planned_stages(config: TrainConfig, run_dir: Path, *,
                   shared: Path | None = None) -> list[Stage]:
    """The runs ``config``'s run trains first, in order: with ``bias_labels: pseudo`` the
    bias-capturing model of stage 1, then the first stage its method declares. With
    ``shared``, each stage trains in a folder there that runs with the same stage share."""
    stages = []
    if config.bias_labels == "pseudo":
        stages.append(pseudo_label_stage(config, run_dir, shared=shared))
    return stages + method_stages(config, run_dir, shared=shared)


def fit(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    data_dir: str | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
    echo: Callable[[str], None] | None = None,
    shared_stages: str | Path | None = None,
) -> dict[str, Any]:
    """Train ``config`` into ``run_dir`` and return its best-by-valid record.

    ``resume=True`` continues from the last checkpoint (a finished run returns at once; a
    folder without a run starts one); a run in stages resumes at the stage it stopped in.
    ``on_epoch(epoch, record)`` runs after each of the run's own epochs (not its stages');
    it may raise to stop the run (sweeps prune this way). ``echo`` gets one line per epoch,
    a stage's marked with its title. ``shared_stages``: a folder where runs whose stage
    would be the same train it once (sweep trials), instead of ``run_dir/<stage>``.
    Under ``torchrun`` see :func:`~endebias.training.run.fit_run`.
    """
    shared = None if shared_stages is None else Path(shared_stages)
    stages = planned_stages(config, Path(run_dir), shared=shared)
    if not stages:
        return fit_run(config, run_dir, data_dir=data_dir, resume=resume, progress=progress,
                       on_epoch=on_epoch, echo=echo)
    # Every option (the run's and its stages') is checked before a stage trains for it.
    check_config(config)
    return run_in_stages(config, run_dir, stages, data_dir=data_dir, resume=resume,
                         progress=progress, on_epoch=on_epoch, echo=echo)
