"""Every bad KEY=VALUE option and every nonsensical number is one line naming the option
and its text (argparse's usage error or ``endebias: error:``), never a traceback, and
no run folder is left behind."""

from __future__ import annotations

import pytest

from endebias.cli.main import main
from run_faults_helpers import TINY, one_error_line, run_cli

BAD_YAML = ["alpha=[1,2", "alpha=*x", "alpha=1: 2: 3", "alpha=!!python/object/apply:os.system [ls]",
            "alpha=&a [*a]", "alpha='x", "alpha={a: 1"]
KEY_VALUE_OPTIONS = ["--method-option", "--dataset-option", "--model-option", "--pseudo-option"]


@pytest.mark.parametrize("option", KEY_VALUE_OPTIONS)
@pytest.mark.parametrize("text", BAD_YAML)
def test_a_yaml_error_in_any_key_value_option_is_one_line(tmp_path, capsys, option, text):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as stop:
        main(["train", *TINY, "--epochs", "1", "--out", str(out), option, text])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"endebias train: error: argument {option}: {text!r}"), err
    assert ("not a valid YAML value" in last) or ("aliases" in last)
    assert not out.exists()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--seed", str(2**64)], f"seed must be an integer from 0 to 2**63 - 1, got {2**64}"),
        (["--seed", "-1"], "seed must be an integer from 0 to 2**63 - 1, got -1"),
        (["--lr", "1e300"], "lr must be at most 3.4e+38 (the largest 32-bit float), got 1e+300"),
        (["--weight-decay", "1e39"], "weight_decay must be at most 3.4e+38"),
        (["--epochs", "99999999999999999999"],
         "epochs must be at most 1,000,000, got 99999999999999999999"),
        (["--batch-size", str(2**40)], "batch_size must be at most 1,000,000"),
        (["--model-option", "channels=[-1, 0]"],
         "model 'simple-conv': option channels must be a non-empty list of positive widths, "
         "got [-1, 0]"),
        (["--model-option", "channels=[]"],
         "model 'simple-conv': option channels must be a non-empty list of positive widths, "
         "got []"),
        (["--model", "mlp", "--model-option", "hidden=[]"],
         "model 'mlp': option hidden must be a non-empty list of positive widths, got []"),
        (["--model-option", "kernel_size=-1"], "kernel_size must be odd and positive"),
        (["--model-option", f"kernel_size={10**20}"],
         f"model 'simple-conv': option kernel_size holds {10**20}, beyond a 64-bit integer"),
        (["--model-option", f"channels=[8, {10**20}]"], "option channels holds"),
        (["--dataset-option", f"train_size={10**20}"],
         f"dataset 'synthetic': option train_size holds {10**20}, beyond a 64-bit integer"),
        # torch's own message, first line only (it appends its C++ stack to some).
        (["--model-option", "kernel_size=2147483647"], "overflow"),
        (["--method", "end", "--method-option", "alpha=1e39"],
         "method 'end': the first training step's loss is not finite (loss inf)"),
    ],
)
def test_numbers_that_overflow_or_make_no_sense_are_one_line(tmp_path, capsys, extra, expected):
    out = tmp_path / "run"
    code, err = run_cli(capsys, ["train", *TINY, "--epochs", "1", "--out", str(out), *extra])
    assert code == 2 and expected in one_error_line(err)
    assert not out.exists()


def test_a_tabular_cell_beyond_float32_is_one_line_naming_it(tmp_path, capsys):
    table = tmp_path / "t.csv"
    rows = ["x,group,y"] + [f"{i % 7},{i % 2},{(i // 2) % 2}" for i in range(40)]
    rows[5] = "1e308,0,1"
    table.write_text("\n".join(rows) + "\n")
    out = tmp_path / "run"
    code, err = run_cli(capsys, [
        "train", "--dataset", "tabular", "--dataset-option", f"path={table}",
        "--dataset-option", "target=y", "--dataset-option", "bias=group", "--model", "mlp",
        "--epochs", "1", "--out", str(out), "--no-progress"])
    line = one_error_line(err)
    assert code == 2
    assert f"{table}: feature column 'x': line 6 has '1e308', beyond the range" in line
    assert not out.exists()


def test_exponent_notation_is_a_number_in_key_value_options():
    """YAML 1.1 reads 1e-4 (no dot) as a string: alpha=1e-4 was refused as not a float."""
    from endebias.option_types import parse_assignment

    assert parse_assignment("alpha=1e-4") == ("alpha", 1e-4)
    assert parse_assignment("alpha=-2E+3") == ("alpha", -2000.0)
    assert parse_assignment("alpha=[1e-4, 2]") == ("alpha", [1e-4, 2])
    assert parse_assignment("name='1e-4'") == ("name", "1e-4")  # quoted: a string still
    assert parse_assignment("name=e5") == ("name", "e5")
