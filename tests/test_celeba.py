"""CelebA on a tiny synthetic folder in the exact file formats."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from endebias.data import build_dataset
from endebias.data.celeba import IMAGENET_MEAN, IMAGENET_STD

NAMES = ["5_o_Clock_Shadow", "Blond_Hair", "Heavy_Makeup", "Male", "Young"]
# Per split: (blond, male) group sizes, so that every group exists and sizes differ.
SIZES = {0: {(1, 0): 12, (1, 1): 3, (0, 0): 8, (0, 1): 9},
         1: {(1, 0): 5, (1, 1): 2, (0, 0): 4, (0, 1): 6},
         2: {(1, 0): 4, (1, 1): 3, (0, 0): 5, (0, 1): 7}}


def write_celeba(folder: Path) -> list[tuple[str, int, int, int]]:
    """The three CelebA files and 178x218 JPEGs whose colour encodes the image number.
    Returns (file, partition, blond, male) per image."""
    images = folder / "img_align_celeba"
    images.mkdir(parents=True)
    rows = []
    for partition, groups in SIZES.items():
        for (blond, male), count in groups.items():
            for _ in range(count):
                rows.append((f"{len(rows) + 1:06d}.jpg", partition, blond, male))
    attribute_lines, partition_lines = [str(len(rows)), " ".join(NAMES) + " "], []
    for number, (name, partition, blond, male) in enumerate(rows):
        makeup = 1 - male if number % 5 else male  # mostly the stereotype
        values = [-1, 2 * blond - 1, 2 * makeup - 1, 2 * male - 1, 1]
        # The real file pads values to two characters ("-1" and " 1").
        attribute_lines.append(name + "".join(f" {v:2d}" for v in values))
        partition_lines.append(f"{name} {partition}")
        Image.new("RGB", (178, 218), (number, 255 - number, 40)).save(images / name, quality=95)
    (folder / "list_attr_celeba.txt").write_text("\n".join(attribute_lines) + "\n")
    (folder / "list_eval_partition.txt").write_text("\n".join(partition_lines) + "\n")
    return rows


def _build(folder: Path, **options):
    return build_dataset("celeba", root=str(folder), image_size=32, workers=2,
                         progress=False, **options)


def test_splits_labels_and_balanced_evaluation(tmp_path):
    rows = write_celeba(tmp_path / "celeba")
    bench = _build(tmp_path / "celeba", seed=3)
    assert list(bench.evaluations) == ["valid", "valid_conflicting", "unbiased_test",
                                       "biased_test"]
    assert len(bench.train) == sum(SIZES[0].values())
    assert bench.train.inputs.dtype == torch.uint8 and bench.input_shape == (3, 32, 32)
    # Labels: the attribute (1 -> 1, -1 -> 0), bias Male.
    train_rows = [r for r in rows if r[1] == 0]
    assert bench.train.targets.tolist() == [r[2] for r in train_rows]
    assert bench.train.biases.tolist() == [r[3] for r in train_rows]
    # The image of a row is its own file: the red channel encodes the image number.
    red = bench.train.inputs[:, 0].float().mean(dim=(1, 2))
    assert torch.allclose(red, torch.arange(len(train_rows)).float(), atol=3)
    # valid / unbiased_test: every (target, gender) group cut to the smallest one (2 / 3).
    for name, size in (("valid", 2), ("unbiased_test", 3)):
        split = bench.evaluations[name]
        counts = torch.bincount(split.targets * 2 + split.biases, minlength=4)
        assert counts.tolist() == [size] * 4
    conflicting = bench.evaluations["valid_conflicting"]
    assert len(conflicting) == 4 and (conflicting.targets == conflicting.biases).all()
    assert len(bench.evaluations["biased_test"]) == sum(SIZES[2].values())
    # The balanced cut is seeded.
    again, other = _build(tmp_path / "celeba", seed=3), _build(tmp_path / "celeba", seed=4)
    assert torch.equal(again.evaluations["valid"].inputs, bench.evaluations["valid"].inputs)
    assert not torch.equal(other.evaluations["valid"].inputs, bench.evaluations["valid"].inputs)
    # prepare applies ImageNet normalisation.
    prepared = bench.prepare(bench.train.inputs[:2])
    expected = (bench.train.inputs[:2, 1].float() / 255 - IMAGENET_MEAN[1]) / IMAGENET_STD[1]
    assert torch.allclose(prepared[:, 1], expected)


def test_makeup_target_and_train_size(tmp_path):
    write_celeba(tmp_path / "celeba")
    bench = _build(tmp_path / "celeba", target="Heavy_Makeup", train_size=10)
    assert len(bench.train) == 10 and bench.target_names == ["not Heavy_Makeup", "Heavy_Makeup"]
    with pytest.raises(ValueError, match="target must be one of Blond_Hair, Heavy_Makeup"):
        _build(tmp_path / "celeba", target="Male")


def test_images_are_cached_and_read_back(tmp_path):
    write_celeba(tmp_path / "celeba")
    first = _build(tmp_path / "celeba", cache_dir=str(tmp_path / "cache"))
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 3
    for image in (tmp_path / "celeba" / "img_align_celeba").iterdir():
        image.unlink()  # only the cache can serve the second build now
    second = _build(tmp_path / "celeba", cache_dir=str(tmp_path / "cache"))
    assert torch.equal(first.train.inputs, second.train.inputs)
    assert torch.equal(first.evaluations["biased_test"].inputs,
                       second.evaluations["biased_test"].inputs)


def test_malformed_files_and_bad_images_are_named(tmp_path):
    folder = tmp_path / "celeba"
    write_celeba(folder)
    attributes = folder / "list_attr_celeba.txt"
    good = attributes.read_text()
    lines = good.splitlines()
    lines[5] = lines[5].rsplit(" ", 1)[0] + " 0"  # a value that is neither 1 nor -1
    attributes.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"list_attr_celeba.txt: line 6: expected a file name"):
        _build(folder, cache=False)
    lines = good.splitlines()
    lines[7] = " ".join(lines[7].split()[:-1])  # one value short
    attributes.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"list_attr_celeba.txt: line 8: expected"):
        _build(folder, cache=False)
    attributes.write_text(good.replace("Blond_Hair", "Blonde_Hair"))
    with pytest.raises(ValueError, match="line 2 names no attribute 'Blond_Hair'"):
        _build(folder, cache=False)
    attributes.write_text("\n".join(good.splitlines()[:-1]) + "\n")
    total = sum(sum(groups.values()) for groups in SIZES.values())
    announced = f"line 1 announces {total} images, the file lists {total - 1}"
    with pytest.raises(ValueError, match=announced):
        _build(folder, cache=False)
    attributes.write_text(good)
    (folder / "list_eval_partition.txt").write_text("000001.jpg 3\n")
    with pytest.raises(ValueError, match="list_eval_partition.txt: line 1: expected"):
        _build(folder, cache=False)


def test_missing_or_corrupt_image_is_named(tmp_path):
    folder = tmp_path / "celeba"
    write_celeba(folder)
    (folder / "img_align_celeba" / "000007.jpg").unlink()
    with pytest.raises(ValueError, match=r"000007.jpg: image file is missing"):
        _build(folder, cache_dir=str(tmp_path / "cache"))
    assert not list((tmp_path / "cache").glob("*"))  # no half-written cache left behind
    (folder / "img_align_celeba" / "000007.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(ValueError, match=r"000007.jpg: cannot decode the image"):
        _build(folder, cache=False)


def test_trains_resnet18_with_end_through_the_unchanged_trainer(tmp_path):
    from endebias.training.config import TrainConfig
    from endebias.training.fit import fit

    write_celeba(tmp_path / "celeba")
    options = {"root": str(tmp_path / "celeba"), "image_size": 32, "workers": 0,
               "progress": False, "cache": False}
    config = TrainConfig(dataset="celeba", dataset_options=options, model="resnet18",
                         method="end", method_options={"alpha": 1.0, "beta": 1.0}, epochs=1,
                         batch_size=16, device="cpu")
    best = fit(config, tmp_path / "run", progress=False)
    assert {"valid_acc", "valid_conflicting_acc", "unbiased_test_acc", "biased_test_acc",
            "biased_test_acc_worst_group"} <= set(best)
