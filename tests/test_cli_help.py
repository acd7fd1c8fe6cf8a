"""What a newcomer reads first: --help and --version, and the demo's picture."""

from __future__ import annotations

import argparse
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import matplotlib.pyplot as plt
import pytest

from endebias.cli import help_text
from endebias.cli.demo import DEMO_BUDGET
from endebias.cli.main import build_parser, main
from endebias.data import dataset_names
from endebias.methods import method_names
from endebias.models import model_names
from endebias.report import plots
from endebias.report.runs import Run
from endebias.training.config import PRESETS


def _help(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    with pytest.raises(SystemExit) as info:
        main([*argv, "--help"])
    assert info.value.code == 0
    # argparse wraps lines and may break a name at its hyphen; compare the words unwrapped.
    return " ".join(capsys.readouterr().out.split()).replace("- ", "-")


def test_version_is_the_installed_distribution(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"endebias {importlib.metadata.version('endebias')}"


def test_main_help_names_docs_design(capsys) -> None:
    text = _help(capsys)
    assert "docs/design.md" in text and "DESIGN.md" not in text
    for command in ("train", "demo", "sweep", "results", "plot"):
        assert command in text


def test_train_help_lists_registered_names_and_defaults(capsys) -> None:
    text = _help(capsys, "train")
    described = text.split("options:", 1)[1]  # past the usage lines
    for option, names in (("dataset", dataset_names()), ("method", method_names()),
                          ("model", model_names())):
        listed = described.split(f"--{option} {option.upper()}", 1)[1].split("known: ", 1)[1]
        assert listed.startswith(", ".join(sorted(names))), option
    assert "default: biased-mnist" in text
    assert "docs/design.md" in text and "DESIGN.md" not in text


def test_every_demo_option_is_described_with_its_default(capsys) -> None:
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    demo = commands.choices["demo"]
    options = [a for a in demo._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in options} >= {"out", "data_dir", "rho", "seed", "epochs"}
    for action in options:
        assert action.help and len(action.help) > 10, action.dest
        assert "default" in action.help, action.dest
    text = _help(capsys, "demo")
    assert "(default: 0.997)" in text and "(default: 42)" in text
    assert "(default: demo-output)" in text
    assert f"(default: {DEMO_BUDGET['epochs']}; with --full the quick preset's, " \
        f"{PRESETS['quick']['epochs']})" in text
    assert "--full" in text


def test_building_the_parser_imports_no_torch() -> None:
    # The registries need torch; their names are looked up only when help is printed.
    code = ("import sys; from endebias.cli.main import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert done.stdout.strip() == "False"


def test_known_names_validate_their_kind() -> None:
    with pytest.raises(ValueError, match="unknown registry 'datasets'; known: dataset"):
        help_text.KnownNames("datasets")
    assert str(help_text.KnownNames("model")) == ", ".join(sorted(model_names()))


def _run(tmp_path: Path, label: str, best_epoch: int) -> Run:
    history = [{"epoch": e, "unbiased_test_acc": 0.1 * e} for e in (1, 2, 3)]
    matrix = [[1.0, 0.0], [0.5, None]]
    best = {"epoch": best_epoch, "unbiased_test_group_acc": matrix}
    return Run(path=tmp_path / label, config={}, history=history, best=best, done=True,
               error=None)


def test_demo_picture_has_a_title_and_names_the_heat_map_epochs(tmp_path, monkeypatch) -> None:
    figures: list[plt.Figure] = []
    real_close = plt.close

    def keep(fig: plt.Figure) -> None:
        figures.append(fig)
        real_close(fig)

    monkeypatch.setattr(plots.plt, "close", keep)
    runs = {"vanilla": _run(tmp_path, "vanilla", 2), "EnD": _run(tmp_path, "end", 3)}
    title = "Biased MNIST, rho=0.997, quick preset, 6 epochs, seed 42"
    path = plots.plot_comparison(runs, tmp_path / "demo.png", title=title)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (fig,) = figures
    assert fig._suptitle is not None and fig._suptitle.get_text() == title
    heat_map_titles = [axis.get_title() for axis in fig.axes if "per group" in axis.get_title()]
    assert heat_map_titles == [
        "vanilla: accuracy per group (%)\nepoch 2 (best valid)",
        "EnD: accuracy per group (%)\nepoch 3 (best valid)",
    ]
