"""A killed agent's trial never ends a sweep unfinished (kill -9 of a real second agent),
and `results` says how many trials are still RUNNING or stale."""

from __future__ import annotations

import json
import logging
import signal
from pathlib import Path

import pytest
from optuna.trial import TrialState

from endebias.sweeps import storage as sweep_storage
from endebias.training import records
from test_sweep_agents import create, endebias, run_cli, wait_for

pytestmark = pytest.mark.slow


def running_trials(storage: str, sweep_id: str) -> list:
    study = sweep_storage.load_study(sweep_id, storage=storage)
    return study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))


def results_warning(capsys, caplog, storage: str, sweep_id: str) -> tuple[list, str]:
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        rows = json.loads(run_cli(capsys, "results", sweep_id, "--storage", storage,
                                  "--format", "json"))["rows"]
    return rows, " ".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def test_the_agent_at_the_cap_reruns_the_trial_of_a_killed_agent(tmp_path, capsys, caplog):
    storage = f"sqlite:///{tmp_path}/runs/sweeps.db"
    epochs = 8
    sweep_id = create(tmp_path, capsys, storage, run_cap=2, epochs=epochs)  # grace 3 s, beat 1 s
    # Both agents start at once, so each takes one of the two trials.
    first = endebias("sweep", "agent", sweep_id, "--storage", storage, "--agent-id", "0",
                     cwd=tmp_path)
    second = endebias("sweep", "agent", sweep_id, "--storage", storage, "--agent-id", "1",
                      cwd=tmp_path)

    def second_agents_trial_with_an_epoch():
        """The trial whose run folder the second agent holds (its lock file names the
        holder's pid), once an epoch of it is on record: which number it got is a race."""
        for trial in running_trials(storage, sweep_id):
            folder = trial.user_attrs.get("run_dir")
            if not folder or not (Path(folder) / records.BEST).exists():
                continue
            lock = Path(folder) / records.LOCK
            holder = lock.read_text().strip() if lock.exists() else ""
            if holder == str(second.pid):
                return trial
        return None

    owned = wait_for(second_agents_trial_with_an_epoch, timeout=120,
                     what="the second agent's first epoch")
    second.send_signal(signal.SIGKILL)
    second.communicate(timeout=30)
    assert second.returncode == -signal.SIGKILL
    victim = sweep_storage.load_study(sweep_id, storage=storage).trials[owned.number]
    other = 1 - victim.number  # the first agent's trial
    assert victim.state == TrialState.RUNNING  # left behind by the kill
    before = records.read_metrics(Path(victim.user_attrs["run_dir"]))
    assert 0 < len(before) < epochs

    # While the first agent trains, results says what the summary cannot count yet.
    _, warning = results_warning(capsys, caplog, storage, sweep_id)
    assert f"sweep {sweep_id}: " in warning and "still RUNNING" in warning

    out, err = first.communicate(timeout=240)
    assert first.returncode == 0, err[-3000:]
    assert "agent done: 2 trials (2 complete, 0 pruned, 0 failed, 0 skipped)" in err
    assert "Traceback" not in err
    study = sweep_storage.load_study(sweep_id, storage=storage)
    assert study.trials[victim.number].state == TrialState.FAIL  # the killed attempt
    retry = next(t for t in study.trials
                 if t.system_attrs.get("failed_trial") == victim.number)
    assert retry.state == TrialState.COMPLETE and retry.params == victim.params
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert sorted(t.number for t in complete) == sorted([other, retry.number])
    assert not [t for t in study.trials if t.state == TrialState.RUNNING]
    for trial in complete:  # every run finished in full, once
        run_dir = Path(trial.user_attrs["run_dir"])
        assert (run_dir / records.DONE).exists()
        assert [r["epoch"] for r in records.read_metrics(run_dir)] == list(range(1, epochs + 1))
    assert retry.user_attrs["run_dir"] == victim.user_attrs["run_dir"]
    # The retry resumed the killed run: the epochs before the kill were kept, not retrained.
    assert records.read_metrics(Path(retry.user_attrs["run_dir"]))[: len(before)] == before
    rows, warning = results_warning(capsys, caplog, storage, sweep_id)
    assert sorted(int(r["id"]) for r in rows) == sorted([other, retry.number])
    assert warning == ""
    assert all(r["state"] == "COMPLETE" for r in rows)


def test_results_count_running_and_stale_trials(tmp_path, capsys, caplog):
    storage = f"sqlite:///{tmp_path}/runs/sweeps.db"
    sweep_id = create(tmp_path, capsys, storage, run_cap=1, epochs=30)
    agent = endebias("sweep", "agent", sweep_id, "--storage", storage, cwd=tmp_path)
    # An epoch on record: the trial's heartbeats are surely in the storage by then.
    wait_for(lambda: list((tmp_path / "runs" / sweep_id).glob("*/best.json")), timeout=90,
             what="the first epoch")
    agent.send_signal(signal.SIGKILL)
    agent.communicate(timeout=30)
    _, warning = results_warning(capsys, caplog, storage, sweep_id)
    assert warning == (f"sweep {sweep_id}: 1 trial still RUNNING; the summary counts complete "
                       "trials only")
    # Past the grace period of 3 s (the database clock counts whole seconds).
    warning = wait_for(lambda: "stale" in (w := results_warning(capsys, caplog, storage,
                                                                sweep_id)[1]) and w,
                       timeout=15, what="the trial to go stale")
    assert warning == (
        f"sweep {sweep_id}: 1 trial still RUNNING, 1 of them stale (no heartbeat for over 3 s: "
        f"its agent was killed; `endebias sweep agent {sweep_id}` re-runs it from its run "
        "folder); the summary counts complete trials only")
    # Counting changed nothing: the trial is still RUNNING until an agent takes it over.
    assert [t.number for t in running_trials(storage, sweep_id)] == [0]
