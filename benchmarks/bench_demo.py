"""The demo's cost and effect: vanilla and EnD at the demo's default budget and at today's
full quick preset (``endebias demo --full``), side by side in one run.

    python benchmarks/bench_demo.py --data-dir ../shared/data/mnist [--seeds 1 2 3]
        [--full-seeds 1] [--skip-full] [--variants e4s3] [--threads N]
        [--out runs/bench-demo]

For each budget and seed it trains the demo's two runs (the same configs as
``endebias demo``, :func:`endebias.cli.demo.demo_config`) from scratch into
OUT/<budget>/seed<seed>/<method>, timing each (wall clock and this process's CPU time,
data preparation and evaluation included), and prints one row per run and a summary per
budget: mean ± population std of the unbiased-test accuracy, EnD's over vanilla's, and the
time of the two runs together. The CPU time of a one-thread run is what it would take on
one idle core, whatever else the machine was doing; wall time depends on the load.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import resource
import shutil
import statistics
import time
from pathlib import Path

import torch

from endebias.cli.demo import DEMO_BUDGET, demo_config, describe_budget
from endebias.training.fit import fit

# ``--variants e4s3``: the demo's budget with 4 epochs and the drop after epoch 3.
VARIANT = re.compile(r"e(?P<epochs>[1-9][0-9]*)s(?P<lr_step>[1-9][0-9]*)")


def variant_name(text: str) -> str:
    if not VARIANT.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not eEsS (e.g. e4s3)")
    return text


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def train(budget: str, seed: int, method: str, *, out: Path, data_dir: str | None,
          rho: float) -> dict[str, float]:
    variant = VARIANT.fullmatch(budget)
    if variant:  # a candidate for the demo's budget: DEMO_BUDGET with its epochs and drop
        config = demo_config(method, rho=rho, seed=seed, epochs=int(variant["epochs"]),
                             lr_step=int(variant["lr_step"]))
    else:
        config = demo_config(method, rho=rho, seed=seed, full=budget == "full")
    run_dir = out / budget / f"seed{seed}" / method
    shutil.rmtree(run_dir, ignore_errors=True)  # timed from scratch, never resumed
    wall, cpu = time.perf_counter(), cpu_seconds()
    best = fit(config, run_dir, data_dir=data_dir, progress=False)
    return {"wall": time.perf_counter() - wall, "cpu": cpu_seconds() - cpu,
            "unbiased": 100 * best["unbiased_test_acc"], "biased": 100 * best["biased_test_acc"],
            "epoch": best["epoch"]}


def mean_std(values: list[float]) -> str:
    return f"{statistics.fmean(values):.2f} ± {statistics.pstdev(values):.2f}"


def summary(budget: str, results: dict[int, dict[str, dict[str, float]]]) -> str:
    seeds = sorted(results)
    vanilla = [results[s]["vanilla"]["unbiased"] for s in seeds]
    end = [results[s]["end"]["unbiased"] for s in seeds]
    ratios = [e / v for e, v in zip(end, vanilla, strict=True)]
    pair_wall = [results[s]["vanilla"]["wall"] + results[s]["end"]["wall"] for s in seeds]
    pair_cpu = [results[s]["vanilla"]["cpu"] + results[s]["end"]["cpu"] for s in seeds]
    return (f"| {budget} | {len(seeds)} | {mean_std(vanilla)} | {mean_std(end)} | "
            f"{min(ratios):.1f}x (mean {statistics.fmean(ratios):.1f}x) | "
            f"{statistics.fmean(pair_wall) / 60:.1f} | {statistics.fmean(pair_cpu) / 60:.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--out", default="runs/bench-demo")
    parser.add_argument("--rho", type=float, default=0.997)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3],
                        help="seeds of the demo's budget (default: 1 2 3)")
    parser.add_argument("--full-seeds", type=int, nargs="+", default=[1, 2, 3],
                        help="seeds of the full quick preset (default: 1 2 3; twice the "
                             "training steps of the demo's budget per seed)")
    parser.add_argument("--skip-full", action="store_true", help="the demo's budget only")
    parser.add_argument("--variants", nargs="+", default=[], type=variant_name,
                        help="candidate demo budgets, each eEsS: the demo's budget with E "
                             "epochs and the learning rate x0.1 after epoch S (same seeds)")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    print(f"{platform.node()}: {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} at start")
    print(f"demo budget: quick preset, {describe_budget(DEMO_BUDGET)}; full: the quick preset")
    plan = [("demo", args.seeds)] + [(variant, args.seeds) for variant in args.variants]
    plan += [] if args.skip_full else [("full", args.full_seeds)]
    results: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
    print("\n| budget | seed | method | best epoch | biased | unbiased | wall s | CPU s |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for budget, seeds in plan:
        for seed in seeds:
            for method in ("vanilla", "end"):
                found = train(budget, seed, method, out=out, data_dir=args.data_dir,
                              rho=args.rho)
                results.setdefault(budget, {}).setdefault(seed, {})[method] = found
                print(f"| {budget} | {seed} | {method} | {found['epoch']} | "
                      f"{found['biased']:.2f} | {found['unbiased']:.2f} | {found['wall']:.0f} | "
                      f"{found['cpu']:.0f} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end")
    print("\n| budget | seeds | vanilla unbiased | EnD unbiased | EnD / vanilla (worst seed) | "
          "both runs, wall min | both runs, CPU min |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for budget, by_seed in results.items():
        print(summary(budget, by_seed))


if __name__ == "__main__":
    main()
