"""Subcommands for sweeps, results and feature pictures (kept apart from cli.py's train)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from endebias.cli.options import (
    STORAGE_HELP,
    add_storage_retry,
    add_tracking_options,
    existing_folder,
)

log = logging.getLogger("endebias")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (``--count -1`` would run nothing and exit 0)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def cmd_sweep_create(args: argparse.Namespace) -> int:
    from endebias.sweeps.storage import create_sweep, default_storage, mask_url
    from endebias.sweeps.sweep_file import load_sweep_file

    spec = load_sweep_file(args.file)
    storage = args.storage or default_storage(args.runs)
    sweep_id = create_sweep(spec, storage=storage, sweep_id=args.id, wait=args.storage_retry)
    shown = "" if args.storage is None else f" --storage '{mask_url(storage)}'"
    log.info(
        "created sweep %s (%s, %s search); start agents with: endebias sweep agent %s%s",
        sweep_id,
        spec.name,
        spec.method,
        sweep_id,
        shown,
    )
    print(sweep_id)
    return 0


def cmd_sweep_agent(args: argparse.Namespace) -> int:
    from endebias.sweeps.agent import run_agent
    from endebias.sweeps.storage import default_storage
    from endebias.training.tracking import require_trackers

    pack = 1 if args.pack is None else args.pack  # > 1: several trials as one packed model
    if pack == 1:
        require_trackers(wandb_project=args.wandb, tensorboard=args.tensorboard)
    try:
        result = run_agent(
            args.id,
            storage=args.storage or default_storage(args.runs),
            pack=pack,
            runs_dir=args.runs,
            count=args.count,
            prune=args.prune,
            data_dir=args.data_dir,
            agent_id=args.agent_id,
            progress=sys.stderr.isatty(),
            storage_retry=args.storage_retry,
            wandb_project=args.wandb,
            tensorboard=args.tensorboard,
            budget=_budget(args),
        )
    except KeyboardInterrupt:
        which = "the trial is back in the queue; the next agent resumes its run folder" if (
            pack == 1) else ("the packed trials are back in the queue; the next agent resumes "
                             "their run folders")
        print(f"interrupted: {which} from the last finished epoch", file=sys.stderr)
        return 130
    # Failing every trial (bad data, a broken option) is an error; a NaN run among others not.
    return 0 if result.complete or not result.failed else 1


def _budget(args: argparse.Namespace) -> dict[str, int]:
    """The agent's --epochs/--train-subset/--eval-subset that were given."""
    names = ("epochs", "train_subset", "eval_subset")
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def cmd_results(args: argparse.Namespace) -> int:
    from endebias.report import results
    from endebias.sweeps.stale import warn_unfinished
    from endebias.sweeps.storage import default_storage, load_study, open_storage, storage_errors

    if args.by_method:  # seeds of fixed settings, read straight from their run folders
        from endebias.report.comparison import find_runs, method_table

        sys.stdout.write(method_table(find_runs(args.ids), fmt=args.format))
        return 0
    storage = None
    studies: dict[str, list[results.Row]] = {}
    for ident in args.ids:
        if Path(ident).is_dir():  # a folder of run folders: no database needed
            studies[Path(ident).name] = results.rows_from_runs(ident)
            continue
        url = args.storage or default_storage(args.runs)
        storage = storage or open_storage(url, wait=args.storage_retry)
        with storage_errors(url):  # a damaged file may only show here: one line naming it
            study = load_study(ident, storage=storage)
            studies[ident] = results.rows_from_study(study, runs_dir=args.runs)
            warn_unfinished(ident, study, url)  # trials the summary cannot count yet
    if args.compare:
        sys.stdout.write(results.compare_table(studies, top=args.top, fmt=args.format))
    else:
        for name, rows in studies.items():
            sys.stdout.write(results.format_study(name, rows, top=args.top, fmt=args.format))
    if args.plot:
        from endebias.report.plots import plot_sweep

        for name, rows in studies.items():
            for path in plot_sweep(name, rows, args.plot, top=args.top):
                log.info("wrote %s", path)
    return 0


def cmd_plot_features(args: argparse.Namespace) -> int:
    from endebias.report.feature_plots import DamagedLabels, plot_features

    try:
        paths = plot_features(args.run, args.out)
    except DamagedLabels as error:
        # The labels depend only on the run's config and data: write them again.
        from endebias.training.feature_labels import repair_labels

        log.warning("%s; writing it again from the run's config and data", error)
        repair_labels(Path(args.run), data_dir=args.data_dir)
        paths = plot_features(args.run, args.out)
    for path in paths:
        print(path)
    return 0


def add_commands(commands: argparse._SubParsersAction) -> None:
    sweep = commands.add_parser("sweep", help="hyper-parameter sweeps on Optuna storage")
    actions = sweep.add_subparsers(dest="sweep_command", required=True)
    create = actions.add_parser("create", help="create a sweep from a sweep file; prints its id")
    create.add_argument("file", help="sweep file (YAML, the original tracker's format)")
    create.add_argument("--storage", help=STORAGE_HELP)
    create.add_argument("--runs", default="runs", help="runs folder (default: %(default)s)")
    create.add_argument("--id", help="the sweep id (default: file name + random suffix)")
    add_storage_retry(create)
    create.set_defaults(handler=cmd_sweep_create)

    agent = actions.add_parser("agent", help="run trials of a sweep in this process")
    agent.add_argument("id", help="sweep id printed by `sweep create`")
    agent.add_argument(
        "--count",
        type=positive_int,
        help="stop after this many trials (default: until the sweep's run_cap or grid is done)",
    )
    agent.add_argument("--storage", help=STORAGE_HELP)
    agent.add_argument(
        "--prune",
        choices=["median", "hyperband", "none"],
        help="stop hopeless trials, never before the first learning-rate drop "
        "(default: the file's early_terminate, else none)",
    )
    agent.add_argument(
        "--runs",
        default="runs",
        help="runs folder; trials train into RUNS/<sweep id>/<config hash> (default: %(default)s)",
    )
    agent.add_argument(
        "--data-dir", type=existing_folder,
        help="an existing data folder (default: $ENDEBIAS_DATA, ~/.cache/endebias)",
    )
    add_storage_retry(agent, "; the trial's finished epochs stay in its run folder")
    agent.add_argument(
        "--agent-id",
        type=int,
        help="added to the file's optuna.seed for this "
        "agent's sampler (default: from host name and process id)",
    )
    budget = agent.add_argument_group(
        "budget (as train's; replaces the sweep file's value in every trial's config)")
    budget.add_argument("--epochs", type=positive_int, help="epochs of every trial")
    budget.add_argument("--train-subset", type=positive_int, metavar="N",
                        help="train every trial on N images only")
    budget.add_argument("--eval-subset", type=positive_int, metavar="N",
                        help="evaluate every trial on N images per split")
    add_tracking_options(agent)  # --wandb PROJECT, --tensorboard
    agent.add_argument(
        "--pack",
        type=int,
        metavar="K",
        help="train K trials at once as one packed model sharing every batch (SimpleConvNet "
        "with vanilla, EnD or FairKL; see docs/sweeps.md); default 1, one trial at a time",
    )
    agent.set_defaults(handler=cmd_sweep_agent)

    res = commands.add_parser(
        "results", help="sweep results: runs by valid accuracy, top-k summary"
    )
    res.add_argument("ids", nargs="+", metavar="ID", help="sweep id, or a folder of run folders")
    res.add_argument(
        "--top", type=int, default=3, help="runs in the summary (default: %(default)s)"
    )
    res.add_argument("--format", choices=["text", "csv", "json", "markdown"], default=None)
    res.add_argument("--plot", metavar="DIR", help="write PNG figures of each sweep into DIR")
    res.add_argument(
        "--compare",
        action="store_true",
        help="the paper's Table 1 layout, one "
        "column per rho, the paper's Vanilla and EnD beside ours",
    )
    res.add_argument(
        "--by-method",
        action="store_true",
        help="compare methods over seeds: the IDs are folders of run folders (such as "
        "runs/quick-table); one cell per method, setting and rho, mean ± std of the "
        "finished runs, with biased / unbiased / conflicting accuracy and seconds per epoch",
    )
    res.add_argument("--storage", help=STORAGE_HELP)
    res.add_argument("--runs", default="runs", help="runs folder of the default storage")
    add_storage_retry(res)
    res.set_defaults(handler=_results_with_default_format)

    from endebias.cli.report import add_report_command

    add_report_command(commands)  # endebias report ID | --by-method FOLDERS: an HTML page

    plot = commands.add_parser("plot", help="figures from run records")
    figures = plot.add_subparsers(dest="plot_command", required=True)
    features = figures.add_parser("features", help="PCA of a run's saved features: GIF + PNG")
    features.add_argument("run", help="run folder trained with --save-features N")
    features.add_argument("--out", help="output folder (default: the run folder)")
    features.add_argument("--data-dir", help="data folder, to write a damaged labels.npz "
                          "again (default: $ENDEBIAS_DATA, ~/.cache/endebias)")
    features.set_defaults(handler=cmd_plot_features)


def _results_with_default_format(args: argparse.Namespace) -> int:
    # Table 1 reads best as markdown; a sweep's listing as the original's plain text.
    args.format = args.format or ("markdown" if args.compare or args.by_method else "text")
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    return cmd_results(args)
