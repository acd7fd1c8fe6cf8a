"""`sweep agent --epochs/--train-subset/--eval-subset`: a shorter trial without editing the
sweep file, recorded in each trial's config (and so in its run folder's name)."""

from __future__ import annotations

import optuna
import pytest

from endebias.cli.main import main
from endebias.sweeps.storage import load_study
from endebias.training import records
from tiny_sweep import tiny_sweep_spec, write_sweep_file


@pytest.mark.parametrize("pack", [None, 2])
def test_the_agents_budget_is_each_trials_config(tmp_path, pack) -> None:
    sweep_file = write_sweep_file(tmp_path / "s.yaml", tiny_sweep_spec(
        run_cap=2, epochs=3, method="random", train_size=128, eval_size=64,
        train_subset={"value": 100}))
    storage = f"sqlite:///{tmp_path}/sweeps.db"
    assert main(["sweep", "create", str(sweep_file), "--storage", storage, "--id", "s"]) == 0
    argv = ["sweep", "agent", "s", "--storage", storage, "--runs", str(tmp_path / "runs"),
            "--agent-id", "0", "--epochs", "1", "--train-subset", "40", "--eval-subset", "30"]
    assert main(argv + (["--pack", str(pack)] if pack else [])) == 0
    trials = load_study("s", storage=storage).get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(trials) == 2
    for trial in trials:
        config = trial.user_attrs["config"]
        # The agent's values replace the file's (epochs 3, train_subset 100).
        assert (config["epochs"], config["train_subset"], config["eval_subset"]) == (1, 40, 30)
        run_dir = trial.user_attrs["run_dir"]
        assert records.read_json(f"{run_dir}/{records.CONFIG}") == config
        (record,) = records.read_metrics(run_dir)
        assert record["valid_n"] == 30


def test_a_budget_must_be_positive(capsys) -> None:
    for option in ("--epochs", "--train-subset", "--eval-subset"):
        with pytest.raises(SystemExit):
            main(["sweep", "agent", "s", option, "0"])
        assert f"argument {option}: must be a positive integer, got 0" in capsys.readouterr().err
