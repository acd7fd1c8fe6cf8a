"""`make data` (run by `make demo`): the MNIST copy beside a checkout is linked into the
user cache, so that `endebias train` afterwards finds, through the library's one lookup,
the files that `make demo` found; the Makefile itself passes no data folder."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from endebias.data import mnist
from mnist_fixtures import use_checksums, write_mnist

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make on this machine")


def _make_data(tmp_path: Path, *, env_data: str | None = None) -> subprocess.CompletedProcess:
    """`make data` in a checkout at tmp_path/checkout, HOME at tmp_path/home."""
    env = {k: v for k, v in os.environ.items() if k != mnist.ENV_VAR}
    env["HOME"] = str(tmp_path / "home")
    if env_data is not None:
        env[mnist.ENV_VAR] = env_data
    return subprocess.run(["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "data"],
                          cwd=tmp_path / "checkout", env=env, capture_output=True, text=True,
                          check=True)


@pytest.fixture
def beside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A checkout with small MNIST files in ../shared/data/mnist, and a fresh HOME."""
    (tmp_path / "checkout").mkdir()
    (tmp_path / "home").mkdir()
    table, arrays = write_mnist(tmp_path / "shared" / "data" / "mnist")
    use_checksums(monkeypatch, table)
    return tmp_path, arrays


def test_links_the_copy_beside_the_checkout_into_the_cache(beside, monkeypatch) -> None:
    tmp_path, arrays = beside
    done = _make_data(tmp_path)
    link = tmp_path / "home" / ".cache" / "endebias" / "mnist"
    assert link.is_symlink() and link.resolve() == (tmp_path / "shared/data/mnist").resolve()
    assert f"linked {link}" in done.stdout
    # What `endebias train` does without --data-dir or $ENDEBIAS_DATA: the user cache.
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(mnist.ENV_VAR, raising=False)
    loaded = mnist.load_mnist(download=False)
    assert (loaded["test_labels"].numpy() == arrays["test_labels"]).all()
    # A second run changes nothing and says nothing.
    assert _make_data(tmp_path).stdout == ""
    assert link.is_symlink()


def test_leaves_an_existing_cache_and_env_alone(beside) -> None:
    tmp_path, _ = beside
    cached = tmp_path / "home" / ".cache" / "endebias" / "mnist"
    cached.mkdir(parents=True)
    assert _make_data(tmp_path).stdout == ""
    assert cached.is_dir() and not cached.is_symlink() and not any(cached.iterdir())
    shutil.rmtree(cached)
    # $ENDEBIAS_DATA already says where the data is: nothing to link.
    assert _make_data(tmp_path, env_data=str(tmp_path / "elsewhere")).stdout == ""
    assert not cached.exists()


def test_no_copy_beside_no_link(tmp_path: Path) -> None:
    (tmp_path / "checkout").mkdir()
    (tmp_path / "home").mkdir()
    assert _make_data(tmp_path).stdout == ""
    assert not (tmp_path / "home" / ".cache").exists()


def test_demo_passes_no_data_folder() -> None:
    planned = subprocess.run(["make", "-n", "demo"], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    demo = [line for line in planned.splitlines() if "endebias demo" in line]
    assert demo and all("--data-dir" not in line for line in demo), planned
