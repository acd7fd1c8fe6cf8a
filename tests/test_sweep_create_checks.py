"""`sweep create` checks what a trial would check, at the corners of the search space, and
names the key to blame; the official repository's sweep-file form trains EnD end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from endebias.cli.main import main
from endebias.sweeps.sweep_file import SweepFileError, parse_sweep
from endebias.training import records
from test_sweep_file import ORIGINAL


def parse(**parameters):
    mapping = {"method": "random", "parameters": parameters}
    return parse_sweep(mapping, source="s.yaml", announce=False)


UNIT = {"min": 0.0, "max": 1.0}


@pytest.mark.parametrize(
    ("parameters", "key", "message"),
    [
        ({"alpha": UNIT, "rho": {"min": 0.5, "max": 1.5}}, "rho", "rho must be a number in [0, 1]"),
        ({"alpha": UNIT, "epochs": {"value": "ten"}}, "epochs", "epochs must be a positive"),
        ({"alpha": UNIT, "batch_size": {"value": 0}}, "batch_size", "batch_size must be a pos"),
        ({"alpha": UNIT, "epochs": {"value": -1}}, "epochs", "epochs must be a positive"),
        ({"alpha": {"min": -1.0, "max": 1.0}}, "alpha", "must be >= 0"),
        ({"alpha": {"value": "abc"}, "beta": UNIT}, "alpha", "alpha"),
        ({"method": {"value": "vanilla"}, "alpha": UNIT}, "alpha", "has no option 'alpha'"),
        ({"pairs": {"values": ["all", "some"]}}, "pairs", "pairs must be 'all' or 'reference'"),
        (
            {"dataset": {"value": "colored-mnist"}, "sigma2": {"values": [0.01, -1]},
             "alpha": UNIT},
            "sigma2",
            "sigma2 must be a number >= 0",
        ),
        (
            {"alpha": UNIT, "model_options.widht": {"value": 3}},
            "model_options.widht",
            "model 'simple-conv' has no option 'widht'",
        ),
        (
            {"alpha": UNIT, "dataset_options.colour": {"value": "red"}},
            "dataset_options.colour",
            "dataset 'biased-mnist' has no option 'colour'",
        ),
    ],
)
def test_a_corner_a_trial_would_refuse_is_refused_at_create(parameters, key, message):
    with pytest.raises(SweepFileError) as caught:
        parse(**parameters)
    text = str(caught.value)
    assert text.startswith(f"s.yaml: parameters.{key}: "), text
    assert message in text and "\n" not in text


def test_the_culprit_is_the_constant_not_the_searched_key():
    """A bad constant used to be reported under the first searched parameter."""
    with pytest.raises(SweepFileError, match=r"parameters\.lr: lr must be"):
        parse(alpha=UNIT, beta=UNIT, lr={"value": -0.1})


def test_a_sound_search_space_passes():
    spec = parse(alpha=UNIT, beta=UNIT, rho={"values": [0.99, 0.997]})
    assert set(spec.parameters) == {"alpha", "beta", "rho"}


def test_cli_refuses_a_bad_range_in_one_line_before_any_agent(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({
        "method": "bayes", "parameters": {"alpha": UNIT, "rho": {"min": 0.5, "max": 1.5}},
    }))
    storage = f"sqlite:///{tmp_path}/sweeps.db"
    assert main(["sweep", "create", str(path), "--storage", storage]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "parameters.rho" in err and str(path) in err


# The official repository's sweep file (tests/test_sweep_file.py holds it verbatim) with
# only its budget changed: a synthetic benchmark, 64-image batches, one epoch, two trials.
OFFICIAL_FORM = (
    ORIGINAL.replace("value: 256", "value: 64").replace("value: 80", "value: 1")
    .replace("value: 0.990", "value: 0.99\n    dataset:\n        value: synthetic")
    + "run_cap: 2\n"
)


@pytest.mark.slow
def test_the_official_sweep_form_trains_end_end_to_end(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "official.yaml").write_text(OFFICIAL_FORM)
    storage = f"sqlite:///{tmp_path}/sweeps.db"
    assert main(["sweep", "create", "official.yaml", "--storage", storage, "--id", "off"]) == 0
    code = main(["sweep", "agent", "off", "--storage", storage, "--runs", "runs"])
    assert code == 0, capsys.readouterr().err
    folders = sorted(p for p in (tmp_path / "runs" / "off").iterdir() if p.is_dir())
    assert len(folders) == 2
    for folder in folders:
        config = json.loads((folder / records.CONFIG).read_text())
        assert config["method"] == "end" and config["preset"] == "paper"
        assert config["weight_decay"] == 1e-4
        assert set(config["method_options"]) == {"alpha", "beta", "pairs"}
        assert config["method_options"]["pairs"] == "reference"
        assert (folder / records.DONE).exists()
        history = [json.loads(line) for line in (folder / records.METRICS).read_text().splitlines()]
        assert "train_r_perp" in history[0]  # EnD's terms were trained and logged
    capsys.readouterr()
    assert main(["results", "off", "--storage", storage]) == 0
    assert "COMPLETE" in capsys.readouterr().out


def test_agent_count_must_be_positive(capsys):
    with pytest.raises(SystemExit) as stopped:
        main(["sweep", "agent", "x", "--count", "-1"])
    assert stopped.value.code == 2
    assert "--count: must be a positive integer, got -1" in capsys.readouterr().err


def test_official_form_validates_at_create(tmp_path):
    """The budgeted official form parses: EnD's alpha and beta find their place."""
    spec = parse_sweep(yaml.safe_load(OFFICIAL_FORM), source="o.yaml", announce=False)
    assert spec.parameters["alpha"].home == ("method_options", "alpha")
    assert Path(spec.source).name == "o.yaml"
