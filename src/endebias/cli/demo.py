"""The main job: vanilla vs EnD on Biased MNIST with the quick preset, a table and a PNG."""

from __future__ import annotations

import argparse
from pathlib import Path

from endebias.cli.options import existing_folder

# EnD's weights for the quick preset (chosen on valid accuracy, see docs/results.md).
DEMO_END_OPTIONS = {"alpha": 1.0, "beta": 1.0}
DEMO_PRESET = "quick"


def add_demo_options(parser: argparse.ArgumentParser) -> None:
    """The options of ``endebias demo``, each with its default."""
    parser.add_argument(
        "--out", default="demo-output",
        help="folder for the two runs, table.md and demo.png; a second demo into the same "
        "folder reuses finished runs (default: %(default)s)",
    )
    parser.add_argument(
        "--data-dir", type=existing_folder,
        help="an existing folder holding MNIST (default: $ENDEBIAS_DATA, else ~/.cache/endebias, "
        "downloading there when missing)",
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
        "--epochs", type=int,
        help=f"epochs of both runs (default: the {DEMO_PRESET} preset's, "
        f"{PRESETS[DEMO_PRESET]['epochs']})",
    )
    parser.add_argument(
        "--train-subset", type=int, metavar="N",
        help="a smoke run: train on N images (default: all 60000)",
    )
    parser.add_argument(
        "--eval-subset", type=int, metavar="N",
        help="a smoke run: evaluate N images per split (default: all)",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no progress bars (default: shown)"
    )


def run_demo(
    *,
    out: Path,
    data_dir: str | None,
    rho: float = 0.997,
    seed: int = 42,
    epochs: int | None = None,
    train_subset: int | None = None,
    eval_subset: int | None = None,
    progress: bool = True,
) -> int:
    # Imported here: the parser above is built for every command, training needs torch.
    from endebias.report.plots import plot_comparison
    from endebias.report.results import side_by_side_table
    from endebias.report.runs import load_run
    from endebias.training.config import make_config
    from endebias.training.fit import fit, summary_line

    runs = {}
    for label, method, options in (("vanilla", "vanilla", {}), ("EnD", "end", DEMO_END_OPTIONS)):
        overrides = {"epochs": epochs, "train_subset": train_subset, "eval_subset": eval_subset}
        overrides = {key: value for key, value in overrides.items() if value is not None}
        config = make_config(
            DEMO_PRESET,
            dataset="biased-mnist",
            dataset_options={"rho": rho},
            method=method,
            method_options=options,
            seed=seed,
            **overrides,
        )
        run_dir = out / method
        print(f"\n== {label} ({DEMO_PRESET} preset, rho={rho}) -> {run_dir}")
        # Resuming makes a second `make demo` reuse finished runs.
        best = fit(config, run_dir, data_dir=data_dir, resume=True, progress=progress, echo=print)
        print(summary_line(best))
        runs[label] = load_run(run_dir)
    table = side_by_side_table(runs)
    setting = f"Biased MNIST, rho={rho}, {DEMO_PRESET} preset, {config.epochs} epochs, seed {seed}"
    print(f"\n{setting} (accuracy %, best epoch by valid):")
    print(table)
    (out / "table.md").write_text(table + "\n")
    picture = plot_comparison(runs, out / "demo.png", title=setting)
    print(f"\nwrote {out / 'table.md'} and {picture}")
    return 0
