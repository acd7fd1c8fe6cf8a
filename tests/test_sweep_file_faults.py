"""Sweep files that are wrong in ways a YAML loader does not mind: a key given twice,
a list too long to be meant, a file too big to parse. Each is one line naming the file
and the limit or the lines, before anything is stored."""

from __future__ import annotations

import time

import pytest

from endebias.cli.main import main
from endebias.sweeps.safe_yaml import MAX_BYTES, MAX_NODES
from endebias.sweeps.search_space import SweepFileError
from endebias.sweeps.sweep_file import load_sweep_file


def create(capsys, tmp_path, path) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["sweep", "create", str(path), "--storage", f"sqlite:///{tmp_path}/s.db"])
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("text", "key", "lines"), [
    ("method: random\nmethod: grid\nparameters: {alpha: {value: 1}}\n", "method", (1, 2)),
    ("method: random\nparameters:\n  alpha: {value: 1}\n  beta: {value: 2}\n"
     "  alpha: {values: [1, 2]}\n", "alpha", (3, 5)),
    ("method: random\nparameters:\n  alpha: {min: 0, max: 1, max: 2}\n", "max", (3, 3)),
])
def test_a_key_given_twice_is_refused_naming_both_lines(tmp_path, capsys, text, key, lines):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    code, err = create(capsys, tmp_path, path)
    assert code == 2 and err == (
        f"endebias: error: {path}: line {lines[1]}: key {key!r} appears twice in one mapping "
        f"(lines {lines[0]} and {lines[1]}); keep one\n")
    assert not (tmp_path / "s.db").exists()


def test_merge_keys_and_equal_values_under_different_keys_still_load(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_text("method: random\nparameters:\n  alpha: &b {min: 0.0, max: 1.0}\n"
                    "  beta: {<<: *b, max: 2.0}\n  preset: {value: quick}\n")
    spec = load_sweep_file(path)
    assert (spec.parameters["beta"].low, spec.parameters["beta"].high) == (0.0, 2.0)


def test_a_long_plain_list_is_refused_as_such_at_once(tmp_path, capsys):
    path = tmp_path / "long.yaml"
    values = ", ".join(str(i / 1000) for i in range(2 * MAX_NODES))
    path.write_text(f"method: grid\nparameters:\n  alpha:\n    values: [{values}]\n")
    started = time.monotonic()
    code, err = create(capsys, tmp_path, path)
    assert time.monotonic() - started < 10
    assert code == 2 and err.startswith(
        f"endebias: error: {path}: more than {MAX_NODES:,} values (the limit, reached on "
        "line 4)")
    assert "aliases" not in err and err.count("\n") == 1


def test_a_file_too_big_is_refused_by_its_size_before_it_is_read(tmp_path, capsys):
    path = tmp_path / "big.yaml"
    path.write_text("method: random\n# " + "x" * MAX_BYTES + "\n")
    code, err = create(capsys, tmp_path, path)
    size = path.stat().st_size
    assert code == 2 and err == (
        f"endebias: error: {path}: {size:,} bytes, more than the {MAX_BYTES:,} a sweep file "
        "may have (a real one has a few kB)\n")
    with pytest.raises(SweepFileError, match="bytes, more than"):
        from endebias.sweeps.safe_yaml import load_yaml

        load_yaml("a: 1\n" + "#" * MAX_BYTES, source="text")
