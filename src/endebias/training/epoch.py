"""One training epoch, one evaluation pass and the per-epoch feature dump of K >= 1 members
(:mod:`endebias.training.steppers`): the inner loops that :mod:`endebias.training.loop`
strings together (and that benchmarks time on their own)."""

from __future__ import annotations

from collections.abc import Callable
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
from endebias.training.feature_labels import feature_split, write_labels
from endebias.training.steppers import Stepper


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the run stops at its last good checkpoint."""


@torch.no_grad()
def evaluate(
    stepper: Stepper,
    benchmark: Benchmark,
    split: Split,
    *,
    batch_size: int,
    aligned: Tensor,
    reduce_counts: Callable[[Tensor], Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Each member's group metrics on ``split``; ``reduce_counts`` sums the counts of the
    processes' shares in a multi-process run."""
    stepper.eval()
    fast = stepper.fast
    device = split.targets.device
    shape = (2, benchmark.num_targets, benchmark.num_biases)
    # An empty split, or a process's empty share of a small one, counts zeros.
    counts = [torch.zeros(shape, dtype=torch.long, device=device)
              for _ in range(stepper.members)]
    for start in range(0, len(split), batch_size):
        inputs = fast.inputs(benchmark.prepare(split.inputs[start : start + batch_size]))
        with fast.autocast(device):
            predictions = stepper.logits(inputs).argmax(dim=2)
        targets = split.targets[start : start + batch_size]
        biases = split.biases[start : start + batch_size]
        for position, member_counts in enumerate(counts):
            member_counts += group_counts(
                predictions[:, position], targets, biases,
                num_targets=benchmark.num_targets, num_biases=benchmark.num_biases,
            )
    if reduce_counts is not None:
        counts = [reduce_counts(c) for c in counts]
    return [group_metrics(c, aligned) for c in counts]


def train_epoch(
    stepper: Stepper,
    benchmark: Benchmark,
    config: TrainConfig,
    epoch: int,
    progress: bool,
) -> tuple[list[dict[str, float]], dict[int, str]]:
    """Per-member train statistics, and the members whose loss became non-finite (position
    -> message). A diverged member's loss leaves the summed loss from that step on (its
    weights are not used again); the epoch stops early once no member is left."""
    stepper.train()
    context, fast = stepper.context, stepper.fast
    train = benchmark.train
    device = train.targets.device
    # Every process draws the same order and takes its own share of each global batch.
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    order = torch.randperm(len(train), generator=generator).to(device)
    # Sums stay on the device and are read once per epoch; on CPU a per-step finiteness
    # check is free, on a GPU it would cost a sync, so it runs every 50 steps there (and
    # the progress bar shows the loss only when it is read anyway).
    check_every = 1 if device.type == "cpu" else 50
    size = stepper.members
    live = list(range(size))  # on the host: no device sync per step to know who is left
    diverged: dict[int, str] = {}
    sums: dict[str, Tensor] = {}
    correct = torch.zeros(size, dtype=torch.long, device=device)
    batches = distributed.global_batches(order, config.batch_size, context)
    bar = tqdm(batches, desc=f"epoch {epoch}", leave=False, disable=not progress, unit="batch")
    for step, batch in enumerate(bar):
        indices, weight = distributed.local_share(batch, context)
        inputs = fast.inputs(benchmark.prepare(train.inputs[indices]))
        targets, biases = train.targets[indices], train.biases[indices]
        with fast.autocast(device):
            losses, logits, parts = stepper.step(inputs, targets, biases, indices)
        if step % check_every == 0 or step == len(batches) - 1:
            finite = distributed.finite_members(losses, context)
            for position in [p for p in live if not finite[p]]:
                shown = ", ".join(f"{k}={float(v[position]):.4g}" for k, v in parts.items())
                diverged[position] = (
                    f"non-finite training loss {float(losses[position].detach())} at epoch "
                    f"{epoch}, step {step} ({shown})"
                )
                live.remove(position)
            if not live:
                break
            if progress and step % 10 == 0:
                bar.set_postfix(loss=f"{float(losses.detach().mean()):.3f}")
        stepper.optimizers.zero_grad()
        # Each member's gradient is its own loss's: the sum couples nothing. weight != 1
        # only for uneven shares in a multi-process run (endebias.training.distributed).
        kept = losses if len(live) == size else losses[torch.tensor(live, device=device)]
        (kept.sum() if weight == 1.0 else kept.sum() * weight).backward()
        stepper.optimizers.step()
        count = len(indices)
        for key, value in {"loss": losses.detach(), **parts}.items():
            sums[key] = sums.get(key, 0) + value * count
        correct += (logits.detach().argmax(dim=2) == targets[:, None]).sum(dim=0)
    if context is not None:
        totals = torch.stack([*(v.double() for v in sums.values()), correct.double()])
        totals = distributed.sum_over_ranks(totals, context)
        sums, correct = dict(zip(sums, totals[:-1], strict=True)), totals[-1]
    count = len(train)
    stats = []
    for position in range(size):
        row = {key: float(value[position]) / count for key, value in sums.items()}
        row["acc"] = float(correct[position]) / count
        stats.append(row)
    return stats, diverged


@torch.no_grad()
def save_features(
    method: Method, benchmark: Benchmark, run_dir: Path, epoch: int, count: int
) -> None:
    """Write the feature-layer outputs of a fixed test subset as ``features/epoch_NNN.npy``
    (numpy, so plots read them without torch), with ``features/labels.npz``; both written
    atomically, and a damaged ``labels.npz`` is written again."""
    import numpy as np

    from endebias.hooks import capture_features

    split = feature_split(benchmark, count)
    folder = run_dir / "features"
    folder.mkdir(exist_ok=True)
    layer = getattr(method, "layer", None) or method.model.feature_layer
    method.eval()
    with capture_features(method.model, layer) as captured:
        method(benchmark.prepare(split.inputs))
    features = captured.get().reshape(len(split), -1).float().cpu().numpy()
    write_labels(folder, split)
    records.atomic_write(
        folder / f"epoch_{epoch:03d}.npy", lambda handle: np.save(handle, features)
    )
