"""Which methods beat vanilla on the synthetic planted-bias benchmark, seed by seed: the
measurements behind the planted-bias tests of tests/test_successor_methods.py.

    python benchmarks/planted_bias.py [--settings noisy-mlp noisy-wide-mlp]
        [--methods vanilla di sd lnl:reversal_weight=0.3] [--seeds 0 1 2 3 4]

Each run trains one method on one setting (the tests' optimiser: batch 64, Adam at lr
3e-3, no learning-rate drop) in a temporary folder and reads the unbiased test accuracy
at the best epoch by valid accuracy. The table prints, per setting and method, the
accuracy for each seed, the mean, and the smallest gain over vanilla across the seeds
(vanilla is always trained, as the reference). A few seconds per run on one core.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from endebias.training.config import make_config
from endebias.training.fit import fit

# The settings of the tests (tests/test_successor_methods.py reads them from here), and
# the ones measured on the way to them (docs/methods.md). "mlp": the MLP learns the pattern
# somewhat; "conv": a tiny SimpleConvNet whose pooled features make the pattern so hard
# that vanilla reads the colour alone; the "noisy" pair: 35 % of the pattern's pixels
# flipped, so that the colour (90 % aligned) is the cleaner cue, though the pattern can
# be learnt from 2,048 images. DI's per-bias heads need a wider feature layer than the
# default MLP's 32 units.
NOISY = {"rho": 0.9, "flip": 0.35, "train_size": 2048, "eval_size": 1024}
SETTINGS = {
    "mlp": {"model": "mlp", "data": {"rho": 0.97}, "epochs": 4},
    "conv": {"model": "simple-conv", "model_options": {"channels": [8, 16], "kernel_size": 3},
             "data": {"rho": 0.95}, "epochs": 8},
    "noisy-mlp": {"model": "mlp", "data": NOISY, "epochs": 6},
    "noisy-wide-mlp": {"model": "mlp", "model_options": {"hidden": [256]}, "data": NOISY,
                       "epochs": 6},
    # Gradient starvation's own case: the colour always aligned, the pattern clean.
    "aligned-mlp": {"model": "mlp", "data": {"rho": 1.0, "flip": 0.1, "train_size": 2048,
                                             "eval_size": 1024}, "epochs": 6},
    # The colour the cleaner cue by a little (2 classes, the pattern 40 % flipped).
    "two-class-mlp": {"model": "mlp", "data": {"rho": 0.9, "flip": 0.4, "num_classes": 2,
                                               "train_size": 2048, "eval_size": 1024},
                      "epochs": 10},
}


def method_spec(text: str) -> tuple[str, dict[str, float]]:
    """``name`` or ``name:option=value,option=value`` (numbers, or text for choices)."""
    name, _, rest = text.partition(":")
    options: dict[str, float | str] = {}
    for pair in filter(None, rest.split(",")):
        key, equals, value = pair.partition("=")
        if not equals:
            raise argparse.ArgumentTypeError(f"{pair!r} in {text!r} is not option=value")
        try:
            options[key] = float(value)
        except ValueError:
            options[key] = value
    return name, options


def unbiased_accuracy(method: str, options: dict, setting: str, seed: int,
                      folder: Path) -> float:
    """Train ``method`` on ``setting`` into ``folder/<method>-<setting>`` (the tests call
    this too) and return its best-by-valid unbiased test accuracy."""
    chosen = dict(SETTINGS[setting])
    config = make_config(
        None, dataset="synthetic",
        dataset_options={"train_size": 512, "eval_size": 256, **chosen.pop("data")},
        method=method, method_options=options, batch_size=64, lr=3e-3, lr_step=100,
        device="cpu", seed=seed, **chosen,
    )
    return fit(config, folder / f"{method}-{setting}", progress=False)["unbiased_test_acc"]


def measured(method: str, options: dict, setting: str, seed: int) -> float:
    """One run in a folder of its own, removed afterwards."""
    with tempfile.TemporaryDirectory() as folder:
        return unbiased_accuracy(method, options, setting, seed, Path(folder))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--settings", nargs="+", choices=sorted(SETTINGS),
                        default=["noisy-mlp", "noisy-wide-mlp"])
    parser.add_argument("--methods", nargs="+", type=method_spec,
                        default=[method_spec(m) for m in ("di", "sd", "lnl:reversal_weight=0.3")])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print("| setting | method | " + " | ".join(f"seed {s}" for s in args.seeds)
          + " | mean | least gain over vanilla |")
    print("|---|---|" + "---:|" * (len(args.seeds) + 2))
    for setting in args.settings:
        vanilla = [measured("vanilla", {}, setting, seed) for seed in args.seeds]
        rows = [("vanilla", {}, vanilla)]
        for name, options in args.methods:
            if name != "vanilla":
                rows.append((name, options, [measured(name, options, setting, seed)
                                             for seed in args.seeds]))
        for name, options, accuracies in rows:
            label = name + "".join(f" {k}={v:g}" if isinstance(v, float) else f" {k}={v}"
                                   for k, v in options.items())
            gain = min(a - v for a, v in zip(accuracies, vanilla, strict=True))
            print(f"| {setting} | {label} | "
                  + " | ".join(f"{100 * a:.1f}" for a in accuracies)
                  + f" | {100 * sum(accuracies) / len(accuracies):.1f} | "
                  + ("-" if name == "vanilla" else f"{100 * gain:+.1f}") + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
