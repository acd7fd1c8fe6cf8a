"""A sweep agent that trains K trials at once as one pack (``endebias sweep agent --pack K``).

It asks Optuna for up to K trials (ask/tell), groups those whose configs can share every
batch (:func:`endebias.training.packed.pack_key`), and trains each group with
:func:`endebias.training.packed_fit.fit_packed`. Each trial stays a full trial: its own
run folder, heartbeat, reports, pruning and failure; a re-queued trial (its agent was
killed) resumes its folder as in :mod:`endebias.sweeps.agent`.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState

from endebias.sweeps import stale
from endebias.sweeps import storage as sweep_storage
from endebias.sweeps.agent import (
    AgentResult,
    Objective,
    TrialSkipped,
    TrialTakenOver,
    _trials,
    open_agent_study,
    suggest,
)
from endebias.sweeps.retry import DEFAULT_RETRY_SECONDS
from endebias.sweeps.search_space import SweepSpec
from endebias.training import records
from endebias.training.config import TrainConfig, make_config

log = logging.getLogger(__name__)


@dataclass
class Asked:
    trial: optuna.Trial
    config: TrainConfig
    run_dir: Path
    reported: set[int] = field(default_factory=set)


def check_sweep_packs(spec: SweepSpec) -> None:
    """Refuse, before any trial, a sweep whose model or method cannot pack (every corner of
    the searched categorical values is tried, as ``sweep create`` checks configs)."""
    from endebias.training.packed import check_packable

    searched = [p for p in spec.parameters.values() if p.searched]
    # Only a categorical choice (a model, a method) can change what packs.
    choices = [p.extremes() if p.kind == "categorical" else p.extremes()[:1] for p in searched]
    names = [p.name for p in searched]
    for combo in itertools.product(*choices):
        preset, overrides = spec.overrides(dict(zip(names, combo, strict=True)))
        check_packable(make_config(preset, **overrides))


def _room(study: optuna.Study, cap: int | None) -> int | None:
    """Trials this agent may ask now without passing the run cap (re-queued ones count)."""
    if cap is None:
        return None
    taken = _trials(study, (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    return max(0, cap - len(taken))


def run_packed_agent(
    sweep_id: str,
    *,
    pack: int,
    storage: str,
    runs_dir: str | Path = "runs",
    count: int | None = None,
    prune: str | None = None,
    data_dir: str | None = None,
    agent_id: int | None = None,
    storage_retry: float = DEFAULT_RETRY_SECONDS,
    budget: dict[str, int] | None = None,
) -> AgentResult:
    """Run trials of ``sweep_id``, up to ``pack`` at a time, until ``count`` are done or the
    sweep has its run cap (then, as the solo agent, first re-run any trial of a killed
    agent), retrying storage calls for up to ``storage_retry`` seconds. ``budget`` as
    :func:`endebias.sweeps.agent.run_agent`'s."""
    if pack < 1:
        raise ValueError(f"--pack must be >= 1, got {pack}")
    spec = sweep_storage.sweep_spec(
        sweep_storage.load_study(sweep_id, storage=storage, wait=storage_retry)
    ).with_budget(budget)
    check_sweep_packs(spec)  # refused before any storage is opened for writing
    spec, study = open_agent_study(
        sweep_id, storage=storage, prune=prune, agent_id=agent_id, storage_retry=storage_retry
    )
    spec = spec.with_budget(budget)
    settings = spec.optuna
    objective = Objective(spec, sweep_id=sweep_id, runs_dir=Path(runs_dir), data_dir=data_dir,
                          progress=False)
    result = AgentResult()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    while count is None or result.trials < count:
        # Stale trials of killed agents are re-queued first; at the cap, other agents'
        # running trials are waited for (one of them may be dead), as the solo agent does.
        if not stale.want_next_trial(study, cap=objective.cap, settings=settings):
            break
        room = [pack, _room(study, objective.cap), None if count is None else count - result.trials]
        wanted = min(r for r in room if r is not None)
        if wanted < 1:
            break
        if not _run_round(study, objective, wanted, data_dir, result):
            # Every trial asked was skipped: a config another agent trains comes back once
            # that run is done, so wait a little before asking again (as the solo agent).
            time.sleep(0 if objective.cap else settings["heartbeat_interval"])
    log.info(
        "agent done: %d trials (%d complete, %d pruned, %d failed, %d skipped)",
        result.trials, result.complete, result.pruned, result.failed, result.skipped,
    )
    return result


def _run_round(study: optuna.Study, objective: Objective, wanted: int, data_dir: str | None,
               result: AgentResult) -> int:
    """Ask ``wanted`` trials and train them; the number that trained."""
    with contextlib.ExitStack() as beats:
        asked: list[Asked] = []
        for _ in range(wanted):
            with warnings.catch_warnings():
                # Optuna warns that heartbeats are meant for Study.optimize: this agent beats
                # for each asked trial itself, as optimize does.
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = study.ask()
            beats.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
            result.trials += 1
            try:
                asked.append(_prepare(trial, objective))
            except TrialSkipped as skipped:
                _finish(study, trial, skipped, result)
        groups: dict[str, list[Asked]] = {}
        from endebias.training.packed import pack_key

        for item in asked:
            groups.setdefault(pack_key(item.config), []).append(item)
        try:
            for group in groups.values():
                _train_group(study, objective, group, data_dir, result)
        except KeyboardInterrupt:
            # Put every trial of the round not yet told back in the queue (the pack that
            # was training and those still waiting): the next agent resumes their folders.
            for item in asked:
                if study._storage.get_trial(item.trial._trial_id).state == TrialState.RUNNING:
                    study.enqueue_trial(item.trial.params,
                                        user_attrs={"requeued_from": item.trial.number})
                    _tell(study, item.trial, state=TrialState.FAIL)
            raise
        return len(asked)


def _prepare(trial: optuna.Trial, objective: Objective) -> Asked:
    """The trial's config and run folder, claimed as the solo agent claims them."""
    objective._check_not_surplus(trial)
    sampled = {p.name: suggest(trial, p) for p in objective.spec.parameters.values() if p.searched}
    preset, overrides = objective.spec.overrides(sampled)
    config = make_config(preset, **overrides)
    digest = records.config_hash(config.to_dict())
    run_dir = (objective.runs_dir / objective.sweep_id / digest).resolve()
    for key, value in {"run_dir": str(run_dir), "config_hash": digest,
                       "host": socket.gethostname(), "config": config.to_dict()}.items():
        trial.set_user_attr(key, value)
    objective._check_folder_free(trial, run_dir)
    log.info("trial %d: %s -> %s", trial.number, sampled, run_dir)
    return Asked(trial, config, run_dir)


def _train_group(study: optuna.Study, objective: Objective, group: list[Asked],
                 data_dir: str | None, result: AgentResult) -> None:
    from endebias.training.fit import fit_packed

    for item in group:
        Objective._report(item.trial, item.run_dir, item.reported)

    def on_epoch(index: int, epoch: int, record: dict[str, Any]) -> None:
        item = group[index]
        Objective._report(item.trial, item.run_dir, item.reported)
        running = {t.number for t in _trials(study, (TrialState.RUNNING,))}
        if item.trial.number not in running:
            raise TrialTakenOver(f"trial {item.trial.number} was failed by another agent")
        if item.trial.should_prune():
            raise optuna.TrialPruned(f"pruned at epoch {epoch}")

    def echo(index: int, line: str) -> None:
        log.info("trial %d: %s", group[index].trial.number, line)

    if len(group) > 1:
        log.info("packing trials %s", ", ".join(str(item.trial.number) for item in group))
    try:
        outcomes: list[Any] = fit_packed(
            [item.config for item in group], [item.run_dir for item in group],
            data_dir=data_dir, resume=True, on_epoch=on_epoch, echo=echo,
        )
    except Exception as error:
        # The whole pack failed (bad data, a broken option): so did each trial, and, as in
        # the solo agent, the error stops the agent.
        for item in group:
            _finish(study, item.trial, error, result)
        raise
    for item, outcome in zip(group, outcomes, strict=True):
        with contextlib.suppress(RuntimeError, ValueError):  # a trial another agent failed
            Objective._report(item.trial, item.run_dir, item.reported)
        _finish(study, item.trial, outcome, result)


def _tell(study: optuna.Study, trial: optuna.Trial, *args: Any, **kwargs: Any) -> None:
    try:
        study.tell(trial, *args, **kwargs)
    except (RuntimeError, ValueError) as error:  # another agent failed it (stale heartbeat)
        log.info("trial %d was already finished elsewhere: %s", trial.number, error)


def _finish(study: optuna.Study, trial: optuna.Trial, outcome: Any, result: AgentResult) -> None:
    """Tell Optuna how the trial ended, as ``study.optimize`` would, and count it."""
    if isinstance(outcome, dict):
        _tell(study, trial, float(outcome["valid_acc"]))
        result.complete += 1
        log.info("trial %d complete, best valid_acc %s", trial.number, outcome["valid_acc"])
    elif isinstance(outcome, optuna.TrialPruned):
        _tell(study, trial, state=TrialState.PRUNED)
        result.pruned += 1
        log.info("trial %d %s", trial.number, outcome)
    elif isinstance(outcome, TrialSkipped):
        with contextlib.suppress(RuntimeError, ValueError):  # finished by another agent
            trial.set_user_attr("skipped", str(outcome))
        _tell(study, trial, state=TrialState.FAIL)
        result.skipped += 1
        log.info("trial %d skipped: %s", trial.number, outcome)
    else:
        with contextlib.suppress(RuntimeError, ValueError):
            trial.set_user_attr("error", f"{type(outcome).__name__}: {outcome}")
        _tell(study, trial, state=TrialState.FAIL)
        result.failed += 1
        log.info("trial %d failed: %s: %s", trial.number, type(outcome).__name__, outcome)
