"""Damaged and unreadable records, injected for real: results skip what they cannot read
(and say which file), --resume names a damaged config.json or best.json, a non-finite
loss stops the run with error.json, a resumed run with randomness equals an uninterrupted
one, and a damaged features/labels.npz is named and written again."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from endebias.cli.main import main
from endebias.report.results import rows_from_runs
from endebias.training import records
from endebias.training.config import make_config
from endebias.training.fit import fit
from run_faults_helpers import (
    Stop,
    epochs_on_record,
    one_error_line,
    run_cli,
    stop_after,
    train_args,
    without_timings,
)


def _runs(folder: Path, count: int) -> list[Path]:
    """``count`` finished one-epoch runs (seeds 1..count) in ``folder``."""
    runs = []
    for seed in range(1, count + 1):
        config = make_config("quick", dataset="synthetic", epochs=1, batch_size=64, seed=seed,
                             dataset_options={"train_size": 128, "eval_size": 64},
                             model_options={"channels": [4, 8]})
        fit(config, folder / f"seed{seed}", progress=False)
        runs.append(folder / f"seed{seed}")
    return runs


@pytest.mark.slow
def test_results_skip_damaged_runs_naming_each_file(tmp_path, capsys, caplog):
    runs = _runs(tmp_path / "sweep", 4)
    metrics = runs[0] / records.METRICS
    metrics.write_bytes(metrics.read_bytes()[:-40])  # a truncated last line
    (runs[1] / records.BEST).write_text("[1, 2]\n")  # not an object
    (runs[2] / records.CONFIG).write_bytes(b"\xff\xfe garbage")
    capsys.readouterr()
    assert main(["results", str(tmp_path / "sweep")]) == 0
    shown = capsys.readouterr().out
    assert "seed4" in shown and "seed1" not in shown and "seed3" not in shown
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"skipping a damaged run: {metrics}: line 1 is damaged or truncated",
        f"skipping a damaged run: {runs[1] / records.BEST}: damaged (a JSON list where an "
        "object belongs)",
        f"skipping a damaged run: {runs[2] / records.CONFIG}: damaged (not UTF-8 text)",
    ]
    assert [row.id for row in rows_from_runs(tmp_path / "sweep")] == ["seed4"]


def test_results_fail_only_when_no_run_is_readable(tmp_path, capsys):
    runs = _runs(tmp_path / "sweep", 2)
    for run in runs:
        (run / records.METRICS).write_text('{"epoch": 1, "valid_')
    code, err = run_cli(capsys, ["results", str(tmp_path / "sweep")])
    assert code == 2
    assert "no readable run: all 2 are damaged" in one_error_line(err)


@pytest.mark.slow
def test_an_unreadable_record_is_one_warning_not_a_traceback(tmp_path):
    """Run as an unprivileged user where we are root (root reads any file)."""
    shared = Path(tempfile.mkdtemp(prefix="endebias-shared-"))
    try:
        os.chmod(shared, 0o755)
        runs = _runs(shared / "sweep", 2)
        os.chmod(runs[0] / records.METRICS, 0o000)
        # Python itself may live in root's home: import first, then drop to nobody.
        code = ("import os, sys\n"
                "import endebias.report.results, endebias.sweeps.storage\n"
                "from endebias.cli.main import main\n"
                "if os.geteuid() == 0:\n"
                "    os.setgid(65534); os.setuid(65534)\n"
                f"sys.exit(main(['results', {str(shared / 'sweep')!r}]))\n")
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert f"{runs[0] / records.METRICS}: permission denied" in done.stderr
        assert "Traceback" not in done.stderr and "seed2" in done.stdout
    finally:
        shutil.rmtree(shared)


def test_resume_names_a_damaged_config_or_best_record(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(capsys, train_args(run, epochs=1))[0] == 0
    (run / records.BEST).write_text('"just a string"\n')
    code, err = run_cli(capsys, train_args(run, "--resume", epochs=1))
    assert code == 2 and f"{run / records.BEST}: damaged (a JSON str" in one_error_line(err)
    (run / records.CONFIG).write_text('{"dataset": "synth')
    code, err = run_cli(capsys, train_args(run, "--resume", epochs=1))
    assert code == 2
    assert f"{run / records.CONFIG}: damaged JSON (" in one_error_line(err)
    assert epochs_on_record(run) == [1]


def test_an_overflowing_loss_stops_the_run_with_error_json(tmp_path, capsys):
    run = tmp_path / "run"
    args = train_args(run, "--method", "end", "--alpha", "1e38", "--beta", "1e38", epochs=3)
    code, err = run_cli(capsys, args)
    assert code == 2 and "non-finite" in one_error_line(err)
    error = records.read_json(run / records.ERROR)
    assert error["error"] == "NonFiniteLossError"
    assert not (run / records.DONE).exists()
    for record in records.read_metrics(run):  # no epoch recorded with a null loss
        assert record["train_loss"] is not None


def test_a_resumed_run_with_dropout_equals_an_uninterrupted_one(tmp_path):
    config = make_config("quick", dataset="synthetic", model="mlp",
                         model_options={"hidden": [32, 16], "dropout": 0.5}, epochs=4,
                         batch_size=32, seed=11, dataset_options={"train_size": 128})
    fit(config, tmp_path / "whole", progress=False)

    with pytest.raises(Stop):
        fit(config, tmp_path / "resumed", progress=False, on_epoch=stop_after(2))
    # Draw from the global generator in between, as other code in the process may.
    import torch

    torch.rand(1000)
    fit(config, tmp_path / "resumed", progress=False, resume=True)
    whole = without_timings(records.read_metrics(tmp_path / "whole"))
    assert without_timings(records.read_metrics(tmp_path / "resumed")) == whole
    # Dropout makes the epochs differ from a run without the restored generator state.
    assert len({json.dumps(r["train_loss"]) for r in whole}) == 4


@pytest.mark.slow
def test_a_damaged_labels_file_of_a_finished_run_is_written_again(tmp_path, capsys, caplog):
    """A finished run has no next epoch to rewrite it (``--resume`` returns at once):
    ``plot features`` writes it again from the run's config and data."""
    run = tmp_path / "run"
    config = make_config("quick", dataset="synthetic", epochs=2, batch_size=64, save_features=16,
                         dataset_options={"train_size": 128, "eval_size": 64},
                         model_options={"channels": [4, 8]})
    fit(config, run, progress=False)
    labels = run / "features" / "labels.npz"
    with np.load(labels) as saved:
        original = {key: saved[key].copy() for key in ("targets", "biases")}
    labels.write_bytes(labels.read_bytes()[:100])
    code, err = run_cli(capsys, ["plot", "features", str(run), "--out", str(tmp_path / "pics")])
    assert code == 0, err
    assert f"{labels}: damaged (BadZipFile); writing it again from the run's config" in caplog.text
    with np.load(labels) as saved:
        assert all(np.array_equal(saved[key], original[key]) for key in original)
    assert (tmp_path / "pics" / "features.png").stat().st_size > 0
