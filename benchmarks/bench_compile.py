"""Seconds per training step with every network a method trains compiled (``--compile
on``) against eager, side by side in one run, on CPU.

    python benchmarks/bench_compile.py [--methods vanilla rubi ...] [--rounds 5] [--steps 3]
        [--threads 1] [--amp auto|on|off]

Each method wraps the quick preset's SimpleConvNet as in benchmarks/step_cost.py (its
one fixed random batch of 256 colour images, the training step, backward and an Adam step).
Two copies of each method are built from the same seed, one compiled as the trainer
compiles it (``FastPath.apply``: ``Method.networks()``, in place). The compiled copy's
first two steps are timed apart: that is the compile's start-up cost (inductor's cache
in the system temp folder makes a second run of this script start faster than the
first). Then each round times --steps steps of the eager copy and of the compiled one in
turn, so a loaded machine slows both alike; the table shows medians over rounds and the
median ratio within a round.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from endebias.methods import method_names
from endebias.training.fastpath import FastPath
from step_cost import CLASSES, SHAPE, build, random_batch

DEFAULT_METHODS = ["vanilla", "end", "rubi", "learned-mixin", "rebias", "lff"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", choices=method_names(), default=DEFAULT_METHODS)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, help="torch threads")
    parser.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                        help="bf16 autocast as the trainer's --amp (auto: where bf16 is native)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    eager_path = FastPath.resolve(device, amp=args.amp, compile="off", channels_last="off")
    compiled_path = FastPath.resolve(device, amp=args.amp, compile="on", channels_last="off")
    inputs, targets, biases, indices, rows = random_batch(args.batch_size)

    def step(method, optimizer, fast: FastPath) -> None:
        with fast.autocast(device):
            loss, _, _ = method.training_step(inputs, targets, biases, indices)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    print(f"amp: {eager_path.amp}; threads: {torch.get_num_threads()}; batch {args.batch_size}")
    print("| method | eager s / step | compiled s / step | compiled / eager | "
          "compiled start-up, s (2 steps) |")
    print("|---|---:|---:|---:|---:|")
    for name in args.methods:
        eager = build(name, classes=CLASSES, shape=SHAPE, rows=rows)
        compiled = build(name, classes=CLASSES, shape=SHAPE, rows=rows)
        compiled_path.apply(compiled[0])
        step(*eager, eager_path)
        started = time.perf_counter()
        step(*compiled, compiled_path)
        step(*compiled, compiled_path)
        start_up = time.perf_counter() - started
        times: dict[str, list[float]] = {"eager": [], "compiled": []}
        for _ in range(args.rounds):
            for label, (method, optimizer), fast in (("eager", eager, eager_path),
                                                     ("compiled", compiled, compiled_path)):
                started = time.perf_counter()
                for _ in range(args.steps):
                    step(method, optimizer, fast)
                times[label].append((time.perf_counter() - started) / args.steps)
        ratio = statistics.median(c / e for c, e in zip(times["compiled"], times["eager"],
                                                        strict=True))
        print(f"| {name} | {statistics.median(times['eager']):.3f} | "
              f"{statistics.median(times['compiled']):.3f} | {ratio:.2f} | {start_up:.1f} |",
              flush=True)


if __name__ == "__main__":
    main()
