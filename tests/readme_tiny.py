"""Stands in for ``endebias`` while tests/test_readme.py runs the README's commands: the
same command with a tiny budget, then the real ``endebias`` (``$ENDEBIAS_README_REAL``).

* ``train`` and ``demo``: ``--epochs 1 --train-subset N --eval-subset N --no-progress``
  appended (argparse keeps the last value, so the README's own ``--epochs 100`` yields).
* ``sweep create FILE``: a copy of FILE with ``run_cap`` 2 and those budgets as constant
  parameters, written under ``.readme-tiny/`` with the same name.
* ``sweep`` (other actions), ``results``, ``plot``, ``report`` and no subcommand
  (``--help``, ``--version``): as written; they read records or run the tiny trials.

Any other subcommand exits with status 3 and a line naming it, so that a new README
command is never run at full size by accident: give it a rule here.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

SIZE = os.environ.get("ENDEBIAS_README_SIZE", "64")
TINY = ["--epochs", "1", "--train-subset", SIZE, "--eval-subset", SIZE, "--no-progress"]
AS_WRITTEN = {"results", "plot", "report"}
# Options of the main parser that come before the subcommand and take no value.
GLOBAL_FLAGS = {"-v", "--verbose", "-h", "--help", "--version"}


def tiny_sweep_file(path: str) -> str:
    """A copy of the sweep file that trains for seconds: two trials of one tiny epoch."""
    spec = yaml.safe_load(Path(path).read_text())
    spec["run_cap"] = 2
    parameters = spec.setdefault("parameters", {})
    for name, value in (("epochs", 1), ("train_subset", int(SIZE)), ("eval_subset", int(SIZE))):
        parameters[name] = {"value": value}
    copy = Path(".readme-tiny") / Path(path).name
    copy.parent.mkdir(exist_ok=True)
    copy.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(copy)


def rewrite(args: list[str]) -> list[str]:
    """The tiny form of ``endebias ARGS``; raises SystemExit(3) when there is no rule."""
    words = [a for a in args if a not in GLOBAL_FLAGS]
    if not words:
        return args
    command = words[0]
    if command in ("train", "demo"):
        return [*args, *TINY]
    if command == "sweep":
        files = [w for w in words[2:] if w.endswith((".yaml", ".yml"))]
        if words[1:2] == ["create"] and files:
            position = args.index(files[0])
            return [*args[:position], tiny_sweep_file(files[0]), *args[position + 1 :]]
        return args
    if command in AS_WRITTEN:
        return args
    sys.stderr.write(
        f"readme test: no rule to run `endebias {command}` with a tiny budget; "
        "add one to tests/readme_tiny.py\n"
    )
    raise SystemExit(3)


def main() -> None:
    real = os.environ["ENDEBIAS_README_REAL"]
    args = rewrite(sys.argv[1:])
    os.execv(real, [real, *args])


if __name__ == "__main__":
    main()
