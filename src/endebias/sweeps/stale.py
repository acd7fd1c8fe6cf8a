"""Trials left RUNNING by a killed agent: found, waited for, re-run, and counted.

A killed agent cannot mark its trial failed; the trial stays RUNNING until some agent sees
that its heartbeat is older than the grace period, fails it and re-queues its parameters
(the retry resumes the run folder). An agent that stops because the sweep has its run cap
must therefore not leave while other trials are running: one of them may belong to an
agent that is already dead. It waits one grace period (plus a heartbeat of slack), re-runs
any trial that went stale meanwhile, and leaves the live ones to their own agents.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
from optuna.trial import TrialState

from endebias.training import records

log = logging.getLogger(__name__)


def fail_stale(study: optuna.Study) -> None:
    """Fail (and so re-queue) every trial whose agent stopped beating."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def running(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def work_left(study: optuna.Study, cap: int | None) -> bool:
    """A re-queued trial is always work; otherwise finished or running trials count."""
    if study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
        return True
    alive = study.get_trials(
        deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    )
    return cap is None or len(alive) < cap


def want_next_trial(study: optuna.Study, *, cap: int | None, settings: dict) -> bool:
    """Whether the agent should start another trial: stale trials are failed (and so
    re-queued) first; at the cap, wait for the trials of other agents as below."""
    fail_stale(study)
    if work_left(study, cap):
        return True
    return wait_for_running(
        study,
        work_left=lambda: work_left(study, cap),
        heartbeat_interval=settings["heartbeat_interval"],
        grace_period=settings["grace_period"],
    )


def kept(active: tuple[int, Path] | None) -> str:
    """What is safe when the storage is lost: the training trial's finished epochs."""
    if active is None:
        return "no trial was training; finished trials are kept in the storage and run folders"
    number, run_dir = active
    done = len(records.read_metrics(run_dir)) if run_dir.exists() else 0
    return (
        f"trial {number} stopped with {done} finished epochs kept in {run_dir}; once the "
        "storage is back, an agent re-runs it from there after its heartbeat grace period"
    )


def wait_for_running(
    study: optuna.Study,
    *,
    work_left: Callable[[], bool],
    heartbeat_interval: float,
    grace_period: float,
    poll: float = 1.0,
) -> bool:
    """With the sweep at its cap, wait while trials of other agents are running, until
    one of them is failed as stale and re-queued (True: run it) or all are finished, or
    for at most ``grace_period + heartbeat_interval`` seconds (False: leave). A trial
    still running then has a live agent, which does this check itself when it stops."""
    others = running(study)
    if not others:
        return False
    # A dead agent's last beat is older than this wait, so its trial is stale by the end.
    limit = grace_period + heartbeat_interval
    log.info(
        "the sweep has all its trials; %d still running in other agents: waiting up to %g s "
        "for them (a killed agent's trial goes stale after %g s and is re-run here)",
        len(others),
        limit,
        grace_period,
    )
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        time.sleep(min(poll, heartbeat_interval))
        fail_stale(study)
        if work_left():
            return True
        if not running(study):
            return False
    log.info(
        "trials %s still running with live heartbeats: left to their agents",
        ", ".join(str(t.number) for t in running(study)),
    )
    return False


def unfinished(study: optuna.Study, url: str) -> tuple[int, int, int]:
    """(running, stale, grace period in seconds) of ``study`` in storage ``url``: stale
    trials have not beaten for the sweep's grace period, so their agents are gone."""
    trials = running(study)
    from endebias.sweeps.storage import open_storage, sweep_spec

    settings = sweep_spec(study).optuna
    grace = settings["grace_period"]
    if not trials:
        return 0, 0, grace
    storage = open_storage(
        url, heartbeat_interval=settings["heartbeat_interval"], grace_period=grace
    )
    return len(trials), len(storage._get_stale_trial_ids(study._study_id)), grace


def warn_unfinished(sweep_id: str, study: optuna.Study, url: str) -> None:
    """One line for ``results``: the trials the summary does not count yet, and why."""
    running_count, stale_count, grace = unfinished(study, url)
    if not running_count:
        return
    trials = "trial" if running_count == 1 else "trials"
    note = f"sweep {sweep_id}: {running_count} {trials} still RUNNING"
    if stale_count:
        note += (
            f", {stale_count} of them stale (no heartbeat for over {grace} s: its agent was "
            f"killed; `endebias sweep agent {sweep_id}` re-runs it from its run folder)"
        )
    log.warning("%s; the summary counts complete trials only", note)
