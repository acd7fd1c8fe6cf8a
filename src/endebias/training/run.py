"""One run (or K packed runs), start to finish, exactly as its config says: no stages
(:func:`endebias.training.fit.fit` runs those first and hands their results on). The
trainer knows nothing about a specific method or dataset: it sees a
:class:`~endebias.data.Benchmark`, a model from the registry and a
:class:`~endebias.methods.Method`, and writes the run's records.

A run goes through four steps:

1. **claim** the run folder (an exclusive lock, before anything else) and read what it
   already holds (:func:`claim`);
2. **prepare** everything (data, model, method, optimisers) and check it with one forward
   pass, before the folder becomes a run, so a failed start leaves nothing behind;
3. **resume** from the latest good checkpoint, if asked;
4. **train** in the one loop (:mod:`endebias.training.loop`), writing records and a
   checkpoint after each epoch, then **finish**.

:func:`fit_run` trains one run; :func:`fit_packed` trains K runs that can share every
batch as one packed network, each into its own folder, through the same steps and loop.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

from endebias.data import Benchmark
from endebias.training import distributed, records
from endebias.training.config import TrainConfig
from endebias.training.distributed import DistContext
from endebias.training.epoch import NonFiniteLossError
from endebias.training.estimate import start_line
from endebias.training.loading import load_benchmark, resolve_device
from endebias.training.loop import (
    Member,
    MemberCallback,
    Outcome,
    Shared,
    resume_state,
    shared_data,
    train,
)
from endebias.training.packed import PackError, check_packable, pack_key
from endebias.training.prepared import build_run_method, prepare_solo
from endebias.training.run_lock import RunInUseError, RunLock
from endebias.training.steppers import PackedStepper

__all__ = ["NonFiniteLossError", "RunAlreadyExistsError", "fit_packed", "fit_run"]

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, Any]], None]


class RunAlreadyExistsError(RuntimeError):
    """The run folder holds another run; pass resume=True to continue it."""


@dataclass
class Handoff:
    """What the stages before a run hand it (:mod:`endebias.training.stages`): a change to
    its benchmark, made in place before anything is built from it (pseudo bias labels),
    and keyword arguments for its method's constructor (a first stage's result)."""

    prepare_benchmark: Callable[[Benchmark], None] | None = None
    method_inputs: dict[str, Any] = field(default_factory=dict)


def prepare_data(
    config: TrainConfig,
    *,
    data_dir: str | None,
    device: torch.device,
    context: DistContext | None = None,
    prepare_benchmark: Callable[[Benchmark], None] | None = None,
) -> Shared:
    """The benchmark every member trains on (seeded as the config says), its aligned
    groups and fast path; in a multi-process run, this process's share of each
    evaluation split and the sum of the processes' counts."""
    device = distributed.local_device(device, context)
    torch.manual_seed(config.seed)
    benchmark = load_benchmark(config, data_dir=data_dir, device=device)
    if prepare_benchmark is not None:  # e.g. pseudo bias labels (pseudo_label_stages)
        prepare_benchmark(benchmark)
    shared = shared_data(benchmark, config, device)
    if context is not None:
        shared.evaluations = {name: distributed.shard_split(split, context)
                              for name, split in benchmark.evaluations.items()}
        shared.reduce_counts = partial(distributed.sum_over_ranks, context=context)
        shared.main = context.is_main
    return shared


def existing_run(config: TrainConfig, run_dir: Path, *, resume: bool) -> dict[str, Any] | None:
    """Step 1: what the folder holds. None for a new run or one to continue; the best
    record of this run finished (a rerun shows it); an error for another run, or this run
    unfinished without ``resume``."""
    config_path = run_dir / records.CONFIG
    if not config_path.exists():
        problem = records.without_config(run_dir)
        if problem is not None:  # a run's records, its config lost: never trained over
            raise RunAlreadyExistsError(problem)
        return None
    if records.read_json(config_path) != config.to_dict():
        raise RunAlreadyExistsError(
            f"{run_dir} holds a run with another config; choose another --out folder"
        )
    if (run_dir / records.DONE).exists():  # finished: its result, --resume or not
        return records.read_json_object(run_dir / records.BEST)
    if not resume:
        raise RunAlreadyExistsError(
            f"{run_dir} already holds this run, unfinished; pass --resume to continue it"
        )
    return None


def claim(config: TrainConfig, run_dir: Path, *, resume: bool,
          main: bool = True) -> tuple[RunLock, dict[str, Any] | None]:
    """Step 1: the folder's lock (rank 0's; a stand-in elsewhere), and the best record of
    a run already finished there (None to train). The lock is released on an error."""
    lock = RunLock.acquire(run_dir) if main else RunLock.unlocked(run_dir)
    try:
        if main:  # a killed writer's half-written files: ours to clear, as the lock holder
            for path in records.remove_temp_files(run_dir):
                log.info("removed %s, left by an interrupted write", path)
        return lock, existing_run(config, run_dir, resume=resume)
    except BaseException:
        lock.release()
        raise


class DataChangedError(RunAlreadyExistsError):
    """The run folder's run was trained on other data than this call loads."""


def check_same_data(run_dir: Path, checksum: str, data_dir: str | None = None) -> None:
    """DataChangedError, one line, when ``run_dir`` records another data checksum than
    ``checksum``: its epochs were trained on other images or labels."""
    path = run_dir / records.DATA
    if not path.exists():  # a new run, or one from before runs recorded their data
        return
    theirs = records.read_json_object(path).get("checksum")
    if theirs != checksum:
        where = f"--data-dir {data_dir}" if data_dir else "the data found now"
        raise DataChangedError(
            f"{run_dir} holds this run trained on other data (checksum {theirs}; {where} "
            f"gives {checksum}): choose another --out folder, or point at the data it used")


def check_finished_data(config: TrainConfig, run_dir: Path, data_dir: str | None) -> None:
    """For a rerun of a finished run, whose result is shown without training: the data
    loaded now must be the data it was trained on (DataChangedError otherwise). Loads the
    data on the CPU, which a run that records no checksum does not need."""
    if (run_dir / records.DATA).exists():
        benchmark = load_benchmark(config, data_dir=data_dir, device=torch.device("cpu"))
        check_same_data(run_dir, benchmark.info["data_checksum"], data_dir)


def _start(member: Member, checksum: str) -> None:
    """The folder becomes this run: its config and data checksum, and no error left from an
    earlier try."""
    member.lock.check()
    records.atomic_write_json(member.run_dir / records.CONFIG, member.config.to_dict())
    records.atomic_write_json(member.run_dir / records.DATA, {"checksum": checksum})
    (member.run_dir / records.ERROR).unlink(missing_ok=True)


def fit_run(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    data_dir: str | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
    echo: Callable[[str], None] | None = None,
    handoff: Handoff | None = None,
    lock: RunLock | None = None,
) -> dict[str, Any]:
    """Train one run into ``run_dir`` and return its best-by-valid record.

    ``handoff`` is what earlier stages give this run (see :class:`Handoff`). ``lock``, if
    given, is the caller's lock on ``run_dir`` (a run in stages holds its folder from the
    first stage to the last); fit_run uses it and leaves it held.

    ``resume=True`` continues from the last checkpoint (a finished run returns at once; a
    folder without a run starts one). ``on_epoch(epoch, record)`` runs after each epoch's
    records are written; it may raise to stop the run (sweeps prune this way).

    Launched by ``torchrun`` with several processes, this joins their process group (see
    :mod:`endebias.training.distributed`; the caller may tear it down after): one run over the
    global batch, records and checkpoints written (and the folder locked) by rank 0 only,
    ``on_epoch`` and ``echo`` called on rank 0 only.
    """
    handoff = handoff or Handoff()
    run_dir = Path(run_dir)
    device = resolve_device(config.device)
    context, _ = distributed.setup(device.type)
    main = context is None or context.is_main
    own_lock = lock is None
    if lock is None:
        lock, finished = claim(config, run_dir, resume=resume, main=main)
    else:
        finished = existing_run(config, run_dir, resume=resume)
    member = Member(0, config, run_dir, lock, own_lock=own_lock)
    try:
        if finished is not None:
            return finished
        try:
            shared = prepare_data(config, data_dir=data_dir, device=device, context=context,
                                  prepare_benchmark=handoff.prepare_benchmark)
            stepper = prepare_solo(config, shared, context, **handoff.method_inputs)
        except BaseException:
            if own_lock:
                lock.abandon()  # a failed start leaves no run folder behind
            raise
        checksum = shared.benchmark.info["data_checksum"]
        check_same_data(run_dir, checksum, data_dir)
        if main:
            _start(member, checksum)
        state = resume_state(run_dir, resume=resume, config=config)
        if state is not None:
            stepper.load([state])
            member.history = list(state["history"])
        if main:  # what it trains and how long that takes here, before it starts
            line = start_line(stepper, shared, config, epochs_done=len(member.history))
            (echo or log.info)(f"run folder {run_dir}: {line}")
        shared.progress, shared.echo = progress and main, None if echo is None else (
            lambda _, line: echo(line))
        shared.on_epoch = None if on_epoch is None else (
            lambda _, epoch, record: on_epoch(epoch, record))
        outcomes: list[Outcome | None] = [None]
        train([member], stepper, shared, outcomes)
        if isinstance(outcomes[0], BaseException):
            raise outcomes[0]
        return outcomes[0]  # type: ignore[return-value]
    finally:
        if own_lock:
            lock.release()


def fit_packed(
    configs: Sequence[TrainConfig],
    run_dirs: Sequence[str | Path],
    *,
    data_dir: str | None = None,
    resume: bool = False,
    on_epoch: MemberCallback | None = None,
    echo: Callable[[int, str], None] | None = None,
) -> list[Outcome]:
    """Train ``configs[i]`` into ``run_dirs[i]`` as one packed network; per run, its
    best-by-valid record or the exception that stopped it. ``on_epoch(i, epoch, record)``
    runs after run i's records are written; raising stops run i only. Each run is claimed,
    prepared and resumed as :func:`fit_run` does, on its own: a folder another process holds,
    another run's folder or a resume it refuses fails that run only. Members resumed at
    different epochs train as separate packs, one after the other."""
    if not configs or len(configs) != len(run_dirs):
        raise ValueError("fit_packed needs one run folder per config, and at least one config")
    for config in configs:
        check_packable(config)
    if len({pack_key(c) for c in configs}) > 1:
        raise PackError("these runs cannot share batches: they differ in more than method options")
    if distributed.launched_by_torchrun():
        raise PackError("packed runs train in one process; launch them without torchrun")
    outcomes: list[Outcome | None] = [None] * len(configs)
    with contextlib.ExitStack() as held:
        todo: list[Member] = []
        for index, (config, run_dir) in enumerate(zip(configs, run_dirs, strict=True)):
            try:
                lock, finished = claim(config, Path(run_dir), resume=resume)
            except (RunInUseError, RunAlreadyExistsError) as error:  # this member's folder only
                outcomes[index] = error
                continue
            held.callback(lock.release)
            if finished is not None:
                outcomes[index] = finished
                lock.release()
            else:
                todo.append(Member(index, config, Path(run_dir), lock))
        if todo:
            _train_packs(todo, data_dir=data_dir, resume=resume, on_epoch=on_epoch, echo=echo,
                         outcomes=outcomes)
    return outcomes  # type: ignore[return-value]


def _train_packs(todo: list[Member], *, data_dir: str | None, resume: bool,
                 on_epoch: MemberCallback | None, echo: Callable[[int, str], None] | None,
                 outcomes: list[Outcome | None]) -> None:
    """Steps 2 to 4 of :func:`fit_packed` for the members it claimed."""
    config = todo[0].config
    device = resolve_device(config.device)
    try:
        shared = prepare_data(config, data_dir=data_dir, device=device)
    except BaseException:
        for member in todo:
            member.lock.abandon()  # a failed start leaves no run folder behind, as fit
        raise
    shared.on_epoch, shared.echo = on_epoch, echo
    members, solos, states = [], {}, {}
    checksum = shared.benchmark.info["data_checksum"]
    for member in todo:
        try:
            check_same_data(member.run_dir, checksum, data_dir)
            solos[member.index] = build_run_method(member.config, shared.benchmark)
            states[member.index] = resume_state(member.run_dir, resume=resume,
                                                config=member.config) or {
                "method": solos[member.index].state_dict()}
        except (ValueError, DataChangedError) as error:  # its options, a resume it refuses
            outcomes[member.index] = error
            member.lock.abandon()
            continue
        member.history = list(states[member.index].get("history", []))
        members.append(member)
    for member in members:
        _start(member, checksum)
    benchmark = shared.benchmark
    for done in sorted({len(m.history) for m in members}):
        group = [m for m in members if len(m.history) == done]
        stepper = PackedStepper(
            [solos[m.index] for m in group], [m.config for m in group],
            [states[m.index] for m in group],
            benchmark_shape=(benchmark.num_targets, benchmark.input_shape[0]),
            device=device, fast=shared.fast,
        )
        line = start_line(stepper, shared, group[0].config, epochs_done=done)
        for member in group:
            say = log.info if echo is None else partial(echo, member.index)
            say(f"run folder {member.run_dir}: pack of {len(group)}, {line}")
        train(group, stepper, shared, outcomes)


def summary_line(best: dict[str, Any]) -> str:
    # valid first, then the rest by name: the same line for a fresh and a reread record
    keys = sorted((k for k, v in best.items() if k.endswith("_acc") and isinstance(v, float)),
                  key=lambda k: (k != "valid_acc", k))
    shown = ", ".join(f"{k} {100 * best[k]:.2f}" for k in keys if not k.startswith("train"))
    return f"best epoch {best['epoch']} by valid accuracy: {shown}"
