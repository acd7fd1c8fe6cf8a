"""Re-running a finished command shows its result (exit 0), and a run is named by what it
trains, not by how its options were spelled."""

from __future__ import annotations

from pathlib import Path

from endebias.cli.main import build_parser, config_from_args, main

TINY = ["--dataset", "synthetic", "--epochs", "1", "--train-subset", "64", "--eval-subset",
        "32", "--no-progress"]


def _config(*argv: str):
    return config_from_args(build_parser().parse_args(["train", *argv]))


def test_a_default_spelled_out_is_the_same_run() -> None:
    assert _config("--rho", "0.997") == _config()  # Biased MNIST's default rho
    assert _config("--rho", "0.997").dataset_options == {}
    assert _config("--rho", "0.99").dataset_options == {"rho": 0.99}
    synthetic = ["--dataset", "synthetic"]
    assert _config(*synthetic, "--dataset-option", "num_classes=4") == _config(*synthetic)
    assert _config(*synthetic, "--dataset-option", "num_classes=3").dataset_options == {
        "num_classes": 3}


def test_rerunning_a_finished_run_shows_its_result(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY]) == 0
    first = capsys.readouterr().out.splitlines()
    (folder,) = list((tmp_path / "runs").iterdir())
    metrics = (folder / "metrics.jsonl").read_text()
    # Spelled differently (the dataset's default written out), the same command again.
    assert main(["train", *TINY, "--dataset-option", "num_classes=4"]) == 0
    again = capsys.readouterr().out.splitlines()
    assert list((tmp_path / "runs").iterdir()) == [folder]
    assert again[0] == f"run folder {Path('runs') / folder.name}: finished earlier (a new --out " \
        "trains it again)"
    assert again[-1] == first[-1] and again[-1].startswith("best epoch 1 by valid accuracy")
    assert not any(line.startswith("epoch ") for line in again)  # nothing trained
    assert (folder / "metrics.jsonl").read_text() == metrics
    # With --out and --resume alike.
    assert main(["train", *TINY, "--out", str(folder), "--resume"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == first[-1]


def test_method_and_model_options_at_their_defaults_are_the_same_run() -> None:
    from endebias.methods import method_class
    from endebias.models import model_builder
    from endebias.option_types import builder_defaults

    # GroupDRO's step size and SimpleConvNet's feature normalisation, typed at the defaults
    # their classes declare: no preset sets either.
    step_size = method_class("groupdro").defaults["step_size"]
    normalize = builder_defaults(model_builder("simple-conv"))["normalize_features"]
    plain = _config("--method", "groupdro")
    spelled = _config("--method", "groupdro", "--method-option", f"step_size={step_size}",
                      "--model-option", f"normalize_features={str(normalize).lower()}")
    assert spelled == plain and spelled.method_options == {}
    assert "normalize_features" not in spelled.model_options
    other = _config("--method", "groupdro", "--method-option", f"step_size={step_size * 2}")
    assert other.method_options == {"step_size": step_size * 2}
    # A preset's own default stays recorded, and a value off it too, even where that value
    # is the class's default (the paper preset's EnD weights are 0.1; the class's 1.0).
    assert _config("--alpha", "1.0").method_options == {"alpha": 1.0, "beta": 1.0}
    paper = _config("--preset", "paper", "--alpha", "1.0").method_options
    assert paper["alpha"] == 1.0 and paper["beta"] == 0.1


def _table(rows: int, flipped: bool) -> str:
    """A small CSV; ``flipped`` swaps the target of every fifth row (the same columns)."""
    lines = ["age,glu,outcome"]
    for i in range(rows):
        outcome = i % 3 == 0
        if flipped and i % 5 == 0:
            outcome = not outcome
        lines.append(f"{20 + (i * 7) % 50},{80 + (i * 13) % 90},{'yes' if outcome else 'no'}")
    return "\n".join(lines) + "\n"


def test_another_data_dir_never_reuses_a_run_trained_on_other_data(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    monkeypatch.chdir(tmp_path)
    for name, flipped in (("a", False), ("b", True)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "table.csv").write_text(_table(120, flipped))
    options = [item for pair in ("path=table.csv", "target=outcome", "bias=age",
                                 "bias_binning=median") for item in ("--dataset-option", pair)]
    command = ["train", "--dataset", "tabular", *options, "--epochs", "1", "--no-progress"]
    assert main([*command, "--data-dir", "a"]) == 0
    (folder,) = list((tmp_path / "runs").iterdir())
    recorded = (folder / "data.json").read_text()
    metrics = (folder / "metrics.jsonl").read_text()
    capsys.readouterr()
    # The same command on data b: the same config, so the same default folder, whose
    # finished result was trained on a; it is refused in one line, not shown as b's.
    assert main([*command, "--data-dir", "b"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trained on other data" in err
    assert "--data-dir b gives" in err and str(folder.name) in err
    # Nor continued: an unfinished run (its done mark gone) on b is refused with --resume.
    (folder / "done").unlink()
    assert main([*command, "--data-dir", "b", "--resume", "--epochs", "1"]) == 2
    assert "trained on other data" in capsys.readouterr().err
    assert (folder / "metrics.jsonl").read_text() == metrics
    assert (folder / "data.json").read_text() == recorded
    # Back on a, the data it was trained on, the run is this run again.
    (folder / "done").touch()
    assert main([*command, "--data-dir", "a"]) == 0
    assert "finished earlier" in capsys.readouterr().out
