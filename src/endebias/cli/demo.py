"""The main job: vanilla vs EnD on Biased MNIST with the quick preset, a table and a PNG.

By default the demo trains a budget cut to show EnD's effect in minutes on 2 CPU cores
(:data:`DEMO_BUDGET`, measured by ``benchmarks/bench_demo.py``); ``--full`` trains the
quick preset as it stands, on all 60,000 images.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from endebias.cli.options import existing_folder

# EnD's weights for the quick preset (chosen on valid accuracy, see docs/results.md).
DEMO_END_OPTIONS = {"alpha": 1.0, "beta": 1.0}
DEMO_PRESET = "quick"
# The quick preset cut to about 2 minutes for both runs on 2 idle CPU cores, with EnD's
# unbiased accuracy at least 4x vanilla's at rho 0.997 on each of seeds 1-3 (3 epochs
# missed that on seed 3: docs/benchmarks.md, "The demo"). The learning rate still drops
# once, one epoch before the end.
DEMO_BUDGET: dict[str, Any] = {"epochs": 4, "lr_step": 3, "eval_subset": 5000}


def add_demo_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``endebias demo``, each with its default."""
    parser.add_argument(
        "--out", default="demo-output",
        help="folder for the two runs, table.md and demo.png (--full: its full/ subfolder); "
        "a second demo into the same folder shows the finished runs (default: %(default)s)",
    )
    parser.add_argument(
        "--data-dir", type=existing_folder,
        help="an existing folder holding MNIST (default: $ENDEBIAS_DATA, else "
        "~/.cache/endebias, downloading there when missing)",
    )
    parser.add_argument(
        "--rho", type=float, default=0.997,
        help="bias strength of Biased MNIST's training set (default: %(default)s)",
    )
    parser.add_argument(
        "--seed", type=int, default=42, help="seed of both runs (default: %(default)s)"
    )
    from endebias.training.config import PRESETS  # torch-free

    parser.add_argument(
        "--full", action="store_true",
        help=f"train the {DEMO_PRESET} preset as it stands ({PRESETS[DEMO_PRESET]['epochs']} "
        "epochs, every evaluation image: twice the training steps, five times the evaluation) "
        "instead of the demo's budget "
        f"({describe_budget(DEMO_BUDGET)}) (default: the demo's budget)",
    )
    parser.add_argument(
        "--epochs", type=int,
        help=f"epochs of both runs (default: {DEMO_BUDGET['epochs']}; with --full the "
        f"{DEMO_PRESET} preset's, {PRESETS[DEMO_PRESET]['epochs']})",
    )
    parser.add_argument(
        "--train-subset", type=int, metavar="N",
        help="a smoke run: train on N images (default: all 60000)",
    )
    parser.add_argument(
        "--eval-subset", type=int, metavar="N",
        help=f"evaluate N images per split (default: {DEMO_BUDGET['eval_subset']}; with "
        "--full all)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars (default: shown)"
    )


def describe_budget(budget: dict[str, Any]) -> str:
    """``4 epochs, learning rate x0.1 after epoch 3, 2000 images per evaluation split``."""
    parts = [f"{budget['epochs']} epochs"]
    if "lr_step" in budget:
        parts.append(f"learning rate x0.1 after epoch {budget['lr_step']}")
    if "train_subset" in budget:
        parts.append(f"{budget['train_subset']} training images")
    if "eval_subset" in budget:
        parts.append(f"{budget['eval_subset']} images per evaluation split")
    return ", ".join(parts)


def demo_config(
    method: str,
    *,
    rho: float = 0.997,
    seed: int = 42,
    full: bool = False,
    epochs: int | None = None,
    lr_step: int | None = None,
    train_subset: int | None = None,
    eval_subset: int | None = None,
):
    """The config of one of the demo's two runs (``method`` vanilla or end); what
    ``benchmarks/bench_demo.py`` trains too."""
    from endebias.training.config import make_config

    overrides: dict[str, Any] = {} if full else dict(DEMO_BUDGET)
    given = {"epochs": epochs, "lr_step": lr_step, "train_subset": train_subset,
             "eval_subset": eval_subset}
    overrides.update({key: value for key, value in given.items() if value is not None})
    return make_config(
        DEMO_PRESET,
        dataset="biased-mnist",
        dataset_options={"rho": rho},
        method=method,
        method_options=DEMO_END_OPTIONS if method == "end" else {},
        seed=seed,
        **overrides,
    )


def run_demo(
    *,
    out: Path,
    data_dir: str | None,
    rho: float = 0.997,
    seed: int = 42,
    full: bool = False,
    epochs: int | None = None,
    train_subset: int | None = None,
    eval_subset: int | None = None,
    progress: bool = True,
) -> int:
    # Imported here: the parser above is built for every command, training needs torch.
    from endebias.report.plots import plot_comparison
    from endebias.report.protocol import protocol_words
    from endebias.report.results import side_by_side_table
    from endebias.report.runs import load_run
    from endebias.training.fit import fit, summary_line

    out = out / "full" if full else out
    runs = {}
    for label, method in (("vanilla", "vanilla"), ("EnD", "end")):
        config = demo_config(method, rho=rho, seed=seed, full=full, epochs=epochs,
                             train_subset=train_subset, eval_subset=eval_subset)
        run_dir = out / method
        print(f"\n== {label} ({DEMO_PRESET} preset, rho={rho}) -> {run_dir}")
        # Resuming makes a second `make demo` reuse finished runs.
        best = fit(config, run_dir, data_dir=data_dir, resume=True, progress=progress, echo=print)
        print(summary_line(best))
        runs[label] = load_run(run_dir)
    table = side_by_side_table(runs)
    # What the runs trained, beside the preset (the same words as results and reports).
    setting = f"Biased MNIST, rho={rho}, {protocol_words(config.to_dict())}, seed {seed}"
    print(f"\n{setting} (accuracy %, best epoch by valid):")
    print(table)
    (out / "table.md").write_text(table + "\n")
    picture = plot_comparison(runs, out / "demo.png", title=setting)
    print(f"\nwrote {out / 'table.md'} and {picture}")
    return 0
