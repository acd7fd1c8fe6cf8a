"""Every registered method's search space is sweepable in both spellings of a sweep file
(the bare option name and ``method_options.NAME``), and ``sweep create`` checks its corners
through the method's own validation (found through the registry, so a new method is
covered without a line here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from endebias.methods import method_class, method_names
from endebias.sweeps.sweep_file import SweepFileError, parse_sweep


def parse(**parameters):
    return parse_sweep({"method": "random", "parameters": parameters}, source="s.yaml",
                       announce=False)


@pytest.mark.parametrize("name", [n for n in method_names() if method_class(n).search_space])
@pytest.mark.parametrize("spelling", ["bare", "nested"])
def test_each_search_space_parses_in_both_spellings(name, spelling):
    space = method_class(name).search_space
    prefix = "" if spelling == "bare" else "method_options."
    spec = parse(method={"value": name}, **{prefix + key: dict(value)
                                             for key, value in space.items()})
    for key in space:
        assert spec.parameters[prefix + key].home == ("method_options", key)


@pytest.mark.parametrize(
    ("name", "key", "bad", "message"),
    [
        ("rubi", "bias_loss_weight", {"min": -1.0, "max": 1.0}, "bias_loss_weight must be"),
        ("learned-mixin", "entropy_weight", {"min": -0.5, "max": 1.0}, "entropy_weight must be"),
        ("rebias", "hsic_weight", {"min": -1.0, "max": 1.0}, "hsic_weight must be"),
        ("rebias", "kernel_radius", {"values": ["median", "mean"]}, "kernel_radius must be"),
        ("rebias", "bias_lr", {"values": [0.001, 0.0]}, "bias_lr must be a number > 0"),
        ("rebias", "method_options.bias_model", {"value": "nope"}, "unknown model 'nope'"),
    ],
)
def test_a_corner_the_method_refuses_is_refused_at_create(name, key, bad, message):
    with pytest.raises(SweepFileError) as caught:
        parse(method={"value": name}, **{key: bad})
    text = str(caught.value)
    assert text.startswith(f"s.yaml: parameters.{key}: ") and message in text, text
    assert "\n" not in text


@pytest.mark.parametrize("name", ["rubi", "learned_mixin", "rebias"])
def test_their_quick_sweep_files_pass_sweep_create(name):
    path = Path(__file__).resolve().parents[1] / "sweeps" / f"{name}_biased_mnist_quick.yaml"
    spec = parse_sweep(yaml.safe_load(path.read_text()), source=str(path), announce=False)
    space = method_class(name.replace("_", "-")).search_space
    assert all(spec.parameters[key].home == ("method_options", key) for key in space)
