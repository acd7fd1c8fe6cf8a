"""Bad inputs, each one line naming the culprit (exit 2) and no run folder left behind:
ill-typed or unknown options of every dataset, model and method, non-finite numbers,
tabular column names, image-folder paths outside the root, decompression bombs."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path

import pytest
from PIL import Image

from endebias.data import build_dataset, dataset_names
from endebias.methods import method_names
from endebias.models import model_names
from endebias.option_types import describe, matches
from run_faults_helpers import one_error_line, run_cli, train_args
from test_image_folder import write_folder


@pytest.mark.parametrize("dataset", dataset_names())
def test_an_unknown_option_of_every_dataset_lists_its_typed_options(tmp_path, capsys, dataset):
    # Checked before any data is read, so datasets whose files are absent answer too.
    args = ["train", "--dataset", dataset, "--dataset-option", "colour=red", "--out",
            str(tmp_path / "run"), "--no-progress"]
    code, err = run_cli(capsys, args)
    line = one_error_line(err)
    assert code == 2
    assert f"dataset {dataset!r} has no option 'colour'; its options: " in line
    assert "(" in line.split("its options: ")[1]  # each option with its type
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("model", model_names())
def test_an_unknown_option_of_every_model_lists_its_typed_options(tmp_path, capsys, model):
    args = train_args(tmp_path / "run", "--model", model, "--model-option", "foo=1")
    code, err = run_cli(capsys, args)
    assert code == 2
    assert f"model {model!r} has no option 'foo'; its options: " in one_error_line(err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("method", method_names())
def test_an_unknown_option_of_every_method_lists_its_options(tmp_path, capsys, method):
    args = train_args(tmp_path / "run", "--method", method, "--method-option", "foo=1")
    code, err = run_cli(capsys, args)
    assert code == 2
    assert f"method {method!r} has no option 'foo'; its options: " in one_error_line(err)


@pytest.mark.parametrize(
    ("option", "expected"),
    [
        (["--dataset-option", "rho=abc"],
         "dataset 'synthetic': option rho must be float, got 'abc'"),
        (["--dataset-option", "num_classes=2.5"], "option num_classes must be int, got 2.5"),
        (["--model-option", "channels=abc"], "option channels must be list of int, got 'abc'"),
        (["--model-option", "channels=[8, x]"], "option channels must be list of int"),
        (["--method", "end", "--method-option", "alpha=abc"],
         "method 'end': option alpha must be float, got 'abc'"),
        (["--method", "end", "--method-option", "pairs=3"], "option pairs must be str, got 3"),
        (["--dataset-option", "seed=3"], "option 'seed' is set by the trainer"),
        (["--lr", "inf"], "lr must be a finite number, got inf"),
        (["--lr", "nan"], "lr must be a finite number, got nan"),
        (["--weight-decay=-inf"], "weight_decay must be a finite number, got -inf"),
        (["--method", "end", "--method-option", "alpha=.inf"],
         "method_options.alpha must hold finite numbers, got inf"),
        (["--dataset-option", "rho=.nan"], "dataset_options.rho must hold finite numbers"),
    ],
)
def test_ill_typed_and_non_finite_values_are_one_line(tmp_path, capsys, option, expected):
    code, err = run_cli(capsys, train_args(tmp_path / "run", *option))
    assert code == 2
    assert expected in one_error_line(err)
    assert not (tmp_path / "run").exists()


def test_matches_against_hand_cases():
    from collections.abc import Sequence

    assert matches(3, float) and matches(2.5, float) and not matches(True, float)
    assert not matches(math.inf, float) and not matches(math.nan, float)
    assert matches(3, int) and not matches(3.0, int) and not matches(False, int)
    assert matches(None, int | None) and not matches("x", int | None)
    assert matches([1, 2], Sequence[int]) and matches((1,), tuple[int, ...])
    assert not matches("abc", Sequence[int]) and not matches([1, "a"], list[int])
    assert matches("p", str | Path) and matches(True, bool) and not matches(1, bool)
    assert describe(list[int] | None) == "list of int or None"


TABLE = "age,glu,outcome\n" + "".join(
    f"{20 + (i * 7) % 50},{80 + (i * 13) % 90},{'yes' if i % 3 == 0 else 'no'}\n"
    for i in range(120)
)


def tabular_args(tmp_path: Path, *options: str, model: tuple[str, ...] = ()) -> list[str]:
    csv = tmp_path / "table.csv"
    csv.write_text(TABLE)
    pairs = [f"path={csv}", "target=outcome", "bias=age", "bias_binning=median", *options]
    extra = [item for pair in pairs for item in ("--dataset-option", pair)]
    return ["train", "--dataset", "tabular", *extra, *model, "--epochs", "1", "--out",
            str(tmp_path / "run"), "--no-progress"]


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (["bias=agee"], "no bias column 'agee'; columns: age, glu, outcome"),
        (["target=nosuch"], "no target column 'nosuch'; columns: age, glu, outcome"),
        (["bias=outcome"], "target and bias are the same column 'outcome'"),
    ],
)
def test_tabular_column_errors_name_the_column_and_list_the_columns(
    tmp_path, capsys, options, expected
):
    code, err = run_cli(capsys, tabular_args(tmp_path, *options))
    assert code == 2 and expected in one_error_line(err)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_tabular_trains_its_declared_mlp_and_a_wrong_model_leaves_no_folder(tmp_path, capsys):
    code, err = run_cli(capsys, tabular_args(tmp_path, model=("--model", "simple-conv")))
    line = one_error_line(err)
    assert code == 2
    assert "model 'simple-conv' cannot take the inputs of dataset 'tabular' (shape (2,))" in line
    assert line.endswith("; the dataset is made for model 'mlp'")
    assert not (tmp_path / "run").exists()
    code, err = run_cli(capsys, tabular_args(tmp_path))  # no --model: the dataset's mlp
    assert code == 0, err
    assert '"model": "mlp"' in (tmp_path / "run" / "config.json").read_text()


def _image_folder(folder: Path, **options):
    values = {"root": str(folder), "csv": "labels.csv", "target": "species", "bias": "place",
              "image_size": 8, "workers": 0, "progress": False, "cache": False, **options}
    return build_dataset("image-folder", **values)


@pytest.mark.parametrize("escape", ["../outside.png", "ABSOLUTE", "cat/../../outside.png"])
def test_image_folder_paths_stay_inside_the_root_unless_allowed(tmp_path, escape):
    root = tmp_path / "root"
    write_folder(root)
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "outside.png")
    text = str(tmp_path / "outside.png") if escape == "ABSOLUTE" else escape
    labels = (root / "labels.csv").read_text().splitlines()
    labels[3] = f"{text},cat,land"
    (root / "labels.csv").write_text("\n".join(labels) + "\n")
    with pytest.raises(ValueError, match="line 4: path .* leads outside the image root") as error:
        _image_folder(root)
    assert "allow_outside_root=true" in str(error.value)
    assert len(_image_folder(root, allow_outside_root=True).train) > 0


def _png_header_only(path: Path, width: int, height: int) -> None:
    """A PNG that declares width x height (1-bit grey) but holds almost no data: what a
    decompression bomb looks like until it is decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def test_a_decompression_bomb_is_named_with_the_limit_and_the_limit_can_be_raised(
    tmp_path, capsys
):
    root = tmp_path / "root"
    write_folder(root)
    _png_header_only(root / "cat" / "03.png", 15000, 15000)
    args = ["train", "--dataset", "image-folder", "--model", "simple-conv", "--epochs", "1",
            "--out", str(tmp_path / "run"), "--no-progress"]
    for key, value in {"root": root, "csv": "labels.csv", "target": "species", "bias": "place",
                       "image_size": 8, "workers": 0, "cache": "false"}.items():
        args += ["--dataset-option", f"{key}={value}"]
    code, err = run_cli(capsys, args)
    line = one_error_line(err)
    assert code == 2
    assert f"{root / 'cat' / '03.png'}: the image (15000 x 15000) has more pixels than the " \
           f"limit of {Image.MAX_IMAGE_PIXELS}" in line and "max_image_pixels=N" in line
    assert not (tmp_path / "run").exists()
    Image.new("RGB", (20, 10)).save(root / "cat" / "03.png")  # 200 pixels, genuine
    with pytest.raises(ValueError, match=r"03.png: the image \(20 x 10\) .* limit of 199"):
        _image_folder(root, max_image_pixels=199)
    assert len(_image_folder(root, max_image_pixels=200).train) > 0
