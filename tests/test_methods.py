"""Training methods: the basics every registered method must pass (a new method cannot
skip them), the trainer and command line, and option validation. The baselines' formulas
are checked in test_method_formulas.py."""

from __future__ import annotations

import io
import math
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from endebias.data import build_dataset
from endebias.methods import (
    StageResult,
    TrainingRows,
    build_method,
    method_class,
    method_names,
)
from endebias.models import build_model
from endebias.training import records
from endebias.training.config import make_config
from endebias.training.fit import fit

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"
TINY_MODEL = {"channels": [4, 8], "kernel_size": 3}

# ---------------------------------------------------------------- every method ---


def _data():
    return build_dataset("synthetic", seed=0, rho=0.9, train_size=96, eval_size=32)


def _stage_result(name: str, benchmark):
    """For a method that declares a first stage: a stand-in result whose logits get every
    third training sample wrong (the trainer's real stages: test_stages.py)."""
    cls = method_class(name)
    if cls.first_stage(dict(cls.defaults)) is None:
        return None
    targets = benchmark.train.targets
    predicted = torch.where(torch.arange(len(targets)) % 3 == 0,
                            (targets + 1) % benchmark.num_targets, targets)
    logits = nn.functional.one_hot(predicted, benchmark.num_targets).float()
    torch.manual_seed(7)
    stage_model = build_model("simple-conv", num_classes=benchmark.num_targets,
                              input_shape=benchmark.input_shape, **TINY_MODEL)
    stage = build_method("vanilla", model=stage_model, num_targets=benchmark.num_targets,
                         num_biases=benchmark.num_biases, train_targets=targets,
                         train_biases=benchmark.train.biases)
    return StageResult(stage.eval(), logits)


def _build(name: str, seed: int, benchmark, **options):
    torch.manual_seed(seed)
    model = build_model(
        "simple-conv", num_classes=benchmark.num_targets, input_shape=benchmark.input_shape,
        **TINY_MODEL,
    )
    method = build_method(
        name,
        model=model,
        num_targets=benchmark.num_targets,
        num_biases=benchmark.num_biases,
        train_targets=benchmark.train.targets,
        train_biases=benchmark.train.biases,
        input_shape=benchmark.input_shape,
        build_network=partial(build_model, num_classes=benchmark.num_targets,
                              input_shape=benchmark.input_shape),
        first_stage=_stage_result(name, benchmark),
        **options,
    )
    # As the trainer does before the first step (methods that draw batches of their own).
    train = benchmark.train
    method.training_rows = TrainingRows(train.inputs, train.targets, train.biases,
                                        prepare=benchmark.prepare)
    return method


def _step(method, optimizer, benchmark, indices):
    train = benchmark.train
    loss, logits, parts = method.training_step(
        benchmark.prepare(train.inputs[indices]), train.targets[indices],
        train.biases[indices], indices,
    )
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss, logits, parts


def _train(name: str, seed: int, steps: int = 3):
    benchmark = _data()
    method = _build(name, seed, benchmark)
    optimizer = torch.optim.Adam(method.parameters(), lr=1e-2)
    order = torch.randperm(len(benchmark.train), generator=torch.Generator().manual_seed(seed))
    losses = []
    for batch in order.split(32)[:steps]:
        loss, logits, parts = _step(method, optimizer, benchmark, batch)
        assert logits.shape == (len(batch), benchmark.num_targets)
        assert all(v.dim() == 0 and torch.isfinite(v) for v in parts.values()), parts
        losses.append(float(loss.detach()))
    return method, losses


@pytest.mark.parametrize("name", method_names())
def test_every_method_trains_deterministically_and_round_trips(name):
    first, losses = _train(name, seed=1)
    assert all(math.isfinite(v) for v in losses)
    again, losses_again = _train(name, seed=1)
    other, _ = _train(name, seed=2)
    assert losses == losses_again
    state, state_again = first.state_dict(), again.state_dict()
    assert all(torch.equal(state[k], state_again[k]) for k in state)
    assert not all(torch.equal(state[k], other.state_dict()[k]) for k in state)

    # Save, load into a method built with another seed: same tensors, same outputs, and
    # the next training step (which reads buffers such as EMAs or group weights) agrees.
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    loaded = _build(name, seed=99, benchmark=_data())
    loaded.load_state_dict(torch.load(buffer, weights_only=True))
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key
    benchmark = _data()
    inputs = benchmark.prepare(benchmark.train.inputs[:16])
    first.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(first(inputs), loaded(inputs))
    first.train()
    loaded.train()
    batch = torch.arange(40, 72)
    step_first = _step(first, torch.optim.SGD(first.parameters(), lr=0.1), benchmark, batch)
    step_loaded = _step(loaded, torch.optim.SGD(loaded.parameters(), lr=0.1), benchmark, batch)
    assert torch.equal(step_first[0], step_loaded[0])
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, first.state_dict()[key]), key


@pytest.mark.parametrize("name", method_names())
def test_every_method_declares_options_and_search_space(name):
    cls = method_class(name)
    assert set(cls.search_space) <= set(cls.defaults), "a swept option needs a default"
    for spec in cls.search_space.values():
        assert "value" in spec or "values" in spec or "distribution" in spec


@pytest.mark.parametrize("name", method_names())
def test_every_method_plugs_into_the_trainer(name, tmp_path):
    config = make_config(
        "quick", dataset="synthetic", dataset_options={"rho": 0.9, "train_size": 128,
                                                       "eval_size": 64},
        model_options=TINY_MODEL, method=name, epochs=2, batch_size=32, device="cpu", seed=5,
    )
    best = fit(config, tmp_path / name, progress=False)
    assert 0.0 <= best["valid_acc"] <= 1.0 and math.isfinite(best["train_loss"])
    assert (tmp_path / name / records.DONE).exists()
    lines = (tmp_path / name / records.METRICS).read_text().splitlines()
    assert len(lines) == 2


@pytest.mark.parametrize("name", ["groupdro", "lff", "biasbal", "rubi", "learned-mixin",
                                  "rebias", "fairkl", "biascon", "bcbb", "lnl", "sd", "jtt",
                                  "softcon"])
def test_quick_sweep_files_search_within_the_search_space(name):
    """A sweep file may narrow a method's range (after a first sweep), never leave it."""
    path = SWEEPS / f"{name.replace('-', '_')}_biased_mnist_quick.yaml"
    sweep = yaml.safe_load(path.read_text())
    assert sweep["metric"] == {"name": "valid_acc", "goal": "maximize"}
    assert sweep["parameters"]["method"] == {"value": name}
    for option, spec in method_class(name).search_space.items():
        swept = sweep["parameters"][option]
        if "values" in spec:
            assert set(swept["values"]) <= set(spec["values"]), option
            continue
        assert swept["distribution"] == spec["distribution"], option
        assert spec["min"] <= swept["min"] < swept["max"] <= spec["max"], option


# ------------------------------------------- validation and the command line ---


def _build_tiny(name: str, targets, biases, **options):
    return build_method(
        name, model=nn.Identity(), num_targets=2, num_biases=2,
        train_targets=torch.tensor(targets), train_biases=torch.tensor(biases), **options,
    )


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("groupdro", {"step_size": -0.1}, "step_size"),
        ("groupdro", {"step_size": float("nan")}, "step_size"),
        ("groupdro", {"generalization_adjustment": -1.0}, "generalization_adjustment"),
        ("lff", {"q": 0.0}, "q must be"),
        ("lff", {"q": 1.5}, "q must be"),
        ("lff", {"ema_decay": 1.0}, "ema_decay"),
        ("lff", {"ema_decay": -0.1}, "ema_decay"),
        ("biasbal", {"smoothing": 0.0}, "smoothing"),
        ("biasbal", {"smoothing": float("inf")}, "smoothing"),
        ("groupdro", {"alpha": 1.0}, "has no option 'alpha'"),
    ],
)
def test_bad_options_are_refused(name, options, message):
    with pytest.raises(ValueError, match=message):
        _build_tiny(name, [0, 1], [0, 1], **options)


def test_lff_needs_train_targets():
    with pytest.raises(ValueError, match="train_targets"):
        _build_tiny("lff", [], [])


@pytest.mark.parametrize(("name", "option"), [("groupdro", "step_size=0.1"), ("lff", "q=0.5"),
                                              ("biasbal", "smoothing=0.01")])
def test_baselines_train_from_the_command_line(name, option, tmp_path, capsys):
    from endebias.cli.main import main

    code = main([
        "train", "--method", name, "--dataset", "synthetic", "--epochs", "1", "--device", "cpu",
        "--train-subset", "64", "--eval-subset", "32", "--no-progress",
        "--method-option", option, "--out", str(tmp_path / name),
    ])
    assert code == 0, capsys.readouterr().err
    config = records.read_json(tmp_path / name / records.CONFIG)
    key, value = option.split("=")
    assert config["method"] == name and config["method_options"] == {key: float(value)}
    assert "best epoch 1" in capsys.readouterr().out

