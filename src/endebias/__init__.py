"""endebias: train neural networks that ignore a known bias (EnD, CVPR 2021).

The loss API is imported lazily, so that the torch-free parts (``endebias.report.results``,
``endebias.report.plots``) load without torch; ``__init__.pyi`` gives type checkers the
same names as ordinary imports.
"""

import importlib as _importlib
import typing as _typing

__all__ = [
    "CapturedFeatures",
    "EnDLoss",
    "EnDTerms",
    "L2Normalize",
    "capture_features",
    "end_loss",
    "end_terms",
]
__version__ = "0.1.0"

_EXPORTS = {
    "EnDLoss": "endebias.regularizer",
    "EnDTerms": "endebias.regularizer",
    "end_loss": "endebias.regularizer",
    "end_terms": "endebias.regularizer",
    "CapturedFeatures": "endebias.hooks",
    "L2Normalize": "endebias.hooks",
    "capture_features": "endebias.hooks",
}

def __getattr__(name: str) -> _typing.Any:
    if name in _EXPORTS:
        return getattr(_importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'endebias' has no attribute {name!r}")


def __dir__() -> list[str]:
    # The public API only: not the subpackages that importing them sets as attributes
    # (cli, training, ...), nor this module's helpers.
    return sorted([*__all__, "__version__"])
