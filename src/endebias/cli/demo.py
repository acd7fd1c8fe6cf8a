"""The main job: vanilla vs EnD on Biased MNIST with the quick preset, a table and a PNG."""

from __future__ import annotations

from pathlib import Path

from endebias.report.plots import plot_comparison
from endebias.report.results import load_run, side_by_side_table
from endebias.training.config import make_config
from endebias.training.fit import fit, summary_line

# EnD's weights for the quick preset (chosen on valid accuracy, see docs/results.md).
DEMO_END_OPTIONS = {"alpha": 1.0, "beta": 1.0}


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
    runs = {}
    for label, method, options in (("vanilla", "vanilla", {}), ("EnD", "end", DEMO_END_OPTIONS)):
        overrides = {"epochs": epochs, "train_subset": train_subset, "eval_subset": eval_subset}
        overrides = {key: value for key, value in overrides.items() if value is not None}
        config = make_config(
            "quick",
            dataset="biased-mnist",
            dataset_options={"rho": rho},
            method=method,
            method_options=options,
            seed=seed,
            **overrides,
        )
        run_dir = out / method
        print(f"\n== {label} (quick preset, rho={rho}) -> {run_dir}")
        # Resuming makes a second `make demo` reuse finished runs.
        best = fit(config, run_dir, data_dir=data_dir, resume=True, progress=progress, echo=print)
        print(summary_line(best))
        runs[label] = load_run(run_dir)
    table = side_by_side_table(runs)
    print(
        f"\nBiased MNIST, rho={rho}, quick preset, seed {seed} (accuracy %, best epoch by valid):"
    )
    print(table)
    (out / "table.md").write_text(table + "\n")
    picture = plot_comparison(runs, out / "demo.png")
    print(f"\nwrote {out / 'table.md'} and {picture}")
    return 0
