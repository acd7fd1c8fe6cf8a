"""The budget search's record and its selection rule (issue 34; docs/results.md, "Budget
search"): the CSV of finished cells, the rule that picks a CPU preset from it, the table
and the picture. No torch here: it reads numbers only.

A cell is one budget x method x rho x seed, at its best epoch by valid accuracy; accuracies
are in %, ``minutes`` is the run's own training and evaluation time (the sum of its epochs'
``seconds``), ``load_avg`` the machine's 1-minute load average while it ran, ``fast_path``
the arithmetic the run used (bf16 autocast where the CPU has it natively).
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# What a budget is: the options a candidate sets (docs/results.md, "Budget search").
BUDGET_COLUMNS = ("budget", "dataset", "epochs", "lr_step", "kernel_size", "pool_after",
                  "channels", "train_subset", "eval_subset", "end_alpha", "end_beta")
KEY_COLUMNS = ("budget", "method", "rho", "seed")
COLUMNS = (*BUDGET_COLUMNS, "method", "rho", "seed", "best_epoch", "valid_acc", "biased_acc",
           "unbiased_acc", "minutes", "fast_path", "agents", "threads", "load_avg", "cores",
           "machine", "torch", "date")
NUMBERS = ("rho", "valid_acc", "biased_acc", "unbiased_acc", "minutes", "load_avg",
           "end_alpha", "end_beta")
INTEGERS = ("seed", "best_epoch", "epochs", "lr_step", "kernel_size", "train_subset",
            "eval_subset", "agents", "threads", "cores")

# The paper's Table 1, unbiased test accuracy in % (endebias.report.results.PAPER_TABLE1).
PAPER_VANILLA = {0.999: 10.4, 0.997: 33.4, 0.995: 72.1, 0.990: 89.1}
PAPER_END = {0.999: 52.30, 0.997: 83.70, 0.995: 93.92, 0.990: 96.02}


@dataclass(frozen=True)
class Rule:
    """The selection rule, fixed before any run (docs/results.md, "Budget search")."""

    max_minutes: float = 15.0  # per run, on idle cores
    within: float = 10.0  # points of the paper's vanilla, at each of ``near_rhos``
    near_rhos: tuple[float, ...] = (0.995, 0.990)
    chance: float = 10.0  # ten digits
    above_chance: float = 5.0  # "above chance" means at least chance + this, at ``hard_rho``
    hard_rho: float = 0.997
    rhos: tuple[float, ...] = (0.997, 0.995, 0.990)  # EnD above vanilla at each
    # A row measured while the load average exceeded this many times its cores has no
    # idle-core time: it counts for accuracy, not for cost.
    idle_load_per_core: float = 1.25


@dataclass
class Verdict:
    budget: str
    minutes: float | None  # the slowest idle-measured run of the budget; None: none idle
    meets: bool
    shortfall: float  # points missing from the rule's accuracy conditions (0 when met)
    reasons: list[str] = field(default_factory=list)


# --- the CSV ---------------------------------------------------------------------------


def _parse(row: dict[str, str]) -> dict[str, Any]:
    parsed: dict[str, Any] = dict(row)
    for name in NUMBERS:
        parsed[name] = float(row[name]) if row.get(name) not in (None, "") else None
    for name in INTEGERS:
        parsed[name] = int(row[name]) if row.get(name) not in (None, "") else None
    return parsed


def read_rows(path: Path) -> list[dict[str, Any]]:
    """The CSV's rows with numbers parsed; [] when there is no file yet."""
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: not a budget-search CSV (no column {missing[0]!r})")
        return [_parse(row) for row in reader]


def row_key(row: dict[str, Any]) -> tuple[str, str, float, int]:
    return row["budget"], row["method"], round(float(row["rho"]), 6), int(row["seed"])


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list | tuple):
        return json.dumps(list(value))
    return str(value)


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write every row, sorted by key, atomically (a killed write leaves the old file)."""
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in sorted(rows, key=row_key):
        writer.writerow({name: _cell(row.get(name)) for name in COLUMNS})
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        out.write(text.getvalue())
        out.flush()
        os.fsync(out.fileno())
    os.replace(temp, path)


def upsert(path: Path, row: dict[str, Any]) -> None:
    """Add one finished cell, replacing an older row of the same cell."""
    rows = [r for r in read_rows(path) if row_key(r) != row_key(row)]
    write_rows(path, [*rows, _parse({k: _cell(v) for k, v in row.items()})])


# --- the rule --------------------------------------------------------------------------


def _accuracy(rows: list[dict[str, Any]], method: str, rho: float) -> float | None:
    """Mean unbiased accuracy of the budget's cells for one method and rho (over seeds)."""
    found = [r["unbiased_acc"] for r in rows if r["method"] == method
             and abs(r["rho"] - rho) < 1e-9]
    return sum(found) / len(found) if found else None


def judge(budget: str, rows: list[dict[str, Any]], rule: Rule = Rule()) -> Verdict | None:
    """One budget against the rule; None while a cell the rule needs is not measured."""
    vanilla = {rho: _accuracy(rows, "vanilla", rho) for rho in rule.rhos}
    end = {rho: _accuracy(rows, "end", rho) for rho in rule.rhos}
    if None in vanilla.values() or None in end.values():
        return None
    reasons: list[str] = []
    shortfall = 0.0
    for rho in rule.near_rhos:
        gap = abs(vanilla[rho] - PAPER_VANILLA[rho]) - rule.within
        if gap > 0:
            shortfall += gap
            reasons.append(f"vanilla at {rho} is {vanilla[rho]:.2f}, {gap:.2f} points beyond "
                           f"{rule.within:g} of the paper's {PAPER_VANILLA[rho]}")
    floor = rule.chance + rule.above_chance
    if vanilla[rule.hard_rho] < floor:
        shortfall += floor - vanilla[rule.hard_rho]
        reasons.append(f"vanilla at {rule.hard_rho} is {vanilla[rule.hard_rho]:.2f}, under "
                       f"{floor:g} (chance + {rule.above_chance:g})")
    for rho in rule.rhos:
        if end[rho] <= vanilla[rho]:
            shortfall += vanilla[rho] - end[rho]
            reasons.append(f"EnD at {rho} ({end[rho]:.2f}) is not above vanilla "
                           f"({vanilla[rho]:.2f})")
    idle = [r["minutes"] for r in rows if r["load_avg"] is not None and r["cores"]
            and r["load_avg"] <= rule.idle_load_per_core * r["cores"]]
    minutes = max(idle) if idle else None
    if minutes is None:
        reasons.append("no run measured on idle cores: cost unknown")
    elif minutes > rule.max_minutes:
        reasons.append(f"{minutes:.1f} minutes per run, over {rule.max_minutes:g}")
    meets = not reasons
    return Verdict(budget, minutes, meets, round(shortfall, 2), reasons)


def select_budget(rows: list[dict[str, Any]], rule: Rule = Rule()
                  ) -> tuple[Verdict | None, list[Verdict]]:
    """(the chosen budget, every judged budget). The cheapest budget that meets the rule;
    if none does, the budget within the time limit (measured on idle cores) with the
    smallest shortfall, cheaper first on a tie; None if no budget has an idle-core time
    within the limit."""
    budgets = sorted({r["budget"] for r in rows})
    verdicts = [v for b in budgets
                if (v := judge(b, [r for r in rows if r["budget"] == b], rule)) is not None]
    affordable = [v for v in verdicts
                  if v.minutes is not None and v.minutes <= rule.max_minutes]
    meeting = [v for v in affordable if v.meets]
    if meeting:
        return min(meeting, key=lambda v: (v.minutes, v.budget)), verdicts
    if affordable:
        return min(affordable, key=lambda v: (v.shortfall, v.minutes, v.budget)), verdicts
    return None, verdicts


# --- the table and the picture ---------------------------------------------------------


# The screen (budget_search --screen): vanilla at the lowest rho the rule checks. Vanilla
# learns the digit most easily there, so a budget whose vanilla misses the paper's by more
# than the rule's margin at 0.990 fails the rule whatever its other cells give.
SCREEN_RHO = min(Rule().near_rhos)


def screened_out(budget: str, rows: list[dict[str, Any]], rule: Rule = Rule()) -> str | None:
    """Why ``budget`` fails the rule on its screening cell alone, or None (it may still
    meet it, or the cell is not measured)."""
    mine = [r for r in rows if r["budget"] == budget]
    vanilla = _accuracy(mine, "vanilla", SCREEN_RHO)
    paper = PAPER_VANILLA[SCREEN_RHO]
    if vanilla is None or abs(vanilla - paper) <= rule.within:
        return None
    return (f"vanilla at {SCREEN_RHO} is {vanilla:.2f}, more than {rule.within:g} points "
            f"from the paper's {paper}")


def table(rows: list[dict[str, Any]], rule: Rule = Rule()) -> str:
    """One line per budget and method: options, minutes per run, unbiased accuracy per rho
    (mean over seeds), the highest load average seen, and the rule's verdict."""
    rhos = sorted({r["rho"] for r in rows}, reverse=True)
    verdicts = {v.budget: v for v in select_budget(rows, rule)[1]}
    header = ["budget", "options", "method", "min / run", *[f"{rho:g}" for rho in rhos],
              "max load", "rule"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for budget in sorted({r["budget"] for r in rows}):
        mine = [r for r in rows if r["budget"] == budget]
        first = mine[0]
        options = (f"{first['epochs']} ep, step {first['lr_step']}, k{first['kernel_size']}, "
                   f"pool {first['pool_after']}, ch {first['channels']}, "
                   f"train {first['train_subset'] or 'all'}")
        verdict = verdicts.get(budget)
        said = ("meets" if verdict is not None and verdict.meets
                else f"short {verdict.shortfall:g}" if verdict is not None
                else f"fails at {SCREEN_RHO:g} (screen)" if screened_out(budget, mine, rule)
                else "incomplete")
        for method in ("vanilla", "end"):
            cells = [r for r in mine if r["method"] == method]
            if not cells:
                continue
            minutes = max(r["minutes"] for r in cells)
            accuracy = [_accuracy(cells, method, rho) for rho in rhos]
            lines.append("| " + " | ".join([
                budget, options, method, f"{minutes:.1f}",
                *["-" if a is None else f"{a:.2f}" for a in accuracy],
                f"{max(r['load_avg'] for r in cells):.1f}", said]) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Unbiased accuracy against minutes per run: one colour per rho, vanilla solid and EnD
    dashed through the budgets (cheapest first), the paper's numbers as horizontal marks,
    hollow markers for runs timed under load."""
    import matplotlib

    matplotlib.use("Agg")  # files only
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    rhos = sorted({r["rho"] for r in rows}, reverse=True)
    limit = Rule().idle_load_per_core
    for index, rho in enumerate(rhos):
        colour = f"C{index}"
        for method, style, paper in (("vanilla", "-", PAPER_VANILLA), ("end", "--", PAPER_END)):
            mine = sorted((r for r in rows if r["method"] == method
                           and abs(r["rho"] - rho) < 1e-9), key=lambda r: r["minutes"])
            if mine:
                axes.plot([r["minutes"] for r in mine], [r["unbiased_acc"] for r in mine],
                          style, color=colour, label=f"{method} {rho:g}")
                for row in mine:  # hollow: timed under load, so its minutes are not idle
                    idle = row["load_avg"] <= limit * (row["cores"] or 1)
                    axes.plot(row["minutes"], row["unbiased_acc"], "o", color=colour,
                              markerfacecolor=colour if idle else "none")
            if rho in paper:
                axes.axhline(paper[rho], color=colour, linestyle=style, linewidth=0.8,
                             alpha=0.5)
    axes.set_xlim(0, 1.1 * max([1.0, *(r["minutes"] for r in rows)]))
    axes.set_ylim(0, 100)
    axes.set_xlabel("minutes per run (hollow: timed under load, not on idle cores)")
    axes.set_ylabel("unbiased test accuracy (%)")
    axes.set_title("Budget search: thin lines are the paper's vanilla (solid) and EnD (dashed)")
    axes.legend(fontsize=7, ncol=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(figure)
    return path
