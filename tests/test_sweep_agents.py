"""Agents for real: parallel processes on SQLite (and PostgreSQL when one is given), a
killed agent whose trial is re-queued and resumed, and the results of what they trained."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from endebias.cli.main import main
from endebias.sweeps import storage as sweep_storage
from endebias.training import records
from tiny_sweep import FAST_HEARTBEATS, tiny_sweep_spec, write_sweep_file

pytestmark = pytest.mark.slow
POSTGRES_ENV = "ENDEBIAS_TEST_POSTGRES_URL"


def tiny_sweep(tmp_path: Path, *, run_cap: int, epochs: int) -> Path:
    """The official file's form (a ``program`` no agent runs) of the tiny EnD sweep."""
    spec = tiny_sweep_spec(run_cap=run_cap, epochs=epochs, optuna=FAST_HEARTBEATS)
    return write_sweep_file(tmp_path / "tiny.yaml", {
        "name": "tiny synthetic sweep", "program": "never_run.py", **spec})


def endebias(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "endebias", *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen, timeout: float = 120, *, secret: str = "") -> str:
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, f"exit {process.returncode}\n{err[-3000:]}"
    if secret:  # the database password never shows, whatever the agent logs
        assert secret not in out + err
    return out


def run_cli(capsys, *args: str) -> str:
    """A command in this process (no torch import, so no second of start-up to pay)."""
    capsys.readouterr()
    assert main(list(args)) == 0
    return capsys.readouterr().out


def create(tmp_path: Path, capsys, storage: str, *, run_cap: int, epochs: int) -> str:
    sweep_id = f"tiny-{uuid.uuid4().hex[:8]}"
    file = tiny_sweep(tmp_path, run_cap=run_cap, epochs=epochs)
    out = run_cli(capsys, "sweep", "create", str(file), "--storage", storage, "--id", sweep_id)
    assert out.strip() == sweep_id
    return sweep_id


def two_agents_sweep(tmp_path: Path, capsys, storage: str) -> None:
    sweep_id = create(tmp_path, capsys, storage, run_cap=4, epochs=2)
    agents = [endebias("sweep", "agent", sweep_id, "--storage", storage, "--count", "3",
                       "--agent-id", str(i), cwd=tmp_path) for i in range(2)]
    password = re.search(r"://[^:/@]+:([^@]+)@", storage)
    for agent in agents:
        finish(agent, secret=password.group(1) if password else "")
    study = sweep_storage.load_study(sweep_id, storage=storage)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    others = [t for t in study.trials if t.state != TrialState.COMPLETE]
    # All trials complete; an extra one started at the same moment is marked skipped.
    assert len(complete) == 4 and all(t.user_attrs.get("skipped") for t in others), others
    assert len({(t.params["alpha"], t.params["beta"]) for t in complete}) == 4
    assert len({t.user_attrs["run_dir"] for t in complete}) == 4
    expected = []
    for trial in complete:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir.parent == (tmp_path / "runs" / sweep_id).resolve()
        assert (run_dir / records.DONE).exists()
        config = records.read_json(run_dir / records.CONFIG)
        assert config["method_options"] == trial.params  # alpha and beta
        assert run_dir.name == records.config_hash(config)
        history = records.read_metrics(run_dir)
        assert trial.intermediate_values == {r["epoch"]: r["valid_acc"] for r in history}
        best = max(history, key=lambda r: (r["valid_acc"], -r["epoch"]))
        assert trial.value == best["valid_acc"]
        expected.append((best["valid_acc"], best["biased_test_acc"], best["unbiased_test_acc"],
                         trial.number))
    # The results command against the same storage: rows by valid accuracy, then the summary.
    out = run_cli(capsys, "results", sweep_id, "--storage", storage, "--format", "json")
    table = json.loads(out)
    expected.sort(key=lambda e: (-e[0], str(e[3])))
    assert [(r["valid_acc"], r["biased_test_acc"], r["unbiased_test_acc"], int(r["id"]))
            for r in table["rows"]] == expected
    top = np.array([e[1:3] for e in expected[:3]]) * 100
    for column, metric in enumerate(("biased_test_acc", "unbiased_test_acc")):
        assert table["summary"][metric]["mean"] == pytest.approx(top[:, column].mean())
        assert table["summary"][metric]["std"] == pytest.approx(top[:, column].std(ddof=0))
    text = run_cli(capsys, "results", sweep_id, "--storage", storage)
    assert f"------- SUMMARY FOR {sweep_id} -------" in text
    mean, std = top[:, 1].mean(), top[:, 1].std(ddof=0)
    assert f"unbiased_test_acc: {mean:.2f} ± {std:.2f}" in text


def test_two_agents_in_parallel_on_sqlite(tmp_path, capsys):
    two_agents_sweep(tmp_path, capsys, f"sqlite:///{tmp_path}/runs/sweeps.db")


@pytest.mark.postgres
@pytest.mark.skipif(not os.environ.get(POSTGRES_ENV),
                    reason=f"{POSTGRES_ENV} not set (scripts/start_postgres.sh starts a server)")
def test_two_agents_in_parallel_on_postgres(tmp_path, capsys):
    two_agents_sweep(tmp_path, capsys, os.environ[POSTGRES_ENV])


def wait_for(condition, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_agent_is_requeued_and_a_new_agent_finishes_the_sweep(tmp_path, capsys):
    storage = f"sqlite:///{tmp_path}/runs/sweeps.db"
    epochs = 5
    sweep_id = create(tmp_path, capsys, storage, run_cap=2, epochs=epochs)
    victim = endebias("sweep", "agent", sweep_id, "--storage", storage, cwd=tmp_path)

    def a_run_with_an_epoch():  # the file system: cheaper to poll than the database
        return [p.parent for p in (tmp_path / "runs" / sweep_id).glob("*/metrics.jsonl")
                if p.stat().st_size > 0]

    run_dir = wait_for(a_run_with_an_epoch, timeout=90, what="the first trial's first epoch")[0]
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    before = records.read_metrics(run_dir)
    assert not (run_dir / records.DONE).exists(), "the trial finished before the kill"
    assert len(before) < epochs
    study = sweep_storage.load_study(sweep_id, storage=storage)
    (trial,) = study.trials
    assert trial.state == TrialState.RUNNING  # left behind, not complete
    assert trial.user_attrs["run_dir"] == str(run_dir.resolve())

    time.sleep(3.5)  # the grace period: its heartbeat is now stale
    finish(endebias("sweep", "agent", sweep_id, "--storage", storage, cwd=tmp_path))
    study = sweep_storage.load_study(sweep_id, storage=storage)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 2 and states.count(TrialState.FAIL) == 1, states
    assert study.trials[trial.number].state == TrialState.FAIL
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == trial.number)
    assert retry.state == TrialState.COMPLETE and retry.params == trial.params
    assert retry.user_attrs["run_dir"] == str(run_dir.resolve())
    after = records.read_metrics(run_dir)
    # Resumed from its checkpoint: the epochs done before the kill were not trained again.
    assert len(after) == epochs and after[: len(before)] == before
    assert (run_dir / records.DONE).exists()
    # The results leave the killed attempt out: its retry holds the run.
    out = run_cli(capsys, "results", sweep_id, "--storage", storage, "--format", "json")
    rows = json.loads(out)["rows"]
    assert sorted(int(r["id"]) for r in rows) == sorted(
        t.number for t in study.trials if t.state == TrialState.COMPLETE)
    assert all(r["state"] == "COMPLETE" for r in rows)
    optuna.delete_study(study_name=sweep_id, storage=storage)
