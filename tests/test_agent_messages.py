"""What an agent says: where each trial stands in the sweep (``trial k of N``), and why
it ran nothing on a finished sweep (``run_cap 2 reached: 2 complete``)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial

from endebias.sweeps import agent
from endebias.sweeps.storage import create_sweep
from endebias.sweeps.sweep_file import load_sweep_file


def _study(states: list[TrialState]) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    for state in states:
        done = state in (TrialState.COMPLETE,)
        study.add_trial(create_trial(
            state=state, value=0.5 if done else None, params={"alpha": 0.1},
            distributions={"alpha": FloatDistribution(0.0, 1.0)},
        ))
    return study


def test_place_counts_what_the_cap_counts() -> None:
    states = [TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED, TrialState.RUNNING]
    study = _study(states)
    # Trial 1 failed: it is not counted, so trial 2 is the second of the cap's 5.
    assert agent.place_in_sweep(study, 2, 5) == " (trial 2 of 5)"
    assert agent.place_in_sweep(study, 3, 5) == " (trial 3 of 5)"
    assert agent.place_in_sweep(study, 3, None) == ""


def test_why_nothing_ran_names_the_cap_and_the_states() -> None:
    study = _study([TrialState.COMPLETE] * 6 + [TrialState.PRUNED] * 2 + [TrialState.FAIL])
    run_cap = SimpleNamespace(run_cap=8)
    assert agent.why_nothing_ran(study, run_cap, 8) == "run_cap 8 reached: 6 complete, 2 pruned"
    grid = SimpleNamespace(run_cap=None)
    assert agent.why_nothing_ran(study, grid, 8) == (
        "a grid of 8 settings reached: 6 complete, 2 pruned"
    )


@pytest.mark.slow
def test_agent_logs_its_place_then_why_it_stops(tmp_path, caplog) -> None:
    sweep = {
        "name": "tiny", "method": "random", "run_cap": 2,
        "metric": {"name": "valid_acc", "goal": "maximize"},
        "parameters": {
            "alpha": {"distribution": "uniform", "min": 0.0, "max": 1.0},
            "method": {"value": "end"}, "dataset": {"value": "synthetic"},
            "preset": {"value": "quick"}, "epochs": {"value": 1},
            "train_size": {"value": 128}, "eval_size": {"value": 64},
            "model_options.channels": {"value": [4, 8]},
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(sweep))
    storage = f"sqlite:///{tmp_path / 'sweeps.db'}"
    sweep_id = create_sweep(load_sweep_file(path), storage=storage, sweep_id="tiny")
    caplog.set_level(logging.INFO, logger="endebias.sweeps.agent")
    first = agent.run_agent(sweep_id, storage=storage, runs_dir=tmp_path / "runs")
    assert first.complete == 2
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("trial 0 (trial 1 of 2): ") for m in messages), messages
    assert any(m.startswith("trial 1 (trial 2 of 2): ") for m in messages), messages
    caplog.clear()
    second = agent.run_agent(sweep_id, storage=storage, runs_dir=tmp_path / "runs")
    assert second.trials == 0
    messages = [r.getMessage() for r in caplog.records]
    assert "sweep tiny: run_cap 2 reached: 2 complete; nothing left to run" in messages
