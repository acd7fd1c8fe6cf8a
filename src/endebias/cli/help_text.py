"""Help text that lists the registered datasets, models and methods.

The registries import torch, which building the parser (and ``endebias results``) does
without; so the names are looked up only when a help text is printed: argparse fills an
option's ``%(known)s`` from the option's attributes, and :class:`KnownNames` turns into the
list only when formatted.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

KINDS = ("dataset", "model", "method")


def _registry(kind: str) -> Callable[[], list[str]]:
    if kind == "dataset":
        from endebias.data import dataset_names

        return dataset_names
    if kind == "model":
        from endebias.models import model_names

        return model_names
    if kind == "method":
        from endebias.methods import method_names

        return method_names
    raise ValueError(f"unknown registry {kind!r}; known: {', '.join(KINDS)}")


class KnownNames:
    """The registered names of one kind, comma-separated, looked up when formatted."""

    def __init__(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown registry {kind!r}; known: {', '.join(KINDS)}")
        self.kind = kind

    def names(self) -> list[str]:
        return sorted(_registry(self.kind)())

    def __str__(self) -> str:
        return ", ".join(self.names())


def list_known(action: argparse.Action, kind: str) -> argparse.Action:
    """Let ``action``'s help use ``%(known)s`` for the registered names of ``kind``."""
    action.known = KnownNames(kind)  # type: ignore[attr-defined]
    return action


def version_text() -> str:
    from endebias import __version__

    return f"%(prog)s {__version__}"


# The train options whose help ends with the registered names.
LISTED = {"dataset": "dataset", "model": "model", "method": "method"}


def name_the_known(parser: argparse.ArgumentParser) -> None:
    """Append ``known: ...`` (the registered names) to the help of --dataset, --model and
    --method, wherever they were added; their own help text stays as written."""
    for action in parser._actions:
        kind = LISTED.get(action.dest)
        if kind is not None and action.help:
            list_known(action, kind)
            action.help = f"{action.help.rstrip('. ')}; known: %(known)s"


DESCRIPTION = (
    "Train networks that ignore a known bias: EnD (CVPR 2021) and baselines, the paper's "
    "Biased MNIST and more benchmarks, sweeps, results and figures."
)
EPILOG = (
    "The maths, the exact protocol and the conventions: docs/design.md. Examples: README.md. "
    "Every subcommand has its own --help."
)
