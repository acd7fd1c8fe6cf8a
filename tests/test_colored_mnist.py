"""Colored MNIST with colour variance: colour statistics, independence, quantisation."""

from __future__ import annotations

import pytest
import torch

from endebias.data import build_dataset, dataset_names
from endebias.data.colored_mnist import (
    BIAS_NAMES,
    MEAN_COLOURS,
    colour_digits,
    colours_to_uint8,
    draw_colours,
    make_split,
    quantise,
)
from mnist_fixtures import use_checksums, write_mnist


@pytest.mark.parametrize("sigma2", [0.02, 0.05])
def test_drawn_colours_have_requested_mean_and_variance(sigma2: float) -> None:
    classes = torch.arange(10).repeat_interleave(4000)
    colours = draw_colours(classes, sigma2=sigma2, generator=torch.Generator().manual_seed(1))
    for c in range(10):
        own = colours[classes == c]
        # Standard error of a mean over 4000 draws is sigma/63: 5 of them is generous.
        tolerance = 5 * (sigma2 / 4000) ** 0.5
        mean = torch.tensor(MEAN_COLOURS[c], dtype=own.dtype)
        assert torch.allclose(own.mean(0), mean, atol=tolerance)
        # The sample variance over 4000 draws has a relative standard error of ~2.2 %.
        assert torch.allclose(own.var(0), torch.full((3,), sigma2, dtype=own.dtype), rtol=0.1)
    # Channels jitter independently.
    centred = colours - torch.tensor(MEAN_COLOURS, dtype=colours.dtype)[classes]
    correlation = torch.corrcoef(centred.T)
    assert (correlation - torch.eye(3)).abs().max() < 0.05


def test_stored_stroke_colours_match_the_class_mean_and_variance() -> None:
    """The uint8 images themselves, at a variance small enough that clipping is rare
    (the class means sit >= 2.8 sigma inside [0, 1])."""
    images, targets = _digits(20_000, seed=5)
    split = make_split(images, targets, random_colours=False, sigma2=0.005,
                       generator=torch.Generator().manual_seed(2))
    colours = _stroke_colours(split)
    for c in range(10):
        own = colours[split.targets == c]
        mean = torch.tensor(MEAN_COLOURS[c], dtype=own.dtype)
        assert torch.allclose(own.mean(0), mean, atol=0.006)
        assert torch.allclose(own.var(0), torch.full((3,), 0.005, dtype=own.dtype), rtol=0.15)


def test_rendered_strokes_carry_the_colour_on_black() -> None:
    images = torch.zeros(3, 4, 4, dtype=torch.uint8)
    images[:, 1:3, 1:3] = 255
    images[:, 0, 0] = 128  # an anti-aliased edge pixel keeps its shading
    colours = torch.tensor([[204, 51, 51], [0, 255, 10], [128, 127, 255]], dtype=torch.uint8)
    rendered = colour_digits(images, colours)
    assert rendered.dtype == torch.uint8 and rendered.shape == (3, 3, 4, 4)
    assert torch.equal(rendered[:, :, 1, 1], colours)
    assert rendered[:, :, 3, 3].eq(0).all()  # background black
    assert torch.equal(rendered[:, :, 0, 0], ((colours.int() * 128 + 127) // 255).to(torch.uint8))


def test_quantisation_is_one_bit_per_channel_at_half_intensity() -> None:
    colours = torch.tensor(
        [[0, 0, 0], [0, 0, 128], [0, 127, 0], [0, 200, 255], [128, 0, 0], [255, 0, 130],
         [255, 128, 127], [128, 128, 128], [127, 127, 127]],
        dtype=torch.uint8,
    )
    assert quantise(colours).tolist() == [0, 1, 0, 3, 4, 5, 6, 7, 0]
    assert BIAS_NAMES[quantise(colours_to_uint8(torch.tensor([[0.9, 0.1, 0.1]])))[0]] == "red"
    # Out-of-range draws are clipped before quantising.
    clipped = colours_to_uint8(torch.tensor([[-0.3, 1.4, 0.5]], dtype=torch.float64))
    assert clipped.tolist() == [[0, 255, 128]]


def _digits(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 6, 6, dtype=torch.uint8)
    images[:, 2:4, 2:4] = 255
    targets = torch.randint(10, (n,), generator=generator)
    return images, targets


def _stroke_colours(split) -> torch.Tensor:
    return split.inputs[:, :, 2, 2].double() / 255


def test_training_colours_follow_the_class_and_test_colours_ignore_it() -> None:
    images, targets = _digits(20_000)
    own = make_split(images, targets, random_colours=False, sigma2=0.02,
                     generator=torch.Generator().manual_seed(0))
    means = torch.tensor(MEAN_COLOURS, dtype=torch.float64)
    distance_own = (_stroke_colours(own) - means[targets]).norm(dim=1)
    assert distance_own.mean() < 0.3  # ~ sqrt(3 * 0.02) = 0.245, a little less after clipping
    # The bias label is the quantised stored colour.
    assert torch.equal(own.biases, quantise(own.inputs[:, :, 2, 2]))

    rand = make_split(images, targets, random_colours=True, sigma2=0.02,
                      generator=torch.Generator().manual_seed(1))
    # Independence: the joint (digit, bias) table factorises into its marginals.
    joint = torch.zeros(10, 8, dtype=torch.float64)
    joint.index_put_((rand.targets, rand.biases), torch.ones(len(rand), dtype=torch.float64),
                     accumulate=True)
    joint /= joint.sum()
    expected = joint.sum(1, keepdim=True) * joint.sum(0, keepdim=True)
    n = len(rand)
    chi2 = float(((joint - expected) ** 2 / expected.clamp_min(1e-12)).sum() * n)
    # 63 degrees of freedom: the 99.9 % quantile is about 104.
    assert chi2 < 104
    # And the colour is no better than chance at telling the digit: each digit's mean
    # stroke colour is the average of the ten class means.
    for c in range(10):
        assert torch.allclose(_stroke_colours(rand)[rand.targets == c].mean(0), means.mean(0),
                              atol=0.05)


def test_builder_is_deterministic_and_documents_its_splits(tmp_path, monkeypatch) -> None:
    table, arrays = write_mnist(tmp_path / "mnist", n_train=600, n_test=100)
    use_checksums(monkeypatch, table)
    assert "colored-mnist" in dataset_names()
    first = build_dataset("colored-mnist", data_dir=str(tmp_path), seed=3, sigma2=0.05)
    again = build_dataset("colored-mnist", data_dir=str(tmp_path), seed=3, sigma2=0.05)
    other = build_dataset("colored-mnist", data_dir=str(tmp_path), seed=4, sigma2=0.05)
    assert list(first.evaluations) == ["valid", "biased_test", "unbiased_test"]
    assert first.num_biases == 8 and first.input_shape == (3, 28, 28)
    for name in ("train", *first.evaluations):
        a = first.train if name == "train" else first.evaluations[name]
        b = again.train if name == "train" else again.evaluations[name]
        c = other.train if name == "train" else other.evaluations[name]
        assert a.inputs.dtype == torch.uint8
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.biases, b.biases)
        assert not torch.equal(a.inputs, c.inputs)
    # valid is held out of train: sizes add up, and the same digits for every seed.
    assert len(first.train) + len(first.evaluations["valid"]) == 600
    assert torch.equal(first.evaluations["valid"].targets, other.evaluations["valid"].targets)
    # Both test sets show the same test digits.
    test_labels = torch.from_numpy(arrays["test_labels"]).long()
    assert torch.equal(first.evaluations["biased_test"].targets, test_labels)
    assert torch.equal(first.evaluations["unbiased_test"].targets, test_labels)


def test_bad_options_are_named() -> None:
    with pytest.raises(ValueError, match="sigma2"):
        build_dataset("colored-mnist", sigma2=-0.1)
    with pytest.raises(ValueError, match="unknown option.*rho"):
        build_dataset("colored-mnist", rho=0.9)


def test_trains_through_the_unchanged_trainer(tmp_path, monkeypatch) -> None:
    from endebias.training.config import QUICK, TrainConfig
    from endebias.training.fit import fit

    table, _ = write_mnist(tmp_path / "mnist", n_train=300, n_test=60)
    use_checksums(monkeypatch, table)
    config = TrainConfig(dataset="colored-mnist", dataset_options={"sigma2": 0.05},
                         model_options=QUICK["model_options"], method="end", epochs=1,
                         batch_size=64, device="cpu")
    best = fit(config, tmp_path / "run", data_dir=str(tmp_path), progress=False)
    assert {"valid_acc", "biased_test_acc", "unbiased_test_acc_conflicting"} <= set(best)
