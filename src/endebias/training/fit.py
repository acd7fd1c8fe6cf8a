"""The fit/evaluate loop. It knows nothing about a specific method or dataset: it sees a
:class:`~endebias.data.Benchmark`, a model from the registry and a
:class:`~endebias.methods.Method`, and writes the run's records.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch

from endebias.data import Benchmark, build_dataset
from endebias.methods import build_method
from endebias.metrics import aligned_groups, group_counts
from endebias.models import build_model
from endebias.training import distributed, records
from endebias.training.config import TrainConfig
from endebias.training.epoch import (
    NonFiniteLossError,
    StepRunner,
    evaluate,
    random_subset,
    save_features,
    train_epoch,
)
from endebias.training.fastpath import FastPath

log = logging.getLogger(__name__)

EpochCallback = Callable[[int, dict[str, Any]], None]


class RunAlreadyExistsError(RuntimeError):
    """The run folder holds another run; pass resume=True to continue it."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device")
    return torch.device(name)


def load_benchmark(config: TrainConfig, *, data_dir: str | None, device: torch.device) -> Benchmark:
    benchmark = build_dataset(
        config.dataset, data_dir=data_dir, seed=config.seed, **config.dataset_options
    )
    # Subsets are fixed by the config's seed (train) or by a constant (evaluation), so
    # runs with different seeds are evaluated on the same images.
    benchmark.train = random_subset(benchmark.train, config.train_subset, config.seed)
    benchmark.evaluations = {
        name: random_subset(split, config.eval_subset, 0)
        for name, split in benchmark.evaluations.items()
    }
    benchmark.train = benchmark.train.to(device)
    benchmark.evaluations = {name: s.to(device) for name, s in benchmark.evaluations.items()}
    return benchmark


def _save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


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
) -> dict[str, Any]:
    """Train one run into ``run_dir`` and return its best-by-valid record.

    ``prepare_benchmark(benchmark)``, if given, may change the loaded benchmark in place
    before anything is built from it (pseudo bias labels replace the training ones).

    ``resume=True`` continues from the last checkpoint (a finished run returns at once).
    ``on_epoch(epoch, record)`` runs after each epoch's records are written; it may raise
    to stop the run (sweeps prune this way).

    Launched by ``torchrun`` with several processes, this joins their process group (see
    :mod:`endebias.training.distributed`; the caller may tear it down after): one run over the
    global batch, records and checkpoints written by rank 0 only, ``on_epoch`` and
    ``echo`` called on rank 0 only.
    """
    run_dir = Path(run_dir)
    config_path = run_dir / records.CONFIG
    checkpoint_path = run_dir / records.CHECKPOINT
    if config_path.exists():
        recorded = records.read_json(config_path)
        if recorded != config.to_dict():
            raise RunAlreadyExistsError(
                f"{run_dir} holds a run with another config; choose another --out folder"
            )
        if not resume:
            raise RunAlreadyExistsError(
                f"{run_dir} already holds this run; pass --resume to continue it"
            )
        if (run_dir / records.DONE).exists():
            return records.read_json(run_dir / records.BEST)

    device = resolve_device(config.device)
    context, _ = distributed.setup(device.type)
    device = distributed.local_device(device, context)
    main = context is None or context.is_main
    torch.manual_seed(config.seed)
    benchmark = load_benchmark(config, data_dir=data_dir, device=device)
    if prepare_benchmark is not None:
        prepare_benchmark(benchmark)
    train_counts = group_counts(
        benchmark.train.targets,
        benchmark.train.targets,
        benchmark.train.biases,
        num_targets=benchmark.num_targets,
        num_biases=benchmark.num_biases,
    )[0]
    aligned = benchmark.aligned if benchmark.aligned is not None else aligned_groups(train_counts)
    aligned = aligned.to(train_counts.device)

    torch.manual_seed(config.seed)
    model = build_model(
        config.model,
        num_classes=benchmark.num_targets,
        input_shape=benchmark.input_shape,
        **config.model_options,
    )
    method = build_method(
        config.method,
        model=model,
        num_targets=benchmark.num_targets,
        num_biases=benchmark.num_biases,
        train_targets=benchmark.train.targets,
        train_biases=benchmark.train.biases,
        **config.method_options,
    ).to(device)
    distributed.prepare_method(method, context, device)
    fast = FastPath.resolve(
        device, amp=config.amp, compile=config.compile, channels_last=config.channels_last
    )
    fast.apply(method)
    if device.type == "cuda":
        # Fixed batch shapes: cuDNN times its kernels once per shape and keeps the fastest.
        torch.backends.cudnn.benchmark = True
    optimizer = torch.optim.Adam(
        method.parameters(), lr=config.lr, weight_decay=config.weight_decay,
        fused=True if device.type == "cuda" else None,  # one kernel for the whole update
    )
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.lr_step, gamma=config.lr_gamma)
    # Only now, with every option checked, does the folder become a run; every process
    # has checked it above before rank 0 writes.
    distributed.barrier(context)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        records.atomic_write_json(config_path, config.to_dict())
        (run_dir / records.ERROR).unlink(missing_ok=True)

    history: list[dict[str, Any]] = []
    if resume and checkpoint_path.exists():
        state = torch.load(checkpoint_path, map_location=device, weights_only=True)
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        history = state["history"]
        log.info("resuming %s after epoch %d", run_dir, len(history))

    runner = StepRunner(distributed.wrap_step(method, context, device), fast, context)
    # Each process evaluates its share of every split; the counts are summed.
    evaluations = {
        name: distributed.shard_split(split, context)
        for name, split in benchmark.evaluations.items()
    }
    reduce_counts = partial(distributed.sum_over_ranks, context=context) if context else None
    progress = progress and main
    if main:
        log.info("device %s, fast path: %s", device, fast.describe())
    names = list(benchmark.evaluations)
    try:
        for epoch in range(len(history) + 1, config.epochs + 1):
            started = time.perf_counter()
            lr = optimizer.param_groups[0]["lr"]
            train_stats = train_epoch(
                method, optimizer, benchmark, config, epoch, progress, runner
            )
            scheduler.step()
            record: dict[str, Any] = {"epoch": epoch, "lr": lr}
            record.update({f"train_{k}": v for k, v in train_stats.items()})
            record["train_seconds"] = time.perf_counter() - started
            for name, split in evaluations.items():
                metrics = evaluate(
                    method, benchmark, split, batch_size=config.eval_batch_size,
                    aligned=aligned, fast=fast, reduce_counts=reduce_counts,
                )
                record.update({f"{name}_{k}": v for k, v in metrics.items()})
            record["seconds"] = time.perf_counter() - started
            history.append(records.json_safe(record))
            if not main:
                continue
            if config.save_features:
                save_features(method, benchmark, run_dir, epoch, config.save_features)
            # The checkpoint carries the history, so the records rewritten from it after a
            # kill always match the weights they describe.
            _save_checkpoint(
                checkpoint_path,
                {
                    "history": history,
                    "method": method.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "rng": torch.get_rng_state(),
                },
            )
            records.write_metrics(run_dir, history)
            records.atomic_write_json(run_dir / records.BEST, _best(history))
            if echo is not None:
                echo(format_epoch(record, names))
            if on_epoch is not None:
                on_epoch(epoch, record)
    except NonFiniteLossError as error:
        if main:
            records.atomic_write_json(
                run_dir / records.ERROR, {"error": type(error).__name__, "message": str(error)}
            )
        raise
    if not history:
        raise RuntimeError(f"{run_dir}: no epoch was run (epochs={config.epochs})")
    best = _best(history)
    if main:
        (run_dir / records.DONE).write_text("")
    return best


def summary_line(best: dict[str, Any]) -> str:
    keys = [k for k, v in best.items() if k.endswith("_acc") and isinstance(v, float)]
    shown = ", ".join(f"{k} {100 * best[k]:.2f}" for k in keys if not k.startswith("train"))
    return f"best epoch {best['epoch']} by valid accuracy: {shown}"
