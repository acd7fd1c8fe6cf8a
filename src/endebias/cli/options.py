"""Command-line options that several subcommands share, over the library's own readers and
checks: ``KEY=VALUE`` values, ``--bias-labels`` / ``--pseudo-option``, the trackers and
``--storage``.

argparse lives in ``endebias.cli`` only; the layers below take plain values.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from endebias.option_types import parse_assignment
from endebias.training import tracking
from endebias.training.bias_labels import BIAS_LABELS, PSEUDO_DEFAULTS

STORAGE_HELP = (
    "sqlite:///PATH or postgresql://USER:PASSWORD@HOST/DB (default: $ENDEBIAS_STORAGE, "
    "else sqlite under --runs)"
)


def key_value(text: str) -> tuple[str, Any]:
    """:func:`endebias.option_types.parse_assignment` as an argparse ``type``, so that bad
    text is argparse's one-line usage error with the reader's own message."""
    try:
        return parse_assignment(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_bias_label_options(parser: argparse.ArgumentParser) -> None:
    """``--bias-labels`` and ``--pseudo-option`` on a train-like subcommand."""
    parser.add_argument(
        "--bias-labels",
        choices=BIAS_LABELS,
        default="given",
        help="given: the dataset's bias labels; pseudo: labels from a bias-capturing model "
        "trained first (docs/methods.md, 'EnD without bias labels')",
    )
    parser.add_argument(
        "--pseudo-option",
        action="append",
        type=key_value,
        default=[],
        metavar="KEY=VALUE",
        help="with --bias-labels pseudo, one of (default in brackets): "
        + ", ".join(f"{key} [{value}]" for key, value in PSEUDO_DEFAULTS.items())
        + "; e.g. labelling=cluster, 'stage1_model_options={kernel_size: 1}'",
    )


def bias_label_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The config fields set by :func:`add_bias_label_options`' options."""
    return {"bias_labels": args.bias_labels, "pseudo_options": dict(args.pseudo_option)}


def add_tracking_options(parser: argparse.ArgumentParser) -> None:
    """``--wandb PROJECT`` and ``--tensorboard``, shared by ``train`` and ``sweep agent``."""
    group = parser.add_argument_group("trackers (optional, off by default)")
    group.add_argument(
        "--wandb",
        metavar="PROJECT",
        help="also log each run to Weights & Biases (offline unless WANDB_MODE is set; "
        "needs pip install wandb)",
    )
    group.add_argument(
        "--tensorboard",
        action="store_true",
        help="also write TensorBoard events into each run folder's tensorboard/ "
        "(needs pip install tensorboard)",
    )


def train_mirror(
    args: argparse.Namespace, *, config: dict[str, Any], run_dir: Path
) -> tracking.RunMirror | None:
    """The mirror ``endebias train`` was asked for; its W&B run is named after the folder."""
    tracking.require_trackers(wandb_project=args.wandb, tensorboard=args.tensorboard)
    return tracking.run_mirror(run_dir, config=config, name=Path(run_dir).name,
                               wandb_project=args.wandb, tensorboard=args.tensorboard)


def existing_folder(text: str) -> str:
    """An argparse ``type`` for ``--data-dir``: a folder that exists. A missing one is named
    at once, rather than created and filled by downloads (or reported as missing files)."""
    path = Path(text).expanduser()
    if not path.is_dir():
        reason = "is not a folder" if path.exists() else "does not exist"
        raise argparse.ArgumentTypeError(f"{text} {reason}")
    return text


class Parser(argparse.ArgumentParser):
    """The command line's parser: options are never matched by prefix (``--epoch 1`` is an
    error, not ``--epochs 1``). Subcommands inherit the class through ``add_subparsers``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)


def remember_parsers(parser: argparse.ArgumentParser) -> None:
    """Record in every (sub)command's defaults the parser that reads it, so an unknown
    option is reported with the usage of the command it was given to, not the top one."""
    parser.set_defaults(command_parser=parser)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                remember_parsers(child)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text!r}")
    return value


def add_storage_retry(parser: argparse.ArgumentParser, kept: str = "") -> None:
    parser.add_argument(
        "--storage-retry",
        type=_seconds,
        default=120.0,
        metavar="SECONDS",
        help="when the storage is unreachable or locked by another process, at start-up "
        f"too, retry (with backoff) this long before stopping{kept} (default: %(default)g)",
    )
