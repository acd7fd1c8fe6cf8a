"""A run in stages: runs trained before it, each in a run folder of its own (claimed,
resumed and locked as any run, by :func:`~endebias.training.run.fit_run`), whose results
are handed to the next.

A :class:`Stage` is a run config, its folder and its *hand-on*: once the stage's run is
finished, ``hand_on(StageInput)`` returns what the run after it gets
(:class:`~endebias.training.run.Handoff`: a change to its benchmark, keyword arguments for
its method). :func:`run_in_stages` holds the run's own folder from its first look to its
last write: it refuses another run there (or this one without ``resume``), writes the
run's ``config.json`` first (so the folder is this run from the start), trains each stage
(a finished one only reports its result; one another process trains, in a folder several
runs share, is waited for), and trains the run itself with every hand-off.

Who declares stages: pseudo bias labels (:mod:`endebias.training.pseudo_label_stages`,
the bias-capturing model of stage 1) and any method through
:meth:`endebias.methods.Method.first_stage` (:func:`method_stages`: JTT's ERM model, a
bias-only network trained first). :func:`endebias.training.fit.fit` puts them together.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from endebias.methods import FirstStage, StageResult, method_class
from endebias.training import records
from endebias.training.checkpoint import load_checkpoint, run_identity
from endebias.training.config import TrainConfig
from endebias.training.loading import load_benchmark, resolve_device
from endebias.training.prepared import build_run_method
from endebias.training.run import EpochCallback, Handoff, existing_run, fit_run
from endebias.training.run_lock import RunInUseError, RunLock

log = logging.getLogger(__name__)

WAIT_SECONDS = 5  # how often a run waiting for a shared stage looks again


@dataclass(frozen=True)
class StageInput:
    """What a finished stage's hand-on is given."""

    folder: Path  # the stage's run folder (finished)
    run_dir: Path  # the run's own folder: a stage may keep what it derives there
    data_dir: str | None
    lock: RunLock  # the run's lock: check it before writing into run_dir
    main: bool  # this process writes records (rank 0 of several)


@dataclass(frozen=True)
class Stage:
    """A run trained before the run itself, and what it hands on."""

    title: str  # in log lines, and before its epoch lines ("stage 1 | epoch 1 ...")
    config: TrainConfig
    folder: Path
    hand_on: Callable[[StageInput], Handoff]
    # False when the hand-on no longer needs the stage's run (its result is on record).
    needs_training: Callable[[], bool] = lambda: True


def stage_config(config: TrainConfig, *, method: str, method_options: dict[str, Any],
                 epochs: int | None = None, model: str | None = None,
                 model_options: dict[str, Any] | None = None) -> TrainConfig:
    """A stage's run: the run's data, seed, optimiser, schedule and device, with the
    stage's method, options, epochs and (optionally) model; ``model_options`` are laid
    over the run's when the model is the run's. Stages train on the dataset's labels."""
    values = config.to_dict()
    values.pop("bias_labels", None)
    values.pop("pseudo_options", None)
    values["method"] = method
    values["method_options"] = dict(method_options)
    values["epochs"] = config.epochs if epochs is None else epochs
    values["save_features"] = 0
    model = model or config.model
    base = config.model_options if model == config.model else {}
    values["model"] = model
    values["model_options"] = {**base, **(model_options or {})}
    return TrainConfig.from_dict(values)


def shared_folder(name: str, config: TrainConfig, folder: Path) -> Path:
    """Where runs whose stage ``name`` would be the same share one:
    ``folder/.<name>/<hash of the stage's config>`` (hidden, so that listing ``folder``'s
    runs does not show it)."""
    return Path(folder) / f".{name}" / records.config_hash(config.to_dict())


def method_stages(config: TrainConfig, run_dir: Path, *,
                  shared: Path | None = None) -> list[Stage]:
    """The first stage the config's method declares (none for most methods), in
    ``RUN/<name>`` or, with ``shared``, in a folder other runs with the same stage share."""
    cls = method_class(config.method)
    first: FirstStage | None = cls.first_stage({**cls.defaults, **config.method_options})
    if first is None:
        return []
    stage = stage_config(config, method=first.method, method_options=first.method_options,
                         epochs=first.epochs, model=first.model,
                         model_options=first.model_options)
    inner = method_class(stage.method)
    if inner.first_stage({**inner.defaults, **stage.method_options}) is not None:
        raise ValueError(f"method {config.method!r}: its first stage's method "
                         f"{stage.method!r} declares a first stage of its own")
    folder = Path(run_dir) / first.name if shared is None else shared_folder(
        first.name, stage, shared)

    def hand_on(given: StageInput) -> Handoff:
        result = stage_result(stage, given.folder, data_dir=given.data_dir)
        return Handoff(method_inputs={"first_stage": result})

    return [Stage(first.name, stage, folder, hand_on)]


@torch.no_grad()
def stage_result(config: TrainConfig, folder: Path, *, data_dir: str | None) -> StageResult:
    """A finished stage's trained method (evaluation mode, on the CPU) and its logits on
    the training split; the same every time it is asked (a resumed run gets the same)."""
    benchmark = load_benchmark(config, data_dir=data_dir, device=resolve_device(config.device))
    method = build_run_method(config, benchmark)
    # Verified, and the stage's own (not one copied in from another run); falls back to
    # the previous good one.
    state = load_checkpoint(folder, run_identity(records.config_hash(config.to_dict()),
                                                 records.read_metrics(folder)))
    if state is None:
        raise FileNotFoundError(f"{folder} holds no checkpoint of the finished stage")
    method.load_state_dict(state["method"])
    method = method.to(benchmark.train.targets.device).eval()
    train = benchmark.train
    logits = [method(benchmark.prepare(train.inputs[start : start + config.eval_batch_size]))
              for start in range(0, len(train), config.eval_batch_size)]
    return StageResult(method.cpu(), torch.cat(logits).float().cpu())


def run_in_stages(
    config: TrainConfig, run_dir: str | Path, stages: Sequence[Stage], *,
    data_dir: str | None = None, resume: bool = False, progress: bool = True,
    on_epoch: EpochCallback | None = None, echo: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Train ``stages`` in order, then the run itself with what they hand on; the run's
    best-by-valid record. ``progress`` and ``echo`` (its lines marked with the stage's
    title) reach every stage; ``on_epoch`` belongs to the run itself."""
    run_dir = Path(run_dir)
    main = int(os.environ.get("RANK", "0")) == 0
    # Held from the first look to the last write, across every stage (each stage's
    # folder has its own lock), as a run without stages holds its folder.
    lock = RunLock.acquire(run_dir) if main else RunLock.unlocked(run_dir)
    try:
        if main:
            records.remove_temp_files(run_dir)
        finished = existing_run(config, run_dir, resume=resume)  # any run's rules
        if finished is not None:
            return finished
        if main:  # before the stages: a second launch without --resume is refused
            records.atomic_write_json(run_dir / records.CONFIG, config.to_dict())
        handoffs = []
        for stage in stages:
            if stage.needs_training():
                _train_stage(stage, data_dir=data_dir, progress=progress, echo=echo)
            handoffs.append(stage.hand_on(StageInput(stage.folder, run_dir, data_dir, lock, main)))
        log.info("the run: %s in %s, after %s", config.method, run_dir,
                 ", ".join(stage.title for stage in stages))
        return fit_run(config, run_dir, data_dir=data_dir, resume=True, progress=progress,
                       on_epoch=on_epoch, echo=echo, handoff=_joined(handoffs), lock=lock)
    finally:
        lock.release()


def _train_stage(stage: Stage, *, data_dir: str | None, progress: bool,
                 echo: Callable[[str], None] | None) -> None:
    """Train (or resume, or find finished) one stage's run; wait while another process
    trains it (a folder several runs share)."""
    first = stage.config
    log.info("%s: %s, %d epochs, in %s", stage.title, first.method, first.epochs, stage.folder)
    marked = None if echo is None else (lambda line: echo(f"{stage.title} | {line}"))
    while True:
        try:
            fit_run(first, stage.folder, data_dir=data_dir, resume=True, progress=progress,
                    echo=marked)
            return
        except RunInUseError as error:
            log.info("%s: %s; waiting for it to finish", stage.title, error)
            time.sleep(WAIT_SECONDS)


def _joined(handoffs: list[Handoff]) -> Handoff:
    """Every stage's hand-off at once: benchmark changes in stage order, method inputs
    merged (two stages handing the method the same keyword is refused)."""
    changes = [h.prepare_benchmark for h in handoffs if h.prepare_benchmark is not None]
    inputs: dict[str, Any] = {}
    for handoff in handoffs:
        clash = set(inputs) & set(handoff.method_inputs)
        if clash:
            raise ValueError(f"two stages hand the method {', '.join(sorted(clash))}")
        inputs.update(handoff.method_inputs)

    def prepare(benchmark: Any) -> None:
        for change in changes:
            change(benchmark)

    return Handoff(prepare_benchmark=prepare if changes else None, method_inputs=inputs)
