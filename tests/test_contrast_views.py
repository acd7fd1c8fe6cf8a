"""BiasCon's and SoftCon's second batch: the image views (against colorsys, Pillow and
torch.rot90), the over-sampling weights (against loops over their definitions), the seeded
draws (resumable through the state_dict), and both methods' steps on it."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance
from torch import nn

from endebias.data import scale_uint8_images
from endebias.methods import StageResult, TrainingRows, build_method
from endebias.methods.contrast_batch import (
    ContrastBatches,
    oversampling_weights,
    soft_oversampling_weights,
)
from endebias.methods.contrastive_losses import bias_contrastive, soft_bias_contrastive
from endebias.methods.views import augment_images, colour_jitter, hsv_to_rgb, rgb_to_hsv, rotate
from endebias.models import build_model

IDENTITY = (1.0, 1.0, 1.0, 0.0)  # brightness, contrast, saturation, hue shift


def _images(count=4, size=(6, 6), seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, *size), dtype=torch.uint8, generator=generator)


def _one_op(images, column, factor):
    """Only operation ``column`` applied (the others at their identity)."""
    factors = torch.tensor(IDENTITY).repeat(len(images), 1)
    factors[:, column] = factor
    order = torch.tensor([column] + [c for c in range(4) if c != column]).repeat(len(images), 1)
    out = colour_jitter(images.float() / 255, factors, order)
    return (out * 255).round().to(torch.uint8)


def test_hsv_round_trip_matches_colorsys_pixel_by_pixel():
    rgb = torch.rand(2, 3, 5, 5, dtype=torch.float64)
    rgb[0, :, 0, 0] = torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64)  # grey: no hue
    rgb[0, :, 0, 1] = 0.0  # black
    hsv = rgb_to_hsv(rgb)
    for n in range(2):
        for i in range(5):
            for j in range(5):
                want = colorsys.rgb_to_hsv(*rgb[n, :, i, j].tolist())
                assert hsv[n, :, i, j].tolist() == pytest.approx(want, abs=1e-9)
    torch.testing.assert_close(hsv_to_rgb(hsv), rgb)


def test_hue_shift_matches_colorsys():
    images = _images()
    shifted = _one_op(images, 3, -0.08)
    for n in range(len(images)):
        for i in range(6):
            for j in range(6):
                h, s, v = colorsys.rgb_to_hsv(*(images[n, :, i, j].double() / 255).tolist())
                want = [round(255 * c) for c in colorsys.hsv_to_rgb((h - 0.08) % 1.0, s, v)]
                got = shifted[n, :, i, j].tolist()
                assert max(abs(a - b) for a, b in zip(got, want, strict=True)) <= 1


@pytest.mark.parametrize(("column", "enhancer"),
                         [(0, ImageEnhance.Brightness), (1, ImageEnhance.Contrast),
                          (2, ImageEnhance.Color)])
@pytest.mark.parametrize("factor", [0.6, 1.37])
def test_brightness_contrast_saturation_match_pillow(column, enhancer, factor):
    images = _images(count=3, size=(8, 7))
    ours = _one_op(images, column, factor)
    for n in range(len(images)):
        picture = Image.fromarray(images[n].permute(1, 2, 0).numpy(), mode="RGB")
        want = np.asarray(enhancer(picture).enhance(factor)).astype(int)
        got = ours[n].permute(1, 2, 0).numpy().astype(int)
        # Pillow rounds its grey levels and mean to integers before blending.
        assert np.abs(got - want).max() <= 2, (column, factor)


def test_rotation_is_exact_for_right_angles_and_rotates_about_the_centre():
    square = torch.rand(3, 2, 6, 6)
    turned = rotate(square, torch.tensor([90.0, 180.0, 0.0]))
    torch.testing.assert_close(turned[0], torch.rot90(square[0], 1, dims=(1, 2)), rtol=0, atol=0)
    torch.testing.assert_close(turned[1], torch.rot90(square[1], 2, dims=(1, 2)), rtol=0, atol=0)
    torch.testing.assert_close(turned[2], square[2], rtol=0, atol=0)
    wide = torch.rand(1, 1, 4, 8)
    torch.testing.assert_close(rotate(wide, torch.tensor([180.0])), wide.flip(2, 3),
                               rtol=0, atol=0)


def test_augment_is_a_function_of_the_generator_and_identity_when_switched_off():
    images = _images(count=16, size=(28, 28))
    first = augment_images(images, torch.Generator().manual_seed(5))
    again = augment_images(images, torch.Generator().manual_seed(5))
    other = augment_images(images, torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert first.dtype == torch.uint8 and first.shape == images.shape
    still = augment_images(images, torch.Generator().manual_seed(5), max_degrees=0.0,
                           jitter_p=0.0)
    assert torch.equal(still, images)


def test_augment_refuses_what_is_not_a_uint8_image_batch():
    with pytest.raises(ValueError, match="uint8 images"):
        augment_images(torch.rand(2, 3, 4, 4), torch.Generator())
    with pytest.raises(ValueError, match="uint8 images"):
        augment_images(torch.zeros(2, 4, dtype=torch.uint8), torch.Generator())


def test_oversampling_weights_match_their_definition():
    targets = torch.tensor([0] * 9 + [1] * 5 + [0])
    biases = torch.tensor([0] * 8 + [1] + [1] * 5 + [1])
    for ratio in (1.0, 3.0, 100.0):
        got = oversampling_weights(targets, biases, num_targets=2, num_biases=2, ratio=ratio)
        raw = []
        for t, b in zip(targets.tolist(), biases.tolist(), strict=True):
            in_target = [bb for tt, bb in zip(targets.tolist(), biases.tolist(), strict=True)
                         if tt == t]
            raw.append(len(in_target) / in_target.count(b))
        cap = ratio * min(raw)
        assert got.tolist() == pytest.approx([min(w, cap) for w in raw])
    uniform = oversampling_weights(targets, biases, num_targets=2, num_biases=2, ratio=1.0)
    assert torch.all(uniform == uniform[0])


def _rows(count=200, rho=0.95, seed=0):
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, 2, (count,), generator=generator)
    conflicting = torch.rand(count, generator=generator) > rho
    biases = torch.where(conflicting, 1 - targets, targets)
    images = torch.randint(0, 256, (count, 3, 8, 8), dtype=torch.uint8, generator=generator)
    return TrainingRows(images, targets, biases, prepare=scale_uint8_images)


def _group_weights(rows, ratio):
    return oversampling_weights(rows.targets, rows.biases, num_targets=2, num_biases=2,
                                ratio=ratio)


def test_draws_over_sample_the_conflicting_groups_as_capped():
    rows = _rows(count=2000, rho=0.97)
    torch.manual_seed(0)
    batches = ContrastBatches(_group_weights(rows, 4.0),
                              size=512, augment=False)
    _, targets, biases, _ = batches.draw(rows)
    share = float((targets != biases).float().mean())
    conflicting = float((rows.targets != rows.biases).float().mean())
    expected = 4 * conflicting / (4 * conflicting + (1 - conflicting))
    assert share == pytest.approx(expected, abs=0.05)
    assert share > 2 * conflicting


def test_draws_resume_from_the_state_dict_and_come_in_two_views():
    rows = _rows()
    torch.manual_seed(1)
    running = ContrastBatches(_group_weights(rows, 10.0),
                              size=8, augment=True)
    running.draw(rows)
    saved = running.state_dict()
    expected = running.draw(rows)
    torch.manual_seed(99)  # a fresh build draws another seed; the state brings it back
    resumed = ContrastBatches(_group_weights(rows, 10.0),
                              size=8, augment=True)
    resumed.load_state_dict(saved)
    got = resumed.draw(rows)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)
    inputs, targets, biases, chosen = got
    assert inputs.shape == (16, 3, 8, 8)
    assert torch.equal(targets[:8], targets[8:]) and torch.equal(biases[:8], biases[8:])
    assert torch.equal(targets[:8], rows.targets[chosen])


def test_views_without_augmentation_are_the_drawn_rows_twice():
    rows = _rows()
    torch.manual_seed(2)
    batches = ContrastBatches(_group_weights(rows, 10.0),
                              size=6, augment=False)
    inputs, _, _, _ = batches.draw(rows)
    assert torch.equal(inputs[:6], inputs[6:])


def _tiny_conv(channels, kernel_size):
    return build_model("simple-conv", num_classes=2, input_shape=(3, 8, 8),
                       channels=channels, kernel_size=kernel_size)


def _contrastive(name, rows, **options):
    """``name`` (biascon or softcon) on a tiny SimpleConvNet, handed ``rows`` as the
    trainer hands them; softcon gets a frozen 1x1 bias network as its first stage."""
    torch.manual_seed(0)
    if name == "softcon":
        stage = StageResult(build_method("vanilla", model=_tiny_conv([4, 6], 1), num_targets=2,
                                         num_biases=2, train_targets=rows.targets,
                                         train_biases=rows.biases), torch.zeros(len(rows), 2))
        options = {"first_stage": stage, **options}
    method = build_method(name, model=_tiny_conv([4, 8], 3), num_targets=2, num_biases=2,
                          train_targets=rows.targets, train_biases=rows.biases,
                          temperature=0.5, ce_weight=0.1, **options)
    method.training_rows = rows
    return method


def _biascon(rows, **options):
    return _contrastive("biascon", rows, **options)


def _layer_output(model, layer, inputs):
    captured = []
    handle = model.get_submodule(layer).register_forward_hook(
        lambda _m, _i, out: captured.append(out))
    model(inputs)
    handle.remove()
    return captured[0].flatten(1)


def _step_beside_a_copy(name, rows, contrast_batch):
    """One training step of a fresh method on rows 0-15, and an untouched copy of it (same
    state, so the same next draw) for doing that step by hand."""
    method = _contrastive(name, rows, contrast_batch=contrast_batch).train()
    copy = _contrastive(name, rows, contrast_batch=contrast_batch).train()
    copy.load_state_dict(method.state_dict())
    batch = torch.arange(16)
    inputs = scale_uint8_images(rows.inputs[batch])
    step = method.training_step(inputs, rows.targets[batch], rows.biases[batch], batch)
    return method, step, copy, inputs, rows.targets[batch]


def test_biascon_contrasts_the_drawn_views_and_takes_ce_on_the_trainers_batch():
    rows = _rows()
    _, (loss, logits, parts), copy, inputs, targets = _step_beside_a_copy("biascon", rows, 10)
    # The same step by hand on the copy: its trainer batch first, then the same draw.
    want_logits = copy.model(inputs)
    views, view_targets, view_biases, _ = copy.contrast.draw(rows)
    z = nn.functional.normalize(_layer_output(copy.model, copy.layer, views), dim=1)
    bc = bias_contrastive(z, view_targets, view_biases, temperature=0.5)
    ce = nn.functional.cross_entropy(want_logits, targets)
    torch.testing.assert_close(logits, want_logits)
    assert float(parts["bias_contrastive"]) == pytest.approx(float(bc.detach()), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float((0.1 * ce + bc).detach()), rel=1e-5)


def test_biascon_options_and_missing_training_rows_are_refused_in_one_line():
    rows = _rows()
    for options, message in [({"contrast_batch": -1}, "contrast_batch must be an integer >= 0"),
                             ({"contrast_batch": 1.5}, "contrast_batch must be int"),
                             ({"oversample_ratio": 0.5}, "oversample_ratio must be >= 1"),
                             ({"oversample_ratio": float("nan")}, "oversample_ratio must be")]:
        with pytest.raises(ValueError, match=message) as caught:
            _biascon(rows, **options)
        assert "\n" not in str(caught.value)
    method = _biascon(rows)
    method.training_rows = None
    batch = torch.arange(4)
    with pytest.raises(ValueError, match="only the trainer provides"):
        method.training_step(scale_uint8_images(rows.inputs[batch]), rows.targets[batch],
                             rows.biases[batch], batch)


def test_augmenting_rows_that_are_not_images_is_refused_naming_the_option():
    rows = _rows()
    table = TrainingRows(torch.rand(200, 5), rows.targets, rows.biases, prepare=lambda x: x)
    torch.manual_seed(0)
    batches = ContrastBatches(_group_weights(rows, 10.0),
                              size=4, augment=True)
    with pytest.raises(ValueError, match="set augment=false"):
        batches.draw(table)
    batches.augment = False
    inputs, _, _, _ = batches.draw(table)
    assert inputs.shape == (8, 5)


# ------------------------------------------------------------------ SoftCon ---


def test_soft_weights_match_their_definition():
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(12, 3, generator=generator, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2] * 4)
    for ratio in (1.0, 2.0, 1e9):
        got = soft_oversampling_weights(features, targets, ratio=ratio)
        raw = []
        for i in range(12):
            total = 0.0
            for r in range(12):
                if targets[r] == targets[i]:
                    u, v = features[i], features[r]
                    total += 1 - float(u @ v / (u.norm() * v.norm()))
            raw.append(max(total, 0.0))
        cap = ratio * min(w for w in raw if w > 0)
        assert got.tolist() == pytest.approx([min(w, cap) for w in raw], rel=1e-9, abs=1e-12)


def test_soft_weights_draw_the_rows_a_bias_model_sets_apart():
    # Two colours as bias features; 2 of 100 rows per target carry the other one.
    targets = torch.arange(200) % 2
    conflicting = torch.zeros(200, dtype=torch.bool)
    conflicting[:4] = True
    colour = torch.where(conflicting, 1 - targets, targets)
    features = torch.nn.functional.one_hot(colour, 2).double() + 0.01 * torch.randn(
        200, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    weights = soft_oversampling_weights(features, targets, ratio=10.0)
    share = float(weights[conflicting].sum() / weights.sum())
    assert weights[conflicting].min() > 5 * weights[~conflicting].max()
    assert 0.1 < share < 10 * 4 / 200 + 0.01
    same = torch.ones(6, 4)  # a bias model that sees one feature for all: uniform draws
    assert soft_oversampling_weights(same, torch.tensor([0, 1] * 3),
                                     ratio=10.0).tolist() == [1.0] * 6


def _softcon(rows, **options):
    return _contrastive("softcon", rows, **options)


def test_softcon_draws_by_the_bias_models_weights_and_contrasts_the_views():
    rows = _rows()
    method, (loss, logits, parts), copy, inputs, targets = _step_beside_a_copy("softcon", rows,
                                                                               10)
    # By hand on the copy: every row's bias features, the weights from them, the draw.
    with torch.no_grad():
        u = _layer_output(copy.bias_network, copy.bias_layer, scale_uint8_images(rows.inputs))
    weights = soft_oversampling_weights(u, rows.targets, ratio=10.0)
    torch.testing.assert_close(method.contrast.weights, weights)
    copy.contrast.weights = weights
    want_logits = copy.model(inputs)
    views, view_targets, _, chosen = copy.contrast.draw(rows)
    z = nn.functional.normalize(_layer_output(copy.model, copy.layer, views), dim=1)
    soft = soft_bias_contrastive(z, view_targets, u[chosen].repeat(2, 1), temperature=0.5)
    ce = nn.functional.cross_entropy(want_logits, targets)
    torch.testing.assert_close(logits, want_logits)
    assert float(parts["soft_contrastive"]) == pytest.approx(float(soft.detach()), rel=1e-5)
    assert float(loss.detach()) == pytest.approx(float((0.1 * ce + soft).detach()), rel=1e-5)


def test_softcon_resumed_draws_what_the_uninterrupted_run_draws():
    rows = _rows()
    running = _softcon(rows, contrast_batch=6)
    batch = torch.arange(8)
    step = (scale_uint8_images(rows.inputs[batch]), rows.targets[batch], rows.biases[batch],
            batch)
    running.training_step(*step)
    saved = {k: v.clone() for k, v in running.state_dict().items()}
    expected = running.contrast.draw(rows)
    torch.manual_seed(7)
    resumed = _softcon(rows, contrast_batch=6)
    resumed.load_state_dict(saved)
    resumed.training_step(*step)  # computes the weights again, then draws once
    torch.testing.assert_close(resumed.contrast.weights, running.contrast.weights)
    resumed.contrast.draws -= 1
    for got, want in zip(resumed.contrast.draw(rows), expected, strict=True):
        assert torch.equal(got, want)
