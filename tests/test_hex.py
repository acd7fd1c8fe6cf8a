"""HEX: the NGLCM branch against loops over its definition and the authors' direction
matrix, the projection against its closed form, the training loss against the same
computation by hand, that the NGLCM sees a background colour, and option checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from endebias.data import scale_uint8_images
from endebias.methods import TrainingRows, build_method
from endebias.methods.hex import NGLCM, grey_levels, neighbour_difference, project_out
from endebias.models import build_model


def test_grey_levels_follow_the_authors_formula():
    images = torch.zeros(2, 3, 2, 2, dtype=torch.uint8)
    images[0, :, 0, 0] = 255  # white
    images[0, 0, 1, 1] = 255  # pure red: grey 0.299 * 255
    images[1, 1] = 100  # green everywhere: one level, the top one
    levels = grey_levels(images, 8)
    assert levels[0].tolist() == [[7.0, 0.0], [0.0, float(int(0.299 * 7))]]
    assert levels[1].tolist() == [[7.0, 7.0], [7.0, 7.0]]
    assert grey_levels(torch.zeros(1, 1, 3, 3, dtype=torch.uint8), 8).sum() == 0


def _authors_difference(levels: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """x_re @ direction, the direction matrix built as the authors' script builds it."""
    n, height, width = levels.shape
    size = height * width
    direction = -torch.eye(size, dtype=torch.float64)
    for i in range(size):
        x, y = divmod(i, width)
        if x + row < height and y + col < width:
            direction[i, i + row * width + col] = 1
    return (levels.reshape(n, size).double() @ direction).reshape(n, height, width)


def _defined_difference(levels: torch.Tensor, row: int, col: int) -> torch.Tensor:
    out = torch.empty_like(levels)
    _, height, width = levels.shape
    for r in range(height):
        for c in range(width):
            inside = 0 <= r - row < height and 0 <= c - col < width
            neighbour = levels[:, r - row, c - col] if inside else 0
            out[:, r, c] = neighbour - levels[:, r, c]
    return out


@pytest.mark.parametrize("offset", [(0, 0), (0, 1), (1, 0), (2, 1), (1, 3)])
def test_neighbour_difference_equals_the_authors_direction_matrix(offset):
    levels = torch.randint(0, 8, (3, 4, 5)).float()
    ours = neighbour_difference(levels, offset).double()
    torch.testing.assert_close(ours, _authors_difference(levels, *offset))


@pytest.mark.parametrize("offset", [(0, 1), (-1, 2), (3, -2), (-2, -1)])
def test_neighbour_difference_follows_its_definition_for_any_offset(offset):
    levels = torch.randint(0, 8, (2, 4, 5)).float()
    torch.testing.assert_close(neighbour_difference(levels, offset),
                               _defined_difference(levels, *offset))


def test_nglcm_matrix_equals_a_loop_over_pixels_and_levels():
    torch.manual_seed(0)
    branch = NGLCM(4, (1, 1)).double()
    images = torch.randint(0, 256, (2, 3, 3, 4), dtype=torch.uint8)
    got = branch.matrix(images)
    levels = grey_levels(images, 4).double()
    x_d = _defined_difference(levels, 1, 1)
    for n in range(2):
        for i in range(4):
            for j in range(4):
                total = 0.0
                for r in range(3):
                    for c in range(4):
                        lamda = float(branch.lamda[i].detach())
                        theta = float(branch.theta[j].detach())
                        a = min(max(float(x_d[n, r, c]) - lamda, 1e-5), 1.0)
                        b = min(max(float(levels[n, r, c]) - theta, 1e-5), 1.0)
                        total += a * b
                assert float(got[n, i, j].detach()) == pytest.approx(total, rel=1e-9)


def test_projection_removes_the_superficial_span_and_matches_the_closed_form():
    generator = torch.Generator().manual_seed(1)
    joint = torch.randn(12, 4, dtype=torch.float64, generator=generator)
    superficial = torch.randn(12, 4, dtype=torch.float64, generator=generator)
    projected = project_out(joint, superficial)
    closed = joint - superficial @ torch.linalg.inv(superficial.T @ superficial) @ (
        superficial.T @ joint)
    torch.testing.assert_close(projected, closed)
    torch.testing.assert_close(superficial.T @ projected, torch.zeros(4, 4, dtype=torch.float64))
    # Fewer samples than classes: finite, and nothing left (the span is everything).
    few = project_out(joint[:3], superficial[:3])
    assert torch.isfinite(few).all() and few.abs().max() < 1e-9


def _rows(count=64, seed=0):
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (count, 3, 8, 8), dtype=torch.uint8, generator=generator)
    targets = torch.randint(0, 3, (count,), generator=generator)
    return TrainingRows(images, targets, targets.clone(), prepare=scale_uint8_images)


def _hex(rows, **options):
    torch.manual_seed(0)
    model = build_model("simple-conv", num_classes=3, input_shape=(3, 8, 8),
                        channels=[4, 8], kernel_size=3)
    method = build_method("hex", model=model, num_targets=3, num_biases=3,
                          train_targets=rows.targets, train_biases=rows.biases,
                          input_shape=(3, 8, 8), **options)
    method.training_rows = rows
    return method


def test_loss_is_ce_of_the_projected_joint_logits_and_evaluation_is_the_model_alone():
    rows = _rows()
    method = _hex(rows, ngray=8, offset=[0, 1]).train()
    batch = torch.arange(10, 42)
    inputs = scale_uint8_images(rows.inputs[batch])
    loss, logits, parts = method.training_step(inputs, rows.targets[batch], rows.biases[batch],
                                               batch)
    # By hand: the shared classifier W = [fc.weight, W_P], b = fc.bias.
    features = []
    handle = method.model.fc.register_forward_hook(lambda _m, i, _o: features.append(i[0]))
    own = method.model(inputs)
    handle.remove()
    f_p = method.nglcm(rows.inputs[batch])
    weight = torch.cat([method.model.fc.weight, method.superficial.weight], dim=1)
    bias = method.model.fc.bias
    joint = torch.cat([features[0], f_p], dim=1) @ weight.T + bias
    superficial = torch.cat([torch.zeros_like(features[0]), f_p], dim=1) @ weight.T + bias
    projected = joint - superficial @ torch.linalg.pinv(superficial) @ joint
    want = nn.functional.cross_entropy(projected, rows.targets[batch])
    assert float(loss.detach()) == pytest.approx(float(want.detach()), rel=1e-4)
    assert float(parts["ce"]) == pytest.approx(float(want.detach()), rel=1e-4)
    torch.testing.assert_close(logits, own.detach())
    method.eval()
    with torch.no_grad():
        torch.testing.assert_close(method(inputs), method.model(inputs))


def test_every_part_of_hex_learns_from_the_loss():
    rows = _rows()
    method = _hex(rows).train()
    batch = torch.arange(32)
    loss, _, _ = method.training_step(scale_uint8_images(rows.inputs[batch]),
                                      rows.targets[batch], rows.biases[batch], batch)
    loss.backward()
    for name in ("nglcm.fc.weight", "superficial.weight", "model.fc.weight"):
        grad = dict(method.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def _coloured_shapes(count, *, label_by, seed):
    """White squares or crosses on one of three background colours: label by colour or by
    shape, the other drawn at random."""
    generator = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[200, 30, 30], [30, 200, 30], [30, 30, 200]], dtype=torch.uint8)
    colour = torch.randint(0, 3, (count,), generator=generator)
    shape = torch.randint(0, 2, (count,), generator=generator)
    images = colours[colour][:, :, None, None].expand(count, 3, 8, 8).clone()
    square = torch.zeros(8, 8, dtype=torch.bool)
    square[2:6, 2:6] = True
    cross = torch.zeros(8, 8, dtype=torch.bool)
    cross[3:5, :] = True
    cross[:, 3:5] = True
    masks = torch.stack([square, cross])[shape]
    images[masks[:, None].expand_as(images)] = 255
    return images, (colour if label_by == "colour" else shape)


def _nglcm_accuracy(label_by: str) -> float:
    torch.manual_seed(0)
    branch = NGLCM(16, (0, 0))
    head = nn.Linear(32, 3)
    # Features normalised over the batch are small (about 1/sqrt(192)): the head needs
    # large weights, so a larger step than usual.
    optimiser = torch.optim.Adam([*branch.parameters(), *head.parameters()], lr=0.05)
    images, labels = _coloured_shapes(192, label_by=label_by, seed=0)
    for _ in range(200):
        loss = nn.functional.cross_entropy(head(branch(images)), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    test_images, test_labels = _coloured_shapes(192, label_by=label_by, seed=1)
    with torch.no_grad():
        return float((head(branch(test_images)).argmax(1) == test_labels).float().mean())


def test_the_nglcm_sees_the_background_colour():
    assert _nglcm_accuracy("colour") > 0.95


def test_options_and_inputs_hex_cannot_take_are_refused_in_one_line():
    rows = _rows()
    for options, message in [({"ngray": 1}, "ngray must be an integer >= 2"),
                             ({"offset": [1]}, "offset must be two integers"),
                             ({"offset": [0.5, 1]}, "offset")]:
        with pytest.raises(ValueError, match=message) as caught:
            _hex(rows, **options)
        assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="hex reads images"):
        build_method("hex", model=build_model("mlp", num_classes=2, input_shape=(4,)),
                     num_targets=2, num_biases=2, train_targets=torch.zeros(4).long(),
                     train_biases=torch.zeros(4).long(), input_shape=(4,))
    method = _hex(rows)
    method.training_rows = None
    batch = torch.arange(4)
    with pytest.raises(ValueError, match="only the trainer provides"):
        method.training_step(scale_uint8_images(rows.inputs[batch]), rows.targets[batch],
                             rows.biases[batch], batch)
