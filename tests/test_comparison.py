"""`endebias results --by-method`: methods side by side over seeds, from run folders
written here with known numbers and checked against statistics computed with numpy."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest

from endebias.cli.main import main
from endebias.report import comparison
from endebias.report.results import Row
from endebias.training import records


def write_run(folder, name, *, method, rho, seed, unbiased, seconds=(10.0, 20.0),
              options=None, done=True, preset="quick", fast_path=None):
    run_dir = folder / name
    run_dir.mkdir(parents=True)
    config = {"dataset": "biased-mnist", "dataset_options": {"rho": rho}, "method": method,
              "method_options": options or {}, "preset": preset, "seed": seed}
    best = {"epoch": 2, "valid_acc": unbiased, "biased_test_acc": 0.99,
            "unbiased_test_acc": unbiased, "unbiased_test_acc_conflicting": unbiased - 0.05}
    if fast_path is not None:
        best["fast_path"] = fast_path
    records.atomic_write_json(run_dir / records.CONFIG, config)
    records.atomic_write_json(run_dir / records.BEST, best)
    lines = [records.dumps({"epoch": i + 1, "train_seconds": s}) for i, s in enumerate(seconds)]
    (run_dir / records.METRICS).write_text("\n".join(lines) + "\n")
    if done:
        (run_dir / records.DONE).write_text("")
    return run_dir


@pytest.fixture
def table_runs(tmp_path):
    folder = tmp_path / "quick-table"
    end = {"alpha": 1.0, "beta": 1.0}
    for seed, value in zip((1, 2, 3), (0.60, 0.64, 0.71), strict=True):
        write_run(folder, f"end-{seed}", method="end", rho=0.997, seed=seed, unbiased=value,
                  options=end, seconds=(50.0, 52.0 + seed))
    for seed, value in zip((1, 2), (0.10, 0.12), strict=True):
        write_run(folder, f"vanilla-{seed}", method="vanilla", rho=0.997, seed=seed,
                  unbiased=value)
    write_run(folder, "groupdro-1", method="groupdro", rho=0.99, seed=1, unbiased=0.5)
    write_run(folder, "lff-1", method="lff", rho=0.997, seed=1, unbiased=0.3, done=False)
    return folder


def test_bf16_and_float32_seeds_of_one_config_are_separate_rows(tmp_path):
    """Both configs say amp "auto"; the records say what it became on each machine."""
    folder = tmp_path / "runs"
    for seed, fast_path in ((1, "amp"), (2, "amp"), (3, "none"), (4, None)):
        write_run(folder, f"end-{seed}", method="end", rho=0.997, seed=seed,
                  unbiased=0.5 + seed / 100, options={"alpha": 1.0}, fast_path=fast_path)
    write_run(folder, "end-5", method="end", rho=0.997, seed=5, unbiased=0.6,
              options={"alpha": 1.0}, fast_path="amp, compile, channels_last")
    cells, _ = comparison.group_runs(comparison.find_runs([folder]))
    assert sorted((c.label, tuple(c.seeds)) for c in cells) == [
        ("end alpha=1", (3, 4)), ("end alpha=1 [bf16]", (1, 2, 5))]


def test_cells_hold_the_seeds_of_one_setting(table_runs):
    cells, unfinished = comparison.group_runs(comparison.find_runs([table_runs]))
    assert unfinished == 1  # the lff run has no done marker
    assert [(c.label, c.rho, c.seeds) for c in cells] == [
        ("vanilla [EnD model]", 0.997, [1, 2]), ("end alpha=1 beta=1", 0.997, [1, 2, 3]),
        ("groupdro", 0.99, [1]),
    ]
    end = cells[1]
    values = 100 * np.array([0.60, 0.64, 0.71])
    mean, std = end.stat("unbiased_test_acc")
    assert mean == pytest.approx(values.mean()) and std == pytest.approx(values.std())
    assert end.stat("unbiased_test_acc_conflicting")[0] == pytest.approx(values.mean() - 5)
    per_run = [np.mean([50.0, 52.0 + seed]) for seed in (1, 2, 3)]
    assert end.seconds_per_epoch()[0] == pytest.approx(np.mean(per_run))


def test_a_different_setting_is_a_different_cell(tmp_path):
    folder = tmp_path / "runs"
    write_run(folder, "a", method="end", rho=0.997, seed=1, unbiased=0.6,
              options={"alpha": 1.0, "beta": 1.0})
    write_run(folder, "b", method="end", rho=0.997, seed=1, unbiased=0.7,
              options={"alpha": 2.0, "beta": 1.0})
    write_run(folder, "c", method="end", rho=0.997, seed=2, unbiased=0.7,
              options={"alpha": 1.0, "beta": 1.0}, preset="paper")
    cells, _ = comparison.group_runs(comparison.find_runs([folder]))
    assert len(cells) == 3 and all(len(c.runs) == 1 for c in cells)


def test_markdown_table_shows_ours_and_the_paper_apart(table_runs, capsys):
    assert main(["results", "--by-method", str(table_runs)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[2] == "| method | 0.997 | 0.990 |"
    assert lines[4] == "| Vanilla (published in the paper) | 33.4 | 89.1 |"
    # Every row of the paper's Table 1, copied.
    assert lines[5] == "| HEX (published in the paper) | 16.6 | 24.7 |"
    assert lines[6] == "| LearnedMixin (published in the paper) | 50.2 | 88.3 |"
    assert lines[7] == "| RUBi (published in the paper) | 43.0 | 93.6 |"
    assert lines[8] == "| ReBias (published in the paper) | 64.2 | 88.1 |"
    assert lines[9] == "| EnD (published in the paper) | 83.70 ± 1.03 | 96.02 ± 0.08 |"
    values = 100 * np.array([0.60, 0.64, 0.71])
    expected = f"{values.mean():.2f} ± {values.std():.2f} (n=3)"
    assert lines[11] == f"| end alpha=1 beta=1 (ours) | {expected} | - |"
    assert "| 0.990 | groupdro | 1 | 99.00 ± 0.00 | 50.00 ± 0.00 | 45.00 ± 0.00 | 15 | - |" in out
    assert "1 unfinished or failed run(s) left out." in out


def test_csv_and_json_carry_the_same_numbers(table_runs, capsys):
    assert main(["results", "--by-method", str(table_runs), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    vanilla = next(r for r in rows if r["method"] == "vanilla [EnD model]")
    assert vanilla["seeds"] == [1, 2] and vanilla["unbiased_mean"] == pytest.approx(11.0)
    assert vanilla["unbiased_std"] == pytest.approx(1.0) and vanilla["paper_unbiased"] == 33.4
    assert main(["results", "--by-method", str(table_runs), "--format", "csv"]) == 0
    parsed = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["method"] for r in parsed] == [r["method"] for r in rows]
    assert parsed[1]["seeds"] == "1 2 3"


def test_bad_inputs_are_one_line_errors(tmp_path, table_runs, capsys):
    assert main(["results", "--by-method", str(tmp_path / "missing")]) == 2
    assert "missing: not a folder of run folders" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["results", "--by-method", str(empty)]) == 2
    assert "no finished runs to compare" in capsys.readouterr().err
    assert main(["results", "--by-method", str(table_runs), "--format", "text"]) == 2
    assert "unknown format 'text'" in capsys.readouterr().err


def _row(ident, *, valid, method="groupdro", state="COMPLETE", step=0.01):
    config = {"method": method, "method_options": {"step_size": step}, "seed": 42}
    return Row(id=ident, state=state, valid_acc=valid, biased_test_acc=None,
               unbiased_test_acc=None, config=config)


def test_best_setting_takes_the_complete_trial_with_the_best_validation_accuracy():
    rows = [_row("0", valid=0.40, step=0.01), _row("1", valid=0.70, step=0.3),
            _row("2", valid=0.90, step=0.9, state="RUNNING"), _row("3", valid=None, step=2.0)]
    assert comparison.best_setting(rows, method="groupdro") == {"step_size": 0.3}


def test_best_setting_rejects_an_empty_sweep_and_the_wrong_method():
    with pytest.raises(ValueError, match="no complete trial"):
        comparison.best_setting([_row("0", valid=0.5, state="FAIL")])
    with pytest.raises(ValueError, match="'lff', not 'groupdro'"):
        comparison.best_setting([_row("0", valid=0.5, method="lff")], method="groupdro")


def test_vanilla_rows_say_which_simple_conv_they_trained(tmp_path):
    """Table 1's vanilla is ReBias's model (classifier on the raw pooled features); the
    official EnD code's vanilla normalises them. The two are separate, labelled rows."""
    folder = tmp_path / "vanillas"
    write_run(folder, "official", method="vanilla", rho=0.997, seed=1, unbiased=0.12)
    rebias = write_run(folder, "rebias", method="vanilla", rho=0.997, seed=1, unbiased=0.30)
    config = records.read_json(rebias / records.CONFIG)
    config["model_options"] = {"normalize_features": False}
    records.atomic_write_json(rebias / records.CONFIG, config)
    tabular = write_run(folder, "mlp", method="vanilla", rho=0.997, seed=2, unbiased=0.5)
    config = records.read_json(tabular / records.CONFIG)
    config["model"] = "mlp"
    records.atomic_write_json(tabular / records.CONFIG, config)
    cells, _ = comparison.group_runs(comparison.find_runs([folder]))
    assert sorted(c.label for c in cells) == [
        "vanilla", "vanilla [EnD model]", "vanilla [ReBias model]",
    ]
    assert comparison.model_variant({"method": "end"}) == "EnD model"


def _retarget(run_dir, dataset, **dataset_options):
    """Make a written run another benchmark's: no rho, the given dataset options."""
    config = records.read_json(run_dir / records.CONFIG)
    config["dataset"], config["dataset_options"] = dataset, dataset_options
    records.atomic_write_json(run_dir / records.CONFIG, config)


def test_runs_without_rho_get_one_column_and_no_paper_rows(tmp_path, capsys):
    folder = tmp_path / "synthetic"
    for method, seed, value in (("vanilla", 1, 0.5), ("vanilla", 2, 0.7), ("end", 1, 0.9)):
        _retarget(write_run(folder, f"{method}-{seed}", method=method, rho=None, seed=seed,
                            unbiased=value), "synthetic")
    assert main(["results", "--by-method", str(folder)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[2] == "| method | synthetic |"
    assert "published in the paper" not in out and "paper" not in out
    assert lines[4] == "| vanilla [EnD model] (ours) | 60.00 ± 10.00 (n=2) |"
    assert lines[5] == "| end (ours) | 90.00 ± 0.00 (n=1) |"
    assert "| dataset | method | seeds | biased | unbiased | conflicting | s / epoch |" in out
    assert "| synthetic | end | 1 | 99.00 ± 0.00 | 90.00 ± 0.00 | 85.00 ± 0.00 | 15 |" in out


def test_columns_follow_whatever_setting_differs(tmp_path, capsys):
    folder = tmp_path / "pima"
    for setting, method, value in (("imbalance", "vanilla", 0.72), ("imbalance", "end", 0.74),
                                   ("association", "vanilla", 0.40), ("association", "end", 0.52)):
        run = write_run(folder, f"{setting}-{method}", method=method, rho=None, seed=0,
                        unbiased=value)
        _retarget(run, "tabular", path="pima.csv", setting=setting)
    cells, _ = comparison.group_runs(comparison.find_runs([folder]))
    assert comparison.column_keys(cells) == ["dataset_options.setting"]
    assert main(["results", "--by-method", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == "| method | setting=association | setting=imbalance |"
    assert lines[4] == "| vanilla [EnD model] (ours) | 40.00 ± 0.00 (n=1) | 72.00 ± 0.00 (n=1) |"
    assert lines[5] == "| end (ours) | 52.00 ± 0.00 (n=1) | 74.00 ± 0.00 (n=1) |"
    assert main(["results", "--by-method", str(folder), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {(r["method"], r["setting"], r["paper_unbiased"]) for r in rows} == {
        ("vanilla [EnD model]", "setting=association", None), ("end", "setting=association", None),
        ("vanilla [EnD model]", "setting=imbalance", None), ("end", "setting=imbalance", None),
    }


def test_paper_rows_only_when_every_run_is_biased_mnist(tmp_path, capsys):
    folder = tmp_path / "mixed"
    write_run(folder, "bm", method="end", rho=0.997, seed=1, unbiased=0.8)
    _retarget(write_run(folder, "syn", method="end", rho=None, seed=1, unbiased=0.9), "synthetic")
    assert main(["results", "--by-method", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "published in the paper" not in out
    # The synthetic run left its rho at the dataset's default (0.99): shown as such.
    assert out.splitlines()[2] == (
        "| method | dataset=biased-mnist, rho=0.997 | dataset=synthetic, rho=0.99 |"
    )
    # The long table still gives the paper's figure beside the Biased MNIST row.
    assert "| dataset=biased-mnist, rho=0.997 | end | 1 |" in out and "83.70 ± 1.03" in out


def test_table_1_methods_sit_beside_their_published_rows_and_say_they_need_no_bias_labels(
    tmp_path, capsys
):
    folder = tmp_path / "table1"
    for method, value in (("rubi", 0.40), ("learned-mixin", 0.45), ("rebias", 0.55),
                          ("vanilla", 0.10), ("end", 0.65)):
        write_run(folder, method, method=method, rho=0.997, seed=1, unbiased=value)
    assert main(["results", "--by-method", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    ours = [line for line in lines if "(ours" in line]
    # Ours in the paper's order, under its six published rows.
    assert [line.split(" (")[0] for line in ours] == [
        "| vanilla [EnD model]", "| learned-mixin", "| rubi", "| rebias", "| end"]
    assert ours[1] == "| learned-mixin (ours, no bias labels) | 45.00 ± 0.00 (n=1) |"
    assert ours[2].startswith("| rubi (ours, no bias labels) |")
    assert ours[4].startswith("| end (ours) |")
    assert ours[0].endswith("(ours) | 10.00 ± 0.00 (n=1) |")
    assert ("| biased-mnist | rebias | 1 | 99.00 ± 0.00 | 55.00 ± 0.00 | 50.00 ± 0.00 | 15 "
            "| 64.2 |") in lines


def test_the_no_bias_label_methods_are_those_of_the_registry():
    from endebias.methods import method_class, method_names

    expected = {n for n in method_names() if not method_class(n).uses_bias_labels} - {"vanilla"}
    assert expected == comparison.WITHOUT_BIAS_LABELS


def test_fairkl_rows_get_fairkls_published_numbers_beside_them(tmp_path, capsys):
    folder = tmp_path / "successors"
    write_run(folder, "fairkl", method="fairkl", rho=0.997, seed=1, unbiased=0.5)
    write_run(folder, "end", method="end", rho=0.997, seed=1, unbiased=0.6)
    write_run(folder, "fairkl-99", method="fairkl", rho=0.99, seed=1, unbiased=0.8)
    assert main(["results", "--by-method", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "| FairKL (published, Barbano et al. 2023) | 94.08 | 97.86 |" in out.splitlines()
    assert "| 0.997 | fairkl | 1 | 99.00 ± 0.00 | 50.00 ± 0.00 | 45.00 ± 0.00 | 15 | 94.08 |" in out
    # Without a FairKL run the row is not shown.
    (folder / "fairkl" / records.DONE).unlink()
    (folder / "fairkl-99" / records.DONE).unlink()
    assert main(["results", "--by-method", str(folder)]) == 0
    assert "FairKL" not in capsys.readouterr().out
