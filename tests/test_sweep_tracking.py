"""The optional Weights & Biases mirror of sweep trials (`sweep agent --wandb PROJECT`),
checked against a stand-in `wandb` module that records what it was asked to do (fast;
tests/test_trackers.py checks the real package offline)."""

from __future__ import annotations

import sys
import types

import pytest
import yaml

from endebias.cli.main import main
from endebias.training.records import read_metrics

pytestmark = pytest.mark.slow


class FakeRun:
    def __init__(self, **kwargs) -> None:
        self.init = kwargs
        self.logged: list[tuple[dict, int]] = []
        self.summary: dict = {}
        self.exit_code: int | None = None

    def log(self, values: dict, step: int, commit: bool = False) -> None:
        assert commit  # a pending step would overwrite the best epoch's summary at finish
        self.logged.append((values, step))

    def finish(self, exit_code: int = 0) -> None:
        self.exit_code = exit_code


@pytest.fixture
def fake_wandb(monkeypatch):
    runs: list[FakeRun] = []
    module = types.ModuleType("wandb")
    module.init = lambda **kwargs: runs.append(FakeRun(**kwargs)) or runs[-1]
    monkeypatch.setitem(sys.modules, "wandb", module)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return runs


def test_agent_mirrors_each_trial_to_wandb_offline(tmp_path, fake_wandb, capsys):
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(yaml.safe_dump({"method": "random", "run_cap": 1, "parameters": {
        "alpha": {"min": 0.0, "max": 1.0}, "method": {"value": "end"},
        "dataset": {"value": "synthetic"}, "preset": {"value": "quick"}, "epochs": {"value": 2},
        "train_size": {"value": 128}, "eval_size": {"value": 64},
        "model_options.channels": {"value": [8, 16]}}}))
    storage = f"sqlite:///{tmp_path}/runs/sweeps.db"
    assert main(["sweep", "create", str(sweep_file), "--storage", storage, "--id", "w"]) == 0
    assert main(["sweep", "agent", "w", "--storage", storage, "--runs", str(tmp_path / "runs"),
                 "--wandb", "endebias-tests"]) == 0
    (run,) = fake_wandb
    assert run.init["project"] == "endebias-tests" and run.init["mode"] == "offline"
    assert run.init["group"] == "w" and run.init["name"] == "w-0"
    assert run.init["config"]["method"] == "end" and run.init["config"]["trial"] == 0
    (run_dir,) = [p for p in (tmp_path / "runs" / "w").iterdir() if p.name != "wandb"]
    history = read_metrics(run_dir)
    assert [step for _, step in run.logged] == [1, 2]
    assert [values["valid_acc"] for values, _ in run.logged] == [r["valid_acc"] for r in history]
    best = max(history, key=lambda r: (r["valid_acc"], -r["epoch"]))
    assert run.summary["valid_acc"] == best["valid_acc"] and run.summary["state"] == "COMPLETE"
    assert run.summary["epoch"] == best["epoch"]
    assert run.exit_code == 0


def test_wandb_missing_is_a_clear_error(tmp_path, monkeypatch):
    from endebias.training.tracking import WandbRun

    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    with pytest.raises(RuntimeError, match="--wandb needs the wandb package: pip install wandb"):
        WandbRun(project="p", name="n", group="g", config={}, folder=tmp_path / "w")
