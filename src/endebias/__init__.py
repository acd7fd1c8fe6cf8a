"""endebias: train neural networks that ignore a known bias (EnD, CVPR 2021).

The loss API is imported lazily, so that the torch-free parts (``endebias.report.results``,
``endebias.report.plots``) load without torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["EnDLoss", "L2Normalize", "capture_features", "end_loss", "end_terms"]
__version__ = "0.1.0"

_EXPORTS = {
    "EnDLoss": "endebias.regularizer",
    "end_loss": "endebias.regularizer",
    "end_terms": "endebias.regularizer",
    "L2Normalize": "endebias.hooks",
    "capture_features": "endebias.hooks",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'endebias' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
