"""The four original MNIST files: find, verify, download if missing, and read.

Files are looked up raw or gzip'd. Checksums are taken over the *uncompressed* bytes,
because local copies are often re-compressed (the shared copy is), which changes the
``.gz`` digest but never the content. Every failure is one line naming the culprit file.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

ENV_VAR = "ENDEBIAS_DATA"
DEFAULT_DATA_DIR = Path("~/.cache/endebias")
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
DOWNLOAD_TIMEOUT_S = 10.0
IMAGE_SIDE = 28


class MnistDataError(ValueError):
    """An MNIST file is corrupt, truncated, of the wrong kind or fails its checksum."""


class MnistMissingError(MnistDataError):
    """MNIST files are absent and could not be downloaded."""


@dataclass(frozen=True)
class MnistFile:
    """One IDX file: its name on the mirrors (without ``.gz``) and what it must hold."""

    name: str
    content_md5: str
    gz_md5: str
    count: int


# Keyed by the entries of the dict that load_mnist returns. Tests swap this table for
# one describing synthetic files, so the verifying code path is exercised as well.
MNIST_FILES: dict[str, MnistFile] = {
    "train_images": MnistFile(
        "train-images-idx3-ubyte",
        "6bbc9ace898e44ae57da46a324031adb",
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        60000,
    ),
    "train_labels": MnistFile(
        "train-labels-idx1-ubyte",
        "a25bea736e30d166cdddb491f175f624",
        "d53e105ee54ea40749a09fcbcd1e9432",
        60000,
    ),
    "test_images": MnistFile(
        "t10k-images-idx3-ubyte",
        "2646ac647ad5339dbf082846283269ea",
        "9fb629c4189551a2d022fa330f9573f3",
        10000,
    ),
    "test_labels": MnistFile(
        "t10k-labels-idx1-ubyte",
        "27ae3e4e09519cfbb04c329615203637",
        "ec29112dd5afa0611ce80d1b7f02629c",
        10000,
    ),
}


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """The data root: the argument (``--data-dir``), else ``$ENDEBIAS_DATA``, else the user
    cache ``~/.cache/endebias``. This is the one lookup every command and dataset uses;
    ``make demo`` adds none of its own (it may link a local copy into the cache)."""
    if data_dir is None:
        data_dir = os.environ.get(ENV_VAR) or DEFAULT_DATA_DIR
    return Path(data_dir).expanduser()


def mnist_folder(root: Path) -> Path:
    """Where the MNIST files live under ``root``: ``root`` itself if it holds any of
    them (e.g. ``ENDEBIAS_DATA`` pointing straight at an MNIST folder), else
    ``root/mnist`` so that one data root can serve several benchmarks."""
    if any(_find(root, spec) is not None for spec in MNIST_FILES.values()):
        return root
    return root / "mnist"


def _find(folder: Path, spec: MnistFile) -> Path | None:
    for candidate in (folder / spec.name, folder / f"{spec.name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as handle:
                return handle.read()
        return path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        # EOFError is what a truncated gzip stream raises; BadGzipFile is an OSError.
        raise MnistDataError(f"{path}: cannot read ({error})") from error


def _parse_idx(data: bytes, path: Path, *, ndim: int) -> np.ndarray:
    """IDX layout: 2 zero bytes, type code 0x08 (unsigned byte), number of dimensions,
    then one big-endian int32 per dimension, then the values."""
    header = 4 + 4 * ndim
    if len(data) < header:
        raise MnistDataError(f"{path}: truncated IDX header ({len(data)} bytes)")
    magic = int.from_bytes(data[:4], "big")
    if magic != 0x0800 + ndim:
        raise MnistDataError(
            f"{path}: bad IDX magic number 0x{magic:08x} (expected 0x{0x0800 + ndim:08x})"
        )
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(data) != expected:
        state = "truncated" if len(data) < expected else "has trailing bytes"
        raise MnistDataError(
            f"{path}: {state}: header {dims} needs {expected} bytes, file has {len(data)}"
        )
    if ndim == 3 and dims[1:] != [IMAGE_SIDE, IMAGE_SIDE]:
        raise MnistDataError(f"{path}: images are {dims[1]}x{dims[2]}, expected 28x28")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _ndim(key: str) -> int:
    return 3 if key.endswith("images") else 1


def _read_idx(path: Path, spec: MnistFile, *, ndim: int, verify: bool) -> np.ndarray:
    data = _read_bytes(path)
    array = _parse_idx(data, path, ndim=ndim)
    if verify:
        digest = _md5(data)
        if digest != spec.content_md5:
            raise MnistDataError(
                f"{path}: MD5 of the content is {digest}, expected {spec.content_md5}"
                " (corrupt or not the original MNIST file)"
            )
        if array.shape[0] != spec.count:
            raise MnistDataError(f"{path}: holds {array.shape[0]} items, expected {spec.count}")
    return array


def _download(url: str, dest: Path, *, timeout: float) -> None:
    """Stream ``url`` into ``dest`` with a progress bar. Tests replace this function."""
    with urllib.request.urlopen(url, timeout=timeout) as response, dest.open("wb") as out:
        total = int(response.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=url.rsplit("/", 1)[-1]) as bar:
            while chunk := response.read(1 << 16):
                out.write(chunk)
                bar.update(len(chunk))


def _fetch(spec: MnistFile, folder: Path) -> None:
    """Download one ``.gz`` file, trying each mirror; keep it only once both checksums
    match, and move it into place atomically so a killed download leaves no half file."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{spec.name}.gz"
    failures: list[str] = []
    for mirror in MIRRORS:
        url = mirror + target.name
        handle, temp_name = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".part")
        os.close(handle)
        temp = Path(temp_name)
        try:
            logger.info("downloading %s", url)
            _download(url, temp, timeout=DOWNLOAD_TIMEOUT_S)
            packed = temp.read_bytes()
            if _md5(packed) != spec.gz_md5:
                failures.append(f"{url}: MD5 mismatch")
                continue
            if _md5(gzip.decompress(packed)) != spec.content_md5:
                failures.append(f"{url}: content MD5 mismatch")
                continue
            os.replace(temp, target)
            return
        except (OSError, EOFError, zlib.error) as error:
            # URLError and socket timeouts are OSErrors: an offline machine lands here.
            reason = getattr(error, "reason", error)
            failures.append(f"{url}: {reason}")
        finally:
            temp.unlink(missing_ok=True)
    raise OSError("; ".join(failures))


def _ensure_files(folder: Path, *, download: bool) -> dict[str, Path]:
    missing = [key for key, spec in MNIST_FILES.items() if _find(folder, spec) is None]
    why = "download disabled"
    if missing and download:
        try:
            for key in missing:
                _fetch(MNIST_FILES[key], folder)
            missing = []
        except OSError as error:
            missing = [key for key in missing if _find(folder, MNIST_FILES[key]) is None]
            why = f"download failed: {error}"
    if missing:
        names = ", ".join(f"{MNIST_FILES[key].name}.gz" for key in missing)
        raise MnistMissingError(
            f"MNIST files missing in {folder} ({why}): point --data-dir or ${ENV_VAR} at"
            f" a folder that holds {names} (gzip'd or not), or put them in {folder}"
        )
    return {key: _find(folder, spec) for key, spec in MNIST_FILES.items()}  # type: ignore[misc]


def load_mnist(
    data_dir: str | Path | None = None, *, download: bool = True, verify: bool = True
) -> dict[str, torch.Tensor]:
    """Read MNIST as tensors: ``train_images`` uint8 (60000, 28, 28), ``train_labels``
    int64 (60000,), ``test_images`` (10000, 28, 28) and ``test_labels`` (10000,).

    ``data_dir`` is resolved by :func:`resolve_data_dir`; see :func:`mnist_folder` for
    where the files are looked up. Missing files are downloaded when ``download`` is
    true. ``verify=False`` skips the checksums and expected counts; it exists only for
    small synthetic fixtures in tests.
    """
    folder = mnist_folder(resolve_data_dir(data_dir))
    paths = _ensure_files(folder, download=download)
    arrays = {
        key: _read_idx(path, MNIST_FILES[key], ndim=_ndim(key), verify=verify)
        for key, path in paths.items()
    }
    for part in ("train", "test"):
        images, labels = arrays[f"{part}_images"], arrays[f"{part}_labels"]
        if images.shape[0] != labels.shape[0]:
            raise MnistDataError(
                f"{paths[f'{part}_labels']}: {labels.shape[0]} labels for"
                f" {images.shape[0]} images in {paths[f'{part}_images']}"
            )
        if labels.size and labels.max() > 9:
            raise MnistDataError(f"{paths[f'{part}_labels']}: label {labels.max()} is not a digit")
    logger.debug("loaded MNIST from %s", folder)
    tensors = {key: torch.from_numpy(array.copy()) for key, array in arrays.items()}
    for key in ("train_labels", "test_labels"):
        tensors[key] = tensors[key].long()
    return tensors
