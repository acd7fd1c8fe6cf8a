"""RUBi and LearnedMixin: their losses against hand computations (values and gradients,
float64), where each network's gradient comes from, option checks, and a planted-bias run
in which the mechanism shows."""

from __future__ import annotations

import json
import math
from functools import partial

import numpy as np
import pytest
import torch
from torch import nn

from endebias.data import build_dataset
from endebias.methods import build_method
from endebias.methods.learned_mixin import learned_mixin_loss
from endebias.methods.rubi import rubi_loss
from endebias.models import build_model

TINY = {"channels": [8, 16], "kernel_size": 3}
TINY_BIAS = {"bias_model_options": {"channels": [8, 16]}}


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def _ce(row: list[float], target: int) -> float:
    return math.log(sum(math.exp(v) for v in row)) - row[target]


def _softmax(row: list[float]) -> list[float]:
    total = sum(math.exp(v) for v in row)
    return [math.exp(v) / total for v in row]


def _case(seed: int, batch: int = 5, classes: int = 4):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, classes, generator=generator, dtype=torch.float64) * 2
    other = torch.randn(batch, classes, generator=generator, dtype=torch.float64) * 2
    targets = torch.randint(classes, (batch,), generator=generator)
    return logits, other, targets


# ------------------------------------------------------------------------ RUBi ---


def test_rubi_loss_and_its_gradients_match_a_hand_computation():
    logits, mask_logits, targets = _case(0)
    weight = 0.7
    logits.requires_grad_(True)
    mask_logits.requires_grad_(True)
    loss, fused, bias_only = rubi_loss(logits, mask_logits, targets, bias_loss_weight=weight)
    loss.backward()
    batch, classes = logits.shape
    expected_fused = expected_bias = 0.0
    grad_f = [[0.0] * classes for _ in range(batch)]
    grad_m = [[0.0] * classes for _ in range(batch)]
    for i in range(batch):
        f, m, y = logits[i].tolist(), mask_logits[i].tolist(), int(targets[i])
        s = [_sigmoid(v) for v in m]
        masked = [fc * sc for fc, sc in zip(f, s, strict=True)]
        expected_fused += _ce(masked, y) / batch
        expected_bias += _ce(m, y) / batch
        p_masked, p_bias = _softmax(masked), _softmax(m)
        for c in range(classes):
            d_masked = p_masked[c] - (c == y)  # d CE / d masked_c
            grad_f[i][c] = d_masked * s[c] / batch
            grad_m[i][c] = (d_masked * f[c] * s[c] * (1 - s[c])
                            + weight * (p_bias[c] - (c == y))) / batch
    assert fused.item() == pytest.approx(expected_fused, rel=1e-12)
    assert bias_only.item() == pytest.approx(expected_bias, rel=1e-12)
    assert loss.item() == pytest.approx(expected_fused + weight * expected_bias, rel=1e-12)
    torch.testing.assert_close(logits.grad, torch.tensor(grad_f, dtype=torch.float64))
    torch.testing.assert_close(mask_logits.grad, torch.tensor(grad_m, dtype=torch.float64))


def test_the_mask_lowers_the_loss_of_samples_the_bias_explains_and_raises_the_others():
    """RUBi's mechanism on one sample: the same main-model logits (favouring the target,
    class 0) cost less when a confident bias branch agrees with the target and more when it
    points elsewhere, than plain cross-entropy."""
    logits = torch.tensor([[2.0, 1.0, 1.0, 1.0]], dtype=torch.float64)
    target = torch.tensor([0])
    plain = nn.functional.cross_entropy(logits, target).item()
    agrees = torch.tensor([[5.0, -5.0, -5.0, -5.0]], dtype=torch.float64)
    disagrees = torch.tensor([[-5.0, 5.0, -5.0, -5.0]], dtype=torch.float64)
    aligned = rubi_loss(logits, agrees, target, bias_loss_weight=0.0)[1].item()
    conflicting = rubi_loss(logits, disagrees, target, bias_loss_weight=0.0)[1].item()
    assert aligned < 0.5 * plain and conflicting > 2 * plain


# --------------------------------------------------------------- LearnedMixin ---


def test_learned_mixin_loss_matches_a_hand_computation():
    logits, bias_logits, targets = _case(1)
    gate_logits = torch.tensor([[0.3], [-1.2], [2.0], [0.0], [-0.4]], dtype=torch.float64)
    bias_log_probs = bias_logits.log_softmax(dim=1)
    weight = 0.36
    loss, product, entropy, gate = learned_mixin_loss(
        logits, gate_logits, bias_log_probs, targets, entropy_weight=weight
    )
    batch = len(targets)
    expected_product = expected_entropy = 0.0
    for i in range(batch):
        g = math.log1p(math.exp(gate_logits[i, 0].item()))  # softplus
        log_p_main = [v - math.log(sum(math.exp(u) for u in logits[i].tolist()))
                      for v in logits[i].tolist()]
        scaled = [g * v for v in bias_log_probs[i].tolist()]
        expected_product += _ce([a + b for a, b in zip(log_p_main, scaled, strict=True)],
                                int(targets[i])) / batch
        expected_entropy -= sum(p * math.log(p) for p in _softmax(scaled)) / batch
        assert gate[i, 0].item() == pytest.approx(g, rel=1e-12)
    assert product.item() == pytest.approx(expected_product, rel=1e-12)
    assert entropy.item() == pytest.approx(expected_entropy, rel=1e-12)
    assert loss.item() == pytest.approx(expected_product + weight * expected_entropy, rel=1e-12)
    # Bahng et al.'s code scales the bias logits rather than its log-probabilities: the
    # two differ by a constant per sample, which a softmax ignores, so the loss is the same.
    same = learned_mixin_loss(logits, gate_logits, bias_logits, targets, entropy_weight=weight)
    assert same[0].item() == pytest.approx(loss.item(), rel=1e-12)


def test_both_losses_have_the_gradients_of_finite_differences():
    logits, other, targets = _case(2, batch=3, classes=3)
    gate_logits = torch.tensor([[0.5], [-0.3], [1.1]], dtype=torch.float64)
    inputs = [t.clone().requires_grad_(True) for t in (logits, other, gate_logits)]
    assert torch.autograd.gradcheck(
        lambda f, m, _: rubi_loss(f, m, targets, bias_loss_weight=0.5)[0], inputs
    )
    assert torch.autograd.gradcheck(
        lambda f, b, g: learned_mixin_loss(f, g, b.log_softmax(dim=1), targets,
                                           entropy_weight=0.36)[0], inputs
    )


# ------------------------------------------------------------ the methods ---


def _data(rho: float = 0.99, seed: int = 0):
    return build_dataset("synthetic", seed=seed, rho=rho, train_size=512, eval_size=256)


def _method(name: str, benchmark, seed: int = 0, **options):
    torch.manual_seed(seed)
    model = build_model("simple-conv", num_classes=benchmark.num_targets,
                        input_shape=benchmark.input_shape, **TINY)
    return build_method(
        name, model=model, num_targets=benchmark.num_targets, num_biases=benchmark.num_biases,
        train_targets=benchmark.train.targets, train_biases=benchmark.train.biases,
        input_shape=benchmark.input_shape,
        build_network=partial(build_model, num_classes=benchmark.num_targets,
                              input_shape=benchmark.input_shape),
        **{**({} if name == "vanilla" else TINY_BIAS), **options},
    )


def _gradients(method, loss) -> dict[str, torch.Tensor]:
    names = [name for name, p in method.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, [dict(method.named_parameters())[n] for n in names],
                                retain_graph=True, allow_unused=True)
    return {n: (torch.zeros(()) if g is None else g) for n, g in zip(names, grads, strict=True)}


@pytest.mark.parametrize("name", ["rubi", "learned-mixin"])
def test_each_network_learns_only_from_its_own_terms(name):
    """The main model from the debiasing loss, the bias-only network from its own
    cross-entropy: the total loss's gradients split exactly so."""
    benchmark = _data()
    method = _method(name, benchmark)
    inputs = benchmark.prepare(benchmark.train.inputs[:32])
    targets = benchmark.train.targets[:32]
    loss, logits, parts = method.training_step(inputs, targets, benchmark.train.biases[:32],
                                               torch.arange(32))
    total = _gradients(method, loss)
    bias_logits = method.bias_model(inputs)  # BatchNorm in train mode: the same batch stats
    own = _gradients(method, nn.functional.cross_entropy(bias_logits, targets))
    for key, grad in total.items():
        if key.startswith("bias_model."):
            torch.testing.assert_close(grad, own[key], msg=key)
        else:
            assert torch.count_nonzero(own[key]) == 0, key
    assert any(torch.count_nonzero(g) for k, g in total.items() if k.startswith("model."))
    assert parts["ce_bias_model"].item() == pytest.approx(
        nn.functional.cross_entropy(bias_logits, targets).item(), rel=1e-5)


def _train(method, benchmark, *, steps: int, lr: float = 1e-2) -> None:
    optimizer = torch.optim.Adam(method.parameters(), lr=lr)
    order = torch.randperm(len(benchmark.train), generator=torch.Generator().manual_seed(0))
    train = benchmark.train
    method.train()
    for step in range(steps):
        batch = order[(step * 64) % 512:(step * 64) % 512 + 64]
        loss, _, _ = method.training_step(benchmark.prepare(train.inputs[batch]),
                                          train.targets[batch], train.biases[batch], batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    method.eval()


def _accuracy_by_alignment(predictions, split) -> tuple[float, float]:
    correct = predictions == split.targets
    aligned = split.biases == split.targets
    return correct[aligned].float().mean().item(), correct[~aligned].float().mean().item()


def test_planted_bias_the_bias_branch_takes_the_colour_and_learned_mixin_drops_it():
    """Synthetic digits whose colour matches the class in 99 % of training images. Vanilla
    learns the colour: right on aligned test images, wrong on conflicting ones. In both
    methods the bias-only network learns the colour (its predictions follow the colour on
    the unbiased test set), and under LearnedMixin the main model leans on the colour far
    less than vanilla does."""
    benchmark = _data()
    test = benchmark.evaluations["unbiased_test"]
    inputs = benchmark.prepare(test.inputs)
    vanilla = _method("vanilla", benchmark)
    _train(vanilla, benchmark, steps=64)
    with torch.no_grad():
        aligned, conflicting = _accuracy_by_alignment(vanilla(inputs).argmax(1), test)
    assert aligned - conflicting > 0.6
    for name in ("rubi", "learned-mixin"):
        method = _method(name, benchmark)
        _train(method, benchmark, steps=64)
        with torch.no_grad():
            bias_predictions = method.bias_model(inputs).argmax(1)
            main = method(inputs).argmax(1)
        assert (bias_predictions == test.biases).float().mean() > 0.9, name
        if name == "learned-mixin":
            aligned, conflicting = _accuracy_by_alignment(main, test)
            assert aligned - conflicting < 0.3


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("rubi", {"bias_loss_weight": -1.0}, "bias_loss_weight must be a finite number >= 0"),
        ("rubi", {"bias_loss_weight": float("nan")}, "bias_loss_weight"),
        ("rubi", {"bias_loss_weight": float("inf")}, "bias_loss_weight"),
        ("learned-mixin", {"entropy_weight": -0.1}, "entropy_weight must be a finite number"),
        ("learned-mixin", {"entropy_weight": float("nan")}, "entropy_weight"),
        ("learned-mixin", {"layer": "nope"}, "no layer named 'nope'"),
        ("rubi", {"bias_model": "nope"}, "unknown model 'nope'"),
        ("rubi", {"bias_model_options": [8]}, "option bias_model_options must be mapping"),
        ("learned-mixin", {"bias_model_options": {"kernel_size": 3}},
         "model 'bias-conv' has no option 'kernel_size'"),
        ("rubi", {"alpha": 1.0}, "has no option 'alpha'"),
    ],
)
def test_bad_options_are_refused_in_one_line(name, options, message):
    with pytest.raises(ValueError, match=message) as error:
        _method(name, _data(), **options)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name", ["rubi", "learned-mixin"])
def test_a_bias_model_that_cannot_take_the_inputs_is_named(name):
    model = build_model("mlp", num_classes=2, input_shape=(7,))
    tabular = partial(build_model, num_classes=2, input_shape=(7,))
    two = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=rf"method '{name}': bias_model 'bias-conv'.* shape "
                                         r"\(7,\)"):
        build_method(name, model=model, num_targets=2, num_biases=1, train_targets=two,
                     train_biases=two * 0, input_shape=(7,), build_network=tabular)
    # Another bias-only network fits: a small MLP on the table's columns.
    method = build_method(name, model=model, num_targets=2, num_biases=1, train_targets=two,
                          train_biases=two * 0, input_shape=(7,), build_network=tabular,
                          bias_model="mlp",
                          bias_model_options={"hidden": [4]})
    loss, _, parts = method.training_step(torch.randn(6, 7), torch.tensor([0, 1] * 3),
                                          torch.zeros(6, dtype=torch.long), torch.arange(6))
    assert torch.isfinite(loss) and "ce_bias_model" in parts
    with pytest.raises(ValueError, match="needs input_shape and build_network"):
        build_method(name, model=model, num_targets=2, num_biases=1, train_targets=two,
                     train_biases=two * 0)


@pytest.mark.parametrize("name", ["rubi", "learned-mixin", "rebias"])
def test_they_train_on_a_table_without_a_bias_column(tmp_path, capsys, name):
    """No bias labels needed: a CSV with no bias column trains end to end from the command
    line, the bias-only network an MLP on the table's columns."""
    from endebias.cli.main import main

    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=120), rng.normal(size=120)
    rows = [f"{a:.4f},{b:.4f},{'Yes' if a + 0.3 * b > 0 else 'No'}"
            for a, b in zip(x1, x2, strict=True)]
    table = tmp_path / "t.csv"
    table.write_text("x1,x2,type\n" + "\n".join(rows) + "\n")
    out = tmp_path / "run"
    code = main(["train", "--dataset", "tabular", "--dataset-option", f"path={table}",
                 "--dataset-option", "target=type", "--model", "mlp", "--method", name,
                 "--method-option", "bias_model=mlp", "--epochs", "2", "--batch-size", "32",
                 "--out", str(out), "--no-progress"])
    assert code == 0, capsys.readouterr().err
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and "train_ce_bias_model" in history[0]
