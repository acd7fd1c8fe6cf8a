"""Seconds per training step of every method relative to vanilla, measured round-robin so
that a loaded, shared machine slows every method alike.

    python benchmarks/step_cost.py [--rounds 7] [--steps 3] [--batch-size 256] [--threads 2]
        [--methods vanilla end ...]

Each method wraps the quick preset's SimpleConvNet (docs/methods.md) for 10 classes and
10 bias values on 28x28 colour images; one step is the training step, backward and an
Adam step on one fixed random batch. Methods are given what the trainer gives them: the
training split (the batch's uint8 images, for BiasCon's drawn batch and HEX's NGLCM) and,
for JTT and SoftCon, their first stage's model (untrained: its cost is in the step, its
training is not). Each round times --steps steps of every method in
turn (after one untimed warm-up step each); the table shows each method's median over
rounds, and its median ratio to vanilla's time in the same round.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import time

import torch
from torch import Tensor

from endebias.data import scale_uint8_images
from endebias.methods import StageResult, TrainingRows, build_method, method_class, method_names
from endebias.models import build_model
from endebias.training.config import QUICK

DEFAULT_METHODS = [name for name in method_names() if name != "gce"]


def build(name: str, *, classes: int, shape: tuple[int, ...], rows: TrainingRows):
    torch.manual_seed(0)
    network = functools.partial(build_model, num_classes=classes, input_shape=shape)
    common = {"num_targets": classes, "num_biases": classes, "train_targets": rows.targets,
              "train_biases": rows.biases, "input_shape": shape, "build_network": network}
    stage = method_class(name).first_stage(dict(method_class(name).defaults))
    first_stage = None
    if stage is not None:
        model = (network(stage.model) if stage.model
                 else network("simple-conv", **QUICK["model_options"]))
        earlier = build_method(stage.method, model=model, **common).eval()
        with torch.no_grad():
            first_stage = StageResult(earlier, earlier(rows.prepare(rows.inputs)))
    method = build_method(name, model=network("simple-conv", **QUICK["model_options"]),
                          first_stage=first_stage, **common)
    method.training_rows = rows
    return method, torch.optim.Adam(method.parameters(), lr=1e-3)


CLASSES, SHAPE = 10, (3, 28, 28)


def random_batch(size: int) -> tuple[Tensor, Tensor, Tensor, Tensor, TrainingRows]:
    """One fixed random batch of colour images (inputs, targets, biases, indices) and the
    same rows as the training split a method may draw from."""
    generator = torch.Generator().manual_seed(0)
    stored = torch.randint(0, 256, (size, *SHAPE), dtype=torch.uint8, generator=generator)
    targets = torch.randint(CLASSES, (size,), generator=generator)
    # 99 % aligned, as in Biased MNIST: a few bias-conflicting samples per batch.
    conflicting = torch.rand(size, generator=generator) < 0.01
    biases = torch.where(conflicting, (targets + 1) % CLASSES, targets)
    rows = TrainingRows(stored, targets, biases, prepare=scale_uint8_images)
    return scale_uint8_images(stored), targets, biases, torch.arange(size), rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--methods", nargs="+", choices=method_names(), default=DEFAULT_METHODS)
    parser.add_argument("--threads", type=int, help="torch threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    inputs, targets, biases, indices, rows = random_batch(args.batch_size)
    methods = {name: build(name, classes=CLASSES, shape=SHAPE, rows=rows)
               for name in args.methods}

    def step(name: str) -> None:
        method, optimizer = methods[name]
        loss, _, _ = method.training_step(inputs, targets, biases, indices)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    for name in methods:
        step(name)  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name in methods:
            started = time.perf_counter()
            for _ in range(args.steps):
                step(name)
            seconds[name].append((time.perf_counter() - started) / args.steps)
    print("| method | s / step (median) | × vanilla (median of rounds) |")
    print("|---|---:|---:|")
    for name, times in seconds.items():
        ratio = "-"
        if "vanilla" in seconds:
            ratios = [t / v for t, v in zip(times, seconds["vanilla"], strict=True)]
            ratio = f"{statistics.median(ratios):.2f}"
        print(f"| {name} | {statistics.median(times):.3f} | {ratio} |")


if __name__ == "__main__":
    main()
