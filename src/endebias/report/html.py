"""One self-contained HTML page for a sweep or a methods comparison: tables, and figures
embedded as base64 PNG, so the file opens anywhere without a network and can be sent on
(no torch import: everything comes from run records and the study's rows).

The tables are the terminal's own (``results.format_study``, ``results.compare_table``,
``comparison.method_table``) turned into HTML, so the page and ``endebias results`` never
disagree.
"""

from __future__ import annotations

import base64
import html
import tempfile
from pathlib import Path

from endebias import __version__
from endebias.figures import group_matrix_png
from endebias.report import comparison, report_figures, results
from endebias.report.plots import plot_sweep
from endebias.report.protocol import axis_labels, protocol_words
from endebias.report.results import Row
from endebias.report.runs import Run, load_run
from endebias.training import records

STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; } td:first-child, th:first-child { text-align: left; }
tr.top td { background: #e8f4e8; }
pre { background: #f6f6f6; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { font-size: 0.85em; color: #555; max-width: 520px; }
.note { color: #555; font-size: 0.9em; }
"""


def _image(png: bytes, caption: str) -> str:
    data = base64.b64encode(png).decode("ascii")
    text = html.escape(caption)
    return (f'<figure><img alt="{text}" src="data:image/png;base64,{data}">'
            f"<figcaption>{text}</figcaption></figure>")


def _table(header: list[str], body: list[list[str]], *, highlight: int = 0) -> str:
    """An HTML table; the first ``highlight`` body rows are marked (the top k)."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    lines = [f"<table><thead><tr>{head}</tr></thead><tbody>"]
    for index, row in enumerate(body):
        marked = ' class="top"' if index < highlight else ""
        lines.append(f"<tr{marked}>" + "".join(f"<td>{html.escape(c)}</td>" for c in row)
                     + "</tr>")
    return "\n".join([*lines, "</tbody></table>"])


def markdown_to_html(text: str) -> str:
    """The pipe tables and plain lines that our markdown tables are made of, as HTML."""
    parts: list[str] = []
    table: list[list[str]] = []

    def flush() -> None:
        if table:
            parts.append(_table(table[0], table[1:]))
            table.clear()

    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            cells = [c.strip() for c in stripped.strip("|").split("|")]
            if not all(set(c) <= set(":-") and c for c in cells):  # skip the |---| line
                table.append(cells)
            continue
        flush()
        if stripped.startswith("#"):
            parts.append(f"<h3>{html.escape(stripped.lstrip('#').strip())}</h3>")
        elif stripped:
            parts.append(f"<p>{html.escape(stripped.removeprefix('- '))}</p>")
    flush()
    return "\n".join(parts)


def _page(title: str, sections: list[str]) -> str:
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>", *sections,
        f'<p class="note">Made by endebias {html.escape(__version__)} from run records.</p>',
        "</body></html>", "",
    ])


def _trials_table(rows: list[Row], *, top: int) -> str:
    names = results.option_names(rows)
    columns = results.table_columns(rows) + ["epoch"]
    complete = [r for r in rows if r.state == "COMPLETE"][:top]
    # rows are sorted by valid accuracy; the summary's rows are the top complete ones
    ordered = complete + [r for r in rows if r not in complete]
    body = [[_cell(row.as_dict(names)[c], c) for c in columns] for row in ordered]
    return _table(columns, body, highlight=len(complete))


def _cell(value: object, column: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and column.endswith("_acc"):
        return results.percent(value)
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _matrices(run: Run, label: str) -> list[str]:
    best = run.best or {}
    figures = []
    for key, matrix in best.items():
        if key.endswith("_group_acc") and matrix:
            split = key.removesuffix("_group_acc")
            title = f"{label}: {split} accuracy per group (%), epoch {best['epoch']}"
            target, bias = axis_labels(run.config)
            png = group_matrix_png(matrix, title=title, target=target, bias=bias)
            figures.append(_image(png, title))
    return figures


def sweep_report(name: str, rows: list[Row], *, top: int = 3) -> str:
    """The page for one sweep: the top-k summary as ``endebias results`` prints it, the
    paper's Table 1 beside ours, every trial, the search-space figures and the best run's
    curves and group accuracy matrices."""
    if not rows:
        raise ValueError(f"sweep {name!r} has no trial with a result yet")
    states = {}
    for row in rows:
        states[row.state.lower()] = states.get(row.state.lower(), 0) + 1
    config = next((r.config for r in rows if r.config), {})
    facts = [f"{len(rows)} trials ({', '.join(f'{n} {s}' for s, n in states.items())})",
             f"method {config.get('method', '?')}", f"dataset {config.get('dataset', '?')}",
             f"rho {config.get('dataset_options', {}).get('rho', '-')}",
             protocol_words(config)]
    sections = [f'<p>{html.escape("; ".join(facts))}.</p>',
                f"<h2>Summary: top {top} complete trials by valid accuracy</h2>",
                "<pre>" + html.escape("\n".join(results.summary_lines(rows, top=top)))
                + "</pre>"]
    try:
        table1 = results.compare_table({name: rows}, top=top)
        sections += ["<h2>Beside the paper</h2>", markdown_to_html(table1)]
    except ValueError as error:  # no rho: not a Biased MNIST sweep
        sections.append(f'<p class="note">{html.escape(str(error))}</p>')
    sections += [f"<h2>Trials</h2><p class='note'>Accuracies in %, at each trial's best "
                 f"epoch by valid accuracy; the top {top} complete trials are shaded.</p>",
                 _trials_table(rows, top=top), "<h2>Search space</h2>"]
    with tempfile.TemporaryDirectory() as folder:
        for path in plot_sweep(name.replace("/", "_"), rows, folder, top=top):
            sections.append(_image(path.read_bytes(), _caption(path.name)))
    sections.append("<h2>Best trial</h2>")
    best = next((r for r in rows if r.state == "COMPLETE"), rows[0])
    if best.run_dir and (Path(best.run_dir) / records.CONFIG).exists():
        run = load_run(best.run_dir)
        label = f"trial {best.id}"
        sections.append(f"<p>{html.escape(label)}: {html.escape(_options(best))}; run folder "
                        f"<code>{html.escape(best.run_dir)}</code>.</p>")
        sections.append(_image(report_figures.history_png(run, title=label),
                               f"{label}: loss and accuracy per epoch"))
        sections += _matrices(run, label)
    else:
        sections.append(f'<p class="note">The run folder of trial {html.escape(best.id)} '
                        f"({html.escape(str(best.run_dir))}) is not here: no curves.</p>")
    return _page(f"Sweep {name}", sections)


def _caption(file_name: str) -> str:
    if file_name.endswith("_curves.png"):
        return "valid (solid) and unbiased test (dashed) accuracy per epoch, top trials"
    if file_name.endswith("_valid_vs_unbiased.png"):
        return "valid against unbiased test accuracy: does validation select well?"
    return "each trial at its searched options, coloured by unbiased test accuracy"


def _options(row: Row) -> str:
    return ", ".join(f"{k} = {v:.4g}" if isinstance(v, float) else f"{k} = {v}"
                     for k, v in row.options.items()) or "no method options"


def methods_report(runs: list[Run], *, title: str = "Methods side by side") -> str:
    """The page for ``results --by-method``: its tables, then per rho the accuracies of
    each method (mean ± std over seeds) and each method's group accuracy matrix on the
    unbiased test set (averaged over seeds)."""
    table = comparison.method_table(runs, fmt="markdown")  # raises when nothing finished
    cells, _ = comparison.group_runs(runs)
    sections = ["<h2>Tables</h2>", markdown_to_html(table), "<h2>Figures</h2>"]
    for rho in sorted({c.rho for c in cells}, key=lambda r: (r is None, -(r or 0))):
        chosen = [c for c in cells if c.rho == rho]
        at = "" if rho is None else f", rho {rho:.3f}"
        stats = {name: [c.stat(key) for c in chosen] for name, key in comparison.METRICS}
        caption = f"Test accuracy (%) per method{at}, mean ± std over seeds"
        sections.append(_image(report_figures.method_bars_png(
            [c.label for c in chosen], stats, title=caption), caption))
        for cell in chosen:
            matrix = report_figures.mean_group_matrix(cell.runs, "unbiased_test")
            if matrix is not None:
                label = (f"{cell.label}{at}: unbiased test accuracy per group (%), "
                         f"mean of {len(cell.runs)} seed(s)")
                target, bias = axis_labels(cell.runs[0].config)
                sections.append(_image(group_matrix_png(matrix, title=label, target=target,
                                                        bias=bias),
                                       label))
    return _page(title, sections)


def write_page(path: str | Path, page: str) -> Path:
    """Write atomically: a reader never sees half a page."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records.atomic_write_text(path, page)
    return path
