"""`results` and `report` on run folders as faults leave them: a run killed in its first
epoch, a copied run folder, re-queued trials, a sweep moved elsewhere. Each run is shown,
flagged or counted once, with the reason; nothing vanishes without a word."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import optuna

from endebias.cli.main import main
from endebias.report import results

GOLDEN = Path(__file__).resolve().parent / "golden"


def cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_a_run_killed_in_its_first_epoch_is_listed_and_named(tmp_path, caplog):
    folder = tmp_path / "sweep"
    shutil.copytree(GOLDEN / "sweep_runs", folder)
    killed = folder / "trial-9"
    killed.mkdir()
    shutil.copyfile(folder / "trial-0" / "config.json", killed / "config.json")
    config = json.loads((killed / "config.json").read_text())
    config["seed"] = 12345  # its own config: not a copy of trial-0
    (killed / "config.json").write_text(json.dumps(config))
    (killed / "metrics.jsonl").write_text("")  # killed before its first epoch ended
    with caplog.at_level(logging.WARNING):
        rows = results.rows_from_runs(folder)
    row = next(r for r in rows if r.id == "trial-9")
    assert row.state == "NO_EPOCH" and row.valid_acc is None and rows[-1] is row
    assert f"{killed}: no finished epoch (killed in its first epoch" in caplog.text
    # The other rows are as before: the killed run only adds its own.
    assert [r.id for r in rows[:-1]] == [r.id for r in results.rows_from_runs(
        GOLDEN / "sweep_runs")]


def test_copies_of_one_run_count_once_in_by_method(tmp_path, capsys, caplog):
    single = tmp_path / "single"
    shutil.copytree(GOLDEN / "runs_rho0.990", single)
    copied = tmp_path / "copied"
    shutil.copytree(single, copied)
    first = sorted(copied.iterdir())[0]
    for name in ("copy-a", "copy-b"):
        shutil.copytree(first, copied / name)
    code, expected, _ = cli(capsys, "results", "--by-method", str(single), "--format", "json")
    assert code == 0
    with caplog.at_level(logging.WARNING):
        code, out, _ = cli(capsys, "results", "--by-method", str(copied), "--format", "json")
    assert code == 0 and json.loads(out) == json.loads(expected)
    assert caplog.text.count(f"is a copy of {first} (the same config") == 2


def test_requeued_and_resultless_trials_are_named(tmp_path, caplog, monkeypatch):
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s1", storage=url, direction="maximize")
    for state, attrs, system in [
        ("FAIL", {"valid_acc": 0.4, "run_dir": "sweep_runs/trial-0"}, {}),
        ("COMPLETE", {"valid_acc": 0.5, "run_dir": "sweep_runs/trial-0"},
         {"failed_trial": 0, "retry_history": [0]}),
        ("FAIL", {}, {}),  # killed in its first epoch, then failed as stale
    ]:
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState[state], value=attrs.get("valid_acc") if
            state == "COMPLETE" else None, user_attrs=attrs, system_attrs=system))
    study.add_trial(optuna.trial.create_trial(  # re-queued; its retry (4) is waiting
        state=optuna.trial.TrialState.FAIL, user_attrs={"valid_acc": 0.3}))
    study.enqueue_trial({}, user_attrs={"requeued_from": 3})
    with caplog.at_level(logging.INFO):
        rows = results.rows_from_study(study)
    assert [r.id for r in rows] == ["1"]
    assert "trial 0 re-queued (agent killed or interrupted): each counted once" in caplog.text
    assert "trial 2 (fail) ended without a finished epoch" in caplog.text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("trial 3 re-queued (agent killed or interrupted) and no retry has a result yet"
               in w for w in warnings)
    assert not any("trial 0" in w for w in warnings)


def test_report_reads_a_moved_sweep_from_runs(tmp_path, capsys):
    """The database stores absolute run folders; after a move, --runs finds them."""
    original = tmp_path / "original"
    shutil.copytree(GOLDEN / "sweep_runs", original / "s1")
    url = f"sqlite:///{tmp_path}/s.db"
    study = optuna.create_study(study_name="s1", storage=url, direction="maximize")
    for name, value in [("trial-0", 0.9), ("trial-1", 0.8)]:
        best = json.loads((original / "s1" / name / "best.json").read_text())
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState.COMPLETE, value=value,
            user_attrs={"valid_acc": value, "biased_test_acc": best.get("biased_test_acc"),
                        "unbiased_test_acc": best.get("unbiased_test_acc"),
                        "run_dir": str(original / "s1" / name)}))
    moved = tmp_path / "moved"
    shutil.move(original, moved)
    page = tmp_path / "page.html"
    code, _, err = cli(capsys, "report", "s1", "--storage", url, "--runs", str(moved),
                       "--out", str(page))
    assert code == 0, err
    text = page.read_text()
    assert str(moved / "s1" / "trial-0") in text and "is not here" not in text
    code, out, _ = cli(capsys, "results", "s1", "--storage", url, "--runs", str(moved),
                       "--format", "json")
    assert {row["run_dir"] for row in json.loads(out)["rows"]} == {
        str(moved / "s1" / "trial-0"), str(moved / "s1" / "trial-1")}


def test_a_run_without_its_config_is_named_not_skipped_silently(tmp_path, caplog):
    folder = tmp_path / "sweep"
    shutil.copytree(GOLDEN / "sweep_runs", folder)
    (folder / "trial-0" / "config.json").unlink()
    with caplog.at_level(logging.WARNING):
        rows = results.rows_from_runs(folder)
    assert "trial-0" not in [r.id for r in rows]
    assert (f"skipping {folder / 'trial-0'}: it holds run records (metrics.jsonl, best.json, "
            "done) but no config.json") in caplog.text
