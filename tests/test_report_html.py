"""`endebias report`: one self-contained HTML page for a sweep (`report SWEEP_ID`) and for a
methods comparison (`report --by-method FOLDERS`), checked as text against the terminal
tables it must carry, then as a person sees it, rendered in headless Chromium."""

from __future__ import annotations

import base64
import html
import io
import re

import pytest
from PIL import Image

from chromium_page import find_chromium, open_page
from endebias.cli.main import main
from endebias.report import results
from endebias.report.comparison import find_runs
from endebias.report.protocol import protocol_words
from endebias.sweeps.storage import load_study
from tiny_sweep import run_tiny_sweep

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A finished 3-trial sweep and a vanilla run beside its trials (a second method)."""
    folder = tmp_path_factory.mktemp("report")
    storage = run_tiny_sweep(folder, trials=3)
    assert main(["train", "--dataset", "synthetic", "--method", "vanilla", "--epochs", "2",
                 "--dataset-option", "train_size=128", "--dataset-option", "eval_size=64",
                 "--model-option", "channels=[8,16]", "--no-progress",
                 "--out", str(folder / "runs" / "tiny" / "vanilla")]) == 0
    return folder, storage


def report(args, capsys):
    code = main(["report", *args])
    return code, capsys.readouterr()


def images(page: str) -> list[Image.Image]:
    found = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    return [Image.open(io.BytesIO(base64.b64decode(data))) for data in found]


def test_sweep_page_carries_the_summary_every_trial_and_the_figures(sweep, capsys):
    folder, storage = sweep
    out = folder / "tiny.html"
    assert report(["tiny", "--storage", storage, "--out", str(out)], capsys)[0] == 0
    page = out.read_text()
    rows = results.rows_from_study(load_study("tiny", storage=storage))
    # The top-k summary as `endebias results` prints it (in %, as the trials table).
    assert html.escape("\n".join(results.summary_lines(rows, top=3))) in page
    trial_rows = re.findall(r"<tr( class=\"top\")?><td>([\d.]+)</td>", page)
    assert [float(v) for _, v in trial_rows] == [round(100 * r.valid_acc, 2) for r in rows]
    assert [bool(top) for top, _ in trial_rows] == [True] * 3  # all complete: all in the top 3
    # search space, valid vs unbiased, top curves, best run's curves, 3 group matrices
    shown = images(page)
    assert len(shown) == 3 + 1 + 3 and all(im.format == "PNG" for im in shown)
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched from a network
    assert html.escape("no rho in its runs' configs") in page  # synthetic: no Table 1, said so
    # The header says what the trials ran beside the paper's protocol, never "1 epochs".
    assert f"; {html.escape(protocol_words(rows[0].config))}.</p>" in page
    assert not re.search(r"\b1 epochs\b", page)


def test_methods_page_carries_the_methods_table(sweep, capsys):
    folder, _ = sweep
    out = folder / "methods.html"
    assert report(["--by-method", str(folder / "runs" / "tiny"), "--out", str(out)],
                  capsys)[0] == 0
    page = out.read_text()
    runs = find_runs([folder / "runs" / "tiny"])
    assert len(runs) == 4
    for label in ("vanilla", "end alpha="):
        assert f"<td>{label}" in page
    # one bar chart (one rho) and one mean group matrix per method setting (4)
    assert len(images(page)) == 1 + 4


@pytest.mark.parametrize(("args", "message"), [
    (["nosuch", "--storage", "STORAGE"], "no sweep 'nosuch'"),
    (["tiny", "--top", "0", "--storage", "STORAGE"], "--top must be >= 1"),
    (["tiny", "other", "--storage", "STORAGE"], "report takes one sweep id"),
    (["--by-method", "EMPTY"], "no finished runs to compare"),
])
def test_bad_input_is_one_line(sweep, capsys, tmp_path, args, message):
    _, storage = sweep
    (tmp_path / "empty").mkdir()
    args = [{"STORAGE": storage, "EMPTY": str(tmp_path / "empty")}.get(a, a) for a in args]
    code, captured = report([*args, "--out", str(tmp_path / "x.html")], capsys)
    assert code == 2
    (line,) = captured.err.strip().splitlines()
    assert line.startswith("endebias: error: ") and message in line
    assert not (tmp_path / "x.html").exists()


@pytest.mark.skipif(find_chromium() is None,
                    reason="no Chromium to render the page (Debian: apt-get install chromium)")
@pytest.mark.parametrize("kind", ["sweep", "methods"])
def test_a_browser_shows_every_table_and_image_without_errors(sweep, capsys, kind):
    folder, storage = sweep
    out = folder / f"browser-{kind}.html"
    args = (["tiny", "--storage", storage] if kind == "sweep"
            else ["--by-method", str(folder / "runs" / "tiny")])
    assert report([*args, "--out", str(out)], capsys)[0] == 0
    page = open_page(out)
    assert page.errors == []
    assert all(url.startswith(("file:", "data:")) for url in page.requests), page.requests
    expected_images = len(images(out.read_text()))
    assert len(page.images) == expected_images
    for image in page.images:  # decoded, and drawn at a visible size
        assert image["complete"] and image["width"] > 100 and image["shown"] > 100, image
    tables = 1 if kind == "sweep" else 2
    assert len(page.tables) == tables
    assert all(t["rows"] >= 2 and t["height"] > 20 for t in page.tables)
    if kind == "sweep":
        assert page.tables[0]["header"][:3] == ["valid_acc", "biased_test_acc",
                                                "unbiased_test_acc"]
        # The summary block is shown, in % as the trials table (not results' plain header).
        assert "Summary: top 3 complete trials by valid accuracy" in page.text
        assert "Top 3 complete runs by valid accuracy (mean ± population std, %)" in page.text
    shot = Image.open(io.BytesIO(page.screenshot))
    assert shot.format == "PNG" and shot.width == 1280 and shot.height > 1000


@pytest.mark.skipif(find_chromium() is None,
                    reason="no Chromium to render the page (Debian: apt-get install chromium)")
def test_the_browser_check_sees_errors_broken_images_and_network_use(tmp_path):
    """The check above would fail a page with faults: a script error, an image that does
    not decode, and an image from the network (nothing listens on port 9)."""
    bad = tmp_path / "bad.html"
    bad.write_text('<!DOCTYPE html><html><head><title>bad</title></head><body>'
                   '<table><tr><td>1</td></tr></table>'
                   '<img alt="broken" src="data:image/png;base64,AAAA">'
                   '<img alt="remote" src="http://127.0.0.1:9/x.png">'
                   '<script>console.error("injected fault")</script></body></html>')
    page = open_page(bad, timeout=60)
    assert "injected fault" in " ".join(page.errors)
    assert "http://127.0.0.1:9/x.png" in page.requests
    assert [image["width"] for image in page.images] == [0, 0]
    assert len(page.tables) == 1


def test_a_biased_mnist_sweep_page_puts_the_paper_beside_ours():
    """Rows as a Biased MNIST sweep gives them (a rho, no run folder at hand): Table 1 with
    the paper's rows and ours, hand-computed; the best trial's missing folder is said."""
    from endebias.report.html import sweep_report
    from endebias.report.results import Row

    config = {"method": "end", "preset": "quick", "dataset_options": {"rho": 0.997},
              "method_options": {"alpha": 0.5, "beta": 0.5}}
    rows = [Row(id=str(i), state="COMPLETE", valid_acc=v, biased_test_acc=0.9,
                unbiased_test_acc=u, config=config, run_dir=f"/gone/{i}", epoch=3)
            for i, (v, u) in enumerate([(0.8, 0.7), (0.7, 0.5), (0.6, 0.6), (0.1, 0.1)])]
    page = sweep_report("s", rows, top=3)
    # top 3 by valid: 70, 50, 60 -> mean 60.00, population std 8.16
    # columns: rho 0.999, 0.997, 0.995, 0.990
    assert "<td>end (ours, quick preset)</td><td>-</td><td>60.00 ± 8.16</td><td>-</td>" in page
    assert "<td>EnD (paper)</td><td>52.30 ± 2.39</td><td>83.70 ± 1.03</td>" in page
    assert "The run folder of trial 0 (/gone/0) is not here" in page
