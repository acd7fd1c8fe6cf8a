"""Methods side by side with the quick preset on Biased MNIST: mean ± std over seeds at
each rho, every method at its default setting (EnD at alpha = beta = 1), or at the best
setting of a sweep. ``--preset cpu`` trains the CPU preset instead (the budget whose
vanilla learns the digit as the paper's does: docs/results.md), into runs/cpu-table.

    python benchmarks/quick_table.py --data-dir ../shared/data/mnist [--preset cpu]
        [--rhos 0.997 ...]
        [--methods vanilla end groupdro lff biasbal ... (any registered method)] [--threads 1]
        [--train-subset N --eval-subset N]
        [--best-from METHOD=SWEEP_ID ... --storage URL --out runs/quick-table-best]
        [--set METHOD.OPTION=VALUE ...]

Runs go to runs/<preset>-table/<method>-rho<rho>-seed<seed>/ and are resumed/reused, so the
script can be stopped and restarted, and two copies with different --methods can share
the machine. Seeds are the outer loop, so a table cut short still covers every cell.
Prints `endebias results --by-method` of the runs' folder at the end (docs/results.md).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
import yaml

from endebias.cli.demo import DEMO_END_OPTIONS
from endebias.methods import method_names
from endebias.report.comparison import best_setting, find_runs, method_table
from endebias.report.results import rows_from_study
from endebias.sweeps.storage import load_study
from endebias.training.config import make_config
from endebias.training.fit import fit

# Every registered method at its defaults (EnD at the demo's weights); gce is a
# bias-capturing stage, not a method one compares.
METHODS = {name: {} for name in method_names() if name != "gce"} | {"end": DEMO_END_OPTIONS}
DEFAULT_METHODS = ["vanilla", "end", "groupdro", "lff", "biasbal"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--preset", choices=["quick", "cpu"], default="quick",
                        help="the preset every run trains (default: %(default)s)")
    parser.add_argument("--out", help="the runs' folder (default: runs/<preset>-table)")
    parser.add_argument("--rhos", type=float, nargs="+", default=[0.999, 0.997, 0.995, 0.990])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=DEFAULT_METHODS,
                        help="the paper's Table 1 rows: vanilla hex learned-mixin rubi rebias "
                             "end; EnD's successors: di lnl biascon bcbb fairkl sd jtt softcon")
    parser.add_argument("--train-subset", type=int,
                        help="train on this many images only (a smaller budget; the folder "
                             "names it)")
    parser.add_argument("--eval-subset", type=int, help="evaluate on this many per split")
    parser.add_argument("--threads", type=int, help="torch threads (1 when running two at once)")
    parser.add_argument("--best-from", nargs="+", default=[], metavar="METHOD=SWEEP_ID",
                        help="train METHOD at the best trial's options of that sweep")
    parser.add_argument("--storage", help="the sweeps' storage URL (with --best-from)")
    parser.add_argument("--set", nargs="+", default=[], metavar="METHOD.OPTION=VALUE",
                        help="set one method option by hand, e.g. a sweep's best setting "
                             "read from docs/results.md when its storage is gone")
    parser.add_argument("--amp", choices=["auto", "on", "off"], default="auto",
                        help="bf16 autocast (auto: where bf16 is native, GPUs and CPUs alike; "
                             "on / off force it, and their folders get a -bf16 / -fp32 suffix)")
    parser.add_argument("--compile", choices=["auto", "on", "off"], default="auto",
                        help="torch.compile every network a method trains (auto: on GPUs only; "
                             "on CPU it makes a step of RUBi, LearnedMixin and ReBias about "
                             "1.8x faster, docs/benchmarks.md; on / off force it, and their "
                             "folders get a -compiled / -eager suffix)")
    args = parser.parse_args()
    args.out = args.out or f"runs/{args.preset}-table"
    if args.threads:
        torch.set_num_threads(args.threads)
    options = dict(METHODS)
    for item in args.best_from:
        method, _, sweep_id = item.partition("=")
        if method not in METHODS or not sweep_id or not args.storage:
            parser.error(f"--best-from {item!r}: expected METHOD=SWEEP_ID with --storage")
        rows = rows_from_study(load_study(sweep_id, storage=args.storage))
        options[method] = best_setting(rows, method=method)
        print(f"{method}: best setting of sweep {sweep_id}: {options[method]}", flush=True)

    for item in args.set:
        name, _, value = item.partition("=")
        method, _, option = name.partition(".")
        if method not in METHODS or not option or not value:
            parser.error(f"--set {item!r}: expected METHOD.OPTION=VALUE, "
                         "e.g. groupdro.step_size=0.001")
        options[method] = {**options[method], option: yaml.safe_load(value)}
    for method in args.methods:
        print(f"{method}: options {options[method] or '(defaults)'}", flush=True)

    for seed in args.seeds:
        for rho in args.rhos:
            for method in args.methods:
                config = make_config(args.preset, dataset_options={"rho": rho}, method=method,
                                     method_options=options[method], seed=seed, amp=args.amp,
                                     compile=args.compile,
                                     train_subset=args.train_subset,
                                     eval_subset=args.eval_subset)
                suffix = {"on": "-bf16", "off": "-fp32"}.get(args.amp, "")
                suffix += {"on": "-compiled", "off": "-eager"}.get(args.compile, "")
                if args.train_subset or args.eval_subset:
                    suffix += f"-train{args.train_subset or 'all'}-eval{args.eval_subset or 'all'}"
                run_dir = Path(args.out) / f"{method}-rho{rho}-seed{seed}{suffix}"
                started = time.perf_counter()
                best = fit(config, run_dir, data_dir=args.data_dir, resume=True, progress=False)
                print(f"{method} rho={rho} seed={seed}: unbiased "
                      f"{100 * best['unbiased_test_acc']:.2f} "
                      f"({(time.perf_counter() - started) / 60:.1f} min)", flush=True)
    print()
    print(method_table(find_runs([args.out])))


if __name__ == "__main__":
    main()
