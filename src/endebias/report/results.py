"""Lay run records out as tables: a sweep's rows, its summary, Table 1 (no torch import:
records are JSON; :mod:`endebias.report.runs` reads the run folders)."""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from endebias.report.protocol import protocol_words
from endebias.report.runs import Run, load_runs, run_folders
from endebias.training import records

log = logging.getLogger(__name__)


def percent(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{100 * value:.2f}"


SIDE_BY_SIDE = [
    ("biased", "biased_test_acc"),
    ("unbiased", "unbiased_test_acc"),
    ("aligned", "unbiased_test_acc_aligned"),
    ("conflicting", "unbiased_test_acc_conflicting"),
    ("worst group", "unbiased_test_acc_worst_group"),
]


def side_by_side_table(runs: dict[str, Run]) -> str:
    """A markdown table: one row per run (its best-by-valid epoch), accuracies in percent.

    Aligned / conflicting / worst group are measured on the unbiased test set, where every
    (digit, colour) group is populated.
    """
    header = ["run", "epoch", "valid"] + [name for name, _ in SIDE_BY_SIDE]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, run in runs.items():
        best = run.best or {}
        cells = [label, str(best.get("epoch", "-")), percent(best.get("valid_acc"))]
        cells += [percent(best.get(key)) for _, key in SIDE_BY_SIDE]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- Sweeps: one row per trial (or per run folder), top-k summary, Table 1 -------------

METRIC_COLUMNS = ("valid_acc", "biased_test_acc", "unbiased_test_acc")
SUMMARY_METRICS = ("biased_test_acc", "unbiased_test_acc")
# The paper's Table 1 (unbiased test accuracy, %), docs/design.md section 3: (mean, std or
# None), in the paper's order. All rows but EnD's are ReBias's Table 1 (Bahng et al. 2020).
PAPER_TABLE1: dict[str, dict[float, tuple[float, float | None]]] = {
    "Vanilla": {0.999: (10.4, None), 0.997: (33.4, None), 0.995: (72.1, None), 0.990: (89.1, None)},
    "HEX": {0.999: (10.8, None), 0.997: (16.6, None), 0.995: (19.7, None), 0.990: (24.7, None)},
    "LearnedMixin": {0.999: (12.1, None), 0.997: (50.2, None), 0.995: (78.2, None),
                     0.990: (88.3, None)},
    "RUBi": {0.999: (13.7, None), 0.997: (43.0, None), 0.995: (90.4, None), 0.990: (93.6, None)},
    "ReBias": {0.999: (22.7, None), 0.997: (64.2, None), 0.995: (76.0, None), 0.990: (88.1, None)},
    "EnD": {0.999: (52.30, 2.39), 0.997: (83.70, 1.03), 0.995: (93.92, 0.35), 0.990: (96.02, 0.08)},
}
# Later methods' own published Biased MNIST numbers (unbiased %, same rhos), shown beside
# their rows when a table has them: FairKL (Barbano et al., ICLR 2023), without colour
# augmentation.
PUBLISHED_LATER: dict[str, dict[float, tuple[float, float | None]]] = {
    "FairKL": {0.999: (89.55, None), 0.997: (94.08, None), 0.995: (97.00, None),
               0.990: (97.86, None)},
}
PUBLISHED_LATER_SOURCE = {"FairKL": "Barbano et al. 2023"}
# Printed as the paper prints them: one decimal for every row but EnD's.
PAPER_DIGITS = {f"{name} (paper)": 1 for name in PAPER_TABLE1 if name != "EnD"}
# Rows of the paper that no method of endebias trains (none: every row has its method).
PAPER_NOT_HERE: set[str] = set()


@dataclass
class Row:
    """One trial or run at its best-by-valid epoch (accuracies as fractions)."""

    id: str
    state: str
    valid_acc: float | None
    biased_test_acc: float | None
    unbiased_test_acc: float | None
    config: dict[str, Any]
    run_dir: str | None = None
    epoch: int | None = None

    @property
    def options(self) -> dict[str, Any]:
        """The method's options in the run's config (a sweep's searched ones among them)."""
        return self.config.get("method_options") or {}

    def as_dict(self, option_names: list[str] | None = None) -> dict[str, Any]:
        """Metrics, then the named method options (default: this row's), then the rest."""
        names = list(self.options) if option_names is None else option_names
        return {"valid_acc": self.valid_acc, "biased_test_acc": self.biased_test_acc,
                "unbiased_test_acc": self.unbiased_test_acc,
                **{name: self.options.get(name) for name in names},
                "state": self.state, "id": self.id, "epoch": self.epoch,
                "method": self.config.get("method"),
                "rho": self.config.get("dataset_options", {}).get("rho"),
                "run_dir": self.run_dir}


def option_names(rows: list[Row]) -> list[str]:
    """The method options set in any row, in first-seen order: alpha and beta for an EnD
    sweep (the original script's columns), step_size... for a Group DRO one."""
    return list(dict.fromkeys(name for row in rows for name in row.options))


def table_columns(rows: list[Row]) -> list[str]:
    """The per-trial table's columns: metrics, the rows' method options, state and id."""
    return [*METRIC_COLUMNS, *option_names(rows), "state", "id"]


def sort_rows(rows: list[Row]) -> list[Row]:
    """Best valid accuracy first (rows without one last), ties by id, as the original."""
    return sorted(rows, key=lambda r: (r.valid_acc is None, -(r.valid_acc or 0.0), _id_key(r.id)))


def _id_key(ident: str) -> tuple[int, str]:
    """Trial numbers in numeric order (9 before 10); folder names alphabetically."""
    return (int(ident), "") if ident.isdigit() else (1 << 62, ident)


def rows_from_study(study: Any, *, runs_dir: str | Path | None = None) -> list[Row]:
    """Rows of an Optuna study made by ``endebias sweep``: one per trial with a result.
    Left out, each kind named in the log: trials that were re-queued (their retry holds
    the run; a warning while no retry has a result), trials that ended without a finished
    epoch (a warning); and, silently, trials an agent
    skipped (the sweep was full, another trial trained the same config) and repeats of a
    config already listed. With ``runs_dir``, each trial's run folder is looked up under
    ``runs_dir/<sweep id>/`` (a copied or moved sweep) before the path stored with it."""
    trials = study.get_trials(deepcopy=False)
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    retried |= {t.user_attrs["requeued_from"] for t in trials if "requeued_from" in t.user_attrs}
    _note_requeued(study.study_name, trials, retried)
    rows, seen_runs = [], set()
    no_epoch = []
    for trial in trials:
        attrs = trial.user_attrs
        if trial.number in retried or attrs.get("skipped"):
            continue
        if attrs.get("valid_acc") is None:
            if trial.state.is_finished():  # a running one is named by warn_unfinished
                no_epoch.append(f"{trial.number} ({trial.state.name.lower()})")
            continue
        # The same config asked twice trains once: one row per run folder.
        if attrs.get("run_dir") in seen_runs:
            continue
        seen_runs.add(attrs.get("run_dir"))
        rows.append(Row(
            id=str(trial.number), state=trial.state.name, valid_acc=attrs["valid_acc"],
            biased_test_acc=attrs.get("biased_test_acc"),
            unbiased_test_acc=attrs.get("unbiased_test_acc"),
            config=attrs.get("config", {}),
            run_dir=_run_here(attrs.get("run_dir"), study.study_name, runs_dir),
            epoch=attrs.get("best_epoch"),
        ))
    if no_epoch:
        log.warning("sweep %s: trial%s %s ended without a finished epoch: not in the table",
                    study.study_name, "s" * (len(no_epoch) > 1), ", ".join(no_epoch))
    return sort_rows(rows)


def _note_requeued(sweep_id: str, trials: list[Any], retried: set[int]) -> None:
    """Say which trials were re-queued: counted once, by a retry with a result (info), or
    not in the table at all while no retry has one yet (a warning)."""
    if not retried:
        return
    answered = {n for t in trials if t.user_attrs.get("valid_acc") is not None
                for n in [*t.system_attrs.get("retry_history", []),
                          t.user_attrs.get("requeued_from")] if n is not None}
    counted, waiting = sorted(retried & answered), sorted(retried - answered)
    if counted:
        log.info("sweep %s: trial%s %s re-queued (agent killed or interrupted): each counted "
                 "once, by the retry that holds its run", sweep_id, "s" * (len(counted) > 1),
                 ", ".join(map(str, counted)))
    if waiting:
        log.warning("sweep %s: trial%s %s re-queued (agent killed or interrupted) and no retry "
                    "has a result yet: not in the table", sweep_id, "s" * (len(waiting) > 1),
                    ", ".join(map(str, waiting)))


def _run_here(stored: str | None, sweep_id: str, runs_dir: str | Path | None) -> str | None:
    """The trial's run folder under ``runs_dir`` when it is there, else as stored."""
    if stored is None or runs_dir is None:
        return stored
    here = Path(runs_dir) / sweep_id / Path(stored).name
    return str(here) if (here / records.CONFIG).exists() else stored


def rows_from_runs(folder: str | Path) -> list[Row]:
    """Rows from run folders (``runs/<sweep id>/*``), for when the database is not at hand;
    a folder that is itself a run gives its own row (not those of runs inside it, such as
    a pseudo-label run's stage 1). Damaged runs are skipped with a warning naming the file
    (see :func:`load_runs`)."""
    rows = []
    if (Path(folder) / records.CONFIG).exists():
        folders = [Path(folder)]
    else:
        folders = run_folders(Path(folder))
    for run in load_runs(folders):
        state = "COMPLETE" if run.done else "FAIL" if run.error else "RUNNING"
        if run.best is None:  # shown, without numbers: killed in (or still in) epoch 1
            state = "FAIL" if run.error else "NO_EPOCH"
            log.warning("%s: no finished epoch (%s); listed without results", run.path,
                        run.error or "killed in its first epoch, or still in it; "
                        "endebias train --resume continues it")
            rows.append(Row(id=run.path.name, state=state, valid_acc=None,
                            biased_test_acc=None, unbiased_test_acc=None, config=run.config,
                            run_dir=str(run.path)))
            continue
        rows.append(Row(
            id=run.path.name, state=state, valid_acc=run.best.get("valid_acc"),
            biased_test_acc=run.best.get("biased_test_acc"),
            unbiased_test_acc=run.best.get("unbiased_test_acc"),
            config=run.config, run_dir=str(run.path), epoch=run.best.get("epoch"),
        ))
    return sort_rows(rows)


def summarize(rows: list[Row], *, top: int = 3) -> dict[str, tuple[float, float] | None]:
    """Mean and population std (x100) over the ``top`` complete rows by valid accuracy;
    running, pruned or failed trials never count as results."""
    best = [r for r in sort_rows(rows) if r.state == "COMPLETE"][:top]
    summary: dict[str, tuple[float, float] | None] = {}
    for metric in SUMMARY_METRICS:
        stats = mean_std([getattr(r, metric) for r in best if getattr(r, metric) is not None])
        summary[metric] = None if stats is None else (100 * stats[0], 100 * stats[1])
    return summary


def mean_std(values: list[float]) -> tuple[float, float] | None:
    """Mean and population standard deviation (the paper's), or None for no values."""
    if not values:
        return None
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def plus_minus(
    pair: tuple[float, float | None] | None, digits: int = 2, missing: str = "n/a"
) -> str:
    """``mean ± std`` (``mean`` alone when the std is unknown, ``missing`` for None)."""
    if pair is None:
        return missing
    mean, std = pair
    return f"{mean:.{digits}f}" if std is None else f"{mean:.{digits}f} ± {std:.{digits}f}"


def format_study(name: str, rows: list[Row], *, top: int = 3, fmt: str = "text") -> str:
    """The original results script's output (text), or the same rows as csv/json/markdown."""
    summary = summarize(rows, top=top)
    columns = table_columns(rows)
    if fmt == "json":
        stats = {k: None if v is None else {"mean": v[0], "std": v[1]} for k, v in summary.items()}
        names = option_names(rows)  # the same keys in every row
        document = {"study": name, "top": top, "rows": [r.as_dict(names) for r in rows],
                    "summary": stats}
        return records.dumps(document, indent=2) + "\n"
    if fmt == "csv":
        names = option_names(rows)
        fields = ["study", *columns, "epoch", "method", "rho", "run_dir"]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            values = row.as_dict(names)
            writer.writerow({"study": name, **{k: values[k] for k in fields[1:]}})
        return buffer.getvalue()
    names = option_names(rows)
    cells = [[_cell(row.as_dict(names)[c]) for c in columns] for row in rows]
    lines_out: list[str]
    if fmt == "markdown":
        lines_out = [f"### {name}", "", "| " + " | ".join(columns) + " |",
                     "|" + "---:|" * (len(columns) - 2) + "---|---|"]
        lines_out += ["| " + " | ".join(c) + " |" for c in cells]
        header, *notes = summary_lines(rows, top=top)
        lines_out += ["", header, ""]
        lines_out += [f"- {line}" if line.startswith(SUMMARY_METRICS) else f"{line}\n"
                      for line in notes]
        return "\n".join(lines_out) + "\n"
    if fmt != "text":
        raise ValueError(f"unknown format {fmt!r}; known: text, csv, json, markdown")
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    lines_out = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines_out += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines_out.append(f"------- SUMMARY FOR {name} -------")
    lines_out += summary_lines(rows, top=top)
    return "\n".join(lines_out) + "\n\n"

def summary_lines(rows: list[Row], *, top: int = 3) -> list[str]:
    """The top-k summary in %, saying how many complete trials it is over when fewer
    than ``top`` are (the paper averages 3), and what the trials ran when it is not the
    paper's protocol."""
    summary = summarize(rows, top=top)
    complete = sum(row.state == "COMPLETE" for row in rows)
    lines = [f"Top {top} complete runs by valid accuracy (mean ± population std, %):"]
    if complete < top:
        lines.append(f"only {complete} complete trial{'' if complete == 1 else 's'}: the "
                     f"summary is over {complete}, not the top {top}")
    config = next((r.config for r in rows if r.config), {})
    if config:
        lines.append(f"trials ran: {protocol_words(config)}")
    lines += [f"{metric}: {plus_minus(summary[metric])}" for metric in SUMMARY_METRICS]
    return lines


def compare_table(studies: dict[str, list[Row]], *, top: int = 3, fmt: str = "markdown") -> str:
    """Several sweeps as the paper's Table 1: unbiased test accuracy per rho (columns), the
    paper's rows, then ours (top-k mean ± population std)."""
    ours: dict[str, dict[float, tuple[float, float] | None]] = {}
    for name, rows in studies.items():
        config = next((r.config for r in rows if r.config), {})
        rho = config.get("dataset_options", {}).get("rho")
        if rho is None:
            raise ValueError(f"sweep {name!r}: no rho in its runs' configs, so no Table 1 column")
        # Never "the paper preset" for a run cut short: every difference is in the label.
        label = f"{config.get('method', '?')} (ours, {protocol_words(config)})"
        while float(rho) in ours.get(label, {}):
            label += "'"  # a second sweep at the same rho gets its own row
        ours.setdefault(label, {})[float(rho)] = summarize(rows, top=top)["unbiased_test_acc"]
    rhos = sorted({*PAPER_TABLE1["EnD"], *(r for row in ours.values() for r in row)}, reverse=True)
    table = {f"{k} (paper)": v for k, v in PAPER_TABLE1.items()} | ours
    if fmt in ("csv", "json"):
        flat = [{"method": label, "rho": rho, "mean": (cells[rho] or (None, None))[0],
                 "std": (cells[rho] or (None, None))[1]}
                for label, cells in table.items() for rho in rhos if rho in cells]
        if fmt == "json":
            return records.dumps(flat, indent=2) + "\n"
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(flat[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(flat)
        return buffer.getvalue()
    header = ["method"] + [f"{rho:.3f}" for rho in rhos]
    title = f"Unbiased test accuracy (%): top {top} runs by valid accuracy, mean ± population std"
    lines_out = [title, "", "| " + " | ".join(header) + " |", "|---|" + "---:|" * len(rhos)]
    for label, cells in table.items():
        digits = PAPER_DIGITS.get(label, 2)
        shown = [plus_minus(cells[rho], digits) if rho in cells else "-" for rho in rhos]
        lines_out.append("| " + " | ".join([label] + shown) + " |")
    return "\n".join(lines_out) + "\n"
