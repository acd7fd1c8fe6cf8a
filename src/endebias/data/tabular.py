"""Any CSV table with a target column and a bias column (``tabular``).

Rows are split at random (seeded) into a training pool, a validation pool
(``valid_fraction``) and a test pool (``test_fraction``). The bias column is used as it
is (``bias_binning="categorical"``) or, when numeric, binned: at ``bias_threshold``, at
the training pool's median, or into ``bias_quantiles`` bins at the training pool's
quantiles (a value equal to a cut point goes to the lower bin). Features, numeric columns
(by default every column but the target; the bias column too, when it is numeric, since
a shortcut is only a shortcut if the model can see it), are standardised with the mean
and standard deviation of the final training split only.

Settings (``setting``):

* ``none``: the pools as they are.
* ``imbalance``: in training, the bias group ``minority_bias`` (default: the smaller one)
  keeps only ``minority_size`` rows; validation and unbiased test are balanced across
  bias groups (each cut, seeded, to the size of the smallest).
* ``association``: needs as many bias groups as targets. A row *agrees* when its bias
  code equals its target code (both in sorted order: categories sorted, bins low to
  high; for Pima, young with no diabetes and old with diabetes: EB1). Training keeps the
  training pool's rows on one side (``train_on``: ``agree``, EB1, or ``disagree``, EB2);
  every row of the other side outside validation is the unbiased test; validation is the
  validation pool as it is (both sides), so model selection sees both.

Evaluations: ``valid``; ``biased_test``, test-pool rows as in training (natural in
``none``/``imbalance``, the training side in ``association``); ``unbiased_test`` (balanced,
or the other side); and ``unbiased_test_bias<k>``, the unbiased test's bias group k alone,
whose accuracies give the per-group accuracies and their gap.

Without ``bias`` (a table that has no bias column): setting ``none`` only, evaluations
``valid`` and ``biased_test`` (the test pool as it comes; nothing can be balanced), every
bias label 0, and the benchmark marked as having no bias labels, so that a method that
reads them is trained on pseudo ones (``--bias-labels pseudo``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from endebias.data import Benchmark, Split, register_dataset, split_sizes
from endebias.data.csv_table import Table, TableError, read_table

logger = logging.getLogger(__name__)

BINNINGS = ("categorical", "threshold", "median", "quantiles")
SETTINGS = ("none", "imbalance", "association")


def _identity(inputs: torch.Tensor) -> torch.Tensor:
    return inputs  # features are stored standardised, as float32


def bin_bias(
    table: Table,
    name: str,
    *,
    binning: str,
    reference: np.ndarray,
    threshold: float | None = None,
    quantiles: int = 4,
) -> tuple[np.ndarray, list[str], list[float]]:
    """Bias codes per row, group names and the cut points used (empty if categorical).
    ``reference`` are the rows (the training pool) whose median or quantiles set the cuts."""
    if binning not in BINNINGS:
        raise ValueError(f"bias_binning must be one of {', '.join(BINNINGS)}, got {binning!r}")
    if binning == "categorical":
        codes, names = table.categories(name, "bias")
        return codes, names, []
    values = table.numeric(name, "bias")
    if binning == "threshold":
        if isinstance(threshold, bool) or not isinstance(threshold, int | float):
            raise ValueError(
                f"bias_binning='threshold' needs a number bias_threshold, got {threshold!r}"
            )
        cuts = [float(threshold)]
    elif binning == "median":
        cuts = [float(np.median(values[reference]))]
    else:
        if isinstance(quantiles, bool) or not isinstance(quantiles, int) or quantiles < 2:
            raise ValueError(f"bias_quantiles must be an integer >= 2, got {quantiles!r}")
        levels = np.arange(1, quantiles) / quantiles
        cuts = [float(c) for c in np.quantile(values[reference], levels)]
    codes = np.searchsorted(np.array(cuts), values, side="left").astype(np.int64)
    names = [f"{name}<={cuts[0]:g}"]
    names += [f"{low:g}<{name}<={high:g}" for low, high in zip(cuts, cuts[1:], strict=False)]
    names.append(f"{name}>{cuts[-1]:g}")
    return codes, names, cuts


def _pools(
    n: int, valid_fraction: float, test_fraction: float, generator: torch.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    for label, value in (("valid_fraction", valid_fraction), ("test_fraction", test_fraction)):
        if not isinstance(value, int | float) or not 0 < value < 1:
            raise ValueError(f"{label} must be in (0, 1), got {value!r}")
    if valid_fraction + test_fraction >= 1:
        raise ValueError("valid_fraction + test_fraction must leave rows for training")
    order = torch.randperm(n, generator=generator).numpy()
    n_valid, n_test = round(n * valid_fraction), round(n * test_fraction)
    valid, test, train = np.split(order, [n_valid, n_valid + n_test])
    return np.sort(train), np.sort(valid), np.sort(test)


def _balanced(rows: np.ndarray, biases: np.ndarray, generator: torch.Generator) -> np.ndarray:
    """Every bias group cut (seeded) to the size of the smallest one present."""
    groups = [rows[biases[rows] == b] for b in np.unique(biases[rows])]
    size = min((len(g) for g in groups), default=0)
    kept = [g[torch.randperm(len(g), generator=generator)[:size].numpy()] for g in groups]
    return np.sort(np.concatenate(kept)) if kept else rows


def _choose_rows(
    setting: str,
    options: dict[str, Any],
    targets: np.ndarray,
    biases: np.ndarray,
    bias_names: list[str],
    pools: tuple[np.ndarray, np.ndarray, np.ndarray],
    generator: torch.Generator,
) -> dict[str, np.ndarray]:
    train, valid, test = pools
    if setting == "none":
        return {"train": train, "valid": _balanced(valid, biases, generator),
                "biased_test": test, "unbiased_test": _balanced(test, biases, generator)}
    if setting == "imbalance":
        minority, size = options["minority_bias"], options["minority_size"]
        if minority is None:  # the smaller group of the training pool (the last on ties)
            counts = np.bincount(biases[train], minlength=len(bias_names))
            minority = int(len(counts) - 1 - np.argmin(counts[::-1]))
        elif minority in bias_names:
            minority = bias_names.index(minority)
        elif isinstance(minority, bool) or minority not in range(len(bias_names)):
            raise ValueError(
                f"minority_bias must be a bias group ({', '.join(bias_names)}) or its index,"
                f" got {minority!r}"
            )
        members = train[biases[train] == minority]
        if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= len(members):
            raise ValueError(
                f"minority_size must be an integer in 1..{len(members)} (the training rows of "
                f"bias group {bias_names[minority]!r}), got {size!r}"
            )
        dropped = members[torch.randperm(len(members), generator=generator)[size:].numpy()]
        return {"train": np.setdiff1d(train, dropped), "valid": _balanced(valid, biases, generator),
                "biased_test": test, "unbiased_test": _balanced(test, biases, generator)}
    if options["train_on"] not in ("agree", "disagree"):
        raise ValueError(f"train_on must be 'agree' or 'disagree', got {options['train_on']!r}")
    side = (biases == targets) == (options["train_on"] == "agree")
    rest = np.setdiff1d(np.arange(len(targets)), valid)
    return {"train": train[side[train]], "valid": valid, "biased_test": test[side[test]],
            "unbiased_test": rest[~side[rest]]}


def _features(
    table: Table, names: list[str] | None, target: str, bias: str | None
) -> tuple[list[str], np.ndarray]:
    """The feature columns (by default every column but the target, and but a categorical
    bias column) and their values."""
    if names is None:
        names = [c for c in table.columns if c != target]
        if bias is not None:
            try:
                table.numeric(bias, "bias")
            except TableError:
                names.remove(bias)  # a categorical bias column cannot be standardised
                logger.info("tabular: bias column %r is not numeric and is not a feature", bias)
        if not names:
            raise ValueError(f"{table.path}: no feature column besides the target {target!r}")
    elif isinstance(names, str) or not names:
        raise ValueError(f"features must be a non-empty list of column names, got {names!r}")
    if target in names:
        raise ValueError(f"the target column {target!r} cannot be a feature")
    return list(names), np.stack([table.numeric(n, "feature") for n in names], axis=1)


def _standardise(
    values: np.ndarray, train: np.ndarray
) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """Features standardised with the training rows' mean and std."""
    mean = values[train].mean(axis=0)
    std = values[train].std(axis=0)
    std[std == 0] = 1.0  # a constant feature stays constant (zero) rather than NaN
    return torch.from_numpy((values - mean) / std).float(), mean, std


@register_dataset("tabular")
def build_tabular(
    *,
    path: str | Path | None = None,
    target: str | None = None,
    bias: str | None = None,
    features: list[str] | None = None,
    bias_binning: str = "categorical",
    bias_threshold: float | None = None,
    bias_quantiles: int = 4,
    setting: str = "none",
    minority_bias: int | str | None = None,
    minority_size: int = 10,
    train_on: str = "agree",
    valid_fraction: float = 0.2,
    test_fraction: float = 0.3,
    data_dir: str | Path | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
    **unknown: Any,
) -> Benchmark:
    """A CSV table as a benchmark; ``path`` is a CSV file, looked up relative to
    ``data_dir`` when it is not found as given."""
    if unknown:
        raise ValueError(f"tabular: unknown option(s) {', '.join(sorted(unknown))}")
    if not isinstance(target, str | None) or not isinstance(bias, str | None):
        raise ValueError(f"tabular: target and bias must be column names, got {target!r}, "
                         f"{bias!r}")
    if path is None or target is None:
        raise ValueError(
            "tabular needs the options path=<csv file>, target=<column> (and bias=<column> "
            "where the table has one)"
        )
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
    if bias is None and setting != "none":
        raise ValueError(f"tabular: setting={setting!r} needs a bias column (bias=<column>)")
    csv_path = Path(path).expanduser()
    if not csv_path.is_file() and data_dir is not None and not csv_path.is_absolute():
        csv_path = Path(data_dir).expanduser() / csv_path
    table = read_table(csv_path)
    # The two named columns first: a misspelling is named, with the columns listed.
    table.column(target, "target")
    if bias is not None:
        table.column(bias, "bias")
    if target == bias:
        raise ValueError(
            f"{csv_path}: target and bias are the same column {target!r}; the bias must be "
            f"another column (columns: {', '.join(table.columns)})"
        )
    feature_names, values = _features(table, features, target, bias)  # fail early on bad cells
    generator = torch.Generator().manual_seed(seed)
    pools = _pools(len(table), valid_fraction, test_fraction, generator)
    targets, target_names = table.categories(target, "target")
    if bias is None:  # targets only: one bias group, and nothing to balance
        biases, bias_names, cuts = np.zeros(len(table), dtype=np.int64), ["all"], None
    else:
        biases, bias_names, cuts = bin_bias(
            table, bias, binning=bias_binning, reference=pools[0], threshold=bias_threshold,
            quantiles=bias_quantiles,
        )
    if setting == "association" and len(bias_names) != len(target_names):
        raise ValueError(
            f"setting='association' needs as many bias groups as targets: bias column {bias!r} "
            f"has {len(bias_names)} ({', '.join(bias_names)}), target column {target!r} has "
            f"{len(target_names)}"
        )
    options = {"minority_bias": minority_bias, "minority_size": minority_size, "train_on": train_on}
    if bias is None:
        rows = dict(zip(("train", "valid", "biased_test"), pools, strict=True))
    else:
        rows = _choose_rows(setting, options, targets, biases, bias_names, pools, generator)
    for split, chosen in rows.items():
        present = np.bincount(biases[chosen], minlength=len(bias_names))
        if not present.all():
            empty = bias_names[int(np.argmin(present))]
            raise ValueError(
                f"{csv_path}: bias column {bias!r}: group {empty!r} is empty in the {split} "
                f"split (setting {setting!r}); change the binning, setting or fractions"
            )
    if len(np.unique(targets[rows["train"]])) < 2:
        raise ValueError(f"{csv_path}: target column {target!r} has one class only in training")

    standardised, mean, std = _standardise(values, rows["train"])
    target_tensor, bias_tensor = torch.from_numpy(targets), torch.from_numpy(biases)

    def split(chosen: np.ndarray) -> Split:
        index = torch.from_numpy(chosen)
        made = Split(standardised[index], target_tensor[index], bias_tensor[index])
        return made.to(device) if device is not None else made

    evaluations = {name: split(chosen) for name, chosen in rows.items() if name != "train"}
    if bias is not None:
        unbiased = rows["unbiased_test"]
        for code in range(len(bias_names)):
            evaluations[f"unbiased_test_bias{code}"] = split(unbiased[biases[unbiased] == code])
    train = split(rows["train"])
    logger.info("tabular %s (%s): %s", csv_path.name,
                setting if bias is not None else "no bias column",
                split_sizes(train, evaluations))
    return Benchmark(
        name="tabular",
        train=train,
        evaluations=evaluations,
        num_targets=len(target_names),
        num_biases=len(bias_names),
        input_shape=(len(feature_names),),
        prepare=_identity,
        target_names=target_names,
        bias_names=bias_names,
        info={"path": str(csv_path), "target": target, "bias": bias, "setting": setting,
              "features": feature_names, "bias_cuts": cuts, "seed": seed,
              "feature_mean": mean.tolist(), "feature_std": std.tolist()},
        has_bias_labels=bias is not None,
    )


# A table's rows are feature vectors: the image models cannot take them.
build_tabular.default_model = "mlp"  # type: ignore[attr-defined]
