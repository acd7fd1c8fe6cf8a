"""The training loop, once, for K >= 1 members: a solo run is a training of one member, a
packed trial one of K (:mod:`endebias.training.steppers` says how they are stepped).

Each member is a run folder of its own, with the records and checkpoint of a solo run. Per
epoch the loop trains and evaluates every member, then, member by member: the record
(non-finite training losses or valid accuracy fail that member, as a non-finite step
loss does), the checkpoint, the records rewritten from its history, the best-by-valid
record, the caller's ``on_epoch`` (raising stops that member only: a sweep prunes this
way). Members that stop leave at the end of the epoch and the others train on; the
finished ones get their ``done`` marker.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from endebias.data import Benchmark, Split
from endebias.metrics import aligned_groups, group_counts
from endebias.training import records
from endebias.training.checkpoint import load_checkpoint, run_identity, save_checkpoint
from endebias.training.config import TrainConfig
from endebias.training.epoch import NonFiniteLossError, evaluate, save_features, train_epoch
from endebias.training.fastpath import FastPath
from endebias.training.run_lock import RunLock
from endebias.training.steppers import Stepper

log = logging.getLogger(__name__)

MemberCallback = Callable[[int, int, dict[str, Any]], None]  # (member index, epoch, record)
Outcome = dict[str, Any] | Exception


@dataclass
class Member:
    """One run of a training: where it writes, and its epochs so far."""

    index: int  # position in the caller's list
    config: TrainConfig
    run_dir: Path
    lock: RunLock
    own_lock: bool = True  # released when the member leaves; a caller's lock is the caller's
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Shared:
    """What the members of one training share: the data, how it is evaluated, and the
    caller's hooks. ``evaluations`` are this process's shares in a multi-process run."""

    benchmark: Benchmark
    aligned: Tensor
    device: torch.device
    fast: FastPath
    evaluations: dict[str, Split]
    reduce_counts: Callable[[Tensor], Tensor] | None = None
    main: bool = True  # this process writes the records (rank 0)
    progress: bool = False
    on_epoch: MemberCallback | None = None
    echo: Callable[[int, str], None] | None = None


def shared_data(benchmark: Benchmark, config: TrainConfig, device: torch.device) -> Shared:
    """The one-process :class:`Shared` of a benchmark: its aligned groups (the dataset's,
    or the majority bias of each target in the training split) and the config's fast path."""
    train = benchmark.train
    counts = group_counts(train.targets, train.targets, train.biases,
                          num_targets=benchmark.num_targets, num_biases=benchmark.num_biases)[0]
    aligned = benchmark.aligned if benchmark.aligned is not None else aligned_groups(counts)
    fast = FastPath.resolve(device, amp=config.amp, compile=config.compile,
                            channels_last=config.channels_last)
    if device.type == "cuda":
        # Fixed batch shapes: cuDNN times its kernels once per shape and keeps the fastest.
        torch.backends.cudnn.benchmark = True
    return Shared(benchmark, aligned.to(counts.device), device, fast, benchmark.evaluations)


def best(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch with the highest valid accuracy (the first such epoch on ties), as the paper."""
    return max(history, key=lambda r: (r["valid_acc"], -r["epoch"]))


def resume_state(run_dir: Path, *, resume: bool, config: TrainConfig) -> dict[str, Any] | None:
    """The checkpoint a member continues from (verified, and this run's: the previous good
    one if the latest is damaged or another run's), or None to start; finished epochs
    without one are refused."""
    if not resume:
        return None
    damaged: records.DamagedRecordError | None = None
    try:
        recorded: list[dict[str, Any]] | None = records.read_metrics(run_dir)
    except records.DamagedRecordError as error:  # the checkpoint's history replaces it
        recorded, damaged = None, error
    state = load_checkpoint(run_dir, run_identity(records.config_hash(config.to_dict()),
                                                  recorded))
    if damaged is not None:
        if state is None:
            raise damaged
        log.warning("%s; the checkpoint's history replaces it", damaged)
    if state is None and recorded:
        # Starting over would overwrite finished epochs that no checkpoint can restore.
        raise ValueError(f"{run_dir} has finished epochs on record but no checkpoint; "
                         "--resume refuses (move the folder away to train the run again)")
    if state is not None:
        log.info("resuming %s after epoch %d", run_dir, len(state["history"]))
        # The generator as the run left it (steps that draw random numbers continue).
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
    return state


def format_epoch(record: dict[str, Any], evaluation_names: list[str]) -> str:
    """One line per epoch, as the original printed: train accuracy and loss with its parts,
    then the accuracy on each evaluation split."""
    fixed = {"train_loss", "train_acc", "train_seconds"}
    parts = [
        f"{k[6:]} {v:.4f}" for k, v in record.items() if k.startswith("train_") and k not in fixed
    ]
    line = (
        f"epoch {record['epoch']:3d} | train acc {record['train_acc']:.4f} "
        f"loss {record['train_loss']:.4f}"
    )
    if parts:
        line += f" ({', '.join(parts)})"
    for name in evaluation_names:
        line += f" | {name.replace('_test', '')} {record[f'{name}_acc']:.4f}"
    return line


def non_finite(record: dict[str, Any], epoch: int) -> str | None:
    """A loss can stay finite per step and overflow in the epoch's sums (alpha = 1e38).
    Accuracies of an empty group are NaN by design (metrics.py), so only the training
    losses and the model-selection accuracy count."""
    for key, value in record.items():
        watched = key.startswith("train_") or key == "valid_acc"
        if watched and isinstance(value, float) and not math.isfinite(value):
            return f"non-finite {key} ({value}) at epoch {epoch}"
    return None


def train(members: list[Member], stepper: Stepper | None, shared: Shared,
          outcomes: list[Outcome | None]) -> None:
    """Train ``members`` (all at the same epoch) to their last epoch or until each stops;
    ``outcomes[member.index]`` becomes its best record or the exception that stopped it."""
    config = members[0].config
    names = list(shared.benchmark.evaluations)
    if shared.main:
        log.info("%s on %s, fast path: %s",
                 f"pack of {len(members)}" if len(members) > 1 else "one run",
                 shared.device, shared.fast.describe())
    for epoch in range(len(members[0].history) + 1, config.epochs + 1):
        if stepper is None:
            return
        started = time.perf_counter()
        rates = stepper.optimizers.learning_rates()
        stats, diverged = train_epoch(stepper, shared.benchmark, config, epoch,
                                      shared.progress and shared.main)
        everyone_diverged = len(diverged) == len(members)
        if not everyone_diverged:
            stepper.optimizers.end_epoch()
        # The arithmetic "auto" chose on this machine (config.json keeps the option as given).
        head = {"epoch": epoch, **rates, "fast_path": shared.fast.describe()}
        train_seconds = time.perf_counter() - started
        metrics = {} if everyone_diverged else {
            name: evaluate(stepper, shared.benchmark, split, batch_size=config.eval_batch_size,
                           aligned=shared.aligned, reduce_counts=shared.reduce_counts)
            for name, split in shared.evaluations.items()
        }
        seconds = time.perf_counter() - started
        leaving: set[int] = set()
        for position, member in enumerate(members):
            record = dict(head)
            record.update({f"train_{k}": v for k, v in stats[position].items()})
            record["train_seconds"] = train_seconds
            for name in names if position not in diverged else []:
                record.update({f"{name}_{k}": v for k, v in metrics[name][position].items()})
            record["seconds"] = seconds
            record.update(stepper.extra_record)
            problem = diverged.get(position) or non_finite(record, epoch)
            if problem is not None:  # the folder keeps its last good checkpoint
                leaving.add(position)
                outcomes[member.index] = _fail(member, problem, main=shared.main)
                continue
            member.history.append(records.json_safe(record))
            if not shared.main:
                continue
            _save(member, stepper, position, shared)
            if shared.echo is not None:
                shared.echo(member.index, format_epoch(record, names))
            if shared.on_epoch is not None:
                try:
                    shared.on_epoch(member.index, epoch, record)
                except Exception as stop:  # noqa: BLE001  (it stops this member only)
                    leaving.add(position)
                    outcomes[member.index] = stop
        if leaving:
            for position in leaving:
                if members[position].own_lock:
                    members[position].lock.release()  # free for whoever is next
            members = [m for p, m in enumerate(members) if p not in leaving]
            stepper = stepper.without(leaving)
    for member in members:
        if not member.history:
            raise RuntimeError(f"{member.run_dir}: no epoch was run (epochs={config.epochs})")
        if shared.main:
            member.lock.check()
            records.atomic_write_text(member.run_dir / records.DONE, "")
        outcomes[member.index] = best(member.history)


def _save(member: Member, stepper: Stepper, position: int, shared: Shared) -> None:
    """The checkpoint first, then the records rewritten from its history, so the records
    always match weights on disk; every write checks the run is still this process's."""
    run_dir, history = member.run_dir, member.history
    member.lock.check()
    if member.config.save_features:  # solo runs only (packs refuse it)
        save_features(stepper.method, shared.benchmark, run_dir, len(history),
                      member.config.save_features)
    state = {"history": history, **stepper.checkpoint(position), "rng": torch.get_rng_state(),
             # What the checkpoint belongs to, checked on resume (checkpoint.run_identity).
             "config_hash": records.config_hash(member.config.to_dict()), "epoch": len(history)}
    if shared.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    save_checkpoint(run_dir / records.CHECKPOINT, state)
    member.lock.check()
    records.write_metrics(run_dir, history)
    records.atomic_write_json(run_dir / records.BEST, best(history))


def _fail(member: Member, message: str, *, main: bool) -> NonFiniteLossError:
    """The error record of a member whose loss or record is not finite."""
    error = NonFiniteLossError(message)
    if main:
        member.lock.check()
        records.atomic_write_json(member.run_dir / records.ERROR,
                                  {"error": type(error).__name__, "message": str(error)})
    return error
