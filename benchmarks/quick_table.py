"""Methods side by side with the quick preset on Biased MNIST: mean ± std over seeds at
each rho, every method at its default setting (EnD at alpha = beta = 1).

    python benchmarks/quick_table.py --data-dir ../shared/data/mnist [--rhos 0.997 ...]
        [--methods vanilla end groupdro lff biasbal] [--threads 1]

Runs go to runs/quick-table/<method>-rho<rho>-seed<seed>/ and are resumed/reused, so the
script can be stopped and restarted, and two copies with different --methods can share
the machine. Seeds are the outer loop, so a table cut short still covers every cell.
Prints `endebias results --by-method runs/quick-table` at the end (docs/results.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from endebias.comparison import find_runs, method_table
from endebias.config import make_config
from endebias.demo import DEMO_END_OPTIONS
from endebias.train import fit

METHODS = {"vanilla": {}, "end": DEMO_END_OPTIONS, "groupdro": {}, "lff": {}, "biasbal": {}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--out", default="runs/quick-table")
    parser.add_argument("--rhos", type=float, nargs="+", default=[0.999, 0.997, 0.995, 0.990])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    parser.add_argument("--threads", type=int, help="torch threads (1 when running two at once)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    for seed in args.seeds:
        for rho in args.rhos:
            for method in args.methods:
                config = make_config("quick", dataset_options={"rho": rho}, method=method,
                                     method_options=METHODS[method], seed=seed)
                run_dir = Path(args.out) / f"{method}-rho{rho}-seed{seed}"
                started = time.perf_counter()
                best = fit(config, run_dir, data_dir=args.data_dir, resume=True, progress=False)
                print(f"{method} rho={rho} seed={seed}: unbiased "
                      f"{100 * best['unbiased_test_acc']:.2f} "
                      f"({(time.perf_counter() - started) / 60:.1f} min)", flush=True)
    print()
    print(method_table(find_runs([args.out])))


if __name__ == "__main__":
    main()
