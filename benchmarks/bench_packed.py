"""Seconds per trial of packed training (``sweep agent --pack K``) against K solo trials,
both through the trainer's own epoch loops, on Biased MNIST (rho 0.997, EnD or FairKL).

* ``solo``: K methods, each trained by ``endebias.training.epoch.train_epoch`` on the same
  batches, one after the other (what K solo trials cost);
* ``packed``: one pack of K (the same ``train_epoch`` with a packed stepper).

Training only, no evaluation (a pack evaluates all its members in one pass too). The two
take turns batch by batch, so that load on a shared machine hits both alike; the ratio is
the median over paired turns of (K solo steps) / (one packed step), i.e. how many times
cheaper a trial is when packed. Each first runs one untimed warm-up batch.

    .venv/bin/python benchmarks/bench_packed.py --preset quick --pack 4 --batches 8
    .venv/bin/python benchmarks/bench_packed.py --preset quick --pack 4 --method fairkl
    .venv/bin/python benchmarks/bench_packed.py --device cuda --preset paper --pack 8
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import torch

from endebias.data import Split
from endebias.methods import build_method
from endebias.models import build_model
from endebias.training.config import make_config
from endebias.training.epoch import train_epoch
from endebias.training.fastpath import FastPath
from endebias.training.fit import load_benchmark
from endebias.training.steppers import PackedStepper, SoloStepper


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--preset", default="quick", choices=["paper", "quick"])
    parser.add_argument("--pack", type=int, default=4, help="trials per pack (default: 4)")
    parser.add_argument("--method", default="end", choices=["end", "fairkl"],
                        help="the packed members' method (default: %(default)s)")
    parser.add_argument("--batches", type=int, default=8, help="timed batches per variant")
    parser.add_argument("--amp", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--data-dir",
                        default=os.environ.get("ENDEBIAS_DATA", "../shared/data/mnist"))
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.pack < 1 or args.batches < 1:
        parser.error("--pack and --batches must be >= 1")
    device = torch.device(args.device)
    config = make_config(args.preset, method=args.method, device=args.device, eval_subset=1,
                         train_subset=(args.batches + 1) * 256, dataset_options={"rho": 0.997},
                         amp=args.amp)
    benchmark = load_benchmark(config, data_dir=args.data_dir, device=device)
    fast = FastPath.resolve(device, amp=config.amp, compile="off", channels_last="off")
    # Weights spread as a sweep would try them; the cost does not depend on them.
    settings = [{"alpha": 0.1 * (k + 1), "beta": 0.05 * (k + 1)} if args.method == "end"
                else {"fairkl_weight": 0.5 * (k + 1)} for k in range(args.pack)]
    solos = []
    for options in settings:
        torch.manual_seed(config.seed)
        model = build_model(config.model, num_classes=10, input_shape=benchmark.input_shape,
                            **config.model_options)
        solos.append(build_method(
            args.method, model=model, num_targets=10, num_biases=10, **options,
            train_targets=benchmark.train.targets, train_biases=benchmark.train.biases,
        ).to(device))
    configs = [dataclasses.replace(config, method_options=options) for options in settings]
    packed = PackedStepper(solos, configs, [{"method": s.state_dict()} for s in solos],
                           benchmark_shape=(10, benchmark.input_shape[0]), device=device,
                           fast=fast)
    steppers = [SoloStepper(s, c, device=device, fast=fast, context=None)
                for s, c in zip(solos, configs, strict=True)]
    train = benchmark.train

    def batch(number: int):
        part = Split(*(t[number * 256 : (number + 1) * 256]
                       for t in (train.inputs, train.targets, train.biases)))
        return dataclasses.replace(benchmark, train=part)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def solo_turn(number: int) -> float:
        sync()
        started = time.perf_counter()
        for stepper in steppers:
            train_epoch(stepper, batch(number), config, 1, False)
        sync()
        return time.perf_counter() - started

    def packed_turn(number: int) -> float:
        sync()
        started = time.perf_counter()
        train_epoch(packed, batch(number), config, 1, False)
        sync()
        return time.perf_counter() - started

    solo_turn(0), packed_turn(0)  # warm-up
    solo_times, packed_times = [], []
    for number in range(1, args.batches + 1):
        solo_times.append(solo_turn(number))
        packed_times.append(packed_turn(number))
    ratio = statistics.median(s / p for s, p in zip(solo_times, packed_times, strict=True))
    solo_per_trial = sum(solo_times) / args.batches / args.pack
    packed_per_trial = sum(packed_times) / args.batches / args.pack
    print(f"{args.preset} preset, {args.method}, {args.device}, pack {args.pack}, "
          f"{args.batches} batches of 256,"
          f" fast path: {fast.describe()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads")
    print("| variant | seconds per batch per trial |\n|---|---:|")
    print(f"| solo | {solo_per_trial:.3f} |\n| packed | {packed_per_trial:.3f} |")
    print(f"packed vs solo per trial: {ratio:.2f}x faster (median of {args.batches} paired "
          f"turns; overall {solo_per_trial / packed_per_trial:.2f}x)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "preset": args.preset, "method": args.method, "device": args.device,
            "pack": args.pack,
            "batches": args.batches, "fast_path": fast.describe(), "torch": torch.__version__,
            "solo_seconds_per_batch_per_trial": solo_per_trial,
            "packed_seconds_per_batch_per_trial": packed_per_trial,
            "speedup_paired_median": ratio, "date": time.strftime("%Y-%m-%d %H:%M %Z"),
        }, indent=2) + "\n")


if __name__ == "__main__":
    main()
