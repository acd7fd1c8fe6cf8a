"""Search for a CPU budget whose baselines behave as the paper's (issue 34): every cell
budget x method x rho (one seed while searching) trained by the project's sweep agents, its
best epoch recorded as one row of a committed CSV as soon as it finishes.

    python benchmarks/budget_search.py --data-dir ../shared/data/mnist
        [--budgets quick6 e12 ...] [--rhos 0.997 0.995 0.990] [--methods vanilla end]
        [--seed 42] [--agents 2] [--threads 1] [--runs runs/budget-search]
        [--csv benchmarks/budget_search.csv] [--plot docs/figures/budget_search.png]
        [--screen] [--report-only]

Budgets come from benchmarks/budget_candidates.yaml (``--candidates``). Each budget and
method is a grid sweep over the rhos not yet in the CSV (``endebias sweep create``), run by
``--agents`` agent processes in parallel (``endebias sweep agent``, ``--threads`` torch
threads each). Cells already in the CSV are skipped, so the same command continues the
search, here or on another machine; on the same machine a killed agent's half-trained
trial is resumed from its run folder. At the end: the table, the rule's choice
(budget_rule.py) and, with ``--plot``, the picture. ``--report-only`` trains nothing.
``--screen`` trains each budget's vanilla at rho 0.990 first and leaves the budget's other
cells unmeasured when that cell alone already fails the rule.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import TrialState

from budget_rule import (
    KEY_COLUMNS,
    SCREEN_RHO,
    plot,
    read_rows,
    row_key,
    screened_out,
    select_budget,
    table,
    upsert,
)
from endebias.sweeps import storage as sweep_storage
from endebias.sweeps.sweep_file import parse_sweep
from endebias.training import records
from machine_info import cpu_model

HERE = Path(__file__).resolve().parent
MODEL_KEYS = ("kernel_size", "pool_after", "channels")
BUDGET_KEYS = ("epochs", "lr_step", *MODEL_KEYS, "train_subset", "eval_subset")
DEFAULT_CHANNELS = [16, 32, 64, 128]


def load_candidates(path: Path) -> dict[str, Any]:
    """The candidates file: ``dataset``, optional ``dataset_options``, ``end`` (EnD's alpha
    and beta), optional ``optuna`` (the sweeps' settings, e.g. heartbeats) and ``budgets``
    (name -> options among BUDGET_KEYS)."""
    try:
        file = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as error:
        raise SystemExit(f"{path}: cannot read the candidates file ({error})") from None
    budgets = file.get("budgets") if isinstance(file, dict) else None
    if not isinstance(budgets, dict) or not budgets:
        raise SystemExit(f"{path}: needs a mapping 'budgets' of name -> options")
    for name, options in budgets.items():
        unknown = sorted(set(options or {}) - set(BUDGET_KEYS))
        if unknown or not {"epochs", "lr_step"} <= set(options or {}):
            raise SystemExit(f"{path}: budgets.{name}: needs epochs and lr_step, may set "
                             f"{', '.join(BUDGET_KEYS)}; got {unknown or sorted(options or {})}")
        options.setdefault("channels", DEFAULT_CHANNELS)
    return file


def budget_columns(name: str, candidates: dict[str, Any]) -> dict[str, Any]:
    """The CSV's description of a budget (budget_rule.BUDGET_COLUMNS)."""
    options = candidates["budgets"][name]
    end = candidates.get("end") or {}
    return {"budget": name, "dataset": candidates.get("dataset", "biased-mnist"),
            **{k: options.get(k) for k in BUDGET_KEYS},
            "end_alpha": end.get("alpha"), "end_beta": end.get("beta")}


def check_consistent(rows: list[dict[str, Any]], candidates: dict[str, Any]) -> None:
    """A row of a budget whose definition has changed since would be mixed with new ones."""
    for row in rows:
        if row["budget"] not in candidates["budgets"]:
            continue
        expected = budget_columns(row["budget"], candidates)
        for key, value in expected.items():
            recorded = row[key]
            if isinstance(value, list):
                recorded = json.loads(recorded) if recorded else None
            if recorded != value and not (recorded in ("", None) and value is None):
                raise SystemExit(
                    f"budget {row['budget']!r}: the CSV has {key}={row[key]!r}, the candidates "
                    f"file {value!r}; give the changed budget a new name")


def sweep_mapping(name: str, method: str, rhos: list[float], seed: int,
                  candidates: dict[str, Any]) -> dict[str, Any]:
    """A grid sweep over ``rhos`` with the budget's options as constants."""
    options = candidates["budgets"][name]
    parameters: dict[str, Any] = {
        "preset": {"value": "quick"}, "dataset": {"value": candidates.get("dataset",
                                                                         "biased-mnist")},
        "method": {"value": method}, "seed": {"value": seed}, "rho": {"values": rhos},
        "epochs": {"value": options["epochs"]}, "lr_step": {"value": options["lr_step"]},
        **{f"model_options.{k}": {"value": options[k]} for k in MODEL_KEYS if k in options},
        **{k: {"value": options[k]} for k in ("train_subset", "eval_subset")
           if options.get(k) is not None},
        **{f"dataset_options.{k}": {"value": v}
           for k, v in (candidates.get("dataset_options") or {}).items()},
    }
    if method == "end":
        parameters.update({k: {"value": v} for k, v in (candidates.get("end") or {}).items()})
    return {"name": f"budget search: {name}, {method}", "method": "grid",
            "metric": {"name": "valid_acc", "goal": "maximize"}, "parameters": parameters,
            **({"optuna": candidates["optuna"]} if candidates.get("optuna") else {})}


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:6]


def open_sweep(prefix: str, mapping: dict[str, Any], pending: list[float], storage: str) -> str:
    """The sweep for these cells: one of this budget and method already in the storage
    whose unfinished rhos are exactly the pending ones and none of whose trials failed (a
    killed search's: its trials resume their folders), else a new one over the pending
    rhos (a grid does not retry a failed point, so a failed cell gets a new sweep)."""
    constants = {k: v for k, v in mapping["parameters"].items() if k != "rho"}
    prefix = f"{prefix}-{digest(constants)}"
    rdb = sweep_storage.open_storage(storage, create=True)
    names = {s.study_name for s in optuna.get_all_study_summaries(rdb)}
    for study_name in sorted(n for n in names if n.startswith(prefix + "-")):
        study = sweep_storage.load_study(study_name, storage=rdb)
        grid = sweep_storage.sweep_spec(study).parameters["rho"].values
        trials = study.get_trials(deepcopy=False)
        done = {t.params.get("rho") for t in trials if t.state == TrialState.COMPLETE}
        if any("error" in t.user_attrs for t in trials):
            continue
        if {r for r in grid if r not in done} == set(pending):
            return study_name
    mapping = {**mapping, "parameters": {**mapping["parameters"], "rho": {"values": pending}}}
    base = sweep_id = f"{prefix}-{digest(pending)}"
    tries = 1
    while sweep_id in names:
        tries += 1
        sweep_id = f"{base}-{tries}"
    spec = parse_sweep(mapping, source=sweep_id, announce=False)
    return sweep_storage.create_sweep(spec, storage=storage, sweep_id=sweep_id)


def cell_row(trial: Any, budget: dict[str, Any], *, method: str, seed: int, agents: int,
             threads: int, loads: list[tuple[float, float]]) -> dict[str, Any]:
    """One finished trial as a CSV row: its best epoch by valid accuracy, its own minutes
    (the sum of its epochs' seconds) and the mean load average sampled while it ran."""
    attrs = trial.user_attrs
    history = records.read_metrics(Path(attrs["run_dir"]))
    start, end = trial.datetime_start.timestamp(), trial.datetime_complete.timestamp()
    during = [load for moment, load in loads if start <= moment <= end]
    load = sum(during) / len(during) if during else os.getloadavg()[0]
    return {**budget, "method": method, "rho": trial.params["rho"], "seed": seed,
            "best_epoch": attrs["best_epoch"],
            **{column: round(100 * attrs[key], 2) for column, key in (
                ("valid_acc", "valid_acc"), ("biased_acc", "biased_test_acc"),
                ("unbiased_acc", "unbiased_test_acc"))},
            "minutes": round(sum(r["seconds"] for r in history) / 60, 3),
            "fast_path": history[-1].get("fast_path", ""),
            "agents": agents, "threads": threads, "load_avg": round(load, 1),
            "cores": os.cpu_count(), "machine": cpu_model(),
            "torch": importlib.metadata.version("torch"),
            "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")}


def harvest(sweep_id: str, storage: str, csv_path: Path, budget: dict[str, Any], *,
            method: str, seed: int, agents: int, threads: int,
            loads: list[tuple[float, float]]) -> None:
    """Write every finished trial of the sweep that the CSV lacks."""
    done = {row_key(r) for r in read_rows(csv_path)}
    study = sweep_storage.load_study(sweep_id, storage=storage)
    for trial in study.get_trials(deepcopy=False):
        key = (budget["budget"], method, round(trial.params.get("rho", -1), 6), seed)
        if trial.state != TrialState.COMPLETE or key in done:
            continue
        row = cell_row(trial, budget, method=method, seed=seed, agents=agents,
                       threads=threads, loads=loads)
        upsert(csv_path, row)
        done.add(key)
        print(f"  {row['budget']} {method} rho={row['rho']}: unbiased "
              f"{row['unbiased_acc']:.2f}, {row['minutes']:.1f} min, load "
              f"{row['load_avg']:.1f} -> {csv_path}", flush=True)


def run_cells(sweep_id: str, *, args: argparse.Namespace, storage: str, cells: int,
              record: Any) -> None:
    """Agents in parallel on one sweep until its grid is done, recording each finished
    cell as it comes; Ctrl-C stops them (their trials are re-queued) and keeps what ended."""
    agents = min(args.agents, cells)
    logs = Path(args.runs) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "endebias", "sweep", "agent", sweep_id, "--storage",
               storage, "--runs", args.runs]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    processes = []
    for index in range(agents):
        log = (logs / f"{sweep_id}-agent{index}.log").open("a")
        processes.append((subprocess.Popen([*command, "--agent-id", str(index)], env=env,
                                           stdout=log, stderr=subprocess.STDOUT), log))
    print(f"{sweep_id}: {cells} cell(s), {agents} agent(s); logs in {logs}", flush=True)
    try:
        while any(process.poll() is None for process, _ in processes):
            record.loads.append((time.time(), os.getloadavg()[0]))
            record(agents)
            time.sleep(args.poll)
    except KeyboardInterrupt:
        stop_agents([process for process, _ in processes])
        record(agents)
        raise SystemExit("stopped: finished cells are in the CSV; run the same command "
                         "again to continue") from None
    record(agents)
    failed = [(i, p.returncode) for i, (p, _) in enumerate(processes) if p.returncode != 0]
    if failed:
        index, code = failed[0]
        raise SystemExit(f"{sweep_id}: agent {index} exited {code}; see "
                         f"{logs / f'{sweep_id}-agent{index}.log'}")


def stop_agents(processes: list[subprocess.Popen], grace: float = 120.0) -> None:
    """After Ctrl-C (which the agents got too: each re-queues its trial and exits), wait up
    to ``grace`` seconds in all; an agent still running then, or any left at a second
    Ctrl-C, is killed. A killed agent's trial resumes from its last checkpoint when the
    search runs again, so nothing finished is lost."""
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            deadline = time.monotonic()  # no more waiting: the agents after it are killed too
            print(f"agent {process.pid} did not stop; killed (its trial resumes next time)",
                  flush=True)
            process.kill()
            process.wait()


class Recorder:
    def __init__(self, sweep_id: str, storage: str, csv_path: Path, budget: dict[str, Any],
                 *, method: str, args: argparse.Namespace) -> None:
        self.sweep_id, self.storage, self.csv_path, self.budget = (sweep_id, storage,
                                                                   csv_path, budget)
        self.method, self.args = method, args
        self.loads: list[tuple[float, float]] = []

    def __call__(self, agents: int) -> None:
        harvest(self.sweep_id, self.storage, self.csv_path, self.budget, method=self.method,
                seed=self.args.seed, agents=agents, threads=self.args.threads,
                loads=self.loads)


def search_cells(name: str, methods: list[str], rhos: list[float], *,
                 args: argparse.Namespace, candidates: dict[str, Any], storage: str) -> None:
    """Train budget ``name``'s cells (methods x rhos) that the CSV lacks."""
    budget = budget_columns(name, candidates)
    for method in methods:
        done = {row_key(r) for r in read_rows(args.csv)}
        pending = [rho for rho in rhos
                   if (name, method, round(rho, 6), args.seed) not in done]
        if not pending:
            print(f"{name} {method}: every cell is in {args.csv}", flush=True)
            continue
        mapping = sweep_mapping(name, method, pending, args.seed, candidates)
        sweep_id = open_sweep(f"budget-{name}-{method}", mapping, pending, storage)
        recorder = Recorder(sweep_id, storage, args.csv, budget, method=method, args=args)
        run_cells(sweep_id, args=args, storage=storage, cells=len(pending), record=recorder)
        done = {row_key(r) for r in read_rows(args.csv)}
        left = [rho for rho in pending if (name, method, round(rho, 6), args.seed)
                not in done]
        if left:
            print(f"{name} {method}: rho {', '.join(map(str, left))} not finished (a "
                  f"failed trial: see {Path(args.runs) / 'logs'}); the next run of this "
                  "command tries again in a new sweep", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--candidates", type=Path, default=HERE / "budget_candidates.yaml")
    parser.add_argument("--budgets", nargs="+", help="names from the candidates file "
                        "(default: all, in the file's order)")
    parser.add_argument("--rhos", type=float, nargs="+", default=[0.997, 0.995, 0.990])
    parser.add_argument("--methods", nargs="+", choices=["vanilla", "end"],
                        default=["vanilla", "end"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--agents", type=int, default=2, help="agent processes per sweep")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per agent")
    parser.add_argument("--runs", default="runs/budget-search")
    parser.add_argument("--csv", type=Path, default=HERE / "budget_search.csv")
    parser.add_argument("--plot", type=Path, help="draw the picture into this file")
    parser.add_argument("--poll", type=float, default=10.0, help="seconds between checks")
    parser.add_argument("--report-only", action="store_true", help="train nothing")
    parser.add_argument("--screen", action="store_true",
                        help=f"train each budget's vanilla at rho {SCREEN_RHO} first, and skip "
                             "its other cells when that one already fails the rule")
    args = parser.parse_args(argv)
    if args.agents < 1 or args.threads < 1:
        parser.error("--agents and --threads must be at least 1")
    if args.screen and not any(abs(rho - SCREEN_RHO) < 1e-9 for rho in args.rhos):
        parser.error(f"--screen trains rho {SCREEN_RHO} first: it must be among --rhos")
    candidates = load_candidates(args.candidates)
    unknown = sorted(set(args.budgets or []) - set(candidates["budgets"]))
    if unknown:
        parser.error(f"--budgets: no budget {unknown[0]!r} in {args.candidates}; known: "
                     f"{', '.join(candidates['budgets'])}")
    check_consistent(read_rows(args.csv), candidates)
    storage = sweep_storage.default_storage(args.runs)
    for name in [] if args.report_only else (args.budgets or list(candidates["budgets"])):
        if args.screen:
            search_cells(name, ["vanilla"], [SCREEN_RHO], args=args, candidates=candidates,
                         storage=storage)
            why = screened_out(name, read_rows(args.csv))
            if why:
                print(f"{name}: {why}; its other cells are not measured (the rule cannot "
                      "choose it as meeting; without --screen they are)", flush=True)
                continue
        search_cells(name, args.methods, args.rhos, args=args, candidates=candidates,
                     storage=storage)
    rows = read_rows(args.csv)
    print(f"\n{len(rows)} cell(s) in {args.csv} (key: {', '.join(KEY_COLUMNS)})\n")
    print(table(rows))
    chosen, verdicts = select_budget(rows)
    for verdict in verdicts:
        print(f"{verdict.budget}: " + ("meets the rule" if verdict.meets else
                                       "; ".join(verdict.reasons)))
    print("chosen: " + ("none (no complete budget timed on idle cores within the limit)"
                        if chosen is None else
                        f"{chosen.budget}" + ("" if chosen.meets else
                                              f", closest: {chosen.shortfall} points short")))
    if args.plot and rows:
        print(f"picture: {plot(rows, args.plot)}")


if __name__ == "__main__":
    main()
