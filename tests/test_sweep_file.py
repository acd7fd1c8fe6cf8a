"""Sweep files: the original format, every distribution, every bad-file error."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import optuna
import pytest
import yaml

from endebias.sweeps import sweep_file
from endebias.sweeps.agent import suggest
from endebias.sweeps.search_space import all_grid_points
from endebias.sweeps.sweep_file import SweepFileError, coerce_number, load_sweep_file, parse_sweep
from endebias.training.config import make_config

SWEEPS = Path(__file__).resolve().parents[1] / "sweeps"

# The original repository's sweep file, verbatim: a YAML 1.1 loader reads 1e-4 as a
# string, and its name says rho 0.997 while it sets 0.990 (the parameters win).
ORIGINAL = """\
program: EnD_rebias_mnist_sweep.py
name: "Biased MNIST - rho 0.997 - EnD"
command:
    - ${env}
    - python3
    - ${program}
    - ${args}
method: bayes
metric:
    name: valid_acc
    goal: maximize
parameters:
    alpha:
        distribution: uniform
        min: 0.0
        max: 1.0
    beta:
        distribution: uniform
        min: 0.0
        max: 1.0
    lr:
        value: 0.001
    weight_decay:
        value: 1e-4
    batch_size:
        value: 256
    epochs:
        value: 80
    rho:
        value: 0.990
"""


def write(tmp_path: Path, text: str, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def base(**parameters) -> dict:
    return {"name": "t", "method": "random", "parameters": parameters}


def test_original_file_works_unchanged_and_numeric_strings_are_numbers(
    tmp_path, caplog, monkeypatch
):
    assert yaml.safe_load("x: 1e-4")["x"] == "1e-4"  # the pitfall this guards against
    monkeypatch.setattr(sweep_file, "_said_not_executed", False)
    path = write(tmp_path, ORIGINAL)
    with caplog.at_level(logging.INFO, logger="endebias.sweeps.sweep_file"):
        spec = load_sweep_file(path)
        load_sweep_file(path)
    said = [r.getMessage() for r in caplog.records if "never executed" in r.getMessage()]
    assert len(said) == 1 and "program and command" in said[0]
    assert spec.method == "bayes" and spec.name == "Biased MNIST - rho 0.997 - EnD"
    preset, overrides = spec.overrides({"alpha": 0.25, "beta": 0.5})
    config = make_config(preset, **overrides)
    assert config.weight_decay == 1e-4 and isinstance(config.weight_decay, float)
    assert config.dataset_options["rho"] == 0.99
    # No method parameter: searching EnD's options means EnD, with the paper preset's
    # pair selection (the official code's).
    assert config.method == "end"
    assert config.method_options == {"alpha": 0.25, "beta": 0.5, "pairs": "reference"}
    assert (config.lr, config.batch_size, config.epochs, config.preset) == (1e-3, 256, 80, "paper")
    # The stored definition holds numbers, so agents rebuild the same search.
    assert spec.definition["parameters"]["weight_decay"] == {"value": 1e-4}


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1e-4", 1e-4), ("256", 256), ("-3", -3), (".5", 0.5), ("2.5E+3", 2500.0), ("end", "end"),
     ("1e", "1e"), ("", ""), (["1e-3", "x"], [1e-3, "x"])],
)
def test_coerce_number(text, expected):
    assert coerce_number(text) == expected
    assert type(coerce_number(text)) is type(expected)


def sample_all(spec, n: int = 40) -> list[optuna.trial.FrozenTrial]:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    searched = [p for p in spec.parameters.values() if p.searched]
    study.optimize(lambda t: sum(0 * hash(suggest(t, p)) for p in searched), n_trials=n)
    return study.trials


def test_every_distribution_maps_to_optuna(tmp_path):
    spec = parse_sweep(base(
        lr={"distribution": "log_uniform_values", "min": "1e-4", "max": 1e-2},
        weight_decay={"distribution": "log_uniform", "min": -9.0, "max": -4.0},
        alpha={"distribution": "uniform", "min": 0, "max": 1.5},
        beta={"min": 0.0, "max": 2.0},  # no distribution: floats -> uniform
        epochs={"min": 1, "max": 3},  # ints -> int_uniform
        batch_size={"distribution": "int_uniform", "min": 8, "max": 16},
        rho={"distribution": "q_uniform", "min": 0.9, "max": 1.0, "q": 0.025},
        seed={"values": [1, 2, 3]},
        preset={"distribution": "constant", "value": "quick"},
    ), source="inline.yaml")
    kinds = {name: p.kind for name, p in spec.parameters.items()}
    assert kinds == {"lr": "log_uniform_values", "weight_decay": "log_uniform", "alpha": "uniform",
                     "beta": "uniform", "epochs": "int_uniform", "batch_size": "int_uniform",
                     "rho": "q_uniform", "seed": "categorical", "preset": "constant"}
    trials = sample_all(spec)
    first = trials[0].distributions
    assert first["lr"] == optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)
    assert first["weight_decay"].log and math.isclose(first["weight_decay"].low, math.exp(-9))
    assert first["alpha"] == optuna.distributions.FloatDistribution(0, 1.5)
    assert first["epochs"] == optuna.distributions.IntDistribution(1, 3)
    assert first["rho"] == optuna.distributions.FloatDistribution(0.9, 1.0, step=0.025)
    assert first["seed"] == optuna.distributions.CategoricalDistribution([1, 2, 3])
    assert "preset" not in first  # constants are not asked of the sampler
    for trial in trials:
        p = trial.params
        assert 1e-4 <= p["lr"] <= 1e-2 and 0 <= p["alpha"] <= 1.5 and 0 <= p["beta"] <= 2
        assert p["epochs"] in (1, 2, 3) and 8 <= p["batch_size"] <= 16
        assert min(abs(p["rho"] - (0.9 + k * 0.025)) for k in range(5)) < 1e-9
        preset, overrides = spec.overrides(p)
        config = make_config(preset, **overrides)
        assert config.preset == "quick" and config.dataset_options["rho"] == p["rho"]
    seen_epochs = {t.params["epochs"] for t in trials}
    assert seen_epochs == {1, 2, 3}


def test_any_train_option_and_method_or_dataset_options_find_their_place():
    spec = parse_sweep(base(
        method={"value": "end"}, dataset={"value": "synthetic"},
        pairs={"values": ["all", "reference"]},  # an option of the end method
        num_classes={"value": 3},  # an option of the synthetic dataset
        **{"model_options.channels": {"value": [8, 16]}, "train-subset": {"value": 100},
           "eval_subset": {"value": 50}, "lr": {"value": 0.01}},
    ), source="inline.yaml")
    preset, overrides = spec.overrides({"pairs": "reference"})
    config = make_config(preset, **overrides)
    assert config.method_options == {"alpha": 0.1, "beta": 0.1, "pairs": "reference"}
    assert config.dataset_options["num_classes"] == 3
    assert config.model_options["channels"] == [8, 16]
    assert (config.train_subset, config.eval_subset, config.lr) == (100, 50, 0.01)


def test_a_sweep_file_may_carry_the_official_local_flag():
    spec = parse_sweep(base(alpha={"min": 0.0, "max": 1.0}, local={"value": True}),
                       source="official.yaml")
    preset, overrides = spec.overrides({"alpha": 0.5})
    assert preset == "paper" and "local" not in overrides
    assert make_config(preset, **overrides) == make_config(
        "paper", method="end", method_options={"alpha": 0.5})
    for bad in ({"value": 3}, {"values": [True, False]}):
        with pytest.raises(SweepFileError, match="parameters.local: the official CLI's flag"):
            parse_sweep(base(alpha={"value": 1}, local=bad), source="bad.yaml")


M = "method: bayes\n"
P = M + "parameters: "
OK = "\nparameters: {alpha: {value: 1}}"
BAD = [
    ("[1, 2]", "<file>", "must be a mapping"),
    ("name: x\nmethod: bayes\nparamters: {}", "paramters", "unknown key"),
    ("method: hill-climb" + OK, "method", "bayes, random, grid"),
    (M + "metric: {name: unbiased_test_acc, goal: maximize}" + OK,
     "metric.name", "only valid_acc"),
    (M + "metric: {name: valid_acc, goal: minimize}" + OK,
     "metric.goal", "maximised"),
    (P + "{}", "parameters", "non-empty"),
    (P + "{alpha: 0.5}", "parameters.alpha", "must be a mapping"),
    (P + "{alpha: {min: 0, max: 1, mu: 3}}", "parameters.alpha.mu", "unknown key"),
    (P + "{alpha: {distribution: normal, min: 0, max: 1}}",
     "parameters.alpha.distribution", "unsupported 'normal'"),
    (P + "{alpha: {distribution: uniform, min: 2, max: 1}}",
     "parameters.alpha", "min 2 > max 1"),
    (P + "{alpha: {distribution: uniform, min: 0}}", "parameters.alpha", "needs max"),
    (P + "{alpha: {distribution: uniform, min: zero, max: 1}}",
     "parameters.alpha.min", "finite number"),
    (P + "{epochs: {distribution: int_uniform, min: 1.5, max: 3}}",
     "parameters.epochs", "integer min and max"),
    (P + "{lr: {distribution: log_uniform_values, min: 0, max: 1}}",
     "parameters.lr.min", "min > 0"),
    (P + "{alpha: {distribution: q_uniform, min: 0, max: 1, q: 0.3}}",
     "parameters.alpha.q", "divide"),
    (P + "{alpha: {distribution: uniform, min: 0, max: 1, q: 0.5}}",
     "parameters.alpha.q", "not allowed"),
    (P + "{alpha: {value: 1, values: [1, 2]}}", "parameters.alpha.values",
     "not allowed"),
    (P + "{alpha: {values: []}}", "parameters.alpha.values", "non-empty"),
    (P + "{alpha: {values: [1, 1]}}", "parameters.alpha.values", "twice"),
    (P + "{alpha: {values: [[1, 2]]}}", "parameters.alpha.values", "numbers"),
    (P + "{alpha: {}}", "parameters.alpha", "needs value"),
    (P + "{learning_rate: {value: 1}}", "parameters.learning_rate",
     "not a training option"),
    (P + "{epochs: {values: [5, 0]}}", "parameters.epochs", "positive integer"),
    (P + "{preset: {value: huge}}", "parameters.preset", "unknown preset"),
    (P + "{method: {value: magic}}", "parameters", "unknown method 'magic'"),
    (P + "{dataset: {value: imagenet}}", "parameters",
     "unknown dataset 'imagenet'"),
    (M + "run_cap: 0" + OK, "run_cap", "positive integer"),
    (M + "early_terminate: {type: envelope}" + OK,
     "early_terminate.type", "hyperband"),
    (M + "early_terminate: {type: hyperband, min_iter: -1}" + OK,
     "early_terminate.min_iter", "positive integer"),
    (M + "optuna: {seeds: 1}" + OK, "optuna.seeds", "unknown key"),
    (M + "optuna: {sampler: cmaes}" + OK, "optuna.sampler",
     "tpe or gp"),
    (M + "optuna: {heartbeat_interval: 10, grace_period: 5}" + OK,
     "optuna.grace_period", "longer than"),
    ("method: grid\nparameters: {alpha: {distribution: uniform, min: 0, max: 1}}",
     "parameters.alpha", "grid search needs a finite set"),
    (P + "{alpha: {value: [1}", "<file>", "not valid YAML"),
]


@pytest.mark.parametrize(("text", "key", "problem"), BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_files_name_the_file_and_the_key(tmp_path, text, key, problem):
    path = write(tmp_path, text, "bad_sweep.yaml")
    with pytest.raises(SweepFileError) as caught:
        load_sweep_file(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    if key != "<file>":
        assert f": {key}: " in message, message
    assert problem in message, message
    assert "\n" not in message


def test_missing_file_is_a_one_line_error(tmp_path):
    with pytest.raises(SweepFileError, match="missing.yaml: cannot read"):
        load_sweep_file(tmp_path / "missing.yaml")


def test_grid_covers_every_value_once():
    spec = parse_sweep({"method": "grid", "parameters": {
        "alpha": {"values": [0.0, 0.5]},
        "epochs": {"distribution": "int_uniform", "min": 1, "max": 3},
        "rho": {"distribution": "q_uniform", "min": 0.5, "max": 1.0, "q": 0.5},
        "seed": {"value": 3}}}, source="grid.yaml")
    assert spec.grid_size() == 2 * 3 * 2
    points = all_grid_points(spec)
    assert len(points) == 12 and len({tuple(sorted(p.items())) for p in points}) == 12
    from endebias.sweeps.storage import build_sampler

    study = optuna.create_study(sampler=build_sampler(spec, seed=0))
    searched = [p for p in spec.parameters.values() if p.searched]
    study.optimize(lambda t: sum(0 * hash(suggest(t, p)) for p in searched), n_trials=12)
    seen = {tuple(sorted(t.params.items())) for t in study.trials}
    assert seen == {tuple(sorted(p.items())) for p in points}


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_sweep_files_parse(path):
    spec = load_sweep_file(path)
    sampled = {p.name: p.extremes()[-1] for p in spec.parameters.values() if p.searched}
    preset, overrides = spec.overrides(sampled)
    config = make_config(preset, **overrides)
    assert config.method == spec.parameters["method"].value


@pytest.mark.parametrize("rho", ["0.990", "0.995", "0.997", "0.999"])
def test_paper_sweeps_follow_the_protocol(rho):
    limit = 50.0 if rho == "0.999" else 1.0
    for prefix, preset in (("", "paper"), ("quick_", "quick")):
        spec = load_sweep_file(SWEEPS / f"{prefix}biased_mnist_rho{rho}.yaml")
        assert spec.method == "bayes" and spec.metric == "valid_acc"
        ranges = {name: (p.kind, p.low, p.high) for name, p in spec.parameters.items()
                  if name in ("alpha", "beta")}
        if preset == "paper" or rho == "0.999":
            assert ranges == {"alpha": ("uniform", 0.0, limit), "beta": ("uniform", 0.0, limit)}
        else:  # the quick model needs a stronger push off the colour than [0, 1] gives
            assert ranges == {"alpha": ("log_uniform_values", 0.25, 4.0),
                              "beta": ("uniform", 0.0, 2.0)}
        chosen, overrides = spec.overrides({"alpha": 0.1, "beta": 0.2})
        config = make_config(chosen, **overrides)
        assert chosen == preset and config.method == "end" and config.dataset == "biased-mnist"
        assert config.dataset_options["rho"] == float(rho)
        if preset == "paper":
            assert spec.run_cap >= 20
            assert (config.epochs, config.lr, config.weight_decay, config.batch_size) == (
                80, 1e-3, 1e-4, 256)
