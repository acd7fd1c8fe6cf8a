"""A sweep agent: a loop of Optuna trials, one at a time or K at a time (``--pack K``).

Each trial trains into ``runs/<sweep id>/<config hash>``, so a trial re-queued after its
agent was killed (same parameters, hence same hash) resumes that folder from its last
checkpoint. The objective is the run's best valid accuracy; every epoch's valid accuracy
is reported so that a pruner can stop hopeless trials (:mod:`endebias.sweeps.trials`).

One trial at a time, Optuna's ``study.optimize`` runs each as a solo
:func:`~endebias.training.fit.fit`. With ``pack`` K > 1 the agent asks for up to K trials
(ask/tell, beating each one's heartbeat), groups those whose configs can share every batch
and trains each group with :func:`~endebias.training.fit.fit_packed` (a group of one
trains alone); each trial stays a full trial with its own folder, reports, pruning and
failure. Both ways run the same loop below, with the same stops and messages.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages._heartbeat import get_heartbeat_thread
from optuna.trial import TrialState

from endebias.sweeps import stale
from endebias.sweeps import storage as sweep_storage
from endebias.sweeps.retry import DEFAULT_RETRY_SECONDS, StorageUnavailable, find_unavailable
from endebias.sweeps.search_space import SweepSpec
from endebias.sweeps.sqlite_file import study_file_problem
from endebias.sweeps.trials import (  # noqa: F401  (suggest: the agent's public helper)
    AgentResult,
    Claimed,
    FolderTaken,
    SweepFull,
    TrialSkipped,
    TrialTakenOver,
    after_epoch,
    claim,
    open_agent_study,
    place_in_sweep,
    report,
    suggest,
    trials_in,
    why_nothing_ran,
)
from endebias.training.config import make_config

log = logging.getLogger(__name__)


class Objective:
    def __init__(self, spec: SweepSpec, *, sweep_id: str, runs_dir: Path, data_dir: str | None,
                 progress: bool, wandb_project: str | None = None,
                 tensorboard: bool = False) -> None:
        self.spec, self.sweep_id, self.runs_dir = spec, sweep_id, runs_dir
        self.data_dir, self.progress = data_dir, progress
        self.wandb_project, self.tensorboard = wandb_project, tensorboard
        self.cap = min(filter(None, (spec.run_cap, spec.grid_size())), default=None)
        self.active: tuple[int, Path] | None = None  # the trial now training, its folder

    def claim(self, trial: optuna.Trial) -> Claimed:
        claimed = claim(trial, self.spec, run_folder=self.runs_dir / self.sweep_id, cap=self.cap)
        log.info("trial %d%s: %s -> %s", trial.number, place_in_sweep(trial.study, trial.number,
                 self.cap), claimed.sampled, claimed.run_dir)
        return claimed

    def __call__(self, trial: optuna.Trial) -> float:
        self.active = None
        try:
            return self._train(trial)
        except StorageUnavailable:
            raise  # nothing can be written to the storage now
        except TrialSkipped as skipped:
            trial.set_user_attr("skipped", str(skipped))
            log.info("trial %d skipped: %s", trial.number, skipped)
            raise
        except optuna.TrialPruned:
            raise
        except Exception as error:
            trial.set_user_attr("error", f"{type(error).__name__}: {error}")
            raise

    def _train(self, trial: optuna.Trial) -> float:
        from endebias.training.fit import fit  # torch: only in agents

        claimed = self.claim(trial)
        config, run_dir = claimed.config, claimed.run_dir
        self.active = (trial.number, run_dir)
        report(claimed)
        tracker = self._tracker(trial, config.to_dict(), run_dir)

        def on_epoch(epoch: int, record: dict[str, Any]) -> None:
            if tracker is not None:
                tracker.on_epoch(epoch, record)
            after_epoch(claimed, epoch)

        state = "FAIL"
        try:
            best = fit(
                config, run_dir, data_dir=self.data_dir, resume=True, progress=self.progress,
                on_epoch=on_epoch, echo=lambda line: log.info("trial %d: %s", trial.number, line),
                # Trials whose stage would be the same (pseudo labels' stage 1, a method's
                # first stage) train it once, in a hidden folder beside them.
                shared_stages=run_dir.parent,
            )
            state = "COMPLETE"
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except KeyboardInterrupt:
            # Put the same parameters back in the queue: the next agent resumes the folder.
            trial.study.enqueue_trial(trial.params, user_attrs={"requeued_from": trial.number})
            state = "INTERRUPTED"
            raise
        finally:
            if tracker is not None:
                tracker.finish(state=state)
        report(claimed)
        return float(best["valid_acc"])

    def _tracker(self, trial: optuna.Trial, config: dict[str, Any], run_dir: Path):
        """W&B and TensorBoard mirrors of this trial, when asked for (off by default)."""
        from endebias.training.tracking import run_mirror

        return run_mirror(
            run_dir, config={**config, "trial": trial.number},
            name=f"{self.sweep_id}-{trial.number}", wandb_project=self.wandb_project,
            wandb_group=self.sweep_id,
            wandb_dir=self.runs_dir / self.sweep_id,  # wandb adds its wandb/ folder
            tensorboard=self.tensorboard,
        )


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


def run_agent(
    sweep_id: str, *, storage: str, pack: int = 1, runs_dir: str | Path = "runs",
    count: int | None = None, prune: str | None = None, data_dir: str | None = None,
    agent_id: int | None = None, progress: bool = False, wandb_project: str | None = None,
    tensorboard: bool = False, storage_retry: float = DEFAULT_RETRY_SECONDS,
    budget: dict[str, int] | None = None,
) -> AgentResult:
    """Run trials of ``sweep_id``, up to ``pack`` at a time, until ``count`` are done or the
    sweep has its run cap (then first re-run any trial of a killed agent), retrying storage
    calls for up to ``storage_retry`` seconds while the database is unreachable.
    ``budget`` (epochs, train_subset, eval_subset) replaces the sweep's values in every
    trial's config."""
    if pack < 1:
        raise ValueError(f"--pack must be >= 1, got {pack}")
    if pack > 1:
        if wandb_project or tensorboard:
            raise ValueError("--pack does not mirror trials to a tracker; drop --pack or the "
                             "tracker")
        check_sweep_packs(sweep_storage.sweep_spec(  # before any storage is opened for writing
            sweep_storage.load_study(sweep_id, storage=storage, wait=storage_retry)
        ).with_budget(budget))
    spec, study = open_agent_study(
        sweep_id, storage=storage, prune=prune, agent_id=agent_id, storage_retry=storage_retry
    )
    spec = spec.with_budget(budget)
    settings = spec.optuna
    objective = Objective(spec, sweep_id=sweep_id, runs_dir=Path(runs_dir), data_dir=data_dir,
                          progress=progress and pack == 1, wandb_project=wandb_project,
                          tensorboard=tensorboard)
    if objective.cap is None and count is None:
        log.info("sweep %s has no run_cap: this agent runs until stopped (Ctrl-C)", sweep_id)
    result = AgentResult()
    # Optuna logs every failed trial with its traceback, skipped ones too; the agent logs
    # one line per trial instead (and an error that stops it reaches the command line).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    while count is None or result.trials < count:
        try:
            # Stale trials of killed agents are re-queued first; at the cap, other agents'
            # running trials are waited for (one of them may be dead).
            if not stale.want_next_trial(study, cap=objective.cap, settings=settings):
                break
            if pack == 1:
                trained = _one_trial(study, objective, result)
            else:
                room = [pack, _room(study, objective.cap),
                        None if count is None else count - result.trials]
                wanted = min(r for r in room if r is not None)
                if wanted < 1:
                    break
                trained = _round(study, objective, wanted, result)
        except Exception as error:
            # Optuna's clean-up after the trial fails on the lost storage too and may
            # raise something else; the loss is behind it.
            lost = find_unavailable(error)
            if lost is not None:
                raise StorageUnavailable(f"{lost}; {stale.kept(objective.active)}") from None
            # A study file damaged under the agent surfaces as Optuna's "record does not
            # exist" or worse: name the file and what was kept instead.
            damaged = study_file_problem(storage)
            if damaged is None:
                raise
            raise RuntimeError(f"{damaged}; {stale.kept(objective.active)}") from None
        if not trained:
            # A full sweep ends the loop at its next check; a config that another agent is
            # training comes back once that run is done, so wait a little before asking again.
            time.sleep(0 if objective.cap else settings["heartbeat_interval"])
    if result.trials == 0 and objective.cap is not None:
        log.info("sweep %s: %s; nothing left to run", sweep_id,
                 why_nothing_ran(study, spec, objective.cap))
    log.info("agent done: %d trials (%d complete, %d pruned, %d failed, %d skipped)",
             result.trials, result.complete, result.pruned, result.failed, result.skipped)
    return result


def _room(study: optuna.Study, cap: int | None) -> int | None:
    """Trials this agent may ask now without passing the run cap (re-queued ones count)."""
    if cap is None:
        return None
    taken = trials_in(study, (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
    return max(0, cap - len(taken))


def _one_trial(study: optuna.Study, objective: Objective, result: AgentResult) -> bool:
    """One trial through ``study.optimize``, counted; whether it trained (not skipped)."""
    from endebias.training.fit import NonFiniteLossError

    finished: list[optuna.trial.FrozenTrial] = []
    study.optimize(objective, n_trials=1, catch=(NonFiniteLossError, TrialSkipped),
                   callbacks=[lambda _, trial: finished.append(trial)])
    last = finished[-1]
    result.trials += 1
    if last.user_attrs.get("skipped"):
        result.skipped += 1
        return False
    result.complete += last.state == TrialState.COMPLETE
    result.pruned += last.state == TrialState.PRUNED
    result.failed += last.state == TrialState.FAIL
    outcome = {
        TrialState.COMPLETE: f"complete, best valid_acc {last.value}",
        TrialState.PRUNED: f"pruned after epoch {last.last_step}",
    }.get(last.state, f"failed: {last.user_attrs.get('error', 'unknown error')}")
    log.info("trial %d %s (run folder %s)", last.number, outcome, last.user_attrs.get("run_dir"))
    return True


def _round(study: optuna.Study, objective: Objective, wanted: int, result: AgentResult) -> int:
    """Ask ``wanted`` trials and train them, those that can share batches as one pack; the
    number that trained."""
    from endebias.training.packed import pack_key

    with contextlib.ExitStack() as beats:
        asked: list[Claimed] = []
        for _ in range(wanted):
            with warnings.catch_warnings():
                # Optuna warns that heartbeats are meant for Study.optimize: this agent beats
                # for each asked trial itself, as optimize does.
                warnings.filterwarnings("ignore", message="Heartbeat of storage")
                trial = study.ask()
            beats.enter_context(get_heartbeat_thread(trial._trial_id, study._storage))
            result.trials += 1
            try:
                asked.append(objective.claim(trial))
            except TrialSkipped as skipped:
                _finish(study, trial, skipped, result)
        groups: dict[str, list[Claimed]] = {}
        for item in asked:
            groups.setdefault(pack_key(item.config), []).append(item)
        try:
            for group in groups.values():
                _train_pack(study, objective, group, result)
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


def _train_pack(study: optuna.Study, objective: Objective, group: list[Claimed],
                result: AgentResult) -> None:
    from endebias.training.fit import fit_packed

    for item in group:
        report(item)
    if len(group) > 1:
        log.info("packing trials %s", ", ".join(str(item.trial.number) for item in group))
    try:
        outcomes: list[Any] = fit_packed(
            [item.config for item in group], [item.run_dir for item in group],
            data_dir=objective.data_dir, resume=True,
            on_epoch=lambda index, epoch, _: after_epoch(group[index], epoch),
            echo=lambda index, line: log.info("trial %d: %s", group[index].trial.number, line),
        )
    except Exception as error:
        # The whole pack failed (bad data, a broken option): so did each trial, and, as
        # with one trial at a time, the error stops the agent.
        for item in group:
            _finish(study, item.trial, error, result)
        raise
    for item, outcome in zip(group, outcomes, strict=True):
        with contextlib.suppress(RuntimeError, ValueError):  # a trial another agent failed
            report(item)
        _finish(study, item.trial, outcome, result)


def _tell(study: optuna.Study, trial: optuna.Trial, *args: Any, **kwargs: Any) -> None:
    try:
        study.tell(trial, *args, **kwargs)
    except (RuntimeError, ValueError) as error:  # another agent failed it (stale heartbeat)
        log.info("trial %d was already finished elsewhere: %s", trial.number, error)


def _finish(study: optuna.Study, trial: optuna.Trial, outcome: Any, result: AgentResult) -> None:
    """Tell Optuna how an asked trial ended, as ``study.optimize`` would, and count it."""
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
