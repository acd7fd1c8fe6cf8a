"""The fit/evaluate loop. It knows nothing about a specific method or dataset: it sees a
:class:`~endebias.data.Benchmark`, a model from the registry and a
:class:`~endebias.methods.Method`, and writes the run's records.

A run goes through four steps, each a function below:

1. **claim** the run folder (an exclusive lock, before anything else) and read what it
   already holds;
2. **prepare** everything (data, model, method, optimiser) and check it with one forward
   pass, before the folder becomes a run, so a failed start leaves nothing behind;
3. **resume** from the latest good checkpoint, if asked;
4. **loop** over epochs, writing records and a checkpoint after each, then **finish**.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from endebias.data import Benchmark, build_dataset, check_dataset_options
from endebias.training import distributed, records
from endebias.training.checkpoint import load_checkpoint, save_checkpoint
from endebias.training.config import TrainConfig
from endebias.training.epoch import NonFiniteLossError, evaluate, random_subset, train_epoch
from endebias.training.prepared import PreparedRun, prepare
from endebias.training.run_lock import RunLock

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, Any]], None]
# Dataset builder arguments the trainer passes itself.


class RunAlreadyExistsError(RuntimeError):
    """The run folder holds another run; pass resume=True to continue it."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device")
    return torch.device(name)


def _split_sizes(benchmark: Benchmark) -> dict[str, int]:
    return {"train": len(benchmark.train), **{n: len(s) for n, s in benchmark.evaluations.items()}}


def load_benchmark(config: TrainConfig, *, data_dir: str | None, device: torch.device) -> Benchmark:
    check_dataset_options(config.dataset, config.dataset_options)
    benchmark = build_dataset(
        config.dataset, data_dir=data_dir, seed=config.seed, **config.dataset_options
    )
    # Subsets are fixed by the config's seed (train) or by a constant (evaluation), so
    # runs with different seeds are evaluated on the same images.
    full = _split_sizes(benchmark)
    benchmark.train = random_subset(benchmark.train, config.train_subset, config.seed)
    benchmark.evaluations = {
        name: random_subset(split, config.eval_subset, 0)
        for name, split in benchmark.evaluations.items()
    }
    if config.train_subset is not None or config.eval_subset is not None:
        # The dataset logged its full sizes; say what this run actually uses.
        used = _split_sizes(benchmark)
        log.info("%s subsets: %s", config.dataset,
                 ", ".join(f"{name} {used[name]} of {full[name]}" for name in full))
    benchmark.train = benchmark.train.to(device)
    benchmark.evaluations = {name: s.to(device) for name, s in benchmark.evaluations.items()}
    return benchmark


def _best(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The epoch with the highest valid accuracy (the first such epoch on ties), as the paper."""
    return max(history, key=lambda r: (r["valid_acc"], -r["epoch"]))


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


def existing_run(config: TrainConfig, run_dir: Path, *, resume: bool) -> dict[str, Any] | None:
    """Step 1: what the folder holds. None for a new run or one to continue; the best
    record of a finished run; an error for another run, or this run without ``resume``."""
    config_path = run_dir / records.CONFIG
    if not config_path.exists():
        return None
    if records.read_json(config_path) != config.to_dict():
        raise RunAlreadyExistsError(
            f"{run_dir} holds a run with another config; choose another --out folder"
        )
    if not resume:
        raise RunAlreadyExistsError(
            f"{run_dir} already holds this run; pass --resume to continue it"
        )
    if (run_dir / records.DONE).exists():
        return records.read_json_object(run_dir / records.BEST)
    return None


def restore(run: PreparedRun) -> list[dict[str, Any]]:
    """Step 3: load the latest good checkpoint into the prepared run; its epoch history."""
    state = load_checkpoint(run.run_dir)
    if state is None:
        if records.read_metrics(run.run_dir):
            # Starting over would overwrite finished epochs that no checkpoint can restore.
            raise ValueError(f"{run.run_dir} has finished epochs on record but no checkpoint; "
                             f"--resume refuses (move the folder away to train the run again)")
        return []
    run.method.load_state_dict(state["method"])
    run.optimizers.load_state_dict(state)
    torch.set_rng_state(state["rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    log.info("resuming %s after epoch %d", run.run_dir, len(state["history"]))
    return list(state["history"])


def run_epoch(run: PreparedRun, epoch: int, *, progress: bool) -> dict[str, Any]:
    """Train one epoch and evaluate every split: the epoch's record. A non-finite loss or
    metric raises :class:`NonFiniteLossError` (nothing of the epoch is kept)."""
    config = run.config
    started = time.perf_counter()
    rates = run.optimizers.learning_rates()
    train_stats = train_epoch(
        run.method, run.optimizers, run.benchmark, config, epoch, progress, run.runner
    )
    run.optimizers.end_epoch()
    # The arithmetic "auto" chose on this machine (config.json keeps the option as given).
    record: dict[str, Any] = {"epoch": epoch, **rates, "fast_path": run.fast.describe()}
    record.update({f"train_{k}": v for k, v in train_stats.items()})
    record["train_seconds"] = time.perf_counter() - started
    for name, split in run.evaluations.items():
        metrics = evaluate(
            run.method, run.benchmark, split, batch_size=config.eval_batch_size,
            aligned=run.aligned, fast=run.fast, reduce_counts=run.reduce_counts,
        )
        record.update({f"{name}_{k}": v for k, v in metrics.items()})
    record["seconds"] = time.perf_counter() - started
    # A loss can stay finite per step and overflow in the epoch's sums (alpha = 1e38).
    # Accuracies of an empty group are NaN by design (metrics.py), so only the training
    # losses and the model-selection accuracy count.
    for key, value in record.items():
        watched = key.startswith("train_") or key == "valid_acc"
        if watched and isinstance(value, float) and not math.isfinite(value):
            raise NonFiniteLossError(f"non-finite {key} ({value}) at epoch {epoch}")
    return records.json_safe(record)


def save_epoch(run: PreparedRun, lock: RunLock, history: list[dict[str, Any]]) -> None:
    """The checkpoint first, then the records rewritten from its history, so the records
    always match weights on disk; every write checks the run is still this process's."""
    from endebias.training.epoch import save_features

    lock.check()
    if run.config.save_features:
        save_features(
            run.method, run.benchmark, run.run_dir, len(history), run.config.save_features
        )
    state = {
        "history": history,
        "method": run.method.state_dict(),
        **run.optimizers.state_dict(),
        "rng": torch.get_rng_state(),
    }
    if run.device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    save_checkpoint(run.run_dir / records.CHECKPOINT, state)
    lock.check()
    records.write_metrics(run.run_dir, history)
    records.atomic_write_json(run.run_dir / records.BEST, _best(history))


def fit(
    config: TrainConfig,
    run_dir: str | Path,
    *,
    data_dir: str | None = None,
    resume: bool = False,
    progress: bool = True,
    on_epoch: EpochCallback | None = None,
    echo: Callable[[str], None] | None = None,
    prepare_benchmark: Callable[[Benchmark], None] | None = None,
    lock: RunLock | None = None,
) -> dict[str, Any]:
    """Train one run into ``run_dir`` and return its best-by-valid record.

    ``lock``, if given, is the caller's lock on ``run_dir`` (the pseudo-label pipeline
    holds its folder across all three stages); fit uses it and leaves it held.

    ``prepare_benchmark(benchmark)``, if given, may change the loaded benchmark in place
    before anything is built from it (pseudo bias labels replace the training ones).

    ``resume=True`` continues from the last checkpoint (a finished run returns at once; a
    folder without a run starts one). ``on_epoch(epoch, record)`` runs after each epoch's
    records are written; it may raise to stop the run (sweeps prune this way).

    Launched by ``torchrun`` with several processes, this joins their process group (see
    :mod:`endebias.training.distributed`; the caller may tear it down after): one run over the
    global batch, records and checkpoints written (and the folder locked) by rank 0 only,
    ``on_epoch`` and ``echo`` called on rank 0 only.
    """
    if config.bias_labels != "given" and prepare_benchmark is None:
        # A pseudo-label config from any caller (a sweep trial, the Python API) makes its
        # labels first: trained on the dataset's own, it would record what it did not do.
        from endebias.training.pseudo_label_stages import fit_with_bias_labels

        if lock is not None:
            raise ValueError("fit: a pseudo-label run takes its own lock on its folder")
        return fit_with_bias_labels(config, run_dir, data_dir=data_dir, resume=resume,
                                    progress=progress, on_epoch=on_epoch, echo=echo)
    run_dir = Path(run_dir)
    device = resolve_device(config.device)
    context, _ = distributed.setup(device.type)
    main = context is None or context.is_main
    own_lock = lock is None
    if lock is None:
        lock = RunLock.acquire(run_dir) if main else RunLock.unlocked(run_dir)
    try:
        if main:  # a killed writer's half-written files: ours to clear, as the lock holder
            for path in records.remove_temp_files(run_dir):
                log.info("removed %s, left by an interrupted write", path)
        finished = existing_run(config, run_dir, resume=resume)
        if finished is not None:
            return finished
        try:
            run = prepare(config, run_dir, data_dir=data_dir, device=device, context=context,
                          prepare_benchmark=prepare_benchmark)
        except BaseException:
            if own_lock:
                lock.abandon()  # a failed start leaves no run folder behind
            raise
        if main:
            lock.check()
            records.atomic_write_json(run_dir / records.CONFIG, config.to_dict())
            (run_dir / records.ERROR).unlink(missing_ok=True)
        history = restore(run) if resume else []
        return _loop(run, lock, history, main=main, progress=progress and main,
                     on_epoch=on_epoch, echo=echo)
    finally:
        if own_lock:
            lock.release()


def _loop(
    run: PreparedRun,
    lock: RunLock,
    history: list[dict[str, Any]],
    *,
    main: bool,
    progress: bool,
    on_epoch: EpochCallback | None,
    echo: Callable[[str], None] | None,
) -> dict[str, Any]:
    """Step 4: the epochs still to run, then the ``done`` marker."""
    if main:
        log.info("device %s, fast path: %s", run.device, run.fast.describe())
    names = list(run.benchmark.evaluations)
    try:
        for epoch in range(len(history) + 1, run.config.epochs + 1):
            record = run_epoch(run, epoch, progress=progress)
            history.append(record)
            if not main:
                continue
            save_epoch(run, lock, history)
            if echo is not None:
                echo(format_epoch(record, names))
            if on_epoch is not None:
                on_epoch(epoch, record)
    except NonFiniteLossError as error:
        if main:
            lock.check()
            records.atomic_write_json(
                run.run_dir / records.ERROR,
                {"error": type(error).__name__, "message": str(error)},
            )
        raise
    if not history:
        raise RuntimeError(f"{run.run_dir}: no epoch was run (epochs={run.config.epochs})")
    if main:
        lock.check()
        records.atomic_write_text(run.run_dir / records.DONE, "")
    return _best(history)


def summary_line(best: dict[str, Any]) -> str:
    keys = [k for k, v in best.items() if k.endswith("_acc") and isinstance(v, float)]
    shown = ", ".join(f"{k} {100 * best[k]:.2f}" for k in keys if not k.startswith("train"))
    return f"best epoch {best['epoch']} by valid accuracy: {shown}"
