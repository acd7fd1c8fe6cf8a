"""One training epoch and one evaluation pass of a pack: ``endebias.training.epoch`` with
per-member losses, accuracies and metrics (the same batches, order and checks)."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from endebias.data import Benchmark, Split
from endebias.metrics import group_counts, group_metrics
from endebias.training.config import TrainConfig
from endebias.training.fastpath import FastPath
from endebias.training.packed import PackedMethod


def train_packed_epoch(
    packed: PackedMethod,
    optimizer: torch.optim.Optimizer,
    benchmark: Benchmark,
    config: TrainConfig,
    epoch: int,
    fast: FastPath,
) -> tuple[list[dict[str, float]], dict[int, str]]:
    """Per-member train statistics, and the members whose loss became non-finite (position
    -> message). A diverged member's loss leaves the sum from that step on; its weights are
    not used again (the pack drops it at the end of the epoch)."""
    packed.train()
    train = benchmark.train
    device = train.targets.device
    size = packed.members
    # The solo run's order: the same generator seed, so the same batches.
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    order = torch.randperm(len(train), generator=generator).to(device)
    check_every = 1 if device.type == "cpu" else 50  # as the solo epoch: no per-step sync on GPU
    live = list(range(size))  # on the host: no device sync per step to know who is left
    diverged: dict[int, str] = {}
    sums: dict[str, Tensor] = {}
    correct = torch.zeros(size, dtype=torch.long, device=device)
    batches = list(order.split(config.batch_size))
    for step, indices in enumerate(batches):
        inputs = fast.inputs(benchmark.prepare(train.inputs[indices]))
        targets, biases = train.targets[indices], train.biases[indices]
        with fast.autocast(device):
            losses, logits, parts = packed.training_step(inputs, targets, biases)
        if step % check_every == 0 or step == len(batches) - 1:
            finite = torch.isfinite(losses.detach()).tolist()
            for position in [p for p in live if not finite[p]]:
                shown = ", ".join(f"{k}={float(v[position]):.4g}" for k, v in parts.items())
                diverged[position] = (
                    f"non-finite training loss {float(losses[position].detach())} at epoch "
                    f"{epoch}, step {step} ({shown})"
                )
                live.remove(position)
        optimizer.zero_grad(set_to_none=True)
        # Each member's gradient is its own loss's: the sum couples nothing.
        kept = losses if len(live) == size else losses[torch.tensor(live, device=device)]
        kept.sum().backward()
        optimizer.step()
        count = len(indices)
        for key, value in {"loss": losses.detach(), **parts}.items():
            sums[key] = sums.get(key, 0) + value * count
        correct += (logits.detach().argmax(dim=2) == targets[:, None]).sum(dim=0)
    total = len(train)
    stats = []
    for position in range(size):
        row = {key: float(value[position]) / total for key, value in sums.items()}
        row["acc"] = float(correct[position]) / total
        stats.append(row)
    return stats, diverged


@torch.no_grad()
def evaluate_packed(
    packed: PackedMethod,
    benchmark: Benchmark,
    split: Split,
    *,
    batch_size: int,
    aligned: Tensor,
    fast: FastPath,
) -> list[dict[str, Any]]:
    """Each member's group metrics on ``split``."""
    packed.eval()
    device = split.targets.device
    shape = (2, benchmark.num_targets, benchmark.num_biases)
    counts = [torch.zeros(shape, dtype=torch.long, device=device) for _ in range(packed.members)]
    for start in range(0, len(split), batch_size):
        inputs = fast.inputs(benchmark.prepare(split.inputs[start : start + batch_size]))
        with fast.autocast(device):
            predictions = packed(inputs).argmax(dim=2)
        targets = split.targets[start : start + batch_size]
        biases = split.biases[start : start + batch_size]
        for position in range(packed.members):
            counts[position] += group_counts(
                predictions[:, position], targets, biases,
                num_targets=benchmark.num_targets, num_biases=benchmark.num_biases,
            )
    return [group_metrics(c, aligned) for c in counts]


def non_finite_record(record: dict[str, Any], epoch: int) -> str | None:
    """fit's check of an epoch record: training losses and the valid accuracy must be
    finite (empty groups' accuracies are NaN by design)."""
    for key, value in record.items():
        watched = key.startswith("train_") or key == "valid_acc"
        if watched and isinstance(value, float) and not math.isfinite(value):
            return f"non-finite {key} ({value}) at epoch {epoch}"
    return None
