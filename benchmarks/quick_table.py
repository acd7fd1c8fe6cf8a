"""Vanilla vs EnD with the quick preset on Biased MNIST: mean ± std over seeds at each rho.

    python benchmarks/quick_table.py --data-dir ../shared/data/mnist [--rhos 0.997 ...]

Runs go to runs/quick-table/<method>-rho<rho>-seed<seed>/ and are resumed/reused, so the
script can be stopped and restarted. Prints a markdown table (accuracy %, best epoch by
valid accuracy, population std) for docs/results.md.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from endebias.config import make_config
from endebias.demo import DEMO_END_OPTIONS
from endebias.train import fit

METHODS = {"vanilla": {}, "end": DEMO_END_OPTIONS}
COLUMNS = [("biased", "biased_test_acc"), ("unbiased", "unbiased_test_acc"),
           ("conflicting", "unbiased_test_acc_conflicting")]


def mean_std(values: list[float]) -> str:
    return f"{100 * statistics.fmean(values):.2f} ± {100 * statistics.pstdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--out", default="runs/quick-table")
    parser.add_argument("--rhos", type=float, nargs="+", default=[0.999, 0.997, 0.995, 0.990])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--threads", type=int, help="torch threads (1 when running two at once)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    results: dict[tuple[str, float], list[dict]] = {}
    minutes: list[float] = []
    for rho in args.rhos:
        for method in args.methods:
            for seed in args.seeds:
                config = make_config("quick", dataset_options={"rho": rho}, method=method,
                                     method_options=METHODS[method], seed=seed)
                run_dir = Path(args.out) / f"{method}-rho{rho}-seed{seed}"
                started = time.perf_counter()
                best = fit(config, run_dir, data_dir=args.data_dir, resume=True, progress=False)
                minutes.append((time.perf_counter() - started) / 60)
                results.setdefault((method, rho), []).append(best)
                print(f"{method} rho={rho} seed={seed}: unbiased "
                      f"{100 * best['unbiased_test_acc']:.2f} ({minutes[-1]:.1f} min)", flush=True)

    print("\n| rho | method | " + " | ".join(name for name, _ in COLUMNS) + " |")
    print("|---|---|" + "---|" * len(COLUMNS))
    for rho in args.rhos:
        for method in args.methods:
            bests = results[(method, rho)]
            cells = [mean_std([b[key] for b in bests]) for _, key in COLUMNS]
            print(f"| {rho} | {method} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
