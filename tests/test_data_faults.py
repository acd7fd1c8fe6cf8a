"""Image-folder data that could mislead silently: a damaged or stale image cache (used
as if good before), a CSV's ``split`` column ignored unless named. Injected for real on
a tiny generated folder."""

from __future__ import annotations

import logging
import os

import numpy as np

from test_image_folder import _build, write_folder


def cache_files(folder):
    return sorted((folder / "cache").glob("*.npy"))


def invert_pixels(cache) -> None:
    """Every pixel byte inverted, the .npy header (and so the shape) kept."""
    array = np.load(cache, mmap_mode="r+")
    array[...] = 255 - array
    array.flush()
    del array


def test_a_damaged_or_stale_image_cache_is_never_used(tmp_path, caplog):
    write_folder(tmp_path)
    options = {"cache": True, "cache_dir": str(tmp_path / "cache"), "seed": 3}
    fresh = _build(tmp_path, **options)
    caches = cache_files(tmp_path)
    assert caches and all(c.with_name(c.name + ".sha256").is_file() for c in caches)
    reference = fresh.train.inputs.clone()
    with caplog.at_level(logging.INFO):
        assert bool((_build(tmp_path, **options).train.inputs == reference).all())
    assert "checksum verified" in caplog.text
    # Flipped bytes: the checksum catches them; the images are decoded again.
    for cache in caches:
        invert_pixels(cache)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        again = _build(tmp_path, **options)
    assert bool((again.train.inputs == reference).all())
    assert "does not match its checksum: damaged" in caplog.text
    # An image edited in place (same name and size, new content): the source changed.
    from PIL import Image

    image = tmp_path / "cat" / "01.png"
    Image.new("RGB", (8, 8), (250, 0, 0)).save(image)
    os.utime(image, ns=(1, 1))  # an old time stamp does not hide the change
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        edited = _build(tmp_path, **options)
    assert "the images changed since it was made" in caplog.text
    assert 250 in edited.train.inputs[:, 0].unique().tolist() + [
        int(v) for split in edited.evaluations.values() for v in split.inputs[:, 0].unique()]
    # A cache without its checksum (an older version's) is not trusted either.
    for cache in cache_files(tmp_path):
        cache.with_name(cache.name + ".sha256").unlink()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _build(tmp_path, **options)
    assert "it has no checksum" in caplog.text


def test_a_csv_split_column_is_used_without_being_asked_for(tmp_path):
    write_folder(tmp_path, split_column=True)
    labels = tmp_path / "labels.csv"
    labels.write_text(labels.read_text().replace(",part\n", ",split\n", 1))
    bench = _build(tmp_path)
    # Row n is train for n % 4 in (0, 1), valid for 2, test for 3; red encodes n * 10.
    assert sorted(bench.train.inputs[:, 0, 8, 8].tolist()) == [
        n * 10 for n in range(24) if n % 4 < 2]
    assert sorted(bench.evaluations["biased_test"].inputs[:, 0, 8, 8].tolist()) == [
        n * 10 for n in range(24) if n % 4 == 3]
    mixed = _build(tmp_path, split="random")  # asked for: the seeded random split
    assert sorted(mixed.train.inputs[:, 0, 8, 8].tolist()) != sorted(
        bench.train.inputs[:, 0, 8, 8].tolist())


def test_a_binary_celeba_list_file_is_named(tmp_path):
    import pytest

    from endebias.data.celeba import CelebAFileError, read_attributes, read_partition

    binary = tmp_path / "list_attr_celeba.txt"
    binary.write_bytes(b"2\nBlond_Hair Male\n\xff\xfe\x00")
    with pytest.raises(CelebAFileError, match=rf"^{binary}: not a text file \(byte 0xff"):
        read_attributes(binary, ("Blond_Hair",))
    with pytest.raises(CelebAFileError, match=rf"^{binary}: not a text file"):
        read_partition(binary, ["000001.jpg"])
