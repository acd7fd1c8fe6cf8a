"""Methods side by side over seeds: one cell per (method, setting), mean ± std of the
finished runs that differ only in their seed (no torch import: records are JSON).

Sweeps are summarised by their top k (``results.compare_table``); this table is for the
other question, "how does each method do at a fixed setting, over seeds", which is what
a fair comparison of methods needs (issue: baselines in the same harness).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from endebias.report.protocol import resolved_config
from endebias.report.results import (
    PAPER_DIGITS,
    PAPER_NOT_HERE,
    PAPER_TABLE1,
    PUBLISHED_LATER,
    PUBLISHED_LATER_SOURCE,
    Row,
    mean_std,
    plus_minus,
    sort_rows,
)
from endebias.report.runs import Run, distinct_runs, load_run, load_runs, run_folders
from endebias.training import records
from endebias.training.bias_labels import AGREEMENT, AGREEMENT_KEYS, PSEUDO_DEFAULTS

METRICS = (
    ("biased", "biased_test_acc"),
    ("unbiased", "unbiased_test_acc"),
    ("conflicting", "unbiased_test_acc_conflicting"),
)
# Our methods behind the paper's Table 1 rows, in its order.
PAPER_NAMES = {"vanilla": "Vanilla", "hex": "HEX", "learned-mixin": "LearnedMixin",
               "rubi": "RUBi", "rebias": "ReBias", "end": "EnD"}
# Our methods behind later papers' published rows (PUBLISHED_LATER).
LATER_NAMES = {"fairkl": "FairKL"}
# Debiasing methods that train without bias labels (Method.uses_bias_labels is False,
# vanilla aside; report cannot import torch to ask: tests/test_comparison.py checks this set
# against the registry).
WITHOUT_BIAS_LABELS = {
    "gce", "hex", "jtt", "learned-mixin", "lff", "rebias", "rubi", "sd", "softcon",
}
# The paper's numbers are for this benchmark only.
PAPER_DATASET = "biased-mnist"
# Config entries that tell the rows apart (the method, its options, the vanilla variant)
# or the runs within a cell (the seed): never a column of the table.
ROW_KEYS = ("method", "method_options.", "seed", "model_options.normalize_features",
            "bias_labels", "pseudo_options.")
RHO_KEY = "dataset_options.rho"


@dataclass
class Cell:
    """The finished runs of one method and setting, all seeds."""

    method: str
    options: dict[str, Any]
    rho: float | None
    runs: list[Run] = field(default_factory=list)
    # Which network, where two variants of one are compared (model_variant).
    variant: str = ""
    # The setting that tells this cell's column apart (set by group_runs): the rho for
    # Biased MNIST at several rhos, else whatever differs between the runs compared.
    column: str = ""
    dataset: str = ""
    # How the training bias labels were made, for runs on pseudo labels (pseudo_label_kind).
    bias_labels: str = ""
    # "bf16" where the runs trained under bf16 autocast (arithmetic).
    arithmetic: str = ""

    @property
    def label(self) -> str:
        options = [f"{k}={_short(v)}" for k, v in sorted(self.options.items())]
        tags = [f"[{tag}]" for tag in (self.variant, self.bias_labels, self.arithmetic) if tag]
        return " ".join([self.method, *options, *tags])

    def agreement(self, key: str) -> tuple[float, float] | None:
        """Mean and std over the runs of a pseudo-label agreement value (``nmi``,
        ``matched_acc``; x100) from each run's pseudo_labels.json, where there is one."""
        values = []
        for run in self.runs:
            try:
                value = records.read_json(run.path / AGREEMENT).get(key)
            except (OSError, ValueError, AttributeError):  # none, or unreadable
                continue
            if isinstance(value, int | float):
                values.append(100 * value)
        return mean_std(values)

    @property
    def seeds(self) -> list[int]:
        return sorted(run.config.get("seed") for run in self.runs)

    def stat(self, key: str) -> tuple[float, float] | None:
        """Mean and population std (x100) of a best-by-valid accuracy over the runs."""
        values = [run.best[key] for run in self.runs if run.best.get(key) is not None]
        return mean_std([100 * v for v in values])

    def seconds_per_epoch(self) -> tuple[float, float] | None:
        """Training seconds per epoch (evaluation excluded), mean and std over runs."""
        per_run = [sum(seconds) / len(seconds) for run in self.runs
                   if (seconds := [e["train_seconds"] for e in run.history
                                   if e.get("train_seconds") is not None])]
        return mean_std(per_run)


def model_variant(config: dict[str, Any]) -> str:
    """``ReBias model`` for SimpleConvNet with the classifier on the raw pooled features
    (the model behind Table 1's vanilla row), ``EnD model`` for the official EnD one (the
    classifier on the normalised features), ``""`` for any other model."""
    if config.get("model", "simple-conv") != "simple-conv":
        return ""
    normalised = config.get("model_options", {}).get("normalize_features", True)
    return "EnD model" if normalised else "ReBias model"


def arithmetic(best: dict[str, Any]) -> str:
    """``bf16`` for a run whose epochs ran under bf16 autocast (its records' ``fast_path``;
    ``--amp auto`` picks it where bf16 is native), ``""`` for float32 or records that
    predate the field."""
    return "bf16" if "amp" in str(best.get("fast_path", "")).split(", ") else ""


def _option_text(value: Any) -> str:
    """``{kernel_size: 1}`` for a mapping (as it is typed on the command line)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {v}" for k, v in value.items()) + "}"
    return str(value)


def pseudo_label_kind(config: dict[str, Any]) -> str:
    """``pseudo: cluster k=2`` / ``pseudo: predictions`` for a run trained on pseudo bias
    labels (--bias-labels pseudo), followed by every other pseudo option that differs from
    its default (``pseudo: cluster k=2, stage1=gce``) so that runs whose labels were made
    differently never share a row; ``""`` for a run on the dataset's own labels."""
    if config.get("bias_labels", "given") == "given":
        return ""
    options = config.get("pseudo_options", {})
    labelling = options.get("labelling", "?")
    k = f" k={options.get('k')}" if labelling == "cluster" else ""
    shown = {"labelling", "k"}
    if options.get("stage1", PSEUDO_DEFAULTS["stage1"]) != "gce":
        shown.add("q")  # GCE's exponent means nothing to a plain stage 1
    others = [f"{key}={_option_text(options[key])}" for key in PSEUDO_DEFAULTS
              if key not in shown and key in options and options[key] != PSEUDO_DEFAULTS[key]]
    return f"pseudo: {labelling}{k}" + "".join(f", {text}" for text in others)


def _short(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def best_setting(rows: list[Row], *, method: str | None = None) -> dict[str, Any]:
    """The method options of a sweep's best complete trial by validation accuracy: the
    setting a method is compared at. ``method`` guards against reading the wrong sweep."""
    complete = [r for r in sort_rows(rows) if r.state == "COMPLETE" and r.valid_acc is not None]
    if not complete:
        raise ValueError("the sweep has no complete trial with a validation accuracy yet")
    best = complete[0]
    found = best.config.get("method")
    if method is not None and found != method:
        raise ValueError(f"the sweep's best trial trained {found!r}, not {method!r}")
    return dict(best.config.get("method_options", {}))


def find_runs(folders: list[str | Path]) -> list[Run]:
    """Run folders in each folder (or the folder itself when it is one), sorted by path."""
    found: list[Run] = []
    for folder in map(Path, folders):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: not a folder of run folders")
        if (folder / records.CONFIG).exists():
            found.append(load_run(folder))
            continue
        # A damaged run is skipped with a warning naming its file (runs.load_runs).
        found += load_runs(run_folders(folder))  # a run without its config is named
    return distinct_runs(found)  # a copied run folder is not another seed


def group_runs(runs: list[Run]) -> tuple[list[Cell], int]:
    """Finished runs grouped by everything in their config but the seed; returns the cells
    (by rho, highest first; vanilla, then EnD, then the rest by name) and how many runs
    were left out because they have not finished (or failed)."""
    cells: dict[str, Cell] = {}
    unfinished = 0
    for run in runs:
        if not run.done or run.best is None:
            unfinished += 1
            continue
        config = resolved_config(run.config)  # what it trained, however it was spelt
        key_config = {k: v for k, v in config.items() if k != "seed"}
        # Seeds run in bf16 and in float32 are not one cell, though "auto" reads the same.
        key_config["arithmetic"] = arithmetic(run.best)
        key = json.dumps(key_config, sort_keys=True, default=str)
        if key not in cells:
            rho = config["dataset_options"].get("rho")
            cells[key] = Cell(run.config.get("method", "?"), run.config.get("method_options", {}),
                              None if rho is None else float(rho),
                              variant=_variant_if_vanilla(run.config),
                              dataset=str(run.config.get("dataset", "?")),
                              bias_labels=pseudo_label_kind(run.config),
                              arithmetic=arithmetic(run.best))
        cells[key].runs.append(run)
    _set_columns(list(cells.values()))

    def position(cell: Cell) -> tuple[float, str, int, str]:
        rho = -cell.rho if cell.rho is not None else math.inf  # highest rho first, none last
        known = list(PAPER_NAMES)
        order = known.index(cell.method) if cell.method in known else len(known)
        return rho, cell.column, order, cell.label

    return sorted(cells.values(), key=position), unfinished


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """``{"dataset_options.rho": "0.997", "epochs": "6", ...}``: nested options by dotted
    name, each value as JSON so that lists and numbers compare exactly."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = json.dumps(value, sort_keys=True, default=str)
    return flat


def column_keys(cells: list[Cell]) -> list[str]:
    """The config entries, rows' own aside, whose values differ between the cells."""
    flats = [_flat(resolved_config(cell.runs[0].config)) for cell in cells]
    names = sorted(set().union(*flats))
    return [name for name in names if not name.startswith(ROW_KEYS)
            and len({flat.get(name) for flat in flats}) > 1]


def _set_columns(cells: list[Cell]) -> None:
    """Each cell's column label: ``0.997`` when only the rho differs (Table 1's layout),
    ``option=value, ...`` for any other setting that differs, else the dataset's name."""
    keys = column_keys(cells)
    for cell in cells:
        flat = _flat(resolved_config(cell.runs[0].config))
        if keys == [RHO_KEY] and cell.rho is not None:
            cell.column = f"{cell.rho:.3f}"
        elif keys:
            cell.column = ", ".join(
                f"{key.rsplit('.', 1)[-1]}={_short(json.loads(flat[key])) if key in flat else '-'}"
                for key in keys
            )
        else:
            cell.column = cell.dataset


def _variant_if_vanilla(config: dict[str, Any]) -> str:
    """Vanilla rows say which SimpleConvNet they trained: Table 1's vanilla is ReBias's
    model, the official EnD code's vanilla normalises the features."""
    return model_variant(config) if config.get("method") == "vanilla" else ""


def _pm(pair: tuple[float, float | None] | None, digits: int = 2) -> str:
    return plus_minus(pair, digits, missing="-")


def _paper(cell: Cell) -> tuple[float, float | None] | None:
    """The paper's unbiased accuracy for this cell's method and rho (Biased MNIST only)."""
    if cell.dataset != PAPER_DATASET or cell.rho is None:
        return None
    if cell.method in LATER_NAMES:
        return PUBLISHED_LATER[LATER_NAMES[cell.method]].get(cell.rho)
    return PAPER_TABLE1.get(PAPER_NAMES.get(cell.method, ""), {}).get(cell.rho)


def method_table(runs: list[Run], *, fmt: str = "markdown") -> str:
    """Markdown: unbiased accuracy as methods x setting (the rho on Biased MNIST, with the
    paper's rows beside ours; else whatever setting differs between the runs), then one
    row per method and setting with biased / unbiased / conflicting accuracy and seconds
    per epoch. csv / json: the long table's values."""
    cells, unfinished = group_runs(runs)
    if not cells:
        raise ValueError("no finished runs to compare")
    if fmt in ("csv", "json"):
        flat = []
        for cell in cells:
            row: dict[str, Any] = {"method": cell.label, "setting": cell.column,
                                   "rho": cell.rho, "seeds": cell.seeds}
            for name, key in METRICS:
                stat = cell.stat(key)
                row[f"{name}_mean"], row[f"{name}_std"] = stat if stat else (None, None)
            seconds = cell.seconds_per_epoch()
            row["seconds_per_epoch"] = None if seconds is None else seconds[0]
            paper = _paper(cell)
            row["paper_unbiased"] = None if paper is None else paper[0]
            if any(c.bias_labels for c in cells):
                for key in AGREEMENT_KEYS:
                    stat = cell.agreement(key)
                    row[f"pseudo_{key}"] = None if stat is None else stat[0]
            flat.append(row)
        if fmt == "json":
            return records.dumps(flat, indent=2) + "\n"
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(flat[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({**r, "seeds": " ".join(map(str, r["seeds"]))} for r in flat)
        return buffer.getvalue()
    if fmt != "markdown":
        raise ValueError(f"unknown format {fmt!r} for a method table; known: markdown, csv, json")
    if all(cell.stat("unbiased_test_acc") is None for cell in cells):
        # Datasets without bias labels have no unbiased test: the table below says the rest.
        return _long(cells, unfinished)
    return _pivot(cells) + "\n" + _long(cells, unfinished)


def _column_rho(cells: list[Cell], column: str) -> float | None:
    """The one rho of a column's Biased MNIST cells, if they share one."""
    rhos = {c.rho for c in cells if c.column == column}
    return rhos.pop() if len(rhos) == 1 else None


def _pivot(cells: list[Cell]) -> str:
    columns = list(dict.fromkeys(c.column for c in cells))
    labels = list(dict.fromkeys(c.label for c in cells))
    by_key = {(c.label, c.column): c for c in cells}
    lines = ["Unbiased test accuracy (%), mean ± population std over seeds "
             "(n = seeds per cell):", "",
             "| method | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    if all(c.dataset == PAPER_DATASET and c.rho is not None for c in cells):
        rhos = [_column_rho(cells, column) for column in columns]
        for name, published in PAPER_TABLE1.items():
            digits = PAPER_DIGITS.get(f"{name} (paper)", 2)
            shown = [_pm(published.get(rho) if rho is not None else None, digits)
                     for rho in rhos]
            copied = "published in the paper" + ("; not in endebias" * (name in PAPER_NOT_HERE))
            lines.append(f"| {name} ({copied}) | " + " | ".join(shown) + " |")
        present = {LATER_NAMES[c.method] for c in cells if c.method in LATER_NAMES}
        for name in sorted(present):
            shown = [_pm(PUBLISHED_LATER[name].get(rho) if rho is not None else None)
                     for rho in rhos]
            source = PUBLISHED_LATER_SOURCE[name]
            lines.append(f"| {name} (published, {source}) | " + " | ".join(shown) + " |")
    for label in labels:
        shown = []
        for column in columns:
            cell = by_key.get((label, column))
            shown.append("-" if cell is None else
                         f"{_pm(cell.stat('unbiased_test_acc'))} (n={len(cell.runs)})")
        method = next(c.method for c in cells if c.label == label)
        ours = "ours, no bias labels" if method in WITHOUT_BIAS_LABELS else "ours"
        lines.append(f"| {label} ({ours}) | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def _long(cells: list[Cell], unfinished: int) -> str:
    keys = column_keys(cells)
    first = "rho" if keys == [RHO_KEY] else "setting" if keys else "dataset"
    with_paper = any(_paper(cell) is not None for cell in cells)
    with_pseudo = any(cell.bias_labels for cell in cells)
    header = [first, "method", "seeds", *(name for name, _ in METRICS), "s / epoch",
              *(["unbiased, paper"] if with_paper else []),
              *(["pseudo labels: NMI", "matched"] if with_pseudo else [])]
    lines = ["| " + " | ".join(header) + " |", "|---|---|---|" + "---:|" * (len(header) - 3)]
    for cell in cells:
        seconds = cell.seconds_per_epoch()
        paper = _paper(cell)
        digits = PAPER_DIGITS.get(f"{PAPER_NAMES.get(cell.method)} (paper)", 2)
        values = [_pm(cell.stat(key)) for _, key in METRICS]
        values.append("-" if seconds is None else
                      f"{seconds[0]:.0f}" if seconds[0] >= 10 else f"{seconds[0]:.2g}")
        values += [_pm(paper, digits)] if with_paper else []
        values += [_pm(cell.agreement(key)) for key in AGREEMENT_KEYS] if with_pseudo else []
        seeds = " ".join(map(str, cell.seeds))
        lines.append("| " + " | ".join([cell.column, cell.label, seeds, *values]) + " |")
    if with_pseudo:
        lines += ["", "Pseudo labels: agreement with the dataset's bias labels on the training "
                  "split (x100): normalised mutual information, and accuracy after the best "
                  "one-to-one matching of pseudo labels to bias values."]
    if unfinished:
        lines += ["", f"{unfinished} unfinished or failed run(s) left out."]
    return "\n".join(lines) + "\n"
