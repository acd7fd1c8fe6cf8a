"""Command line: thin subcommands over the library."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from pathlib import Path
from typing import Any

from endebias.cli import help_text
from endebias.cli import sweep as cli_sweep
from endebias.cli.demo import add_demo_options
from endebias.cli.options import (
    Parser,
    add_bias_label_options,
    add_tracking_options,
    bias_label_overrides,
    existing_folder,
    key_value,
    remember_parsers,
    train_mirror,
)
from endebias.training import records

log = logging.getLogger("endebias")


def _end_default(option: str) -> str:
    """``paper 0.1, quick 1``: the preset defaults of an EnD option, for --help."""
    from endebias.training.config import METHOD_DEFAULTS

    return ", ".join(
        f"{preset} {defaults['end'][option]:g}" for preset, defaults in METHOD_DEFAULTS.items()
    )


def _preset_default(option: str) -> str:
    """``paper 80, quick 6``: a training option's value in each preset, for --help."""
    from endebias.training.config import PRESETS

    return ", ".join(f"{name} {values[option]:g}" for name, values in PRESETS.items())


def add_train_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset", default="biased-mnist", help="benchmark name (default: %(default)s)"
    )
    parser.add_argument(
        "--rho",
        type=float,
        help="bias strength: the aligned fraction of training data (default: the dataset's; "
        "biased-mnist 0.997)",
    )
    parser.add_argument(
        "--method",
        help="training method (default: end when EnD's options such as --alpha are given, "
        "else vanilla)",
    )
    parser.add_argument("--model", help="model name (default: the preset's simple-conv)")
    parser.add_argument(
        "--alpha", type=float, help=f"EnD disentangling weight (default: {_end_default('alpha')})"
    )
    parser.add_argument(
        "--beta", type=float, help=f"EnD entangling weight (default: {_end_default('beta')})"
    )
    parser.add_argument(
        "--preset",
        choices=["paper", "quick", "cpu"],
        help="paper: the exact protocol of docs/design.md (meant for a GPU); quick: minutes "
        "on CPU, for smoke runs (vanilla stays on the colour); cpu: the quick network for 24 "
        "epochs, about 13 minutes per run on a CPU core, whose vanilla learns the digit as the "
        "paper's does, for comparisons on CPU (default: quick, or paper with --local). Each "
        "preset carries its own method defaults (EnD's weights; on quick and cpu, "
        "LearnedMixin's entropy weight): see docs/methods.md",
    )
    parser.add_argument("--epochs", type=int, help=f"(default: {_preset_default('epochs')})")
    # The underscore spellings are the official EnD code's, so its commands run unchanged.
    parser.add_argument(
        "--batch-size", "--batch_size", type=int,
        help=f"(default: {_preset_default('batch_size')})",
    )
    parser.add_argument("--lr", type=float, help=f"Adam's (default: {_preset_default('lr')})")
    parser.add_argument(
        "--weight-decay", "--weight_decay", type=float,
        help=f"(default: {_preset_default('weight_decay')})",
    )
    parser.add_argument(
        "--local", action="store_true",
        help="the official code's flag (there: no W&B), so that its command trains its run: "
        "the paper preset unless --preset says otherwise; runs here are local unless "
        "--wandb is given",
    )
    parser.add_argument("--seed", type=int, help="(default: 42)")
    parser.add_argument("--train-subset", type=int, help="train on this many images only")
    parser.add_argument("--eval-subset", type=int, help="evaluate on this many images per split")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    # The fast path; "auto" (the default) turns each on for CUDA, and on CPU only amp, where
    # bf16 is native (training.fastpath).
    switches = ["auto", "on", "off"]
    parser.add_argument("--amp", choices=switches, help="bf16 autocast (auto: on where bf16 is "
                        "native: Ampere or later GPUs, CPUs with avx512_bf16 or AMX)")
    parser.add_argument("--compile", choices=switches,
                        help="torch.compile every network the method trains")
    parser.add_argument("--channels-last", choices=switches, help="channels_last memory format")
    examples = {"method": "layer=blocks.9", "model": "channels=[8,16,32,64]",
                "dataset": "validation=heldout"}
    for part, example in examples.items():
        parser.add_argument(f"--{part}-option", action="append", type=key_value,
                            default=[], metavar="KEY=VALUE",
                            help=f"any {part} option, e.g. {example}")
    parser.add_argument(
        "--save-features",
        type=int,
        metavar="N",
        help="save the feature layer's outputs of N test images every epoch",
    )
    parser.add_argument(
        "--data-dir", type=existing_folder,
        help="an existing data folder (default: $ENDEBIAS_DATA, ~/.cache/endebias)",
    )
    add_bias_label_options(parser)  # --bias-labels given|pseudo, --pseudo-option


def config_from_args(args: argparse.Namespace):
    from endebias.training.config import make_config

    # No --method: make_config infers it from the method options (--alpha means EnD).
    overrides: dict[str, Any] = {
        "dataset": args.dataset,
        "method": args.method,
        "device": args.device,
    }
    if args.model is None:  # the dataset's own model, if it declares one (tabular: mlp)
        from endebias.data import default_model

        if default_model(args.dataset) is not None:
            overrides["model"] = default_model(args.dataset)
    for name in (
        "model",
        "epochs",
        "batch_size",
        "lr",
        "weight_decay",
        "seed",
        "train_subset",
        "eval_subset",
        "save_features",
        "amp",
        "compile",
        "channels_last",
    ):
        if getattr(args, name) is not None:
            overrides[name] = getattr(args, name)
    dataset_options = dict(args.dataset_option)
    if args.rho is not None:
        dataset_options["rho"] = args.rho
    dataset_options = _without_defaults(args.dataset, dataset_options)
    method_options = dict(args.method_option)
    for name in ("alpha", "beta"):
        if getattr(args, name) is not None:
            method_options[name] = getattr(args, name)
    overrides["dataset_options"] = dataset_options
    overrides["method_options"] = method_options
    overrides["model_options"] = dict(args.model_option)
    overrides.update(bias_label_overrides(args))
    # The official code has one protocol, the paper's: its command (--local) means that.
    preset = args.preset or ("paper" if args.local else "quick")
    return make_config(preset, **overrides)


def _without_defaults(dataset: str, options: dict[str, Any]) -> dict[str, Any]:
    """The dataset options that differ from the dataset's defaults: a run's config (and so
    its default folder) is what it trains, not how it was spelled (``--rho 0.997`` is
    Biased MNIST's default and names the same run as no ``--rho``)."""
    from endebias.data import dataset_builder, dataset_names
    from endebias.option_types import builder_defaults, without_defaults

    if dataset not in dataset_names():  # left to the config check's one-line error
        return options
    return without_defaults(options, builder_defaults(dataset_builder(dataset)))


def cmd_train(args: argparse.Namespace) -> int:
    from endebias.training import distributed
    from endebias.training.fit import fit, summary_line
    from endebias.training.run_lock import check_run_folder

    config = config_from_args(args)
    out = (
        Path(args.out)
        if args.out
        else Path("runs")
        / (f"{config.dataset}-{config.method}-{records.config_hash(config.to_dict())}")
    )
    check_run_folder(out, resume=args.resume)  # in use, config lost, nothing to resume
    # Under torchrun every process runs this; only rank 0 talks. The run folder is named
    # in the line fit prints once the run has started (a failed start leaves no folder).
    main = int(os.environ.get("RANK", "0")) == 0
    if main and (out / records.DONE).is_file():  # a rerun: fit returns the recorded result
        from endebias.training.run import check_finished_data

        check_finished_data(config, out, args.data_dir)  # ...if trained on this data
        print(f"run folder {out}: finished earlier (a new --out trains it again)")
    # Optional W&B / TensorBoard mirrors of the records (rank 0 only).
    mirror = train_mirror(args, config=config.to_dict(), run_dir=out) if main else None
    state = "FAIL"
    try:
        best = fit(
            config,
            out,
            data_dir=args.data_dir,
            resume=args.resume,
            progress=not args.no_progress,
            on_epoch=mirror.on_epoch if mirror else None,
            echo=print,
        )
        state = "COMPLETE"
    finally:
        if mirror is not None:
            mirror.finish(state=state)
        distributed.teardown()
    if main:
        print(summary_line(best))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from endebias.cli.demo import run_demo

    return run_demo(
        out=Path(args.out),
        data_dir=args.data_dir,
        rho=args.rho,
        seed=args.seed,
        full=args.full,
        epochs=args.epochs,
        train_subset=args.train_subset,
        eval_subset=args.eval_subset,
        progress=not args.no_progress,
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="endebias", description=help_text.DESCRIPTION, epilog=help_text.EPILOG)
    parser.add_argument("--version", action="version", version=help_text.version_text())
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train one run and print its best-by-valid result")
    add_train_options(train)
    help_text.name_the_known(train)  # --dataset, --model, --method list the registered names
    add_tracking_options(train)  # --wandb PROJECT, --tensorboard
    train.add_argument("--out", help="run folder (default: runs/<dataset>-<method>-<config hash>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--no-progress", action="store_true", help="no progress bars")
    train.set_defaults(handler=cmd_train)

    demo = commands.add_parser("demo", help="vanilla vs EnD on Biased MNIST: a table and a picture")
    add_demo_options(demo)
    demo.set_defaults(handler=cmd_demo)
    cli_sweep.add_commands(commands)  # sweep create/agent, results, plot features
    remember_parsers(parser)
    return parser


def describe_os_error(error: OSError) -> str:
    """``PATH: reason`` for an OSError from the system; our own ones carry their message."""
    if error.filename is None or not error.strerror:
        return str(error)
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on device while writing {error.filename}"
    return f"{error.filename}: {error.strerror.lower()}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # with the usage of the (sub)command that was given them
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted: finished epochs are saved; rerun with --resume", file=sys.stderr)
        return 130
    except OSError as error:
        # The file system refused (disk full, permission denied, a file where a folder
        # belongs): one line naming the path; finished epochs are kept.
        if args.verbose:
            raise
        print(f"endebias: error: {describe_os_error(error)}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OverflowError) as error:
        # Expected failures (bad options, missing or corrupt data, a non-finite loss): one
        # line naming the culprit, no traceback. -v shows the traceback. Only the first
        # line: torch appends its C++ stack to some messages.
        if args.verbose:
            raise
        text = str(error).strip()
        print(f"endebias: error: {text.splitlines()[0] if text else type(error).__name__}",
              file=sys.stderr)
        return 2
