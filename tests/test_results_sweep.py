"""`endebias results` on checked-in records: a small study (loaded into SQLite from
tests/golden/sweep_trials.json) and a folder of run folders, against golden outputs.

Set ENDEBIAS_UPDATE_GOLDEN=1 to rewrite the golden files after a deliberate change (and
read the diff before committing it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image

from endebias.cli.main import main
from endebias.report import results

GOLDEN = Path(__file__).resolve().parent / "golden"
STUDY = "golden-sweep"
UPDATE = os.environ.get("ENDEBIAS_UPDATE_GOLDEN") == "1"


@pytest.fixture
def storage(tmp_path, monkeypatch) -> str:
    """The golden trials in a fresh SQLite study; the working folder is tests/golden, so
    the trials' relative run folders resolve."""
    url = f"sqlite:///{tmp_path}/golden.db"
    study = optuna.create_study(study_name=STUDY, storage=url, direction="maximize")
    uniform = optuna.distributions.FloatDistribution(0.0, 1.0)
    for entry in json.loads((GOLDEN / "sweep_trials.json").read_text()):
        study.add_trial(optuna.trial.create_trial(
            state=optuna.trial.TrialState[entry["state"]],
            params=entry["params"], distributions={k: uniform for k in entry["params"]},
            value=entry.get("value"), user_attrs=entry["user_attrs"],
            system_attrs=entry["system_attrs"],
            intermediate_values={int(k): v for k, v in entry["intermediate_values"].items()},
        ))
    monkeypatch.chdir(GOLDEN)
    return url


def run(capsys, *args: str) -> str:
    capsys.readouterr()
    assert main(list(args)) == 0
    return capsys.readouterr().out


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.write_text(text)
    assert text == path.read_text(), f"output differs from {path}"


@pytest.mark.parametrize(("fmt", "golden"), [("text", "results.txt"), ("csv", "results.csv"),
                                             ("json", "results.json"), ("markdown", "results.md")])
def test_results_of_a_study_match_the_golden_output(storage, capsys, fmt, golden):
    out = run(capsys, "results", STUDY, "--storage", storage, "--format", fmt)
    check_golden(golden, out)


def test_results_rows_and_summary(storage, capsys):
    out = run(capsys, "results", STUDY, "--storage", storage)
    lines = out.splitlines()
    assert lines[0].split() == [
        "valid_acc", "biased_test_acc", "unbiased_test_acc", "alpha", "beta", "state", "id"]
    # Sorted by valid accuracy (ties by id). Left out: the killed attempt (3, re-run as 6),
    # the skipped trial (8) and trial 9, which asked for trial 4's config again (one run).
    # Running, pruned and failed trials are shown.
    assert [line.split()[-1] for line in lines[1:8]] == ["7", "1", "6", "4", "0", "2", "5"]
    assert [line.split()[-2] for line in lines[1:8]] == [
        "RUNNING", "COMPLETE", "COMPLETE", "COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
    # The summary: the top 3 *complete* trials (1, 6, 4), mean ± population std in percent.
    biased = np.array([0.9985, 0.9981, 0.9979]) * 100
    unbiased = np.array([0.8921, 0.879, 0.8874]) * 100
    assert lines[8:] == [
        f"------- SUMMARY FOR {STUDY} -------",
        "Top 3 complete runs by valid accuracy (mean ± population std, %):",
        "trials ran: quick preset, 3 epochs",  # not the paper's protocol, said so
        f"biased_test_acc: {biased.mean():.2f} ± {biased.std():.2f}",
        f"unbiased_test_acc: {unbiased.mean():.2f} ± {unbiased.std():.2f}",
        "",
    ]
    assert lines[11:13] == ["biased_test_acc: 99.82 ± 0.02", "unbiased_test_acc: 88.62 ± 0.54"]
    top1 = run(capsys, "results", STUDY, "--storage", storage, "--top", "1").splitlines()
    assert top1[-3:-1] == ["biased_test_acc: 99.85 ± 0.00", "unbiased_test_acc: 89.21 ± 0.00"]


def test_results_from_run_folders_without_a_database(capsys, monkeypatch):
    monkeypatch.chdir(GOLDEN)
    out = run(capsys, "results", "runs_rho0.990")
    check_golden("results_folder.txt", out)
    assert "------- SUMMARY FOR runs_rho0.990 -------" in out
    rows = results.rows_from_runs(GOLDEN / "sweep_runs")
    states = {row.id: row.state for row in rows}
    assert states["trial-0"] == "COMPLETE" and states["trial-5"] == "FAIL"
    assert states["trial-7"] == "RUNNING"


def test_compare_lays_sweeps_out_as_table_1(storage, capsys):
    out = run(capsys, "results", STUDY, "runs_rho0.990", "--storage", storage, "--compare")
    check_golden("compare.md", out)
    lines = out.splitlines()
    assert lines[2] == "| method | 0.999 | 0.997 | 0.995 | 0.990 |"
    assert lines[4] == "| Vanilla (paper) | 10.4 | 33.4 | 72.1 | 89.1 |"
    assert lines[5] == "| HEX (paper) | 10.8 | 16.6 | 19.7 | 24.7 |"  # ReBias's Table 1 rows
    assert lines[8] == "| ReBias (paper) | 22.7 | 64.2 | 76.0 | 88.1 |"
    assert lines[9] == "| EnD (paper) | 52.30 ± 2.39 | 83.70 ± 1.03 | 93.92 ± 0.35 | 96.02 ± 0.08 |"
    assert lines[10].startswith("| end (ours, quick preset, 3 epochs) | - | 88.62 ± 0.54 | - | ")
    as_json = json.loads(run(capsys, "results", STUDY, "runs_rho0.990", "--storage", storage,
                             "--compare", "--format", "json"))
    ours = [r for r in as_json if r["method"].startswith("end (ours")]
    assert [r["rho"] for r in ours] == [0.997, 0.99]


def test_plots_of_a_sweep(storage, capsys, tmp_path):
    run(capsys, "results", STUDY, "--storage", storage, "--plot", str(tmp_path / "figures"))
    names = sorted(p.name for p in (tmp_path / "figures").iterdir())
    assert names == [f"{STUDY}_alpha_beta.png", f"{STUDY}_curves.png",
                     f"{STUDY}_valid_vs_unbiased.png"]
    for name in names:
        with Image.open(tmp_path / "figures" / name) as image:
            assert image.format == "PNG" and image.width > 300 and image.height > 300


def baseline_rows() -> list[results.Row]:
    """A Group DRO sweep's trials: its own options, not EnD's alpha and beta."""
    def row(ident: str, valid: float, step: float, adjust: float) -> results.Row:
        config = {"method": "groupdro", "dataset_options": {"rho": 0.997},
                  "method_options": {"generalization_adjustment": adjust, "step_size": step}}
        return results.Row(id=ident, state="COMPLETE", valid_acc=valid, biased_test_acc=1.0,
                           unbiased_test_acc=valid, config=config)
    return [row("0", 0.1, 0.001, 0.5), row("1", 0.3, 0.5, 2.0), row("2", 0.2, 0.05, 1.0)]


def test_a_baseline_sweep_shows_its_own_options():
    rows = results.sort_rows(baseline_rows())
    text = results.format_study("gdro", rows).splitlines()
    assert text[0].split() == ["valid_acc", "biased_test_acc", "unbiased_test_acc",
                               "generalization_adjustment", "step_size", "state", "id"]
    assert text[1].split() == ["0.3000", "1.0000", "0.3000", "2.0000", "0.5000", "COMPLETE", "1"]
    header, first = results.format_study("gdro", rows, fmt="csv").splitlines()[:2]
    assert header.split(",")[4:7] == ["generalization_adjustment", "step_size", "state"]
    assert first.split(",")[4:6] == ["2.0", "0.5"]
    as_json = json.loads(results.format_study("gdro", rows, fmt="json"))
    assert "alpha" not in as_json["rows"][0] and as_json["rows"][0]["step_size"] == 0.5


def test_plots_of_a_baseline_sweep_use_its_options(tmp_path):
    from endebias.report.plots import plot_sweep

    paths = plot_sweep("gdro", baseline_rows(), tmp_path)
    assert [p.name for p in paths] == ["gdro_generalization_adjustment_step_size.png",
                                       "gdro_valid_vs_unbiased.png", "gdro_curves.png"]
    one_option = [results.Row(id="0", state="COMPLETE", valid_acc=0.5, biased_test_acc=0.6,
                              unbiased_test_acc=0.5, config={"method_options": {"q": 0.7}})]
    assert plot_sweep("lff", one_option, tmp_path)[0].name == "lff_q.png"
    no_option = [results.Row(id="0", state="COMPLETE", valid_acc=0.5, biased_test_acc=0.6,
                             unbiased_test_acc=0.5, config={"method": "vanilla"})]
    assert [p.name for p in plot_sweep("erm", no_option, tmp_path)] == [
        "erm_valid_vs_unbiased.png", "erm_curves.png"]
    for path in tmp_path.iterdir():
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width > 300


def test_unknown_study_and_bad_top_are_one_line_errors(storage, capsys):
    assert main(["results", "nope", "--storage", storage]) == 2
    assert "no sweep 'nope'" in capsys.readouterr().err
    assert main(["results", STUDY, "--storage", storage, "--top", "0"]) == 2
    assert "--top must be >= 1" in capsys.readouterr().err
