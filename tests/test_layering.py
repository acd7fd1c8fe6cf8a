"""The seams of DESIGN.md section 4, checked in a fresh interpreter."""

import subprocess
import sys

import pytest

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


def test_results_and_plots_load_without_torch():
    assert "torch" not in loaded_packages("endebias.report.results", "endebias.report.plots",
                                          "endebias.report.html", "endebias.cli.report")


@pytest.mark.parametrize("module", ["endebias.regularizer", "endebias.hooks", "endebias.metrics"])
def test_core_pieces_import_only_torch(module):
    extra = loaded_packages(module) - loaded_packages("torch")
    assert extra == {"endebias"}, f"{module} pulls in {sorted(extra - {'endebias'})}"


def test_the_loss_api_is_importable_from_the_package():
    import endebias

    assert callable(endebias.end_loss) and callable(endebias.capture_features)
    with pytest.raises(AttributeError):
        endebias.no_such_thing  # noqa: B018
