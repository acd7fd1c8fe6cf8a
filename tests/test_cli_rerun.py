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
