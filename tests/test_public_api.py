"""What `import endebias` shows a user and a type checker."""

from __future__ import annotations

import subprocess
import sys
from importlib import resources
from pathlib import Path

PUBLIC = ["CapturedFeatures", "EnDLoss", "EnDTerms", "L2Normalize", "__version__",
          "capture_features", "end_loss", "end_terms"]


def test_dir_shows_the_public_api_only():
    # A fresh interpreter that also imports subpackages, which Python sets as attributes.
    code = ("import endebias, endebias.cli.main, endebias.training.epoch, endebias.regularizer; "
            "print(' '.join(dir(endebias)))")
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout.split()
    assert shown == PUBLIC


def test_every_public_name_resolves():
    import endebias

    assert sorted(endebias.__all__) == [name for name in PUBLIC if name != "__version__"]
    for name in endebias.__all__:
        assert getattr(endebias, name).__module__.startswith("endebias.")


def test_the_package_is_marked_typed():  # PEP 561: without it type checkers skip the hints
    marker = resources.files("endebias") / "py.typed"
    assert marker.is_file()
    pyproject = (Path(__file__).resolve().parents[1] / "pyproject.toml").read_text()
    assert 'endebias = ["py.typed", "*.pyi"]' in pyproject  # shipped in the wheel too
    stub = (resources.files("endebias") / "__init__.pyi").read_text()
    for name in (name for name in PUBLIC if name != "__version__"):  # the lazy names,
        assert f"import {name} as {name}" in stub  # as imports a type checker can follow
