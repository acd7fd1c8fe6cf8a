"""Methods side by side on Colored MNIST (colour variance sigma2), with the quick CPU model.

Trains one run per (sigma2, method, seed) through the library's trainer and prints a
markdown table of the best-by-valid epoch: biased-test and unbiased-test accuracy, and the
unbiased test set's bias-conflicting accuracy.

    .venv/bin/python benchmarks/colored_mnist_table.py --data-dir ../shared/data \
        [--methods vanilla end fairkl ... end-pseudo-cluster end-pseudo-predictions] [--out DIR]

``--methods`` takes any registered method (each at its defaults; EnD at ``--alpha``,
``--beta``); vanilla and EnD by default.

``end-pseudo-L`` is EnD on pseudo bias labels (``--bias-labels pseudo``, labelling ``L``,
the other pseudo options at their defaults or as ``--pseudo-option KEY=VALUE`` sets them,
e.g. ``stage1=gce`` or ``'stage1_model_options={kernel_size: 1}'``); its rows add the
labels' agreement with the dataset's own bias labels (NMI and matched accuracy, x100).
With ``--out`` the runs are kept there and reused when the script is run again.

The defaults are sized for a few minutes on 2 CPU cores; drop ``--train-subset`` and
raise ``--epochs`` for the full protocol (a GPU helps).
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
from endebias.methods import method_names
from endebias.training import records
from endebias.training.bias_labels import AGREEMENT
from endebias.training.config import make_config
from endebias.training.fit import fit

log = logging.getLogger("colored_mnist_table")
COLUMNS = ("biased_test_acc", "unbiased_test_acc", "unbiased_test_acc_conflicting", "valid_acc")
# Every registered method at its defaults (gce is a bias-capturing stage, not a method one
# compares), and EnD on pseudo bias labels.
METHODS = (*(name for name in method_names() if name != "gce"),
           "end-pseudo-cluster", "end-pseudo-predictions")


def run_one(
    *, sigma2: float, method: str, seed: int, args: argparse.Namespace, out: Path
) -> dict[str, Any]:
    """The run's best-by-valid record; pseudo-label runs add the labels' agreement."""
    base, _, labelling = method.partition("-pseudo-")
    method_options = {"alpha": args.alpha, "beta": args.beta} if base == "end" else {}
    pseudo = {"bias_labels": "pseudo",
              "pseudo_options": {"labelling": labelling, **dict(args.pseudo_option)}}
    config = make_config(
        "quick",
        dataset="colored-mnist",
        dataset_options={"sigma2": sigma2},
        method=base,
        method_options=method_options,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr_step=max(1, args.epochs - 1),
        train_subset=args.train_subset,
        eval_subset=args.eval_subset,
        seed=seed,
        device=args.device,
        **(pseudo if labelling else {}),
    )
    # make_config merges dict options into the default ones, which carry Biased MNIST's
    # rho; this benchmark takes sigma2 only, so its options replace them outright.
    config = dataclasses.replace(config, dataset_options={"sigma2": sigma2})
    options = "".join(f"-{k}={folder_text(v)}" for k, v in args.pseudo_option) if labelling else ""
    run_dir = out / f"{method}{options}-{sigma2}-{seed}"
    started = time.perf_counter()
    best = fit(config, run_dir, data_dir=args.data_dir, resume=True,
                                progress=False)
    log.info("sigma2=%s %s seed %d: %.0f s, best epoch %d", sigma2, method, seed,
             time.perf_counter() - started, best["epoch"])
    if labelling:
        agreement = records.read_json(run_dir / AGREEMENT)
        best = {**best, "pseudo_nmi": agreement["nmi"],
                "pseudo_matched_acc": agreement["matched_acc"]}
    return best


def folder_text(value: Any) -> str:
    """An option's value as a folder name may hold it: ``kernel_size=1`` for a mapping."""
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items())
    return str(value)


def mean_std(records_: list[dict[str, Any]], key: str) -> str:
    values = [100 * best[key] for best in records_]
    return f"{statistics.fmean(values):.2f} ± {statistics.pstdev(values):.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sigma2", type=float, nargs="+", default=[0.02, 0.05])
    parser.add_argument("--train-subset", type=int, default=6_000)
    parser.add_argument("--eval-subset", type=int, default=2_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--beta", type=float, default=1.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", help="data folder (default: $ENDEBIAS_DATA)")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=["vanilla", "end"])
    parser.add_argument("--pseudo-option", type=key_value, action="append", default=[],
                        metavar="KEY=VALUE", help="a pseudo-label option for the end-pseudo-* "
                        "runs (e.g. stage1=gce; their folders name it)")
    parser.add_argument("--out", help="keep the runs here and reuse them (default: a "
                                      "temporary folder, removed at the end)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(args.threads)

    rows = []
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        out = Path(args.out or folder)
        for sigma2 in args.sigma2:
            for method in args.methods:
                runs = [run_one(sigma2=sigma2, method=method, seed=seed, args=args, out=out)
                        for seed in args.seeds]
                rows.append((sigma2, method, runs))
    minutes = (time.perf_counter() - started) / 60

    print(
        f"Colored MNIST, quick model, {args.epochs} epochs, batch {args.batch_size}, "
        f"train subset {args.train_subset}, "
        f"eval subset {args.eval_subset}, seeds {args.seeds}; EnD alpha={args.alpha} "
        f"beta={args.beta}. {datetime.date.today()}, {platform.processor() or platform.machine()}"
        f", torch {torch.__version__}, {torch.get_num_threads()} threads, {minutes:.1f} min.\n"
    )
    print("mean ± std (population) over seeds of the best-by-valid epoch, accuracy in %.\n")
    pseudo = any("pseudo" in method for method in args.methods)
    extra = " pseudo labels: NMI | matched |" if pseudo else ""
    print("| sigma² | method | biased test | unbiased test | unbiased test, conflicting | valid |"
          + extra)
    print("|---|---|---|---|---|---|" + ("---|---|" if pseudo else ""))
    for sigma2, method, runs in rows:
        keys = COLUMNS + (("pseudo_nmi", "pseudo_matched_acc") if pseudo else ())
        cells = [mean_std(runs, key) if key in runs[0] else "-" for key in keys]
        options = ("".join(f", {k}={folder_text(v)}" for k, v in args.pseudo_option)
                   if "pseudo" in method else "")
        print(f"| {sigma2} | {method}{options} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
