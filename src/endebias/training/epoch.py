"""One training epoch, one evaluation pass and the per-epoch feature dump: the inner loops
that ``endebias.training.fit.fit`` strings together (and that benchmarks time on their own)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from endebias.data import Benchmark, Split
from endebias.methods import Method
from endebias.metrics import group_counts, group_metrics
from endebias.training import distributed, records
from endebias.training.config import TrainConfig
from endebias.training.distributed import DistContext
from endebias.training.fastpath import FastPath
from endebias.training.optimizers import Optimizers

StepFn = Callable[[Tensor, Tensor, Tensor, Tensor], tuple[Tensor, Tensor, dict[str, Tensor]]]


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops at its last good checkpoint."""


def random_subset(split: Split, size: int | None, seed: int) -> Split:
    if size is None or size >= len(split):
        return split
    generator = torch.Generator().manual_seed(seed)
    return split.subset(torch.randperm(len(split), generator=generator)[:size])


@dataclass
class StepRunner:
    """How steps run: the fast-path options and, in a multi-process run, the process
    group and the step wrapped in DDP. The default is the plain one-process eager step."""

    step: StepFn
    fast: FastPath = field(default_factory=FastPath)
    context: DistContext | None = None


@torch.no_grad()
def evaluate(
    method: Method,
    benchmark: Benchmark,
    split: Split,
    *,
    batch_size: int,
    aligned: Tensor,
    fast: FastPath | None = None,
    reduce_counts: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Any]:
    """Group metrics of ``split``; ``reduce_counts`` sums the counts of the processes'
    shares in a multi-process run."""
    method.eval()
    fast = fast or FastPath()
    device = split.targets.device
    counts = None
    for start in range(0, len(split), batch_size):
        inputs = fast.inputs(benchmark.prepare(split.inputs[start : start + batch_size]))
        with fast.autocast(device):
            predictions = method(inputs).argmax(dim=1)
        batch_counts = group_counts(
            predictions,
            split.targets[start : start + batch_size],
            split.biases[start : start + batch_size],
            num_targets=benchmark.num_targets,
            num_biases=benchmark.num_biases,
        )
        counts = batch_counts if counts is None else counts + batch_counts
    if counts is None:  # an empty split, or a process's empty share of a small one
        shape = (2, benchmark.num_targets, benchmark.num_biases)
        counts = torch.zeros(shape, dtype=torch.long, device=device)
    if reduce_counts is not None:
        counts = reduce_counts(counts)
    return group_metrics(counts, aligned)


def train_epoch(
    method: Method,
    optimizer: torch.optim.Optimizer | Optimizers,
    benchmark: Benchmark,
    config: TrainConfig,
    epoch: int,
    progress: bool,
    runner: StepRunner | None = None,
) -> dict[str, float]:
    method.train()
    runner = runner or StepRunner(method.training_step)
    train = benchmark.train
    device = train.targets.device
    # Every process draws the same order and takes its own share of each global batch.
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    order = torch.randperm(len(train), generator=generator).to(device)
    # Sums stay on the device and are read once per epoch; on CPU a per-step finiteness
    # check is free, on a GPU it would cost a sync, so it runs every 50 steps there (and
    # the progress bar shows the loss only when it is read anyway).
    check_every = 1 if device.type == "cpu" else 50
    sums: dict[str, Tensor] = {}
    correct = torch.zeros((), dtype=torch.long, device=device)
    batches = distributed.global_batches(order, config.batch_size, runner.context)
    bar = tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not progress, unit="batch")
    for step, batch in enumerate(bar):
        indices, weight = distributed.local_share(batch, runner.context)
        inputs = runner.fast.inputs(benchmark.prepare(train.inputs[indices]))
        targets, biases = train.targets[indices], train.biases[indices]
        with runner.fast.autocast(device):
            loss, logits, parts = runner.step(inputs, targets, biases, indices)
        if step % check_every == 0 or step == len(batches) - 1:
            if not distributed.all_finite(loss, runner.context):
                shown = ", ".join(f"{k}={float(v):.4g}" for k, v in parts.items())
                raise NonFiniteLossError(
                    f"non-finite training loss {float(loss.detach())} at epoch {epoch}, "
                    f"step {step} ({shown})"
                )
            if progress and step % 10 == 0:
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}")
        optimizer.zero_grad()
        # weight != 1 only for uneven shares in a multi-process run (endebias.training.distributed).
        (loss if weight == 1.0 else loss * weight).backward()
        optimizer.step()
        size = len(indices)
        for key, value in {"loss": loss.detach(), **parts}.items():
            sums[key] = sums.get(key, 0) + value * size
        correct += (logits.detach().argmax(dim=1) == targets).sum()
    if runner.context is not None:
        totals = torch.stack([*(v.double() for v in sums.values()), correct.double()])
        totals = distributed.sum_over_ranks(totals, runner.context)
        sums, correct = dict(zip(sums, totals[:-1], strict=True)), totals[-1]
    count = len(train)
    result = {key: float(value) / count for key, value in sums.items()}
    result["acc"] = float(correct) / count
    return result


@torch.no_grad()
def save_features(
    method: Method, benchmark: Benchmark, run_dir: Path, epoch: int, count: int
) -> None:
    """Write the feature-layer outputs of a fixed test subset as ``features/epoch_NNN.npy``
    (numpy, so plots read them without torch), with ``features/labels.npz``; both written
    atomically, and a damaged ``labels.npz`` is written again."""
    import numpy as np

    from endebias.hooks import capture_features

    split = random_subset(
        benchmark.evaluations.get("unbiased_test", benchmark.evaluations["valid"]), count, 1
    )
    folder = run_dir / "features"
    folder.mkdir(exist_ok=True)
    layer = getattr(method, "layer", None) or method.model.feature_layer
    method.eval()
    with capture_features(method.model, layer) as captured:
        method(benchmark.prepare(split.inputs))
    features = captured.get().reshape(len(split), -1).float().cpu().numpy()
    targets, biases = split.targets.cpu().numpy(), split.biases.cpu().numpy()
    labels = folder / "labels.npz"
    if not _labels_match(labels, targets, biases):  # missing, damaged or stale: rewrite
        records.atomic_write(
            labels, lambda handle: np.savez(handle, targets=targets, biases=biases)
        )
    records.atomic_write(
        folder / f"epoch_{epoch:03d}.npy", lambda handle: np.save(handle, features)
    )


def _labels_match(path: Path, targets: Any, biases: Any) -> bool:
    import zipfile

    import numpy as np

    try:
        with np.load(path) as saved:
            return bool(np.array_equal(saved["targets"], targets)
                        and np.array_equal(saved["biases"], biases))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return False
