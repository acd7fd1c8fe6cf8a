"""Every method on one small Biased MNIST budget, one after another in one process, with
each method's seconds per epoch relative to vanilla measured in the same run.

    python benchmarks/successors_table.py --data-dir ../shared/data/mnist [--preset cpu] \
        [--rho 0.997] [--seed 1] [--train-subset 6000] [--eval-subset 2000] [--epochs 4] \
        [--methods vanilla end ...] [--set METHOD.OPTION=VALUE ...] [--threads 2] \
        [--out runs/successors-table]

With ``--preset quick`` (the default): the quick preset's network and optimiser
(docs/methods.md) on a random --train-subset (6000) of the training split for --epochs (4)
epochs (the quick preset's learning-rate drop comes after epoch 4), evaluated on
--eval-subset (2000) images per split. With ``--preset cpu``: the CPU preset as it is (all
images, its 24 epochs) unless those options say otherwise. Each method at its defaults
(EnD at the preset's). Runs go to OUT/<method>/ (OUT defaults to runs/successors-table,
or runs/successors-cpu for the CPU preset) and are reused when complete, so the script
can be stopped and restarted.
Prints a Markdown table: unbiased and biased test accuracy at the epoch with the best
validation accuracy, and the mean training seconds per epoch, absolute and over vanilla's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import yaml

from endebias.methods import method_names
from endebias.training import records
from endebias.training.config import make_config
from endebias.training.fit import fit

# gce is a bias-capturing model, not a debiasing method: left out by default.
DEFAULT_METHODS = [name for name in method_names() if name != "gce"]
# Each preset's budget unless the options say otherwise: the quick preset cut to a few
# minutes per method; the CPU preset whole (the budget its search chose).
SMALL_BUDGET = {"quick": {"train_subset": 6000, "eval_subset": 2000, "epochs": 4}, "cpu": {}}


def epoch_seconds(run_dir: Path) -> float:
    lines = (run_dir / records.METRICS).read_text().splitlines()
    return statistics.mean(json.loads(line)["train_seconds"] for line in lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--preset", choices=sorted(SMALL_BUDGET), default="quick")
    parser.add_argument("--out")
    parser.add_argument("--rho", type=float, default=0.997)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--train-subset", type=int)
    parser.add_argument("--eval-subset", type=int)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--methods", nargs="+", choices=method_names(), default=DEFAULT_METHODS)
    parser.add_argument("--set", nargs="+", default=[], metavar="METHOD.OPTION=VALUE",
                        help="a method option off its default (the run folder names it)")
    parser.add_argument("--threads", type=int, help="torch threads")
    args = parser.parse_args()
    budget = {**SMALL_BUDGET[args.preset],
              **{key: value for key in ("train_subset", "eval_subset", "epochs")
                 if (value := getattr(args, key)) is not None}}
    args.out = args.out or ("runs/successors-table" if args.preset == "quick"
                            else f"runs/successors-{args.preset}")
    if args.threads:
        torch.set_num_threads(args.threads)
    options: dict[str, dict] = {method: {} for method in args.methods}
    for item in args.set:
        name, _, value = item.partition("=")
        method, _, option = name.partition(".")
        if method not in options or not option or not value:
            parser.error(f"--set {item!r}: expected METHOD.OPTION=VALUE for a listed method")
        options[method][option] = yaml.safe_load(value)
    rows = []
    for method in args.methods:
        config = make_config(
            args.preset, dataset_options={"rho": args.rho}, method=method, seed=args.seed,
            method_options=options[method], **budget,
        )
        label = "-".join([method, *(f"{k}{v}" for k, v in sorted(options[method].items()))])
        run_dir = Path(args.out) / label
        started = time.perf_counter()
        best = fit(config, run_dir, data_dir=args.data_dir, resume=True, progress=False)
        seconds = epoch_seconds(run_dir)
        rows.append((label, best, seconds))
        print(f"{label}: unbiased {100 * best['unbiased_test_acc']:.2f}, {seconds:.1f} s/epoch "
              f"({(time.perf_counter() - started) / 60:.1f} min)", flush=True)
    vanilla = next((s for label, _, s in rows if label == "vanilla"), None)
    print()
    print("| method | unbiased % | biased % | best epoch | s/epoch | × vanilla |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, best, seconds in rows:
        relative = f"{seconds / vanilla:.2f}" if vanilla else "-"
        print(f"| {label} | {100 * best['unbiased_test_acc']:.2f} | "
              f"{100 * best['biased_test_acc']:.2f} | {best['epoch']} | {seconds:.1f} | "
              f"{relative} |")


if __name__ == "__main__":
    main()
