"""``image-folder`` on a tiny generated folder of 8x8 PNGs and a labels CSV."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from endebias.data import build_dataset

SPECIES = ("dog", "cat")  # sorted: cat 0, dog 1
BACKGROUNDS = ("water", "land")  # sorted: land 0, water 1


def write_folder(folder: Path, *, split_column: bool = False) -> list[tuple[str, str, str]]:
    """24 images in two subfolders; the red channel encodes the row number.
    Returns (path, species, background) per row."""
    rows = []
    for number in range(24):
        species, background = SPECIES[number % 2], BACKGROUNDS[(number // 2) % 2]
        if number % 5 == 0:  # an uneven mix, so the balanced test really cuts
            background = "land"
        relative = f"{species}/{number:02d}.png"
        (folder / species).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), (number * 10, 0, 0)).save(folder / relative)
        rows.append((relative, species, background))
    header = "path,species,place" + (",part" if split_column else "")
    lines = [header]
    for number, (relative, species, background) in enumerate(rows):
        part = ("train", "train", "valid", "test")[number % 4]
        lines.append(f"{relative},{species},{background}" + (f",{part}" if split_column else ""))
    (folder / "labels.csv").write_text("\n".join(lines) + "\n")
    return rows


def _build(folder: Path, **options):
    values = {"root": str(folder), "csv": "labels.csv", "target": "species", "bias": "place",
              "image_size": 16, "workers": 0, "progress": False, "cache": False, **options}
    return build_dataset("image-folder", **values)


def test_labels_are_sorted_codes_and_images_match_rows(tmp_path):
    rows = write_folder(tmp_path, split_column=True)
    bench = _build(tmp_path, split="part")
    assert bench.target_names == ["cat", "dog"] and bench.bias_names == ["land", "water"]
    assert list(bench.evaluations) == ["valid", "biased_test", "unbiased_test"]
    assert bench.input_shape == (3, 16, 16) and bench.train.inputs.dtype == torch.uint8
    train_rows = [n for n in range(24) if n % 4 < 2]
    assert bench.train.targets.tolist() == [SPECIES.index(rows[n][1]) ^ 1 for n in train_rows]
    assert bench.train.biases.tolist() == [int(rows[n][2] == "water") for n in train_rows]
    # Each image is its own file: the red channel encodes the row number.
    assert bench.train.inputs[:, 0, 8, 8].tolist() == [n * 10 for n in train_rows]
    assert len(bench.evaluations["valid"]) == 6 and len(bench.evaluations["biased_test"]) == 6


def test_random_splits_are_seeded_and_unbiased_test_is_balanced(tmp_path):
    write_folder(tmp_path)
    first, again, other = _build(tmp_path, seed=1), _build(tmp_path, seed=1), _build(tmp_path,
                                                                                     seed=2)
    sizes = [len(first.train), len(first.evaluations["valid"]),
             len(first.evaluations["biased_test"])]
    assert sizes == [14, 5, 5]  # test_fraction 0.2 and valid_fraction 0.2 of 24, rounded
    assert torch.equal(first.train.inputs, again.train.inputs)
    assert not torch.equal(first.train.inputs, other.train.inputs)
    for bench in (first, other):
        test, unbiased = bench.evaluations["biased_test"], bench.evaluations["unbiased_test"]
        counts = torch.bincount(unbiased.targets * 2 + unbiased.biases, minlength=4)
        present = counts[counts > 0]
        assert (present == present.min()).all()
        smallest = torch.bincount(test.targets * 2 + test.biases, minlength=4)
        assert present.min() == smallest[smallest > 0].min()


def test_bad_input_is_named(tmp_path):
    write_folder(tmp_path, split_column=True)
    with pytest.raises(ValueError, match="no bias column 'colour'"):
        _build(tmp_path, bias="colour")
    with pytest.raises(ValueError, match="unknown option.* colour, shuffle"):
        _build(tmp_path, colour=1, shuffle=True)
    (tmp_path / "dog" / "04.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(ValueError, match=r"04.png: cannot decode the image") as error:
        _build(tmp_path, split="part")
    assert "\n" not in str(error.value)
    (tmp_path / "dog" / "04.png").unlink()
    with pytest.raises(ValueError, match=r"dog/04.png: image file is missing"):
        _build(tmp_path, split="part")


def test_trains_resnet18_with_end(tmp_path):
    from endebias.training.config import make_config
    from endebias.training.fit import fit

    write_folder(tmp_path)
    options = {"root": str(tmp_path), "csv": "labels.csv", "target": "species",
               "bias": "place", "image_size": 16, "workers": 0, "progress": False,
               "cache": False}
    config = make_config("quick", dataset="image-folder", dataset_options=options,
                         model="resnet18", method="end",
                         method_options={"alpha": 1.0, "beta": 1.0}, epochs=1, batch_size=8,
                         device="cpu")
    best = fit(config, tmp_path / "run", progress=False)
    assert {"valid_acc", "biased_test_acc", "unbiased_test_acc"} <= set(best)


def test_a_csv_without_bias_column_has_no_bias_labels(tmp_path):
    write_folder(tmp_path, split_column=True)
    bench = _build(tmp_path, split="part", bias=None)
    assert not bench.has_bias_labels and bench.num_biases == 1
    assert list(bench.evaluations) == ["valid", "biased_test"]  # nothing to balance
    assert int(bench.train.biases.abs().sum()) == 0
    assert _build(tmp_path, split="part").has_bias_labels
