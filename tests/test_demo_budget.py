"""The demo's budget: cut from the quick preset by DEMO_BUDGET alone (everything else as the
preset has it), `--full` trains the preset as it stands into its own folder, and `make demo
DEMO_ARGS=--full` passes the option through."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from endebias.cli.demo import DEMO_BUDGET, DEMO_END_OPTIONS, demo_config, describe_budget
from endebias.training.config import make_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("method", ["vanilla", "end"])
def test_the_demo_is_the_quick_preset_cut_by_its_budget(method) -> None:
    options = DEMO_END_OPTIONS if method == "end" else {}
    preset = make_config("quick", dataset="biased-mnist", dataset_options={"rho": 0.997},
                         method=method, method_options=options, seed=42)
    assert demo_config(method, full=True) == preset
    cut = demo_config(method)
    assert cut == make_config("quick", dataset="biased-mnist", dataset_options={"rho": 0.997},
                              method=method, method_options=options, seed=42, **DEMO_BUDGET)
    # Shorter than the preset, and the learning rate still drops before the end.
    assert cut.epochs < preset.epochs and cut.lr_step < cut.epochs
    # Given options win over the budget, with --full too.
    assert demo_config(method, epochs=1, eval_subset=50).epochs == 1
    assert demo_config(method, full=True, train_subset=100).train_subset == 100


def test_the_budget_is_said_in_words() -> None:
    assert describe_budget({"epochs": 3, "lr_step": 2, "eval_subset": 5000}) == (
        "3 epochs, learning rate x0.1 after epoch 2, 5000 images per evaluation split")


def test_make_demo_passes_demo_args() -> None:
    for extra, expected in (([], "endebias demo --out demo-output"),
                            (["DEMO_ARGS=--full"], "endebias demo --out demo-output --full")):
        planned = subprocess.run(["make", "-n", "demo", *extra], cwd=REPO, capture_output=True,
                                 text=True, check=True).stdout
        demo = [line.strip() for line in planned.splitlines() if "endebias demo" in line]
        assert len(demo) == 1 and demo[0].endswith(expected), planned


@pytest.mark.slow
def test_demo_full_trains_the_preset_into_its_own_folder(tmp_path, capsys) -> None:
    from endebias.cli.main import main
    from endebias.training import records
    from mnist_fixtures import real_mnist_dir

    mnist = real_mnist_dir()
    if mnist is None:
        pytest.skip("real MNIST not found (set ENDEBIAS_DATA)")
    tiny = ["--out", str(tmp_path), "--data-dir", str(mnist), "--epochs", "1",
            "--train-subset", "300", "--eval-subset", "100", "--no-progress"]
    assert main(["demo", "--full", *tiny]) == 0
    config = records.read_json(tmp_path / "full" / "end" / records.CONFIG)
    # The quick preset's schedule, not the demo budget's.
    assert config["lr_step"] == make_config("quick").lr_step != DEMO_BUDGET["lr_step"]
    assert (tmp_path / "full" / "table.md").exists() and not (tmp_path / "end").exists()
    assert "quick preset, 1 epoch, 300 training images" in capsys.readouterr().out
