"""Run folders that must prove whose they are: a run whose config.json was deleted, a
checkpoint copied in from another run, a start that fails late, a folder another live
process is still starting. Injected for real; nothing of the run is ever overwritten."""

from __future__ import annotations

import shutil

import pytest

from endebias.cli.main import build_parser, config_from_args
from endebias.training import records
from endebias.training.fit import RunAlreadyExistsError, fit
from run_faults_helpers import (
    Stop,
    epochs_on_record,
    hold_lock,
    one_error_line,
    run_cli,
    stop_after,
    train_args,
    without_timings,
)

RECORDS = (records.CONFIG, records.METRICS, records.BEST, records.CHECKPOINT,
           records.PREVIOUS_CHECKPOINT, records.DONE)


def config_of(args: list[str]):
    return config_from_args(build_parser().parse_args(args))


def snapshot(run) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in run.iterdir() if p.is_file() and p.name != ".lock"}


@pytest.mark.parametrize("finished", [True, False], ids=["finished", "half-finished"])
def test_a_run_without_its_config_is_refused_never_retrained(tmp_path, capsys, finished):
    run = tmp_path / "run"
    args = train_args(run, epochs=3)
    if finished:
        assert run_cli(capsys, args)[0] == 0
    else:
        with pytest.raises(Stop):
            fit(config_of(args), run, progress=False, on_epoch=stop_after(2))
    (run / records.CONFIG).unlink()
    before = snapshot(run)
    for extra in ([], ["--resume"]):
        code, err = run_cli(capsys, args + extra)
        line = one_error_line(err)
        assert code == 2 and f"{run} holds run records (metrics.jsonl, best.json" in line
        assert "but no config.json" in line and "nothing to resume" not in line
        assert snapshot(run) == before  # nothing overwritten
    with pytest.raises(RunAlreadyExistsError, match="but no config.json"):
        fit(config_of(args), run, progress=False)  # the library refuses too
    assert snapshot(run) == before


def test_a_checkpoint_of_another_run_is_never_adopted(tmp_path, capsys, caplog):
    mine, other, whole = tmp_path / "mine", tmp_path / "other", tmp_path / "whole"
    args = train_args(mine, "--seed", "5", epochs=3)
    assert run_cli(capsys, train_args(other, "--seed", "6", epochs=3))[0] == 0
    assert run_cli(capsys, train_args(whole, "--seed", "5", epochs=3))[0] == 0
    with pytest.raises(Stop):
        fit(config_of(args), mine, progress=False, on_epoch=stop_after(2))
    # The latest checkpoint replaced by another run's (another seed, finished 3 epochs):
    # --resume falls back to this run's previous one and ends as the uninterrupted run.
    shutil.copyfile(other / records.CHECKPOINT, mine / records.CHECKPOINT)
    code, err = run_cli(capsys, args + ["--resume"])
    assert code == 0, err
    assert f"{mine / records.CHECKPOINT}: belongs to another run (config hash" in caplog.text
    assert without_timings(records.read_metrics(mine)) == without_timings(
        records.read_metrics(whole))
    # Both checkpoints another run's: refused in one line, nothing overwritten.
    again_args = train_args(tmp_path / "again", "--seed", "5", epochs=3)
    with pytest.raises(Stop):
        fit(config_of(again_args), tmp_path / "again", progress=False, on_epoch=stop_after(2))
    for name in (records.CHECKPOINT, records.PREVIOUS_CHECKPOINT):
        shutil.copyfile(other / records.CHECKPOINT, tmp_path / "again" / name)
    before = snapshot(tmp_path / "again")
    code, err = run_cli(capsys, again_args + ["--resume"])
    line = one_error_line(err)
    assert code == 2 and "belongs to another run" in line and "--resume refuses" in line
    assert snapshot(tmp_path / "again") == before
    assert not (tmp_path / "again" / records.DONE).exists()


def test_a_checkpoint_with_more_epochs_than_the_records_does_not_finish_the_run(
        tmp_path, capsys):
    """The same config trained elsewhere to the end: its checkpoint, copied into a run
    with one epoch on record, would mark the run done with the other's result."""
    mine, elsewhere = tmp_path / "mine", tmp_path / "elsewhere"
    args = train_args(mine, epochs=3)
    assert run_cli(capsys, train_args(elsewhere, epochs=3))[0] == 0
    with pytest.raises(Stop):
        fit(config_of(args), mine, progress=False, on_epoch=stop_after(1))
    shutil.copyfile(elsewhere / records.CHECKPOINT, mine / records.CHECKPOINT)
    before = snapshot(mine)
    code, err = run_cli(capsys, args + ["--resume"])
    line = one_error_line(err)
    assert code == 2 and "holds 3 epochs, but the run's records only 1" in line
    assert snapshot(mine) == before and epochs_on_record(mine) == [1]


def test_a_start_that_fails_in_its_first_step_leaves_nothing_behind(tmp_path, capsys):
    run = tmp_path / "run"
    bad = train_args(run, "--method", "end", "--method-option", "layer=nosuch.layer", epochs=1)
    code, err = run_cli(capsys, bad)
    assert code == 2 and "has no layer named 'nosuch.layer'" in one_error_line(err)
    assert not run.exists()
    good = train_args(run, "--method", "end", "--method-option", "layer=pattern_norm", epochs=1)
    assert run_cli(capsys, good)[0] == 0  # the corrected command is not blocked


def test_resume_on_a_folder_another_process_is_starting_names_that_process(tmp_path, capsys):
    run = tmp_path / "run"
    holder = hold_lock(run)  # a live run before its first checkpoint: only .lock there
    try:
        for extra in (["--resume"], []):
            code, err = run_cli(capsys, train_args(run, *extra, epochs=1))
            line = one_error_line(err)
            assert code == 2 and line == f"endebias: error: {run} is in use by process {holder.pid}"
        assert sorted(p.name for p in run.iterdir()) == [".lock"]
    finally:
        holder.kill()
        holder.wait()


def test_stage_1_of_pseudo_labels_refuses_another_runs_checkpoint(tmp_path):
    from endebias.training.checkpoint import CheckpointError
    from endebias.training.config import make_config
    from endebias.training.pseudo_label_stages import derive_labels, stage1_config

    config = make_config("quick", dataset="synthetic", epochs=1, batch_size=32,
                         dataset_options={"train_size": 128, "eval_size": 64},
                         bias_labels="pseudo", pseudo_options={"stage1_epochs": 1})
    first = stage1_config(config)
    fit(first, tmp_path / "stage1", progress=False)
    derive_labels(config, tmp_path / "stage1", data_dir=None)  # its own: fine
    from dataclasses import replace

    fit(replace(first, seed=77), tmp_path / "other", progress=False)
    for name in (records.CHECKPOINT, records.PREVIOUS_CHECKPOINT):
        shutil.copyfile(tmp_path / "other" / records.CHECKPOINT, tmp_path / "stage1" / name)
    with pytest.raises(CheckpointError, match="belongs to another run"):
        derive_labels(config, tmp_path / "stage1", data_dir=None)
