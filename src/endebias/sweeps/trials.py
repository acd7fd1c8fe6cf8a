"""What every trial of a sweep agent goes through, one trial or K at a time
(:mod:`endebias.sweeps.agent`): its config and run folder claimed from the sampled
parameters, its epochs reported to Optuna, the checks that stop it (pruned, taken over by
another agent), and the agent's messages about where it stands.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from endebias.sweeps import storage as sweep_storage
from endebias.sweeps.retry import retrying
from endebias.sweeps.search_space import Parameter, SweepSpec
from endebias.training import records
from endebias.training.config import TrainConfig, make_config

# Trial user attributes copied from the best-by-valid epoch (results read these).
BEST_KEYS = ("valid_acc", "biased_test_acc", "unbiased_test_acc", "unbiased_test_acc_conflicting")
ALIVE = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)


class TrialSkipped(Exception):
    """The trial ends as failed without being a failure: it is marked ``skipped`` and both
    the agent's count and the results leave it out."""


class SweepFull(TrialSkipped):
    """Another agent took the sweep's last trial at the same moment: this one is not needed."""


class FolderTaken(TrialSkipped):
    """Another running trial trains the same config into the same folder."""


class TrialTakenOver(TrialSkipped):
    """This trial was failed by another agent (missed heartbeats) and re-queued."""


@dataclass
class AgentResult:
    trials: int = 0
    complete: int = 0
    pruned: int = 0
    failed: int = 0
    skipped: int = 0


def suggest(trial: optuna.Trial, parameter: Parameter) -> Any:
    if parameter.kind == "categorical":
        return trial.suggest_categorical(parameter.name, list(parameter.values))
    if parameter.kind == "int_uniform":
        return trial.suggest_int(parameter.name, int(parameter.low), int(parameter.high))
    return trial.suggest_float(
        parameter.name,
        parameter.low,
        parameter.high,
        log=parameter.kind in ("log_uniform_values", "log_uniform"),
        step=parameter.q if parameter.kind == "q_uniform" else None,
    )


@dataclass
class Claimed:
    """A trial's config and run folder, claimed for this agent."""

    trial: optuna.Trial
    sampled: dict[str, Any]
    config: TrainConfig
    run_dir: Path
    reported: set[int] = field(default_factory=set)  # epochs already reported


def claim(trial: optuna.Trial, spec: SweepSpec, *, run_folder: Path, cap: int | None) -> Claimed:
    """The trial's sampled parameters as a config and its folder
    ``run_folder/<config hash>`` (a re-queued trial gets the same one, and resumes it),
    written to the trial's attributes; :class:`TrialSkipped` when the sweep already has its
    trials or a lower-numbered running trial trains the same config."""
    if cap is not None:
        # With a run cap, two agents may start the last trial at once: the later one stops.
        earlier = [t for t in trials_in(trial.study, ALIVE) if t.number < trial.number]
        if len(earlier) >= cap:
            raise SweepFull(f"the sweep already has its {cap} trials")
    sampled = {p.name: suggest(trial, p) for p in spec.parameters.values() if p.searched}
    preset, overrides = spec.overrides(sampled)
    config = make_config(preset, **overrides)
    digest = records.config_hash(config.to_dict())
    run_dir = (run_folder / digest).resolve()
    for key, value in {"run_dir": str(run_dir), "config_hash": digest,
                       "host": socket.gethostname(), "config": config.to_dict()}.items():
        trial.set_user_attr(key, value)
    # Both trials wrote their claim before looking, so the lower number always wins.
    for other in trials_in(trial.study, (TrialState.RUNNING,)):
        if other.number < trial.number and other.user_attrs.get("run_dir") == str(run_dir):
            raise FolderTaken(f"trial {other.number} already trains this config in {run_dir}")
    return Claimed(trial, sampled, config, run_dir)


def report(claimed: Claimed) -> None:
    """Report every epoch on record (a resumed folder's earlier ones too) and keep the
    best-by-valid epoch's accuracies as user attributes, pruned trials included."""
    trial, history = claimed.trial, records.read_metrics(claimed.run_dir)
    for record in history:
        if record["epoch"] not in claimed.reported and record.get("valid_acc") is not None:
            trial.report(record["valid_acc"], record["epoch"])
            claimed.reported.add(record["epoch"])
    if history:
        best = max(history, key=lambda r: (r["valid_acc"] or 0.0, -r["epoch"]))
        for key in BEST_KEYS:
            trial.set_user_attr(key, best.get(key))
        trial.set_user_attr("best_epoch", best["epoch"])
        trial.set_user_attr("epochs_done", len(history))


def after_epoch(claimed: Claimed, epoch: int) -> None:
    """After each epoch: report it, then stop the trial (raise) if another agent failed it
    (missed heartbeats) or the pruner says so."""
    report(claimed)
    trial = claimed.trial
    if trial.number not in {t.number for t in trials_in(trial.study, (TrialState.RUNNING,))}:
        raise TrialTakenOver(f"trial {trial.number} was failed by another agent")
    if trial.should_prune():
        raise optuna.TrialPruned(f"pruned at epoch {epoch}")


def trials_in(
    study: optuna.Study, states: tuple[TrialState, ...]
) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=states)


def place_in_sweep(study: optuna.Study, number: int, cap: int | None) -> str:
    """`` (trial 3 of 8)``: where a trial stands among those the cap counts (complete,
    pruned, running, queued; failed and skipped ones are not counted); "" with no cap."""
    if cap is None:
        return ""
    place = sum(1 for t in trials_in(study, ALIVE) if t.number <= number)
    return f" (trial {place} of {cap})"


def why_nothing_ran(study: optuna.Study, spec: SweepSpec, cap: int | None) -> str:
    """``run_cap 8 reached: 8 complete``: why an agent found no trial to run."""
    counts = {state: len(trials_in(study, (state,))) for state in ALIVE}
    shown = ", ".join(f"{n} {state.name.lower()}" for state, n in counts.items() if n)
    limit = f"run_cap {cap}" if cap == spec.run_cap else f"a grid of {cap} settings"
    return f"{limit} reached: {shown or 'no trials'}"


def open_agent_study(
    sweep_id: str, *, storage: str, prune: str | None, agent_id: int | None,
    storage_retry: float,
) -> tuple[SweepSpec, optuna.Study]:
    """The sweep's definition and its study as an agent works on it: heartbeats and retries
    from the sweep file's settings, and the sampler and pruner rebuilt from it (Optuna does
    not store them), the sampler seeded for this agent."""
    spec = sweep_storage.sweep_spec(
        sweep_storage.load_study(sweep_id, storage=storage, wait=storage_retry))
    settings = spec.optuna
    rdb = sweep_storage.open_storage(
        storage,
        wait=storage_retry,
        heartbeat_interval=settings["heartbeat_interval"],
        grace_period=settings["grace_period"],
        max_retry=settings["max_retry"],
    )
    rdb = retrying(rdb, url=storage, limit=storage_retry)
    study = sweep_storage.load_study(
        sweep_id,
        storage=rdb,
        sampler=sweep_storage.build_sampler(spec, seed=sweep_storage.agent_seed(spec, agent_id)),
        pruner=sweep_storage.build_pruner(spec, prune),
    )
    return spec, study
