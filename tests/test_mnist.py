"""Reading, verifying and fetching the MNIST files (never over the network)."""

from __future__ import annotations

import gzip
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from endebias.data import mnist
from endebias.data.mnist import MnistDataError, MnistMissingError, load_mnist, resolve_data_dir
from mnist_fixtures import idx_bytes, real_mnist_dir, use_checksums, write_mnist


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every download attempt fails as on a machine without network; records the URLs."""
    tried: list[str] = []

    def refuse(url: str, dest: Path, *, timeout: float) -> None:
        tried.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(mnist, "_download", refuse)
    return tried


@pytest.fixture
def fixture_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, offline: list[str]):
    folder = tmp_path / "mnist"
    table, arrays = write_mnist(folder)
    use_checksums(monkeypatch, table)
    return folder, arrays


def test_resolve_data_dir_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ENDEBIAS_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_data_dir(None) == tmp_path / "env"
    monkeypatch.delenv("ENDEBIAS_DATA")
    assert resolve_data_dir(None) == Path("~/.cache/endebias").expanduser()


@pytest.mark.parametrize("compress", [True, False])
def test_loads_raw_and_gz(tmp_path: Path, monkeypatch, offline, compress: bool) -> None:
    table, arrays = write_mnist(tmp_path, compress=compress)
    use_checksums(monkeypatch, table)
    data = load_mnist(tmp_path)
    assert data["train_images"].dtype == torch.uint8
    assert data["train_images"].shape == (200, 28, 28)
    assert data["test_images"].shape == (50, 28, 28)
    assert data["train_labels"].dtype == torch.int64
    for key, array in arrays.items():
        assert np.array_equal(data[key].numpy(), array)
    assert offline == []


def test_finds_mnist_subfolder_of_data_root(fixture_dir, monkeypatch) -> None:
    folder, _ = fixture_dir
    monkeypatch.setenv("ENDEBIAS_DATA", str(folder.parent))
    assert load_mnist()["test_labels"].shape == (50,)


def test_wrong_checksum_names_file(fixture_dir, monkeypatch) -> None:
    folder, _ = fixture_dir
    spec = mnist.MNIST_FILES["train_labels"]
    monkeypatch.setitem(
        mnist.MNIST_FILES, "train_labels", mnist.MnistFile(spec.name, "0" * 32, "", spec.count)
    )
    with pytest.raises(ValueError, match="MD5") as info:
        load_mnist(folder)
    assert isinstance(info.value, MnistDataError)
    _assert_one_line_naming(info.value, folder / "train-labels-idx1-ubyte.gz")


def test_unverified_fixture_skips_checksums(tmp_path: Path, offline) -> None:
    # The real checksum table stays in place: only verify=False lets these load.
    write_mnist(tmp_path, compress=False)
    with pytest.raises(MnistDataError, match="MD5"):
        load_mnist(tmp_path)
    assert load_mnist(tmp_path, verify=False)["train_images"].shape == (200, 28, 28)


def _corrupt(path: Path, how: str) -> None:
    data = gzip.decompress(path.read_bytes())
    if how == "truncated-gzip":
        path.write_bytes(path.read_bytes()[:-40])
        return
    if how == "not-gzip":
        path.write_bytes(b"<html>not found</html>")
        return
    if how == "truncated-content":
        data = data[:-100]
    elif how == "bad-magic":
        data = (0x0000_0903).to_bytes(4, "big") + data[4:]
    elif how == "trailing-bytes":
        data += b"\0"
    path.write_bytes(gzip.compress(data, compresslevel=1))


@pytest.mark.parametrize(
    "how, message",
    [
        ("truncated-gzip", "cannot read"),
        ("not-gzip", "cannot read"),
        ("truncated-content", "truncated"),
        ("bad-magic", "magic"),
        ("trailing-bytes", "trailing"),
    ],
)
def test_corrupt_file_names_file(fixture_dir, how: str, message: str) -> None:
    folder, _ = fixture_dir
    path = folder / "t10k-images-idx3-ubyte.gz"
    _corrupt(path, how)
    with pytest.raises(MnistDataError, match=message) as info:
        load_mnist(folder)
    _assert_one_line_naming(info.value, path)


def test_wrong_image_size_and_count_mismatch(tmp_path: Path, offline) -> None:
    write_mnist(tmp_path, compress=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(idx_bytes(np.zeros((200, 14, 14), np.uint8)))
    with pytest.raises(MnistDataError, match="14x14") as info:
        load_mnist(tmp_path, verify=False)
    _assert_one_line_naming(info.value, path)
    path.write_bytes(idx_bytes(np.zeros((199, 28, 28), np.uint8)))
    with pytest.raises(MnistDataError, match="199 images"):
        load_mnist(tmp_path, verify=False)


def test_missing_files_offline_one_line(tmp_path: Path, monkeypatch, offline) -> None:
    table, _ = write_mnist(tmp_path / "mnist")
    use_checksums(monkeypatch, table)
    (tmp_path / "mnist" / "t10k-labels-idx1-ubyte.gz").unlink()
    (tmp_path / "mnist" / "train-images-idx3-ubyte.gz").unlink()
    with pytest.raises(MnistMissingError) as info:
        load_mnist(tmp_path)
    text = str(info.value)
    assert "\n" not in text
    assert "train-images-idx3-ubyte.gz" in text and "t10k-labels-idx1-ubyte.gz" in text
    assert "train-labels" not in text
    assert str(tmp_path / "mnist") in text
    assert "name resolution" in text
    # It says how to point at a folder that holds the files.
    assert "--data-dir" in text and "$ENDEBIAS_DATA" in text
    # Each mirror was tried, in the documented order, for the first missing file.
    assert offline[0].startswith(mnist.MIRRORS[0]) and offline[1].startswith(mnist.MIRRORS[1])
    assert not list((tmp_path / "mnist").glob("*.part"))


def test_empty_root_without_download(tmp_path: Path, offline) -> None:
    with pytest.raises(MnistMissingError, match="download disabled") as info:
        load_mnist(tmp_path, download=False)
    assert str(tmp_path / "mnist") in str(info.value)
    assert offline == []


def test_download_verifies_and_installs(tmp_path: Path, monkeypatch) -> None:
    source = tmp_path / "mirror"
    table, arrays = write_mnist(source)
    use_checksums(monkeypatch, table)
    bad_first_mirror = []

    def serve(url: str, dest: Path, *, timeout: float) -> None:
        assert timeout <= 30
        name = url.rsplit("/", 1)[-1]
        if url.startswith(mnist.MIRRORS[0]) and name.startswith("t10k-images"):
            bad_first_mirror.append(url)
            dest.write_bytes(b"corrupted in transit")
        else:
            dest.write_bytes((source / name).read_bytes())

    monkeypatch.setattr(mnist, "_download", serve)
    data = load_mnist(tmp_path / "data")
    assert bad_first_mirror  # fell back to the second mirror
    assert np.array_equal(data["test_images"].numpy(), arrays["test_images"])
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(
        f"{spec.name}.gz" for spec in table.values()
    )


def test_real_downloader_streams_a_local_mirror(tmp_path: Path, monkeypatch) -> None:
    # A file:// mirror runs the real urllib + progress-bar code without any network.
    table, arrays = write_mnist(tmp_path / "mirror")
    use_checksums(monkeypatch, table)
    monkeypatch.setattr(mnist, "MIRRORS", ((tmp_path / "mirror").as_uri() + "/",))
    data = load_mnist(tmp_path / "data")
    assert np.array_equal(data["train_labels"].numpy(), arrays["train_labels"])


def _assert_one_line_naming(error: Exception, path: Path) -> None:
    text = str(error)
    assert "\n" not in text
    assert str(path) in text


@pytest.fixture(scope="module")
def real_mnist() -> dict[str, torch.Tensor]:
    folder = real_mnist_dir()
    if folder is None:
        pytest.skip("real MNIST not found in $ENDEBIAS_DATA or ../shared/data/mnist")
    return load_mnist(folder, download=False)


def test_real_mnist_checksums_and_sizes(real_mnist) -> None:
    assert real_mnist["train_images"].shape == (60000, 28, 28)
    assert real_mnist["test_images"].shape == (10000, 28, 28)
    assert real_mnist["train_labels"].shape == (60000,)
    assert real_mnist["test_labels"].shape == (10000,)
    assert real_mnist["train_labels"].bincount().tolist()[:3] == [5923, 6742, 5958]
