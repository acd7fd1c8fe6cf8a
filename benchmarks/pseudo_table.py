"""EnD with pseudo bias labels beside EnD with the true ones (quick preset, Biased MNIST).

    python benchmarks/pseudo_table.py --data-dir ../shared/data/mnist --threads 1 \
        [--rhos 0.997] [--seeds 1] [--labellings cluster predictions] [--amp off]
        [--out runs/pseudo-table]

Each run is ``endebias train --bias-labels pseudo --pseudo-option labelling=L`` with EnD at
the quick preset's weights, in ``OUT/end-pseudo-L-rho<rho>-seed<seed>/`` (resumed and
reused, like benchmarks/quick_table.py, which trains the vanilla, LfF and true-label EnD
rows into the same folder). Prints ``endebias results --by-method OUT`` at the end, which
shows the pseudo labels' agreement with the true ones.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from endebias.report.comparison import find_runs, method_table
from endebias.training.config import make_config
from endebias.training.fit import fit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--out", default="runs/pseudo-table")
    parser.add_argument("--rhos", type=float, nargs="+", default=[0.997])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--labellings", nargs="+", choices=["cluster", "predictions"],
                        default=["cluster", "predictions"])
    parser.add_argument("--threads", type=int, help="torch threads (1 when running two at once)")
    parser.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                        help="bf16 autocast, as benchmarks/quick_table.py takes it (on / off "
                             "put a -bf16 / -fp32 suffix on the folders)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    for seed in args.seeds:
        for rho in args.rhos:
            for labelling in args.labellings:
                config = make_config("quick", dataset_options={"rho": rho}, method="end",
                                     seed=seed, bias_labels="pseudo", amp=args.amp,
                                     pseudo_options={"labelling": labelling})
                suffix = {"on": "-bf16", "off": "-fp32"}.get(args.amp, "")
                run_dir = Path(args.out) / f"end-pseudo-{labelling}-rho{rho}-seed{seed}{suffix}"
                started = time.perf_counter()
                best = fit(config, run_dir, data_dir=args.data_dir,
                                            resume=True, progress=False)
                print(f"end pseudo {labelling} rho={rho} seed={seed}: unbiased "
                      f"{100 * best['unbiased_test_acc']:.2f} "
                      f"({(time.perf_counter() - started) / 60:.1f} min)", flush=True)
    print()
    print(method_table(find_runs([args.out])))


if __name__ == "__main__":
    main()
