"""W&B (offline) and TensorBoard mirrors of real runs, read back with the real packages:
`train --wandb PROJECT --tensorboard` and `sweep agent ... --wandb PROJECT --tensorboard`.

W&B runs offline with every folder it uses under tmp_path (no account, no network); its
run log is read back by tests/wandb_offline.py, TensorBoard's events by tensorboard's own
EventAccumulator. The reference is always the run folder's records."""

from __future__ import annotations

import io
import json
import math
import sys

import pytest
import yaml

from endebias.cli.main import main
from endebias.training import records
from endebias.training.tracking import RunMirror

SMALL_RUN = ["--dataset", "synthetic", "--method", "end", "--epochs", "3",
             "--dataset-option", "train_size=128", "--dataset-option", "eval_size=64",
             "--model-option", "channels=[8,16]", "--no-progress"]


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb", reason="the real W&B check needs pip install wandb")
    for name in ("DIR", "CACHE_DIR", "CONFIG_DIR", "DATA_DIR", "ARTIFACT_DIR"):
        folder = tmp_path / "wandb-home" / name.lower()
        folder.mkdir(parents=True)
        monkeypatch.setenv(f"WANDB_{name}", str(folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    yield wandb
    wandb.teardown()  # stop wandb's background service process


def numeric(record: dict) -> dict:
    return {k: v for k, v in record.items() if k != "epoch" and isinstance(v, int | float)
            and not isinstance(v, bool) and math.isfinite(v)}


def check_wandb_run(folder, run_dir, *, name):
    from wandb_offline import read_offline_run

    (offline,) = folder.glob("offline-run-*")
    run = read_offline_run(offline)
    history, best = records.read_metrics(run_dir), records.read_json(run_dir / records.BEST)
    config = records.read_json(run_dir / records.CONFIG)
    assert run.name == name
    assert {k: run.config[k] for k in config} == config
    assert [row["_step"] for row in run.history] == [r["epoch"] for r in history]
    for row, record in zip(run.history, history, strict=True):
        assert {k: v for k, v in row.items() if k != "_step"} == numeric(record)
    assert "unbiased_test_acc_worst_group" in run.history[0]
    # The summary is the best-by-valid epoch, not the last one.
    assert {k: run.summary[k] for k in numeric(best)} == numeric(best)
    assert run.summary["epoch"] == best["epoch"] and run.summary["state"] == "COMPLETE"
    assert run.exit_code == 0
    return run


def check_tensorboard(run_dir):
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = (run_dir / "tensorboard").glob("events.out.tfevents.*")  # one file per run
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    history, best = records.read_metrics(run_dir), records.read_json(run_dir / records.BEST)
    expected = set().union(*(numeric(r) for r in history))
    assert set(accumulator.Tags()["scalars"]) == expected
    assert {"lr", "train_loss", "train_ce", "valid_acc", "unbiased_test_acc"} <= expected
    for key in expected:
        points = {e.step: e.value for e in accumulator.Scalars(key)}
        assert points == pytest.approx({r["epoch"]: r[key] for r in history if key in numeric(r)},
                                       rel=1e-6)
    (image,) = accumulator.Images("unbiased_test_group_acc")
    assert image.step == best["epoch"]
    png = Image.open(io.BytesIO(image.encoded_image_string))
    assert png.size == (image.width, image.height) and png.width > 200


@pytest.mark.slow
def test_train_mirrors_its_records_to_wandb_and_tensorboard(tmp_path, offline_wandb):
    pytest.importorskip("tensorboard", reason="needs pip install tensorboard")
    out = tmp_path / "run"
    assert main(["train", *SMALL_RUN, "--out", str(out), "--wandb", "endebias-tests",
                 "--tensorboard"]) == 0
    run = check_wandb_run(out / "wandb", out, name="run")
    assert run.project == "endebias-tests"
    check_tensorboard(out)


@pytest.mark.slow
def test_sweep_agent_mirrors_each_trial(tmp_path, offline_wandb):
    pytest.importorskip("tensorboard", reason="needs pip install tensorboard")
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(yaml.safe_dump({"method": "random", "run_cap": 1, "parameters": {
        "alpha": {"min": 0.0, "max": 1.0}, "method": {"value": "end"},
        "dataset": {"value": "synthetic"}, "preset": {"value": "quick"}, "epochs": {"value": 2},
        "train_size": {"value": 128}, "eval_size": {"value": 64},
        "model_options.channels": {"value": [8, 16]}}}))
    storage = f"sqlite:///{tmp_path}/runs/sweeps.db"
    runs = tmp_path / "runs"
    assert main(["sweep", "create", str(sweep_file), "--storage", storage, "--id", "w"]) == 0
    assert main(["sweep", "agent", "w", "--storage", storage, "--runs", str(runs),
                 "--wandb", "endebias-tests", "--tensorboard"]) == 0
    (run_dir,) = [p for p in (runs / "w").iterdir() if p.name != "wandb"]
    run = check_wandb_run(runs / "w" / "wandb", run_dir, name="w-0")
    assert run.group == "w" and run.config["trial"] == 0
    check_tensorboard(run_dir)


class Recorder:
    def __init__(self, calls: list) -> None:
        self.calls = calls
        calls.append(("open",))

    def log(self, record: dict) -> None:
        self.calls.append(("log", record["epoch"]))

    def finish(self, best, *, state: str) -> None:
        self.calls.append(("finish", None if best is None else best["epoch"], state))


def write_epochs(run_dir, epochs):
    history = [{"epoch": e, "valid_acc": v} for e, v in epochs]
    records.write_metrics(run_dir, history)
    records.atomic_write_json(run_dir / records.BEST, max(history, key=lambda r: r["valid_acc"]))


def test_a_resumed_run_replays_the_epochs_on_record_once(tmp_path):
    calls: list = []
    write_epochs(tmp_path, [(1, 0.5), (2, 0.7)])  # an earlier attempt's epochs
    mirror = RunMirror(tmp_path, [lambda: Recorder(calls)])
    write_epochs(tmp_path, [(1, 0.5), (2, 0.7), (3, 0.6)])
    mirror.on_epoch(3, {"epoch": 3})
    write_epochs(tmp_path, [(1, 0.5), (2, 0.7), (3, 0.6), (4, 0.65)])
    mirror.on_epoch(4, {"epoch": 4})
    mirror.finish(state="COMPLETE")
    assert calls == [("open",), ("log", 1), ("log", 2), ("log", 3), ("log", 4),
                     ("finish", 2, "COMPLETE")]


def test_a_finished_run_returned_at_once_is_still_mirrored(tmp_path):
    calls: list = []
    write_epochs(tmp_path, [(1, 0.5), (2, 0.4)])
    RunMirror(tmp_path, [lambda: Recorder(calls)]).finish(state="COMPLETE")
    assert calls == [("open",), ("log", 1), ("log", 2), ("finish", 1, "COMPLETE")]


def test_a_run_that_never_started_opens_no_tracker(tmp_path):
    calls: list = []
    RunMirror(tmp_path, [lambda: Recorder(calls)]).finish(state="FAIL")
    assert calls == []


@pytest.mark.parametrize(("option", "package"), [("--wandb=p", "wandb"),
                                                 ("--tensorboard", "tensorboard")])
def test_a_missing_tracker_package_is_one_line_before_any_work(
    tmp_path, monkeypatch, capsys, option, package
):
    monkeypatch.setitem(sys.modules, package, None)  # import raises ImportError
    out = tmp_path / "run"
    assert main(["train", *SMALL_RUN, "--out", str(out), option]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert error == [f"endebias: error: {option.split('=')[0]} needs the {package} package: "
                     f"pip install {package}"]
    assert not out.exists()


def test_tracking_options_parse_on_both_commands():
    from endebias.cli.main import build_parser

    parser = build_parser()
    train = parser.parse_args(["train", "--wandb", "p", "--tensorboard"])
    agent = parser.parse_args(["sweep", "agent", "x"])
    assert (train.wandb, train.tensorboard) == ("p", True)
    assert (agent.wandb, agent.tensorboard) == (None, False)
    assert json.dumps(vars(agent), default=str)  # nothing odd in the namespace


def test_a_resumed_run_keeps_one_tensorboard_file_with_every_epoch(tmp_path):
    pytest.importorskip("tensorboard", reason="needs pip install tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from endebias.training.tracking import run_mirror

    write_epochs(tmp_path, [(1, 0.5), (2, 0.7)])
    killed = run_mirror(tmp_path, config={}, name="r", tensorboard=True)
    killed.on_epoch(2, {"epoch": 2})  # the process dies here: no finish
    write_epochs(tmp_path, [(1, 0.5), (2, 0.7), (3, 0.6)])
    resumed = run_mirror(tmp_path, config={}, name="r", tensorboard=True)
    resumed.on_epoch(3, {"epoch": 3})
    resumed.finish(state="COMPLETE")
    (events,) = (tmp_path / "tensorboard").glob("events.out.tfevents.*")
    accumulator = EventAccumulator(str(events))
    accumulator.Reload()
    assert [(e.step, round(e.value, 6)) for e in accumulator.Scalars("valid_acc")] == [
        (1, 0.5), (2, 0.7), (3, 0.6)]
