"""A sweep agent: a loop of Optuna trials, each one :func:`endebias.training.fit.fit` run.

Each trial trains into ``runs/<sweep id>/<config hash>``, so a trial re-queued after its
agent was killed (same parameters, hence same hash) resumes that folder from its last
checkpoint. The objective is the run's best valid accuracy; every epoch's valid accuracy
is reported so that a pruner can stop hopeless trials.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from endebias.sweeps import stale
from endebias.sweeps import storage as sweep_storage
from endebias.sweeps.retry import (
    DEFAULT_RETRY_SECONDS,
    StorageUnavailable,
    find_unavailable,
    retrying,
)
from endebias.sweeps.search_space import Parameter, SweepSpec
from endebias.training import records
from endebias.training.config import make_config

log = logging.getLogger(__name__)

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


class Objective:
    def __init__(
        self,
        spec: SweepSpec,
        *,
        sweep_id: str,
        runs_dir: Path,
        data_dir: str | None,
        progress: bool,
        wandb_project: str | None = None,
        tensorboard: bool = False,
    ) -> None:
        self.spec = spec
        self.wandb_project = wandb_project
        self.tensorboard = tensorboard
        self.sweep_id = sweep_id
        self.runs_dir = runs_dir
        self.data_dir = data_dir
        self.progress = progress
        self.cap = min(filter(None, (spec.run_cap, spec.grid_size())), default=None)
        self.active: tuple[int, Path] | None = None  # the trial now training, its folder

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
        # torch: only in agents
        from endebias.training.pseudo_label_stages import fit_with_bias_labels, shared_stage1_dir

        self._check_not_surplus(trial)
        sampled = {p.name: suggest(trial, p) for p in self.spec.parameters.values() if p.searched}
        preset, overrides = self.spec.overrides(sampled)
        config = make_config(preset, **overrides)
        digest = records.config_hash(config.to_dict())
        run_dir = (self.runs_dir / self.sweep_id / digest).resolve()
        for key, value in {
            "run_dir": str(run_dir),
            "config_hash": digest,
            "host": socket.gethostname(),
            "config": config.to_dict(),
        }.items():
            trial.set_user_attr(key, value)
        self._check_folder_free(trial, run_dir)
        self.active = (trial.number, run_dir)
        reported: set[int] = set()
        self._report(trial, run_dir, reported)

        tracker = self._tracker(trial, config.to_dict(), run_dir)

        def on_epoch(epoch: int, record: dict[str, Any]) -> None:
            self._report(trial, run_dir, reported)
            if tracker is not None:
                tracker.on_epoch(epoch, record)
            if trial.number not in {t.number for t in _trials(trial.study, (TrialState.RUNNING,))}:
                raise TrialTakenOver(f"trial {trial.number} was failed by another agent")
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch}")

        log.info("trial %d%s: %s -> %s", trial.number, self._place(trial), sampled, run_dir)
        state = "FAIL"
        try:
            best = fit_with_bias_labels(
                config,
                run_dir,
                data_dir=self.data_dir,
                resume=True,
                progress=self.progress,
                on_epoch=on_epoch,
                echo=lambda line: log.info("trial %d: %s", trial.number, line),
                # Trials on pseudo labels share one stage 1 per setting it sees.
                stage1_dir=shared_stage1_dir(config, run_dir.parent)
                if config.bias_labels == "pseudo" else None,
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
        self._report(trial, run_dir, reported)
        return float(best["valid_acc"])

    def _tracker(self, trial: optuna.Trial, config: dict[str, Any], run_dir: Path):
        """W&B and TensorBoard mirrors of this trial, when asked for (off by default)."""
        from endebias.training.tracking import run_mirror

        return run_mirror(
            run_dir,
            config={**config, "trial": trial.number},
            name=f"{self.sweep_id}-{trial.number}",
            wandb_project=self.wandb_project,
            wandb_group=self.sweep_id,
            wandb_dir=self.runs_dir / self.sweep_id,  # wandb adds its wandb/ folder
            tensorboard=self.tensorboard,
        )

    def _place(self, trial: optuna.Trial) -> str:
        return place_in_sweep(trial.study, trial.number, self.cap)

    def _check_not_surplus(self, trial: optuna.Trial) -> None:
        """With a run cap, two agents may start the last trial at once: the later one stops."""
        if self.cap is None:
            return
        earlier = [t for t in _trials(trial.study, ALIVE) if t.number < trial.number]
        if len(earlier) >= self.cap:
            raise SweepFull(f"the sweep already has its {self.cap} trials")

    def _check_folder_free(self, trial: optuna.Trial, run_dir: Path) -> None:
        """Both trials wrote their claim before looking, so the lower number always wins."""
        for other in _trials(trial.study, (TrialState.RUNNING,)):
            if other.number < trial.number and other.user_attrs.get("run_dir") == str(run_dir):
                raise FolderTaken(f"trial {other.number} already trains this config in {run_dir}")

    @staticmethod
    def _report(trial: optuna.Trial, run_dir: Path, reported: set[int]) -> None:
        """Report every epoch on record (a resumed folder's earlier ones too) and keep the
        best-by-valid epoch's accuracies as user attributes, pruned trials included."""
        history = records.read_metrics(run_dir)
        for record in history:
            if record["epoch"] not in reported and record.get("valid_acc") is not None:
                trial.report(record["valid_acc"], record["epoch"])
                reported.add(record["epoch"])
        if history:
            best = max(history, key=lambda r: (r["valid_acc"] or 0.0, -r["epoch"]))
            for key in BEST_KEYS:
                trial.set_user_attr(key, best.get(key))
            trial.set_user_attr("best_epoch", best["epoch"])
            trial.set_user_attr("epochs_done", len(history))


def _trials(study: optuna.Study, states: tuple[TrialState, ...]) -> list[optuna.trial.FrozenTrial]:
    return study.get_trials(deepcopy=False, states=states)


def place_in_sweep(study: optuna.Study, number: int, cap: int | None) -> str:
    """`` (trial 3 of 8)``: where a trial stands among those the cap counts (complete,
    pruned, running, queued; failed and skipped ones are not counted); "" with no cap."""
    if cap is None:
        return ""
    place = sum(1 for t in _trials(study, ALIVE) if t.number <= number)
    return f" (trial {place} of {cap})"


def why_nothing_ran(study: optuna.Study, spec: SweepSpec, cap: int | None) -> str:
    """``run_cap 8 reached: 8 complete``: why an agent found no trial to run."""
    counts = {state: len(_trials(study, (state,))) for state in ALIVE}
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


def run_agent(
    sweep_id: str,
    *,
    storage: str,
    runs_dir: str | Path = "runs",
    count: int | None = None,
    prune: str | None = None,
    data_dir: str | None = None,
    agent_id: int | None = None,
    progress: bool = False,
    wandb_project: str | None = None,
    tensorboard: bool = False,
    storage_retry: float = DEFAULT_RETRY_SECONDS,
    budget: dict[str, int] | None = None,
) -> AgentResult:
    """Run trials of ``sweep_id`` until ``count`` are done or the sweep has its run cap
    (then first re-run any trial of a killed agent), retrying storage calls for up to
    ``storage_retry`` seconds while the database is unreachable. ``budget`` (epochs,
    train_subset, eval_subset) replaces the sweep's values in every trial's config."""
    from endebias.training.fit import NonFiniteLossError

    spec, study = open_agent_study(
        sweep_id, storage=storage, prune=prune, agent_id=agent_id, storage_retry=storage_retry
    )
    spec = spec.with_budget(budget)
    settings = spec.optuna
    objective = Objective(
        spec,
        sweep_id=sweep_id,
        runs_dir=Path(runs_dir),
        data_dir=data_dir,
        progress=progress,
        wandb_project=wandb_project,
        tensorboard=tensorboard,
    )
    if objective.cap is None and count is None:
        log.info("sweep %s has no run_cap: this agent runs until stopped (Ctrl-C)", sweep_id)
    result = AgentResult()
    finished: list[optuna.trial.FrozenTrial] = []
    # Optuna logs every failed trial with its traceback, skipped ones too; the agent logs
    # one line per trial instead (and an error that stops it reaches the command line).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    while count is None or result.trials < count:
        try:
            if not stale.want_next_trial(study, cap=objective.cap, settings=settings):
                break
            study.optimize(
                objective,
                n_trials=1,
                catch=(NonFiniteLossError, TrialSkipped),
                callbacks=[lambda _, trial: finished.append(trial)],
            )
        except Exception as error:
            # Optuna's clean-up after the trial fails on the lost storage too and may
            # raise something else; the loss is behind it.
            lost = find_unavailable(error)
            if lost is None:
                raise
            raise StorageUnavailable(f"{lost}; {stale.kept(objective.active)}") from None
        last = finished[-1]
        result.trials += 1
        if last.user_attrs.get("skipped"):
            # A full sweep ends the loop at its next check; a config that another agent is
            # training comes back once that run is done, so wait a little before asking again.
            result.skipped += 1
            time.sleep(0 if objective.cap else settings["heartbeat_interval"])
            continue
        result.complete += last.state == TrialState.COMPLETE
        result.pruned += last.state == TrialState.PRUNED
        result.failed += last.state == TrialState.FAIL
        outcome = {
            TrialState.COMPLETE: f"complete, best valid_acc {last.value}",
            TrialState.PRUNED: f"pruned after epoch {last.last_step}",
        }.get(last.state, f"failed: {last.user_attrs.get('error', 'unknown error')}")
        log.info(
            "trial %d %s (run folder %s)", last.number, outcome, last.user_attrs.get("run_dir")
        )
    if result.trials == 0 and objective.cap is not None:
        log.info("sweep %s: %s; nothing left to run", sweep_id,
                 why_nothing_ran(study, spec, objective.cap))
    log.info(
        "agent done: %d trials (%d complete, %d pruned, %d failed, %d skipped)",
        result.trials,
        result.complete,
        result.pruned,
        result.failed,
        result.skipped,
    )
    return result
