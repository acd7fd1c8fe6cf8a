"""One-line checks of methods' numeric options (the registry has already checked types)."""

from __future__ import annotations

import math
from typing import Any


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def check_nonnegative(name: str, value: Any) -> float:
    if not (_number(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_positive(name: str, value: Any) -> float:
    if not (_number(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def check_finite(name: str, value: Any) -> float:
    if not _number(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)
