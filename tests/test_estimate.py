"""The start line's time estimate: measured without changing the run, counted right."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from endebias.training import estimate
from endebias.training.config import make_config
from endebias.training.estimate import RunEstimate, format_duration, start_line
from endebias.training.prepared import prepare_solo
from endebias.training.run import prepare_data


def _prepared(tmp_path: Path, **overrides):
    options = dict(dataset="synthetic", dataset_options={"rho": 0.95, "train_size": 300,
                                                         "eval_size": 70},
                   method="end", method_options={"alpha": 1.0, "beta": 1.0},
                   epochs=5, batch_size=64, seed=3)
    options.update(overrides)
    config = make_config("quick", **options)
    shared = prepare_data(config, data_dir=None, device=torch.device("cpu"))
    return prepare_solo(config, shared, None), shared, config


@pytest.mark.parametrize("method,options", [
    ("end", {"alpha": 1.0, "beta": 1.0}),
    ("groupdro", {}),  # its group weights are a buffer its training step updates
    ("lff", {}),       # so are its per-sample loss averages
])
def test_measuring_leaves_the_run_as_it_was(tmp_path, method, options) -> None:
    stepper, shared, config = _prepared(tmp_path, method=method, method_options=options)
    before = {k: v.clone() for k, v in stepper.method.state_dict().items()}
    torch.manual_seed(11)
    rng = torch.get_rng_state()
    start_line(stepper, shared, config)
    after = stepper.method.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in stepper.method.parameters())
    # No optimiser step was taken: Adam has no moments yet.
    assert all(not group.optimizer.state for group in stepper.optimizers.groups.values())


def test_the_line_names_preset_epochs_sizes_and_a_time(tmp_path) -> None:
    stepper, shared, config = _prepared(tmp_path, train_subset=200, eval_subset=50)
    line = start_line(stepper, shared, config)
    assert line.startswith("quick preset, 5 epochs, train 200, ")
    assert "valid 50" in line and "unbiased_test 50" in line
    assert " per run on this machine (cpu" in line and "per epoch, from 2 batches" in line
    resumed = start_line(stepper, shared, config, epochs_done=2)
    assert "left after epoch 2" in resumed


def test_the_estimate_counts_batches_images_and_epochs(tmp_path, monkeypatch) -> None:
    stepper, shared, config = _prepared(tmp_path)  # 300 images in batches of 64: 5 batches
    found = estimate.measure(stepper, shared, config)
    assert found.train_batches == 5 and found.epochs == 5
    assert found.eval_images == sum(len(s) for s in shared.evaluations.values())
    assert found.seconds_per_batch > 0 and found.seconds_per_eval_image > 0
    by_hand = RunEstimate(seconds_per_batch=2.0, seconds_per_eval_image=0.01,
                          train_batches=5, eval_images=300, epochs=4)
    assert by_hand.seconds_per_epoch == pytest.approx(5 * 2.0 + 300 * 0.01)
    assert by_hand.seconds_per_run == pytest.approx(4 * 13.0)


@pytest.mark.parametrize("seconds,text", [
    (0.4, "0 s"), (40, "40 s"), (99.4, "99 s"), (150, "2.5 min"), (5999, "100.0 min"),
    (15 * 3600, "15.0 h"),
])
def test_durations_read_in_their_unit(seconds, text) -> None:
    assert format_duration(seconds) == text


def test_train_says_what_it_trains_before_its_first_epoch(tmp_path, capsys) -> None:
    from endebias.cli.main import main

    out = tmp_path / "run"
    assert main(["train", "--dataset", "synthetic", "--epochs", "2", "--train-subset", "100",
                 "--eval-subset", "40", "--out", str(out), "--no-progress"]) == 0
    lines = capsys.readouterr().out.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("run folder ")]
    assert len(starts) == 1 and starts[0] < lines.index(next(
        line for line in lines if line.startswith("epoch   1 |")))
    assert lines[starts[0]].startswith(f"run folder {out}: quick preset, 2 epochs, train 100, "
                                       "valid 40, ")
    assert "per run on this machine" in lines[starts[0]]


def test_a_failed_start_names_no_run_folder(tmp_path, capsys) -> None:
    from endebias.cli.main import main

    out = tmp_path / "run"
    code = main(["train", "--dataset", "synthetic", "--model", "resnet18", "--model-option",
                 "channels=[4]", "--out", str(out), "--no-progress"])
    assert code == 2
    captured = capsys.readouterr()
    assert "run folder" not in captured.out and not out.exists()


def test_every_sweep_trial_says_what_it_trains(tmp_path, caplog) -> None:
    import logging

    from endebias.cli.main import main
    from tiny_sweep import tiny_sweep_spec, write_sweep_file

    sweep_file = write_sweep_file(tmp_path / "s.yaml", tiny_sweep_spec(
        run_cap=2, epochs=1, method="random", train_size=64, eval_size=32))
    storage = f"sqlite:///{tmp_path}/sweeps.db"
    assert main(["sweep", "create", str(sweep_file), "--storage", storage, "--id", "s"]) == 0
    for pack in ("1", "2"):
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert main(["sweep", "agent", "s", "--storage", storage, "--runs",
                         str(tmp_path / f"runs{pack}"), "--agent-id", "0", "--pack", pack,
                         "--count", "1"]) == 0
        said = [r.getMessage() for r in caplog.records
                if "per run on this machine" in r.getMessage()]
        assert said and all("quick preset, 1 epoch, train 64" in m for m in said), said
