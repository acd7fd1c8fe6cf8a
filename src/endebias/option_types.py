"""Reading a user option (``KEY=VALUE``) and checking user options (``--dataset-option``,
``--model-option``, ``--method-option``, a sweep's values) against the type hints of the
builder that takes them, so that a wrong name or an ill-typed value is one line naming the
option and listing the valid ones with their types, instead of a TypeError from deep
inside a constructor.

No torch here: hints that name torch types are accepted as they are (not checked).
"""

from __future__ import annotations

import inspect
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml


class _OptionLoader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string, so ``alpha=1e-4`` was refused as
    "must be float"; here a plain scalar in exponent notation is a float, as in YAML 1.2."""


_OptionLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)
INT64 = 2**63


def parse_assignment(text: str) -> tuple[str, Any]:
    """``KEY=VALUE`` with VALUE read as a YAML scalar or list (numbers, booleans, [1, 2]);
    ValueError for text without a key and an ``=``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {text!r}")
    try:
        # An alias can make a value that contains itself, which every check then
        # follows for ever; an option's value is short enough to write out instead.
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(value, yaml.SafeLoader)):
            raise ValueError(f"{text!r}: YAML aliases (*name) are not allowed in an option value")
        return key.strip(), yaml.load(value, Loader=_OptionLoader)  # a SafeLoader: no code runs
    except yaml.YAMLError as error:
        problem = ", ".join(
            str(part) for part in (getattr(error, "context", None),
                                   getattr(error, "problem", None)) if part
        ) or str(error).splitlines()[0]
        raise ValueError(f"{text!r} is not a valid YAML value ({problem})") from None


def describe(hint: Any) -> str:
    """A hint as a user reads it: ``float``, ``list of int``, ``str or None``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if hint is Any:
        return "any value"
    if origin in (list, tuple, Sequence, set):
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return f"list of {describe(args[0])}" if args else "list"
    if origin in (dict, Mapping):
        return "mapping"
    return getattr(hint, "__name__", str(hint))


def matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` (as YAML reads a command-line value) fits ``hint``. Numbers must
    be finite; an int fits a float; a bool fits only bool; a string is not a list."""
    origin = typing.get_origin(hint)
    if hint is Any or hint is object:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        return number and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if hint is Path:
        return isinstance(value, str | Path)
    if origin in (list, tuple, Sequence, set):
        if not isinstance(value, list | tuple):
            return False
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        return not args or all(matches(item, args[0]) for item in value)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return isinstance(value, dict)
    return True  # a type this module does not know (torch.device...): not checked here


def option_hints(builder: Callable[..., Any], *, skip: Sequence[str] = ()) -> dict[str, Any]:
    """The keyword options ``builder`` takes, name -> type hint (Any where none is given)."""
    target = builder.__init__ if isinstance(builder, type) else builder
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - an unresolvable hint: check the names only
        hints = {}
    parameters = inspect.signature(builder).parameters.values()
    return {
        p.name: hints.get(p.name, Any) for p in parameters
        if p.kind is p.KEYWORD_ONLY and p.name not in skip
    }


def builder_defaults(builder: Callable[..., Any]) -> dict[str, Any]:
    """The keyword options ``builder`` takes that have a default, name -> default."""
    return {p.name: p.default for p in inspect.signature(builder).parameters.values()
            if p.kind is p.KEYWORD_ONLY and p.default is not p.empty}


def without_defaults(options: Mapping[str, Any], defaults: Mapping[str, Any], *,
                     keep: Sequence[str] = ()) -> dict[str, Any]:
    """``options`` less those spelled at their default (``keep``: names always kept), so a
    config says what a run trains, not how it was typed: ``rho=0.997`` where 0.997 is the
    default names the same run as no ``rho``. True and 1 are told apart."""
    def is_default(key: str, value: Any) -> bool:
        if key in keep or key not in defaults:
            return False
        default = defaults[key]
        return value == default and isinstance(value, bool) == isinstance(default, bool)

    return {key: value for key, value in options.items() if not is_default(key, value)}


def listing(hints: Mapping[str, Any]) -> str:
    return ", ".join(f"{name} ({describe(hint)})" for name, hint in hints.items()) or "none"


def check_options(
    kind: str,
    name: str,
    options: Mapping[str, Any],
    hints: Mapping[str, Any],
    *,
    reserved: Sequence[str] = (),
) -> None:
    """ValueError, one line, for an unknown or reserved option or an ill-typed value."""
    for key, value in options.items():
        if key in reserved:
            raise ValueError(f"{kind} {name!r}: option {key!r} is set by the trainer, not as a "
                             f"{kind} option; its options: {listing(hints)}")
        if key not in hints:
            raise ValueError(f"{kind} {name!r} has no option {key!r}; its options: "
                             f"{listing(hints)}")
        huge = _huge_int(value)
        if huge is not None:
            raise ValueError(f"{kind} {name!r}: option {key} holds {huge}, beyond a 64-bit "
                             "integer")
        if not matches(value, hints[key]):
            raise ValueError(f"{kind} {name!r}: option {key} must be {describe(hints[key])}, "
                             f"got {value!r}")


def _huge_int(value: Any) -> int | None:
    """An integer in ``value`` (or its lists) that no tensor size or index can hold."""
    if isinstance(value, int) and not isinstance(value, bool) and not -INT64 <= value < INT64:
        return value
    if isinstance(value, list | tuple):
        return next((v for v in map(_huge_int, value) if v is not None), None)
    return None
