"""The Biased MNIST protocol (DESIGN.md §3): colour assignment, rendering, splits."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from endebias.data import Benchmark, biased_mnist, build_dataset, dataset_names
from endebias.data.biased_mnist_protocol import (
    COLOURS,
    VALID_RHO,
    _make_split,
    assign_colours,
    colour_names,
    render,
)
from endebias.data.mnist import load_mnist
from mnist_fixtures import real_mnist_dir, use_checksums, write_mnist


def _labels(counts: list[int], *, seed: int = 0) -> torch.Tensor:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


def _expected_chunks(n_c: int, rho: float, n_confusing: int) -> tuple[int, list[int]]:
    """Own-colour count and conflicting chunk sizes, from the protocol's text."""
    n_aligned = int(n_c * rho)
    rest = n_c - n_aligned
    if rest == 0:
        return n_aligned, []
    size = math.ceil(rest / n_confusing)
    sizes = [min(size, rest - k * size) for k in range(n_confusing)]
    return n_aligned, sorted(s for s in sizes if s > 0)


def _check_protocol(labels: torch.Tensor, biases: torch.Tensor, rho: float, n_confusing: int):
    for c in range(10):
        own = biases[labels == c]
        n_aligned, chunks = _expected_chunks(len(own), rho, n_confusing)
        assert int((own == c).sum()) == n_aligned
        allowed = {(c + 1 + k) % 10 for k in range(n_confusing)}
        conflicting = own[own != c]
        assert set(conflicting.tolist()) <= allowed
        # Chunks go to a shuffled order of colours, so compare sizes as multisets.
        sizes = sorted(n for n in conflicting.bincount(minlength=10).tolist() if n)
        assert sizes == chunks


@pytest.mark.parametrize(
    "rho, n_confusing",
    [(0.997, 9), (0.9, 9), (0.5, 4), (0.1, 9), (0.0, 9), (1.0, 9), (0.7, 1), (0.95, 3)],
)
def test_assign_colours_follows_protocol(rho: float, n_confusing: int) -> None:
    counts = [592, 674, 595, 613, 584, 542, 591, 626, 585, 594]
    labels = _labels(counts)
    biases = assign_colours(labels, rho, n_confusing=n_confusing, generator=torch.Generator())
    assert biases.dtype == torch.int64 and biases.shape == labels.shape
    _check_protocol(labels, biases, rho, n_confusing)


def test_assign_colours_uses_python_float_truncation() -> None:
    # 100 * 0.29 == 28.999999999999996 in binary floating point: int() gives 28, not 29.
    labels = torch.zeros(100, dtype=torch.int64)
    biases = assign_colours(labels, 0.29, generator=torch.Generator())
    assert int((biases == 0).sum()) == 28


def test_assign_colours_seeding() -> None:
    labels = _labels([300] * 10)

    def run(seed: int) -> torch.Tensor:
        return assign_colours(labels, 0.5, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rho": 1.5}, "rho"),
        ({"rho": -0.1}, "rho"),
        ({"rho": float("nan")}, "rho"),
        ({"rho": 0.5, "n_confusing": 0}, "n_confusing"),
        ({"rho": 0.5, "n_confusing": 10}, "n_confusing"),
        ({"rho": 0.5, "n_confusing": 2.0}, "n_confusing"),
    ],
)
def test_assign_colours_rejects_bad_options(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        assign_colours(torch.zeros(5, dtype=torch.int64), generator=torch.Generator(), **kwargs)


def test_assign_colours_rejects_bad_labels() -> None:
    with pytest.raises(ValueError, match="digits"):
        assign_colours(torch.tensor([0, 10]), 0.5, generator=torch.Generator())
    with pytest.raises(ValueError, match="integer"):
        assign_colours(torch.tensor([0.0, 1.0]), 0.5, generator=torch.Generator())


def test_render_rule_on_hand_made_images() -> None:
    images = torch.zeros(3, 28, 28, dtype=torch.uint8)
    images[0, 0, 0] = 1  # faintest ink still counts as foreground
    images[1, 5:9, 5:9] = 255
    images[2, 27, 27] = 128
    biases = torch.tensor([0, 7, 9])
    out = render(images, biases)
    assert out.dtype == torch.uint8 and out.shape == (3, 3, 28, 28)
    assert out[0, :, 0, 0].tolist() == [255, 255, 255]
    assert out[0, :, 0, 1].tolist() == list(COLOURS[0])
    assert (out[1, :, 5:9, 5:9] == 255).all()
    background = images[1] == 0
    for channel, value in enumerate(COLOURS[7]):
        assert (out[1, channel][background] == value).all()
    assert out[2, :, 27, 27].tolist() == [255, 255, 255]
    assert out[2, :, 0, 0].tolist() == [128, 128, 128]


def test_render_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="uint8"):
        render(torch.zeros(2, 28, 28), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="one bias per image"):
        render(torch.zeros(2, 28, 28, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))


def test_colour_table() -> None:
    assert len(COLOURS) == 10 and len(colour_names()) == 10
    assert COLOURS[3] == (225, 225, 0) and COLOURS[9] == (128, 128, 128)
    assert len(set(COLOURS)) == 10 and len(set(colour_names())) == 10


@pytest.fixture
def fixture_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    table, _ = write_mnist(tmp_path / "mnist", n_train=1000, n_test=200)
    use_checksums(monkeypatch, table)
    return tmp_path


def test_splits_sizes_and_types(fixture_root: Path) -> None:
    images, targets, biases = biased_mnist(fixture_root, split="train", rho=0.9)
    assert images.shape == (1000, 3, 28, 28) and images.dtype == torch.uint8
    assert targets.dtype == torch.int64 and biases.dtype == torch.int64
    _check_protocol(targets, biases, 0.9, 9)
    images, targets, biases = biased_mnist(fixture_root, split="valid", rho=0.9)
    assert len(targets) == 300  # 30 %
    _check_protocol(targets, biases, VALID_RHO, 9)
    images, targets, biases = biased_mnist(fixture_root, split="test", rho=1.0)
    assert len(targets) == 200 and torch.equal(targets, biases)


def test_seed_changes_colours_not_valid_digits(fixture_root: Path) -> None:
    first = biased_mnist(fixture_root, split="train", rho=0.5, seed=1)
    again = biased_mnist(fixture_root, split="train", rho=0.5, seed=1)
    other = biased_mnist(fixture_root, split="train", rho=0.5, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not torch.equal(first[2], other[2])
    valid_1 = biased_mnist(fixture_root, split="valid", rho=0.5, seed=1)
    valid_2 = biased_mnist(fixture_root, split="valid", rho=0.5, seed=2)
    assert torch.equal(valid_1[1], valid_2[1])  # same digits ...
    assert not torch.equal(valid_1[2], valid_2[2])  # ... other colours
    # The valid split ignores rho.
    assert torch.equal(valid_1[2], biased_mnist(fixture_root, split="valid", rho=0.99, seed=1)[2])


BITS = 10  # enough to number the 1000 fixture training images


def _tag_images(count: int) -> torch.Tensor:
    """Images whose first row spells their index in binary (lit pixel = 1 bit)."""
    bits = (torch.arange(count)[:, None] >> torch.arange(BITS)) & 1
    images = torch.zeros(count, 28, 28, dtype=torch.uint8)
    images[:, 0, :BITS] = bits.to(torch.uint8) * 200
    return images


def _read_tags(rendered: torch.Tensor) -> set[int]:
    # White is (255, 255, 255), which no background colour is.
    bits = (rendered[:, :, 0, :BITS] == 255).all(dim=1).long()
    return set((bits << torch.arange(BITS)).sum(dim=1).tolist())


def test_heldout_validation_is_disjoint(fixture_root: Path) -> None:
    mnist = dict(load_mnist(fixture_root))
    mnist["train_images"] = _tag_images(1000)

    def ids(split: str, validation: str) -> set[int]:
        inputs, _, _ = _make_split(
            mnist, split=split, rho=0.9, n_confusing=9, seed=0, validation=validation
        )
        assert len(_read_tags(inputs)) == len(inputs)
        return _read_tags(inputs)

    assert ids("train", "official") == set(range(1000))
    train, valid = ids("train", "heldout"), ids("valid", "heldout")
    assert len(valid) == 300 and len(train) == 700
    assert train.isdisjoint(valid) and train | valid == set(range(1000))
    assert valid == ids("valid", "official")


def test_bad_split_and_options(fixture_root: Path) -> None:
    with pytest.raises(ValueError, match="unknown split 'val'"):
        biased_mnist(fixture_root, split="val", rho=0.9)
    with pytest.raises(ValueError, match="validation"):
        biased_mnist(fixture_root, split="train", rho=0.9, validation="disjoint")
    with pytest.raises(ValueError, match="rho"):
        biased_mnist(fixture_root, split="train", rho=2)
    with pytest.raises(ValueError, match="unknown option.*colour_jitter"):
        build_dataset("biased-mnist", data_dir=fixture_root, colour_jitter=0.1)


def test_registered_benchmark(fixture_root: Path) -> None:
    assert "biased-mnist" in dataset_names()
    bench = build_dataset("biased-mnist", data_dir=fixture_root, rho=0.9, seed=5, device="cpu")
    assert isinstance(bench, Benchmark)
    assert list(bench.evaluations) == ["valid", "biased_test", "unbiased_test"]
    assert len(bench.train) == 1000 and len(bench.evaluations["valid"]) == 300
    assert bench.train.inputs.dtype == torch.uint8
    biased = bench.evaluations["biased_test"]
    assert torch.equal(biased.targets, biased.biases)
    assert bench.input_shape == (3, 28, 28) and bench.num_biases == bench.num_targets == 10
    assert bench.bias_names == colour_names() and bench.target_names[7] == "7"
    assert bench.info["rho"] == 0.9 and bench.info["seed"] == 5
    assert bench.prepare(bench.train.inputs[:2]).min() >= -1.0


@pytest.fixture(scope="module")
def real_folder() -> Path:
    folder = real_mnist_dir()
    if folder is None:
        pytest.skip("real MNIST not found in $ENDEBIAS_DATA or ../shared/data/mnist")
    return folder


@pytest.fixture(scope="module")
def real_labels(real_folder: Path) -> torch.Tensor:
    return load_mnist(real_folder, download=False)["train_labels"]


def test_real_mnist_counts_at_rho_0999(real_labels: torch.Tensor) -> None:
    biases = assign_colours(real_labels, 0.999, generator=torch.Generator().manual_seed(0))
    _check_protocol(real_labels, biases, 0.999, 9)
    counts = real_labels.bincount().tolist()
    conflicting = int((biases != real_labels).sum())
    assert conflicting == sum(n - int(n * 0.999) for n in counts) == 63


def test_real_mnist_valid_split_near_uniform(real_labels: torch.Tensor) -> None:
    mnist = {"train_images": torch.zeros(60000, 28, 28, dtype=torch.uint8)}
    mnist["train_labels"] = real_labels
    _, targets, biases = _make_split(
        mnist, split="valid", rho=0.999, n_confusing=9, seed=0, validation="official"
    )
    assert len(targets) == 18000
    shares = biases.bincount(minlength=10).float() / 18000
    assert ((shares - 0.1).abs() < 0.01).all()
    assert abs(float((targets == biases).float().mean()) - 0.1) < 0.005


def test_real_mnist_benchmark(real_folder: Path) -> None:
    bench = build_dataset("biased-mnist", data_dir=real_folder, rho=0.999, seed=0)
    train = bench.train
    assert train.inputs.shape == (60000, 3, 28, 28)
    assert int((train.targets != train.biases).sum()) == 63
    sizes = {name: len(split) for name, split in bench.evaluations.items()}
    assert sizes == {"valid": 18000, "biased_test": 10000, "unbiased_test": 10000}
    unbiased = bench.evaluations["unbiased_test"]
    assert abs(float((unbiased.targets == unbiased.biases).float().mean()) - 0.1) < 0.01
