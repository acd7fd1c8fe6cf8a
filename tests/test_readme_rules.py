"""The rules tests/test_readme.py runs the README by: how blocks are read, what is run,
skipped or refused, and how tests/readme_tiny.py shrinks a command."""

from __future__ import annotations

import pytest
import yaml

import readme_tiny
import test_readme

TEXT = """Intro.

```bash
make demo   # set-up
            # a comment line under it
endebias train --dataset synthetic \\
    --method end   # two lines, one command
```

```python
print("not a shell block")
```

```sh
ID=$(endebias sweep create sweeps/x.yaml)
endebias sweep agent $ID & endebias sweep agent $ID; wait
```
"""


def test_blocks_join_continuations_and_drop_comment_lines() -> None:
    assert test_readme.shell_blocks(TEXT) == [
        ["make demo   # set-up",
         "endebias train --dataset synthetic      --method end   # two lines, one command"],
        ["ID=$(endebias sweep create sweeps/x.yaml)",
         "endebias sweep agent $ID & endebias sweep agent $ID; wait"],
    ]


def test_segments_split_at_shell_operators_without_assignments_or_comments() -> None:
    assert test_readme.segments("ID=$(endebias sweep create f.yaml)  # (a comment)") == [
        ["endebias", "sweep", "create", "f.yaml"]]
    assert test_readme.segments("endebias a & endebias b; wait") == [
        ["endebias", "a"], ["endebias", "b"], ["wait"]]


@pytest.mark.parametrize("command,kind,reason", [
    ("endebias train --dataset synthetic --method end", "run", ""),
    ("for seed in 1 2; do", "run", ""),
    ("make test", "skip", "set-up command"),
    ("pip install wandb", "skip", "install step"),
    ("endebias train --dataset image-folder --dataset-option root=NO_SUCH_DIR", "skip",
     "needs NO_SUCH_DIR, which is not here"),
    ("python benchmarks/bench_train.py", "fail", "runs `python`"),
    ("endebias results x | grep end", "fail", "runs `grep`"),
])
def test_verdicts(command: str, kind: str, reason: str) -> None:
    found, why = test_readme.verdict(command)
    assert found == kind and reason in why


def test_tiny_train_and_demo_get_the_budget_last() -> None:
    shrunk = readme_tiny.rewrite(["train", "--epochs", "100", "--method", "end"])
    assert shrunk[:4] == ["train", "--epochs", "100", "--method"]
    assert shrunk[-len(readme_tiny.TINY):] == readme_tiny.TINY
    assert readme_tiny.rewrite(["-v", "demo"])[-len(readme_tiny.TINY):] == readme_tiny.TINY


def test_read_only_commands_run_as_written() -> None:
    for args in (["results", "x", "--plot", "f/"], ["plot", "features", "r"], ["--version"],
                 ["sweep", "agent", "ID"], ["report", "ID"]):
        assert readme_tiny.rewrite(args) == args


def test_tiny_sweep_file_caps_the_sweep(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweeps").mkdir()
    spec = {"name": "s", "run_cap": 8, "parameters": {"alpha": {"min": 0, "max": 1}}}
    (tmp_path / "sweeps" / "s.yaml").write_text(yaml.safe_dump(spec))
    shrunk = readme_tiny.rewrite(["sweep", "create", "sweeps/s.yaml", "--id", "x"])
    assert shrunk == ["sweep", "create", ".readme-tiny/s.yaml", "--id", "x"]
    tiny = yaml.safe_load((tmp_path / ".readme-tiny" / "s.yaml").read_text())
    size = int(readme_tiny.SIZE)
    assert tiny["run_cap"] == 2 and tiny["parameters"]["alpha"] == {"min": 0, "max": 1}
    assert tiny["parameters"]["epochs"] == {"value": 1}
    assert tiny["parameters"]["train_subset"] == tiny["parameters"]["eval_subset"] == {
        "value": size}


def test_a_subcommand_without_a_rule_is_refused_by_name(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        readme_tiny.rewrite(["serve", "--port", "80"])
    assert info.value.code == 3
    assert "no rule to run `endebias serve`" in capsys.readouterr().err


def test_readme_names_every_registered_method_and_dataset() -> None:
    """`endebias train --help` lists the registered names; the README's lists must too."""
    from endebias.data import dataset_names
    from endebias.methods import method_names

    text = test_readme.README.read_text()
    lists = {"Methods (`--method`)": method_names(), "Benchmarks (`--dataset`)": dataset_names()}
    for heading, names in lists.items():
        start = text.index(heading)
        bullet = text[start:text.index("\n* ", start)]
        missing = [name for name in names if f"`{name}`" not in bullet]
        assert not missing, f"README's {heading} list misses {missing}"
