"""Run folders read as they are found (no torch import: records are JSON): each run's
records, damaged ones skipped with a warning naming the file, a folder that lost its
config named, and copies of one run counted once."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from endebias.training import records

log = logging.getLogger(__name__)


@dataclass
class Run:
    path: Path
    config: dict[str, Any]
    history: list[dict[str, Any]]
    best: dict[str, Any] | None
    done: bool
    error: str | None


def load_run(run_dir: str | Path) -> Run:
    """A run folder's records. A damaged, unreadable or ill-shaped record raises
    :class:`~endebias.training.records.DamagedRecordError` naming the file."""
    run_dir = Path(run_dir)
    config_path = run_dir / records.CONFIG
    if not config_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no {records.CONFIG})")
    best_path, error_path = run_dir / records.BEST, run_dir / records.ERROR
    error = records.read_json_object(error_path) if error_path.exists() else None
    return Run(
        path=run_dir,
        config=records.read_json_object(config_path),
        history=records.read_metrics(run_dir),
        best=records.read_json_object(best_path) if best_path.exists() else None,
        done=(run_dir / records.DONE).exists(),
        error=None if error is None else str(error.get("message", error)),
    )


def load_runs(run_dirs: list[Path]) -> list[Run]:
    """The readable runs among ``run_dirs``; each damaged one is skipped with a warning
    naming its file. Only when runs exist and none is readable is it an error."""
    runs, damaged = [], []
    for run_dir in run_dirs:
        try:
            runs.append(load_run(run_dir))
        except (records.DamagedRecordError, OSError) as error:
            log.warning("skipping a damaged run: %s", error)
            damaged.append(str(run_dir))
    if damaged and not runs:
        raise ValueError(f"no readable run: all {len(damaged)} are damaged ({', '.join(damaged)})")
    return distinct_runs(runs)


def run_folders(folder: Path) -> list[Path]:
    """The run folders in ``folder``, sorted; one holding run records without its
    config (deleted) cannot be read as a run and is named in a warning, not skipped
    silently."""
    found = []
    for path in sorted(p for p in folder.iterdir() if p.is_dir()):
        if (path / records.CONFIG).exists():
            found.append(path)
        elif records.without_config(path) is not None:
            log.warning("skipping %s: it holds run records (%s) but no %s", path,
                        ", ".join(records.run_records(path)), records.CONFIG)
    return found


def distinct_runs(runs: list[Run]) -> list[Run]:
    """Each run once: a folder whose config equals an earlier one's (a copy, or the same
    seed trained twice, which gives the same numbers) is left out with a warning, so it
    never counts as another seed."""
    first: dict[str, Run] = {}
    kept = []
    for run in runs:
        key = records.config_hash(run.config)
        if key in first:
            log.warning("%s is a copy of %s (the same config, seed %s): counted once",
                        run.path, first[key].path, run.config.get("seed"))
            continue
        first[key] = run
        kept.append(run)
    return kept
