"""Reports never overstate: a run is shown as the paper's protocol only when it is, every
difference is said beside the number, the summary says how many trials it averages, and a
group matrix's axes are named after the run's dataset."""

from __future__ import annotations

import pytest

from endebias.report import results
from endebias.report.protocol import axis_labels, differences_from_paper, protocol_words
from endebias.report.results import Row
from endebias.training.config import make_config


def _config(preset="paper", **overrides) -> dict:
    return make_config(preset, dataset="biased-mnist", dataset_options={"rho": 0.997},
                       method="end", **overrides).to_dict()


@pytest.mark.parametrize("preset,overrides,expected", [
    ("paper", {}, []),
    ("paper", {"method_options": {"alpha": 0.5}}, []),  # searched weights are the protocol's
    ("paper", {"epochs": 1, "train_subset": 2000, "eval_subset": 500},
     ["1 epoch", "2000 training images", "500 images per evaluation split"]),
    ("paper", {"epochs": 24, "model_options": {"kernel_size": 3}}, ["24 epochs", "kernel_size 3"]),
    ("paper", {"model": "resnet18", "lr": 0.01}, ["model resnet18", "lr 0.01"]),
    ("quick", {}, ["quick preset"]),
    ("quick", {"epochs": 3, "lr_step": 2}, ["quick preset", "3 epochs", "lr_step 2"]),
    (None, {}, ["no preset"]),
])
def test_every_difference_from_the_paper_is_named(preset, overrides, expected) -> None:
    config = _config(preset, **overrides)
    assert differences_from_paper(config) == expected
    assert protocol_words(config) == (", ".join(expected) or "paper protocol")


def _rows(config: dict, states: list[str]) -> list[Row]:
    return [Row(id=str(i), state=state, valid_acc=0.5 + i / 100, biased_test_acc=0.9,
                unbiased_test_acc=0.4 + i / 100, config=config)
            for i, state in enumerate(states)]


def test_a_cut_paper_run_is_never_labelled_the_paper_preset() -> None:
    cut = _config("paper", epochs=1, train_subset=2000, eval_subset=500)
    table = results.compare_table({"short": _rows(cut, ["COMPLETE"] * 3)}, top=3)
    (ours,) = [line for line in table.splitlines() if "(ours" in line]
    assert ours.startswith(
        "| end (ours, 1 epoch, 2000 training images, 500 images per evaluation split) |")
    assert "paper" not in ours
    exact = results.compare_table({"exact": _rows(_config("paper"), ["COMPLETE"] * 3)})
    assert "| end (ours, paper protocol) |" in exact


def test_the_summary_says_when_fewer_than_top_trials_are_complete() -> None:
    config = _config("quick")
    lines = results.summary_lines(_rows(config, ["COMPLETE", "RUNNING", "COMPLETE"]), top=3)
    assert "only 2 complete trials: the summary is over 2, not the top 3" in lines
    assert "trials ran: quick preset" in lines
    one = results.summary_lines(_rows(config, ["COMPLETE", "FAIL"]), top=3)
    assert "only 1 complete trial: the summary is over 1, not the top 3" in one
    full = results.summary_lines(_rows(config, ["COMPLETE"] * 3), top=3)
    assert not any(line.startswith("only") for line in full)
    # The text output carries the same lines, in %.
    text = results.format_study("s", _rows(config, ["COMPLETE", "RUNNING"]), top=3)
    assert "only 1 complete trial" in text and "unbiased_test_acc: 40.00 ± 0.00" in text


@pytest.mark.parametrize("config,expected", [
    ({"dataset": "biased-mnist"}, ("target (digit)", "bias (colour)")),
    ({"dataset": "colored-mnist"}, ("target (digit)", "bias (colour)")),
    ({"dataset": "synthetic"}, ("target", "bias")),
    ({"dataset": "tabular", "dataset_options": {"target": "type", "bias": "age"}},
     ("target (type)", "bias (age)")),
    ({"dataset": "celeba", "dataset_options": {"target": "Blond_Hair"}},
     ("target (Blond_Hair)", "bias (gender)")),
    ({}, ("target", "bias")),
])
def test_axis_labels_come_from_the_dataset(config, expected) -> None:
    assert axis_labels(config) == expected


# ------------------------------------------- a run is what it trains, in reports ---


def test_a_config_with_a_presets_training_options_is_that_preset():
    from endebias.report.protocol import effective_preset

    spelt = _config("quick", epochs=24, lr_step=20, method_options={"alpha": 1.0, "beta": 1.0})
    assert spelt["preset"] == "quick" and effective_preset(spelt) == "cpu"
    assert effective_preset(_config("cpu")) == "cpu"
    assert effective_preset(_config("quick")) == "quick"
    assert effective_preset(_config("quick", epochs=23)) == "quick"  # no preset: as recorded
    assert effective_preset(_config("paper")) == "paper"
    other_model = make_config("quick", dataset="synthetic", model="mlp").to_dict()
    assert effective_preset(other_model) == "quick"
    assert differences_from_paper(spelt)[0] == "cpu preset"


def test_default_rhos_are_the_dataset_builders():
    from endebias.data import dataset_builder, dataset_names
    from endebias.option_types import builder_defaults
    from endebias.report.protocol import DEFAULT_RHO

    with_rho = {name: builder_defaults(dataset_builder(name))["rho"] for name in dataset_names()
                if "rho" in builder_defaults(dataset_builder(name))}
    assert with_rho == DEFAULT_RHO


def test_runs_that_train_the_same_are_one_cell_however_their_config_spells_it(tmp_path):
    from endebias.report.comparison import find_runs, group_runs
    from endebias.training import records

    spellings = [_config("cpu", seed=1),
                 _config("quick", epochs=24, lr_step=20, seed=2),
                 {**_config("cpu", seed=3), "dataset_options": {}}]  # rho at its default
    for index, config in enumerate(spellings):
        run_dir = tmp_path / f"run{index}"
        run_dir.mkdir()
        records.atomic_write_json(run_dir / records.CONFIG, config)
        records.atomic_write_json(run_dir / records.BEST, {
            "epoch": 1, "valid_acc": 0.5, "biased_test_acc": 0.9, "unbiased_test_acc": 0.5})
        (run_dir / records.METRICS).write_text(records.dumps({"epoch": 1}) + "\n")
        (run_dir / records.DONE).write_text("")
    cells, unfinished = group_runs(find_runs([tmp_path]))
    assert unfinished == 0 and len(cells) == 1
    assert sorted(run.config["seed"] for run in cells[0].runs) == [1, 2, 3]
    assert cells[0].rho == 0.997
