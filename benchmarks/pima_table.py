"""Vanilla vs EnD on the Pima Indians diabetes table, bias = age split at the training median.

Two settings of the ``tabular`` benchmark: ``imbalance`` (the older group keeps only
``--minority-size`` training rows; validation and test balanced by age) and
``association`` (train on EB1, where age group and diabetes agree: young without, old
with; test on EB2, where they disagree). Each (setting, method) runs with several seeds;
the seed also draws the train/valid/test split. Prints a markdown table of mean ± std
(population std) over seeds of the best-by-valid epoch.

    .venv/bin/python benchmarks/pima_table.py --csv ../shared/data/pima/pima.csv \
        [--methods vanilla end end-pseudo] [--pseudo-option stage1_epochs=20]

``end-pseudo`` is EnD on pseudo bias labels (``--bias-labels pseudo``, its options at their
defaults or as ``--pseudo-option KEY=VALUE`` sets them); its rows add the labels'
agreement with the age groups (NMI and matched accuracy, x100).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import logging
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from endebias.cli.options import key_value
from endebias.training import records
from endebias.training.bias_labels import AGREEMENT
from endebias.training.config import make_config
from endebias.training.fit import fit

log = logging.getLogger("pima_table")
DEFAULT_CSV = Path(__file__).resolve().parents[2] / "shared" / "data" / "pima" / "pima.csv"
# What each column of the table reports, from the best-by-valid record.
COLUMNS = {
    "biased test": "biased_test_acc",
    "unbiased test": "unbiased_test_acc",
    "worst (age, target) group": "unbiased_test_acc_worst_group",
    "age <= median": "unbiased_test_bias0_acc",
    "age > median": "unbiased_test_bias1_acc",
}
# The end-pseudo rows' agreement of their pseudo labels with the age groups (training rows).
PSEUDO_COLUMNS = {"pseudo NMI": "pseudo_nmi", "pseudo matched": "pseudo_matched_acc"}


def run_one(
    *, setting: str, method: str, seed: int, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    dataset_options: dict[str, Any] = {
        "path": str(args.csv), "target": "type", "bias": "age", "bias_binning": "median",
        "setting": setting,
    }
    if setting == "imbalance":
        dataset_options |= {"minority_bias": 1, "minority_size": args.minority_size}
    end = method.startswith("end")
    method_options = {"alpha": args.alpha, "beta": args.beta} if end else {}
    pseudo = {"bias_labels": "pseudo", "pseudo_options": dict(args.pseudo_option)}
    config = make_config(
        None,
        dataset="tabular",
        model="mlp",
        model_options={"hidden": [32, 16]},
        method="end" if end else method,
        method_options=method_options,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=1e-4,
        lr_step=args.epochs,
        seed=seed,
        device="cpu",
        **(pseudo if method == "end-pseudo" else {}),
    )
    # make_config merges dict options into the defaults (which carry Biased MNIST's rho):
    # replace them outright.
    config = dataclasses.replace(config, dataset_options=dataset_options)
    run_dir = out / f"{setting}-{method}-{seed}"
    best = fit(config, run_dir, progress=False)
    if method == "end-pseudo":
        agreement = records.read_json(run_dir / AGREEMENT)
        best = {**best, "pseudo_nmi": agreement["nmi"],
                "pseudo_matched_acc": agreement["matched_acc"]}
    return best


def summarise(bests: list[dict[str, Any]]) -> dict[str, tuple[float, float]]:
    values: dict[str, list[float]] = {label: [] for label in [*COLUMNS, *PSEUDO_COLUMNS]}
    values["gap"] = []
    for best in bests:
        for label, key in {**COLUMNS, **PSEUDO_COLUMNS}.items():
            if key in best:
                values[label].append(100 * best[key])
        values["gap"].append(
            100 * abs(best["unbiased_test_bias0_acc"] - best["unbiased_test_bias1_acc"])
        )
    return {k: (statistics.fmean(v), statistics.pstdev(v)) for k, v in values.items() if v}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--minority-size", type=int, default=10)
    parser.add_argument("--settings", nargs="+", default=["imbalance", "association"])
    parser.add_argument("--methods", nargs="+", default=["vanilla", "end"],
                        choices=["vanilla", "end", "end-pseudo"])
    parser.add_argument("--pseudo-option", type=key_value, action="append", default=[],
                        metavar="KEY=VALUE", help="a pseudo option of the end-pseudo runs")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    torch.set_num_threads(1)

    started = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for setting in args.settings:
            for method in args.methods:
                bests = [
                    run_one(setting=setting, method=method, seed=seed, args=args, out=Path(folder))
                    for seed in args.seeds
                ]
                rows.append((setting, method, summarise(bests)))
    minutes = (time.perf_counter() - started) / 60

    print(
        f"Pima ({args.csv.name}), target type, bias age at the training median; mlp [32, 16], "
        f"{args.epochs} epochs, batch {args.batch_size}, Adam lr {args.lr}, seeds {args.seeds}; "
        f"EnD alpha={args.alpha} beta={args.beta}; imbalance keeps {args.minority_size} older "
        f"training rows. {datetime.date.today()}, {platform.processor() or platform.machine()}, "
        f"torch {torch.__version__}, {minutes:.1f} min.\n"
    )
    labels = [*COLUMNS, "gap", *(PSEUDO_COLUMNS if "end-pseudo" in args.methods else [])]
    options = "".join(f", {k}={v}" for k, v in args.pseudo_option)
    print("| setting | method | " + " | ".join(labels) + " |")
    print("|---|---|" + "---|" * len(labels))
    for setting, method, summary in rows:
        cells = " | ".join(f"{summary[k][0]:.1f} ± {summary[k][1]:.1f}" if k in summary
                           else "-" for k in labels)
        name = method + (options if method == "end-pseudo" else "")
        print(f"| {setting} | {name} | {cells} |")


if __name__ == "__main__":
    main()
