"""`endebias report`: a sweep or a methods comparison as one self-contained HTML file."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from endebias.cli.options import STORAGE_HELP

log = logging.getLogger("endebias")


def cmd_report(args: argparse.Namespace) -> int:
    from endebias.report import html, results

    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    if args.by_method:
        from endebias.report.comparison import find_runs

        page = html.methods_report(find_runs(args.ids))
        default = "methods-report.html"
    else:
        if len(args.ids) != 1:
            raise ValueError("report takes one sweep id (or --by-method FOLDER...)")
        (ident,) = args.ids
        if Path(ident).is_dir():  # a folder of run folders: no database needed
            name, rows = Path(ident).name, results.rows_from_runs(ident)
        else:
            from endebias.sweeps.storage import default_storage, load_study

            name = ident
            study = load_study(ident, storage=args.storage or default_storage(args.runs),
                               wait=args.storage_retry)
            rows = results.rows_from_study(study, runs_dir=args.runs)
        page = html.sweep_report(name, rows, top=args.top)
        default = f"{name}-report.html"
    path = html.write_page(args.out or default, page)
    log.info("wrote %s (%d kB, self-contained: open it in any browser)", path,
             path.stat().st_size // 1024)
    print(path)
    return 0


def add_report_command(commands: argparse._SubParsersAction) -> None:
    from endebias.cli.options import add_storage_retry

    report = commands.add_parser(
        "report",
        help="one self-contained HTML page (tables and figures) for a sweep, or for a "
        "comparison of methods with --by-method",
    )
    report.add_argument("ids", nargs="+", metavar="ID",
                        help="sweep id or a folder of run folders; with --by-method, folders")
    report.add_argument("--by-method", action="store_true",
                        help="compare methods over seeds, as `results --by-method`")
    report.add_argument("--out", help="HTML file (default: ID-report.html, or "
                        "methods-report.html with --by-method)")
    report.add_argument("--top", type=int, default=3,
                        help="trials in the summary (default: %(default)s)")
    report.add_argument("--storage", help=STORAGE_HELP)
    report.add_argument("--runs", default="runs", help="runs folder of the default storage")
    add_storage_retry(report)
    report.set_defaults(handler=cmd_report)
