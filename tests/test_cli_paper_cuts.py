"""The command line's small promises: options are never matched by prefix, an unknown
option is reported with its own subcommand's usage, a missing --data-dir is named."""

from __future__ import annotations

from pathlib import Path

import pytest

from endebias.cli.main import main


def _usage_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


def test_an_abbreviated_option_is_not_taken_for_the_full_one(tmp_path, capsys) -> None:
    # --epoch would have been read as --epochs by argparse's prefix matching.
    lines = _usage_error(capsys, ["train", "--dataset", "synthetic", "--epoch", "1",
                                  "--out", str(tmp_path / "run")])
    assert lines[-1] == "endebias train: error: unrecognized arguments: --epoch 1"
    assert not (tmp_path / "run").exists()
    # The same holds on nested subcommands and on the top level.
    assert _usage_error(capsys, ["sweep", "agent", "x", "--coun", "1"])[-1].endswith(
        "unrecognized arguments: --coun 1")
    assert "--verb" in _usage_error(capsys, ["--verb", "results", "x"])[-1]


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["train", "--epochz", "2"], "endebias train"),
        (["demo", "--seeds", "2"], "endebias demo"),
        (["sweep", "agent", "some-id", "--epochz", "2"], "endebias sweep agent"),
        (["results", "some-id", "--tops", "2"], "endebias results"),
    ],
)
def test_a_misspelt_option_shows_its_subcommands_usage(capsys, argv, command) -> None:
    lines = _usage_error(capsys, argv)
    assert lines[0].startswith(f"usage: {command} ")
    assert lines[-1].startswith(f"{command}: error: unrecognized arguments: ")


@pytest.mark.parametrize(
    "argv",
    [
        ["train", "--dataset", "synthetic"],
        ["demo"],
        ["sweep", "agent", "some-id"],
    ],
)
def test_a_missing_data_dir_is_named_and_not_created(tmp_path, capsys, argv) -> None:
    missing = tmp_path / "no-such-folder"
    lines = _usage_error(capsys, [*argv, "--data-dir", str(missing)])
    assert lines[-1].endswith(f"argument --data-dir: {missing} does not exist")
    assert not missing.exists()
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    lines = _usage_error(capsys, [*argv, "--data-dir", str(a_file)])
    assert lines[-1].endswith(f"argument --data-dir: {a_file} is not a folder")


def test_image_folder_names_a_missing_root(tmp_path: Path, capsys) -> None:
    root = tmp_path / "images"
    code = main(["train", "--dataset", "image-folder", "--dataset-option", f"root={root}",
                 "--dataset-option", "csv=labels.csv", "--dataset-option", "target=label",
                 "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(root) in err and "image root" in err
    assert not (tmp_path / "run").exists()
