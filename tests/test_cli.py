import os
from pathlib import Path

import pytest

from endebias.cli.main import main
from endebias.option_types import parse_assignment
from endebias.training import records

MNIST = Path(
    os.environ.get("ENDEBIAS_DATA", Path(__file__).resolve().parents[2] / "shared/data/mnist")
)
needs_mnist = pytest.mark.skipif(
    not (MNIST / "train-images-idx3-ubyte.gz").exists()
    and not (MNIST / "train-images-idx3-ubyte").exists(),
    reason=f"real MNIST not found in {MNIST} (set ENDEBIAS_DATA)",
)


def test_train_prints_epochs_and_the_best(tmp_path, capsys):
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--dataset",
            "synthetic",
            "--method",
            "end",
            "--alpha",
            "0.5",
            "--beta",
            "2",
            "--epochs",
            "2",
            "--out",
            str(out),
            "--no-progress",
            "--dataset-option",
            "num_classes=3",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "epoch   1 | train acc" in printed and "r_perp" in printed and "unbiased" in printed
    assert "best epoch" in printed
    config = records.read_json(out / records.CONFIG)
    assert config["method_options"] == {"alpha": 0.5, "beta": 2.0}
    assert config["dataset_options"]["num_classes"] == 3
    assert config["preset"] == "quick"


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    code = main(
        ["train", "--dataset", "synthetic", "--method", "magic", "--out", str(tmp_path / "r")]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown method 'magic'" in err


def test_parse_assignment_reads_yaml_scalars():
    assert parse_assignment("layer=blocks.9") == ("layer", "blocks.9")
    assert parse_assignment("rho=0.99") == ("rho", 0.99)
    assert parse_assignment("pool_after=[0, 1]") == ("pool_after", [0, 1])
    assert parse_assignment("k = 3") == ("k", 3)
    for text in ("novalue", "=3"):
        with pytest.raises(ValueError, match="expected KEY=VALUE"):
            parse_assignment(text)


def test_a_malformed_option_is_one_usage_line_naming_it(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--method-option", "novalue"])
    assert exit_info.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.endswith("argument --method-option: expected KEY=VALUE, got 'novalue'")


@needs_mnist
@pytest.mark.slow
def test_paper_preset_one_epoch_on_a_subset(tmp_path, capsys):
    """The paper's exact model and schedule, run for one epoch on 1,000 images."""
    out = tmp_path / "paper"
    code = main(
        [
            "train",
            "--preset",
            "paper",
            "--method",
            "end",
            "--alpha",
            "0.1",
            "--beta",
            "0.1",
            "--rho",
            "0.997",
            "--epochs",
            "1",
            "--train-subset",
            "1000",
            "--eval-subset",
            "500",
            "--data-dir",
            str(MNIST),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    config = records.read_json(out / records.CONFIG)
    assert config["model_options"]["kernel_size"] == 7 and config["lr_step"] == 20
    (record,) = records.read_metrics(out)
    assert record["valid_n"] == 500 and record["biased_test_n"] == 500
    assert 0.0 <= record["unbiased_test_acc"] <= 1.0


@needs_mnist
@pytest.mark.slow
def test_demo_smoke_run_writes_table_and_picture(tmp_path, capsys):
    code = main(
        [
            "demo",
            "--out",
            str(tmp_path),
            "--data-dir",
            str(MNIST),
            "--epochs",
            "1",
            "--train-subset",
            "2000",
            "--eval-subset",
            "500",
            "--no-progress",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "| vanilla |" in printed and "| EnD |" in printed and "conflicting" in printed
    assert (tmp_path / "table.md").exists()
    assert (tmp_path / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
