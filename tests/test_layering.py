"""The layers of docs/design.md ("Architecture").

Which layer may import which is import-linter's to check (pyproject.toml's contracts, run
by ``make lint``); these tests prove that the contracts hold on this tree and fail on a
bad import. What the linter cannot say is checked in a fresh interpreter: it sees every
import, even one inside a function, so it cannot tell what merely loading a module pulls in.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(src: Path) -> subprocess.CompletedProcess:
    """lint-imports with the project's contracts, on the package found in ``src``."""
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(ROOT / "pyproject.toml"), "--no-cache", "--no-logo"],
        capture_output=True, text=True, env={"PYTHONPATH": str(src), "PATH": ""}, timeout=120,
    )


def test_the_tree_keeps_every_contract():
    result = lint_imports(ROOT / "src")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


# One bad change per contract: (module edited, line added, contract that must name it).
BAD_IMPORTS = {
    "training imports the cli": (
        "training/records.py", "import endebias.cli.options", "layers:"),
    "core imports training": (
        "metrics.py", "from endebias.training import records", "layers:"),
    "models import methods": (
        "models/mlp.py", "import endebias.methods", "layers:"),
    "sweeps import report": (
        "sweeps/urls.py", "import endebias.report.results", "layers:"),
    "report imports torch": (
        "report/results.py", "import torch", "report never imports torch"),
    "a circle inside cli": (
        "cli/options.py", "import endebias.cli.report", "no circle"),
    "a module in no layer": (
        "stray.py", "import math", "layers:"),
}


@pytest.mark.parametrize("case", list(BAD_IMPORTS))
def test_a_bad_import_breaks_its_contract(tmp_path, case):
    module, line, contract = BAD_IMPORTS[case]
    shutil.copytree(ROOT / "src" / "endebias", tmp_path / "endebias",
                    ignore=shutil.ignore_patterns("__pycache__"))
    path = tmp_path / "endebias" / module
    existing = path.read_text() if path.exists() else ""
    path.write_text(existing + f"\n{line}  # deliberately against the layers\n")
    result = lint_imports(tmp_path)
    assert result.returncode == 1, result.stdout + result.stderr
    broken = [row for row in result.stdout.splitlines() if " BROKEN" in row]
    assert any(row.startswith(contract) for row in broken), result.stdout


CHECK = """
import sys
import {modules}
loaded = sorted(m.split('.')[0] for m in sys.modules)
print(' '.join(sorted(set(loaded))))
"""


def loaded_packages(*modules: str) -> set[str]:
    code = CHECK.format(modules=", ".join(modules))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_the_report_command_loads_without_torch():
    # cli/ may import torch inside a subcommand (train does), so no contract forbids it;
    # loading `endebias report`'s module must still not.
    assert "torch" not in loaded_packages("endebias.cli.report")


@pytest.mark.parametrize("module", ["endebias.regularizer", "endebias.hooks", "endebias.metrics"])
def test_core_pieces_import_only_torch(module):
    # A contract can forbid packages, not allow only one: loading is checked instead.
    extra = loaded_packages(module) - loaded_packages("torch")
    assert extra == {"endebias"}, f"{module} pulls in {sorted(extra - {'endebias'})}"


def test_the_loss_api_is_importable_from_the_package():
    import endebias

    assert callable(endebias.end_loss) and callable(endebias.capture_features)
    with pytest.raises(AttributeError):
        endebias.no_such_thing  # noqa: B018
