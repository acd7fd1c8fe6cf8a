"""Trials left RUNNING by a killed agent: found, waited for, re-run, and counted.

A killed agent cannot mark its trial failed; the trial stays RUNNING until some agent sees
that its heartbeat is older than the grace period, fails it and re-queues its parameters
(the retry resumes the run folder). An agent that stops because the sweep has its run cap
must therefore not leave while other trials are running: one of them may belong to an
agent that is already dead, or dies later. It stays until no trial is running, and re-runs
any that goes stale meanwhile.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import optuna
import sqlalchemy
from optuna.trial import TrialState

from endebias.training import records

log = logging.getLogger(__name__)


def fail_stale(study: optuna.Study, grace_period: float) -> None:
    """Fail (and so re-queue) every trial whose agent stopped beating, and every trial
    that never beat at all (its agent died between taking it and the first heartbeat,
    which Optuna alone would leave RUNNING for ever) once it is twice the grace old."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
        for trial_id in _never_beat(study, older_than=2 * grace_period):
            try:
                if not study._storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                    continue
            except optuna.exceptions.UpdateFinishedTrialError:
                continue  # another agent got there first
            callback = study._storage.get_heartbeat_stale_trial_callback()
            if callback is not None:
                callback(study, copy.deepcopy(study._storage.get_trial(trial_id)))


def _never_beat(study: optuna.Study, *, older_than: float) -> list[int]:
    """Ids of RUNNING trials started ``older_than`` seconds ago (by this machine's clock:
    hence twice the grace period, for clock skew) with no heartbeat on record."""
    storage = getattr(study._storage, "_backend", study._storage)
    if not isinstance(storage, optuna.storages.RDBStorage):
        return []
    from optuna.storages._rdb import models

    session = storage.scoped_session()
    try:
        rows = (
            session.query(models.TrialModel.trial_id)
            .filter(models.TrialModel.study_id == study._study_id)
            .filter(models.TrialModel.state == TrialState.RUNNING)
            .filter(~models.TrialModel.heartbeats.any())
            .all()
        )
    except sqlalchemy.exc.SQLAlchemyError as error:
        log.debug("could not look for trials without heartbeats: %s", error)
        return []
    finally:
        session.close()
    beatless = {row[0] for row in rows}
    limit = timedelta(seconds=older_than)
    return [
        t._trial_id
        for t in running(study)
        if t._trial_id in beatless
        and t.datetime_start is not None
        and datetime.now(t.datetime_start.tzinfo) - t.datetime_start > limit
    ]


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
    fail_stale(study, settings["grace_period"])
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
    """With the sweep at its cap, wait while trials of other agents are running: until one
    of them is failed as stale and re-queued (True: run it here) or none is left running
    (False: the sweep is done). Ctrl-C stops waiting and leaves them to their agents.

    An agent cannot tell a live agent from one killed a moment ago before the grace period
    has passed, and a live one may be killed later, so a fixed wait would still leave a
    trial behind: every agent at the cap stays until the sweep's last trial has ended.
    """
    others = running(study)
    if not others:
        return False
    log.info(
        "the sweep has all its trials; waiting for the %d still running in other agents "
        "(a killed agent's trial goes stale after %g s and is re-run here; Ctrl-C leaves "
        "them to their agents)",
        len(others),
        grace_period,
    )
    try:
        while True:
            time.sleep(min(poll, heartbeat_interval))
            fail_stale(study, grace_period)
            if work_left():
                return True
            if not running(study):
                return False
    except KeyboardInterrupt:
        log.info("stopped waiting: trials still running are left to their agents")
        return False


def unfinished(study: optuna.Study, url: str) -> tuple[int, int, int]:
    """(running, stale, grace period in seconds) of ``study`` in storage ``url``: stale
    trials have not beaten for the sweep's grace period, so their agents are gone."""
    trials = running(study)
    if not trials:
        return 0, 0, 0
    from endebias.sweeps.storage import open_storage, sweep_spec
    from endebias.sweeps.sweep_file import OPTUNA_DEFAULTS

    try:
        settings = sweep_spec(study).optuna
    except ValueError:  # a study made by other means: the defaults' grace period
        settings = OPTUNA_DEFAULTS
    grace = settings["grace_period"]
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
