"""Train K runs as one pack (:mod:`endebias.training.packed`), each into its own run folder
with the records and checkpoint a solo :func:`endebias.training.fit.fit` writes.

Each member is resumed from its own solo-format checkpoint, reported and stopped on its
own: a member whose ``on_epoch`` raises (a sweep prunes this way) or whose loss turns
non-finite leaves the pack at the end of that epoch, and the pack is rebuilt from the
other members' weights and optimiser state. Members resumed at different epochs train as
separate packs, one after the other.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from endebias.data import Benchmark
from endebias.methods import Method
from endebias.metrics import aligned_groups, group_counts
from endebias.training import distributed, records
from endebias.training.checkpoint import load_checkpoint, save_checkpoint
from endebias.training.config import TrainConfig
from endebias.training.epoch import NonFiniteLossError
from endebias.training.fastpath import FastPath
from endebias.training.fit import (
    RunAlreadyExistsError,
    existing_run,
    format_epoch,
    load_benchmark,
    resolve_device,
)
from endebias.training.packed import (
    PackedMethod,
    PackError,
    build_packed,
    check_packable,
    join_optimizer_states,
    member_optimizer_state,
    member_state,
    pack_key,
)
from endebias.training.packed_epoch import (
    evaluate_packed,
    non_finite_record,
    train_packed_epoch,
)
from endebias.training.prepared import build_run_method
from endebias.training.run_lock import RunInUseError, RunLock

log = logging.getLogger(__name__)

MemberCallback = Callable[[int, int, dict[str, Any]], None]
Outcome = dict[str, Any] | Exception


@dataclass
class Member:
    index: int  # position in the caller's list
    config: TrainConfig
    run_dir: Path
    solo: Method
    lock: RunLock
    state: dict[str, Any] = field(default_factory=dict)  # the solo-format checkpoint
    history: list[dict[str, Any]] = field(default_factory=list)


def _best(history: list[dict[str, Any]]) -> dict[str, Any]:
    return max(history, key=lambda r: (r["valid_acc"], -r["epoch"]))


def fit_packed(
    configs: Sequence[TrainConfig],
    run_dirs: Sequence[str | Path],
    *,
    data_dir: str | None = None,
    resume: bool = False,
    on_epoch: MemberCallback | None = None,
    echo: Callable[[int, str], None] | None = None,
) -> list[Outcome]:
    """Train ``configs[i]`` into ``run_dirs[i]`` as one pack; per run, its best-by-valid
    record or the exception that stopped it. ``on_epoch(i, epoch, record)`` runs after run
    i's records are written; raising stops run i only."""
    if not configs or len(configs) != len(run_dirs):
        raise ValueError("fit_packed needs one run folder per config, and at least one config")
    for config in configs:
        check_packable(config)
    if len({pack_key(c) for c in configs}) > 1:
        raise PackError("these runs cannot share batches: they differ in more than method options")
    if distributed.launched_by_torchrun():
        raise PackError("packed runs train in one process; launch them without torchrun")
    config = configs[0]
    outcomes: list[Outcome | None] = [None] * len(configs)
    with contextlib.ExitStack() as locks:
        todo = []
        for index, (cfg, run_dir) in enumerate(zip(configs, run_dirs, strict=True)):
            # fit's rules, per member: the folder's lock first, then what it holds.
            try:
                lock = RunLock.acquire(run_dir)
            except RunInUseError as error:
                outcomes[index] = error
                continue
            locks.callback(lock.release)
            records.remove_temp_files(Path(run_dir))
            try:
                finished = existing_run(cfg, Path(run_dir), resume=resume)
            except RunAlreadyExistsError as error:  # this member's folder only
                outcomes[index] = error
                lock.release()
                continue
            if finished is not None:
                outcomes[index] = finished
            else:
                todo.append((index, cfg, Path(run_dir), lock))
        if todo:
            device = resolve_device(config.device)
            torch.manual_seed(config.seed)
            try:
                benchmark = load_benchmark(config, data_dir=data_dir, device=device)
            except BaseException:
                for *_, lock in todo:
                    lock.abandon()  # a failed start leaves no run folder behind, as fit
                raise
            members = []
            for item in todo:
                try:
                    members.append(_member(*item, benchmark, resume))
                except ValueError as error:  # its options, or a resume it refuses
                    outcomes[item[0]] = error
                    item[-1].abandon()
            for member in members:
                member.lock.check()
                records.atomic_write_json(member.run_dir / records.CONFIG, member.config.to_dict())
                (member.run_dir / records.ERROR).unlink(missing_ok=True)
            for done in sorted({len(m.history) for m in members}):
                group = [m for m in members if len(m.history) == done]
                _Pack(group, benchmark, device, on_epoch, echo).run(outcomes)
    return outcomes  # type: ignore[return-value]


def _member(
    index: int, config: TrainConfig, run_dir: Path, lock: RunLock, benchmark: Benchmark,
    resume: bool,
) -> Member:
    solo = build_run_method(config, benchmark)  # the solo run's initial weights, exactly
    member = Member(index, config, run_dir, solo, lock, {"method": solo.state_dict()})
    state = load_checkpoint(run_dir) if resume else None  # verified; falls back to .prev
    if state is not None:
        member.state, member.history = state, list(state["history"])
        log.info("resuming %s after epoch %d", run_dir, len(member.history))
    elif resume and records.read_metrics(run_dir):
        raise ValueError(f"{run_dir} has finished epochs on record but no checkpoint; "
                         "--resume refuses (move the folder away to train the run again)")
    return member


class _Pack:
    """Members at the same epoch, trained together until each finishes or stops."""

    def __init__(self, members: list[Member], benchmark: Benchmark, device: torch.device,
                 on_epoch: MemberCallback | None, echo: Callable[[int, str], None] | None):
        self.members, self.benchmark, self.device = members, benchmark, device
        self.config = members[0].config
        self.on_epoch, self.echo = on_epoch, echo
        self.fast = FastPath.resolve(
            device, amp=self.config.amp, compile=self.config.compile,
            channels_last=self.config.channels_last,
        )
        if device.type == "cuda":
            # Fixed batch shapes, as in a solo run: cuDNN times its kernels once per shape.
            torch.backends.cudnn.benchmark = True
        train = benchmark.train
        counts = group_counts(train.targets, train.targets, train.biases,
                              num_targets=benchmark.num_targets, num_biases=benchmark.num_biases)[0]
        aligned = benchmark.aligned if benchmark.aligned is not None else aligned_groups(counts)
        self.aligned = aligned.to(counts.device)
        # Packed methods have one optimizer group, "model"; older checkpoints one optimiser.
        solo = [m.state.get("optimizers", {}).get("model", m.state.get("optimizer"))
                for m in members]
        first = members[0].state
        self._build([m.state["method"] for m in members], None if solo[0] is None else solo,
                    first.get("schedulers", {}).get("model", first.get("scheduler")))

    def _build(self, states: list[dict[str, Any]], optimizer_states: list[dict[str, Any]] | None,
               scheduler_state: dict[str, Any] | None) -> None:
        config = self.config
        self.packed: PackedMethod = build_packed(
            [m.solo for m in self.members], states, model_options=config.model_options,
            num_classes=self.benchmark.num_targets, in_channels=self.benchmark.input_shape[0],
        ).to(self.device)
        self.fast.apply(self.packed)
        self.names = [name for name, _ in self.packed.named_parameters()]
        self.optimizer = torch.optim.Adam(
            self.packed.parameters(), lr=config.lr, weight_decay=config.weight_decay,
            fused=True if self.device.type == "cuda" else None,
        )
        if optimizer_states is not None:
            self.optimizer.load_state_dict(join_optimizer_states(optimizer_states, self.names))
        self.scheduler = torch.optim.lr_scheduler.StepLR(
            self.optimizer, config.lr_step, gamma=config.lr_gamma
        )
        if scheduler_state is not None:
            self.scheduler.load_state_dict(scheduler_state)

    def _drop(self, leaving: set[int]) -> None:
        """Rebuild the pack without the members at positions ``leaving``."""
        size = len(self.members)
        state, optimizer = self.packed.state_dict(), self.optimizer.state_dict()
        keep = [p for p in range(size) if p not in leaving]
        for position in leaving:
            self.members[position].lock.release()  # its folder is free for whoever is next
        self.members = [self.members[p] for p in keep]
        if self.members:
            self._build([member_state(state, p, size) for p in keep],
                        [member_optimizer_state(optimizer, self.names, p, size) for p in keep],
                        self.scheduler.state_dict())

    def run(self, outcomes: list[Outcome | None]) -> None:
        names = list(self.benchmark.evaluations)
        log.info("pack of %d on %s, fast path: %s", len(self.members), self.device,
                 self.fast.describe())
        for epoch in range(len(self.members[0].history) + 1, self.config.epochs + 1):
            if not self.members:
                return
            started = time.perf_counter()
            lr = self.optimizer.param_groups[0]["lr"]
            stats, diverged = train_packed_epoch(
                self.packed, self.optimizer, self.benchmark, self.config, epoch, self.fast
            )
            self.scheduler.step()
            train_seconds = time.perf_counter() - started
            metrics = {
                name: evaluate_packed(self.packed, self.benchmark, split, aligned=self.aligned,
                                      batch_size=self.config.eval_batch_size, fast=self.fast)
                for name, split in self.benchmark.evaluations.items()
            }
            seconds = time.perf_counter() - started
            leaving: set[int] = set()
            state, optimizer = self.packed.state_dict(), self.optimizer.state_dict()
            size = len(self.members)
            for position, member in enumerate(self.members):
                if position in diverged:
                    leaving.add(position)
                    outcomes[member.index] = self._fail(member, diverged[position])
                    continue
                record: dict[str, Any] = {"epoch": epoch, "lr": lr,
                                          "fast_path": self.fast.describe()}
                record.update({f"train_{k}": v for k, v in stats[position].items()})
                record["train_seconds"] = train_seconds
                for name in names:
                    record.update({f"{name}_{k}": v for k, v in metrics[name][position].items()})
                record["seconds"] = seconds
                # Seconds are the whole pack's: one epoch of this run cost seconds / pack_size.
                record["pack_size"] = size
                problem = non_finite_record(record, epoch)
                if problem is not None:  # as fit: an overflow in the epoch's sums
                    leaving.add(position)
                    outcomes[member.index] = self._fail(member, problem)
                    continue
                member.history.append(records.json_safe(record))
                member.lock.check()
                save_checkpoint(member.run_dir / records.CHECKPOINT, {
                    "history": member.history,
                    "method": member_state(state, position, size),
                    "optimizers": {"model": member_optimizer_state(optimizer, self.names,
                                                                   position, size)},
                    "schedulers": {"model": self.scheduler.state_dict()},
                    "rng": torch.get_rng_state(),
                })
                member.lock.check()
                records.write_metrics(member.run_dir, member.history)
                records.atomic_write_json(member.run_dir / records.BEST, _best(member.history))
                if self.echo is not None:
                    self.echo(member.index, format_epoch(record, names))
                if self.on_epoch is not None:
                    try:
                        self.on_epoch(member.index, epoch, record)
                    except Exception as stop:  # noqa: BLE001  (it stops this member only)
                        leaving.add(position)
                        outcomes[member.index] = stop
            if leaving:
                self._drop(leaving)
        for member in self.members:
            member.lock.check()
            (member.run_dir / records.DONE).write_text("")
            outcomes[member.index] = _best(member.history)

    @staticmethod
    def _fail(member: Member, message: str) -> NonFiniteLossError:
        """The solo run's error record; the folder keeps its last good checkpoint."""
        error = NonFiniteLossError(message)
        member.lock.check()
        records.atomic_write_json(member.run_dir / records.ERROR,
                                  {"error": type(error).__name__, "message": str(error)})
        return error
