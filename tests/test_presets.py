"""Presets carry their method defaults; explicit options and sweep parameters win; the
method follows from its options when none is named (the official code's commands)."""

from __future__ import annotations

from pathlib import Path

import pytest

from endebias.cli.main import build_parser, config_from_args, main
from endebias.training import records
from endebias.training.config import METHOD_DEFAULTS, infer_method, make_config


def parsed(*argv: str):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_paper_preset_uses_the_official_end_defaults():
    config = make_config("paper", method="end")
    assert config.method_options == {"alpha": 0.1, "beta": 0.1, "pairs": "reference"}
    # The same through the command line: `--preset paper --method end`.
    assert parsed("--preset", "paper", "--method", "end").method_options == {
        "alpha": 0.1,
        "beta": 0.1,
        "pairs": "reference",
    }


def test_quick_preset_keeps_its_own_weights():
    assert make_config("quick", method="end").method_options == {"alpha": 1.0, "beta": 1.0}
    assert parsed("--method", "end").method_options == {"alpha": 1.0, "beta": 1.0}


def test_quick_and_cpu_presets_train_learned_mixin_without_its_entropy_term():
    assert make_config("quick", method="learned-mixin").method_options == {"entropy_weight": 0.0}
    assert make_config("cpu", method="learned-mixin").method_options == {"entropy_weight": 0.0}
    assert parsed("--method", "learned-mixin").method_options == {"entropy_weight": 0.0}
    # The paper preset keeps the class's (Bahng et al.'s) weight, so records nothing.
    assert make_config("paper", method="learned-mixin").method_options == {}
    assert parsed("--method", "learned-mixin", "--method-option", "entropy_weight=0.5",
                  ).method_options == {"entropy_weight": 0.5}


def test_explicit_options_override_the_preset_one_by_one():
    config = parsed("--preset", "paper", "--method", "end", "--alpha", "0.3")
    assert config.method_options == {"alpha": 0.3, "beta": 0.1, "pairs": "reference"}
    config = parsed("--preset", "paper", "--method-option", "pairs=all", "--beta", "2")
    assert config.method == "end"
    assert config.method_options == {"alpha": 0.1, "beta": 2.0, "pairs": "all"}


def test_no_preset_means_no_preset_method_defaults():
    assert make_config(None, method="end").method_options == {}


def test_other_methods_get_no_end_defaults():
    assert make_config("paper", method="vanilla").method_options == {}
    assert make_config("paper", method="lff").method_options == {}


def test_every_preset_default_is_a_real_option_of_its_method():
    from endebias.methods import method_class

    for preset, by_method in METHOD_DEFAULTS.items():
        for method, defaults in by_method.items():
            unknown = set(defaults) - set(method_class(method).defaults)
            assert not unknown, f"{preset}: {method} has no option {unknown}"


def test_the_method_follows_from_its_options():
    assert infer_method({}) == "vanilla"
    assert infer_method({"alpha": 0.1, "beta": 0.1}) == "end"
    assert infer_method({"pairs": "reference"}) == "end"
    assert infer_method({"step_size": 0.1}) == "groupdro"
    # BiasBal's prior is BC+BB's too: an option two methods share names neither.
    with pytest.raises(ValueError, match="options smoothing fit methods bcbb, biasbal"):
        infer_method({"smoothing": 1.0})
    with pytest.raises(ValueError, match="no method has all of the options alpha, smoothing"):
        infer_method({"alpha": 1.0, "smoothing": 0.5})


def test_official_local_command_trains_end(tmp_path, capsys):
    """`--alpha 0.1 --beta 0.1` with no --method is EnD, as in the official repository."""
    out = tmp_path / "run"
    argv = ["train", "--dataset", "synthetic", "--alpha", "0.1", "--beta", "0.1",
            "--epochs", "1", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    config = records.read_json(out / records.CONFIG)
    assert config["method"] == "end"
    assert config["method_options"] == {"alpha": 0.1, "beta": 0.1}
    assert "r_perp" in capsys.readouterr().out


def test_end_options_with_another_method_stay_one_line_errors(tmp_path, capsys):
    argv = ["train", "--dataset", "synthetic", "--method", "vanilla", "--alpha", "0.1",
            "--epochs", "1", "--out", str(tmp_path / "r"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "method 'vanilla' has no option 'alpha'" in err
    assert not (tmp_path / "r" / records.CONFIG).exists()


def test_help_names_each_presets_end_weights(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "EnD disentangling weight (default: paper 0.1, quick 1, cpu 1)" in text
    assert "(default: paper 80, quick 6, cpu 24)" in text


def test_the_official_flags_parse_as_ours():
    """The official code's spellings (--weight_decay, --batch_size, --local) work unchanged."""
    config = parsed("--local", "--alpha", "0.1", "--beta", "0.1", "--weight_decay", "1e-4",
                    "--batch_size", "128", "--preset", "paper")
    assert (config.method, config.batch_size, config.weight_decay) == ("end", 128, 1e-4)
    assert config.method_options == {"alpha": 0.1, "beta": 0.1, "pairs": "reference"}


def test_the_official_command_means_the_official_run():
    """`--local --alpha 0.1 --beta 0.1`, typed as the official README has it, is the
    paper's protocol (the official code has no other); an explicit --preset still wins."""
    official = parsed("--local", "--alpha", "0.1", "--beta", "0.1")
    assert official == make_config("paper", method="end", method_options={"alpha": 0.1,
                                                                         "beta": 0.1})
    assert (official.preset, official.epochs, official.model_options["kernel_size"]) == (
        "paper", 80, 7)
    assert parsed("--alpha", "0.1", "--beta", "0.1").preset == "quick"  # our default
    assert parsed("--local", "--preset", "quick").preset == "quick"


def test_the_cpu_preset_is_the_budget_the_search_chose():
    import yaml

    from endebias.training.presets import PRESETS

    root = Path(__file__).resolve().parents[1]
    chosen = yaml.safe_load((root / "benchmarks" / "budget_candidates.yaml").read_text())[
        "budgets"]["e24"]
    cpu, quick = make_config("cpu"), make_config("quick")
    assert (cpu.epochs, cpu.lr_step) == (chosen["epochs"], chosen["lr_step"]) == (24, 20)
    assert cpu.model_options == {"channels": [16, 32, 64, 128], **{
        key: chosen[key] for key in ("kernel_size", "pool_after")}}
    # The search's optimiser: the quick preset's, as budget_candidates.yaml says.
    for option in ("batch_size", "lr", "weight_decay", "lr_gamma"):
        assert getattr(cpu, option) == getattr(quick, option)
    # The search measured EnD at the candidates file's weights: the preset's defaults.
    end = yaml.safe_load((root / "benchmarks" / "budget_candidates.yaml").read_text())["end"]
    assert make_config("cpu", method="end").method_options == end
    # Every preset can be named on the command line.
    assert parsed("--preset", "cpu").epochs == 24
    choices = next(a for a in build_parser()._subparsers._group_actions[0].choices[
        "train"]._actions if a.dest == "preset").choices
    assert list(choices) == list(PRESETS)
