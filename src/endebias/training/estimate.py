"""The line every run prints before its first epoch: what it trains (preset, epochs, data
sizes) and how long it will take on this machine, measured from a few training batches, so
that a 15-hour run is never a surprise.

The measurement leaves the run exactly as it found it: the batches are forward and backward
passes with no optimiser step, and the method's state (batch-norm statistics, a method's
own buffers) and the random generators are restored afterwards, so a run trains the same
numbers with or without it.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import torch

from endebias.training.config import TrainConfig
from endebias.training.loop import Shared
from endebias.training.steppers import SoloStepper, Stepper

TIMED_BATCHES = 2  # after one untimed warm-up batch


@dataclass(frozen=True)
class RunEstimate:
    """Seconds per training batch and per evaluated image, measured; the rest is counting."""

    seconds_per_batch: float
    seconds_per_eval_image: float
    train_batches: int
    eval_images: int
    epochs: int

    @property
    def seconds_per_epoch(self) -> float:
        return (self.train_batches * self.seconds_per_batch
                + self.eval_images * self.seconds_per_eval_image)

    @property
    def seconds_per_run(self) -> float:
        return self.epochs * self.seconds_per_epoch


def format_duration(seconds: float) -> str:
    """``40 s``, ``3.2 min``, ``15.1 h``."""
    if seconds < 100:
        return f"{seconds:.0f} s"
    if seconds < 6000:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _module(stepper: Stepper) -> torch.nn.Module:
    """What the stepper trains: a solo run's method, or a pack's packed network."""
    return stepper.method if isinstance(stepper, SoloStepper) else stepper.packed


def measure(stepper: Stepper, shared: Shared, config: TrainConfig, *,
            timed_batches: int = TIMED_BATCHES) -> RunEstimate:
    """Time ``timed_batches`` training batches (forward and backward, after a warm-up one)
    and one evaluation batch, as the loop runs them, then put everything back as it was."""
    module, device, fast = _module(stepper), shared.device, shared.fast
    train, benchmark = shared.benchmark.train, shared.benchmark
    state = copy.deepcopy(module.state_dict())
    indices = torch.arange(min(config.batch_size, len(train)), device=train.targets.device)
    inputs = fast.inputs(benchmark.prepare(train.inputs[indices]))
    targets, biases = train.targets[indices], train.biases[indices]
    # fork_rng puts the random generators (CPU and every GPU) back as they were.
    with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
        try:
            stepper.train()
            for step in range(1 + timed_batches):
                if step == 1:
                    _sync(device)
                    started = time.perf_counter()
                with fast.autocast(device):
                    losses, _, _ = stepper.step(inputs, targets, biases, indices)
                losses.sum().backward()
                module.zero_grad(set_to_none=True)
            _sync(device)
            per_batch = (time.perf_counter() - started) / timed_batches
            split = next(iter(shared.evaluations.values()))
            chunk = fast.inputs(benchmark.prepare(split.inputs[:config.eval_batch_size]))
            stepper.eval()
            with torch.no_grad(), fast.autocast(device):
                started = time.perf_counter()
                stepper.logits(chunk)
                _sync(device)
            per_image = (time.perf_counter() - started) / max(len(chunk), 1)
        finally:
            module.zero_grad(set_to_none=True)
            module.load_state_dict(state)
    return RunEstimate(
        seconds_per_batch=per_batch,
        seconds_per_eval_image=per_image,
        train_batches=-(-len(train) // config.batch_size),
        eval_images=sum(len(split) for split in shared.evaluations.values()),
        epochs=config.epochs,
    )


def start_line(stepper: Stepper, shared: Shared, config: TrainConfig, *,
               epochs_done: int = 0) -> str:
    """``quick preset, 6 epochs, train 60000, valid 18000, ...; about 4.1 min per run on
    this machine (cpu, amp; 41 s per epoch, from 2 batches)``. For a pack, the time is the
    pack's (its members train together)."""
    preset = f"{config.preset} preset" if config.preset else "no preset"
    sizes = ", ".join(f"{name} {len(split)}" for name, split in
                      {"train": shared.benchmark.train, **shared.benchmark.evaluations}.items())
    line = f"{preset}, {config.epochs} epoch{'' if config.epochs == 1 else 's'}, {sizes}"
    if stepper.context is not None:  # several processes: the step is a collective one
        return line + "; time per run not estimated under several processes"
    estimate = measure(stepper, shared, config)
    line += (f"; about {format_duration(estimate.seconds_per_run)} per run on this machine "
             f"({shared.device.type}, {shared.fast.describe()}; "
             f"{format_duration(estimate.seconds_per_epoch)} per epoch, from "
             f"{TIMED_BATCHES} batches)")
    if 0 < epochs_done < config.epochs:
        left = (config.epochs - epochs_done) * estimate.seconds_per_epoch
        line += f"; {format_duration(left)} left after epoch {epochs_done}"
    return line
