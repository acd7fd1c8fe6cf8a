"""Small synthetic MNIST files for tests: real IDX layout, made-up digits.

``write_mnist`` writes the four files (raw or gzip'd) and returns a checksum table in
the form of ``endebias.data.mnist.MNIST_FILES``; ``use_checksums`` installs it, so tests
exercise the verifying code path rather than switching verification off.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest

from endebias.data import mnist

REAL_MNIST_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def real_mnist_dir() -> Path | None:
    """Where the real MNIST files are, if anywhere: ``$ENDEBIAS_DATA`` or the shared
    data folder beside the checkout."""
    for candidate in (os.environ.get(mnist.ENV_VAR), REAL_MNIST_DIR):
        if candidate:
            folder = mnist.mnist_folder(Path(candidate))
            if all(mnist._find(folder, spec) for spec in mnist.MNIST_FILES.values()):
                return folder
    return None


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array in IDX: magic 0x0000_08_<ndim>, big-endian dims, values."""
    header = (0x0800 + array.ndim).to_bytes(4, "big")
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def make_arrays(n_train: int, n_test: int, *, seed: int = 0) -> dict[str, np.ndarray]:
    """Random images (about a third of the pixels lit) and unbalanced labels, so that
    class sizes differ as they do in MNIST."""
    rng = np.random.default_rng(seed)
    weights = np.linspace(1.0, 2.0, 10)
    weights /= weights.sum()
    arrays = {}
    for part, n in (("train", n_train), ("test", n_test)):
        lit = rng.random((n, 28, 28)) < 0.3
        arrays[f"{part}_images"] = np.where(lit, rng.integers(1, 256, (n, 28, 28)), 0).astype(
            np.uint8
        )
        arrays[f"{part}_labels"] = rng.choice(10, size=n, p=weights).astype(np.uint8)
    return arrays


def write_mnist(
    folder: Path, *, n_train: int = 200, n_test: int = 50, compress: bool = True, seed: int = 0
) -> tuple[dict[str, mnist.MnistFile], dict[str, np.ndarray]]:
    """Write the four files into ``folder``; returns (checksum table, arrays)."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = make_arrays(n_train, n_test, seed=seed)
    table = {}
    for key, spec in mnist.MNIST_FILES.items():
        content = idx_bytes(arrays[key])
        packed = gzip.compress(content, compresslevel=1, mtime=0)
        if compress:
            (folder / f"{spec.name}.gz").write_bytes(packed)
        else:
            (folder / spec.name).write_bytes(content)
        table[key] = mnist.MnistFile(
            spec.name,
            hashlib.md5(content).hexdigest(),
            hashlib.md5(packed).hexdigest(),
            len(arrays[key]),
        )
    return table, arrays


def use_checksums(monkeypatch: pytest.MonkeyPatch, table: dict[str, mnist.MnistFile]) -> None:
    monkeypatch.setattr(mnist, "MNIST_FILES", table)
