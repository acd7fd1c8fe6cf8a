"""benchmarks/gpu_sweep_check.sh's flow on CPU: tiny synthetic trials, each variant to the
end, a report with trials per hour for solo, --pack 8 and --pack 4 x 2, and one archive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def test_gpu_sweep_check_flow_on_cpu(tmp_path):
    env = {**os.environ, "DEVICE": "cpu", "BUDGET": "400", "PY": sys.executable, "TINY": "1",
           "EPOCHS": "2", "RESULTS": str(tmp_path / "results")}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_sweep_check.sh")], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = (tmp_path / "results" / "gpu_sweep_check.txt").read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in report.splitlines()
            if line.startswith("| ") and not line.startswith("| variant")}
    assert set(rows) == {"solo", "pack8", "pack4x2"}, report
    # Trials measured and epochs: every variant ran to the end of its 2 epochs. Two agents
    # asking at the same instant may draw the same grid point; the later one skips it.
    assert [rows[v][0].strip() for v in ("solo", "pack8")] == ["1", "8"], report
    assert rows["pack4x2"][0].strip() in ("7", "8"), report
    assert all(rows[v][1].strip() == "2-2" for v in rows), report
    assert rows["solo"][5].strip() == "1.00x" and rows["pack8"][5].strip().endswith("x")
    assert "a 20-trial sweep at one rho at the best rate" in report
    with tarfile.open(tmp_path / "results" / "gpu_sweep_check_records.tar.gz") as archive:
        names = archive.getnames()
    assert sum(n.endswith("metrics.jsonl") for n in names) in (16, 17)
    assert not any(n.endswith(".pt") for n in names)  # records only, no checkpoints


def write_run(folder: Path, seconds: list[float], pack_size: int | None) -> None:
    folder.mkdir(parents=True)
    lines = []
    for epoch, value in enumerate(seconds, start=1):
        record = {"epoch": epoch, "seconds": value}
        if pack_size is not None:
            record["pack_size"] = pack_size
        lines.append(json.dumps(record))
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def test_summary_extrapolates_trials_per_hour_by_hand(tmp_path):
    """Solo: first epoch 10 s, then 2 s -> 10 + 79 * 2 = 168 s for 80 epochs, 3600 / 168
    trials per hour. One pack of 8: 20 s then 4 s (median of 4, 4, 5) -> 336 s for 8
    trials. Two packs of 4 in parallel: 12 + 79 * 3 = 249 s and 12.5 + 79 * 2 = 170.5 s -> 8
    trials in the longer, 249 s."""
    runs = tmp_path / "runs"
    write_run(runs / "solo" / "a", [10, 2, 2, 3], None)
    for member in range(8):
        write_run(runs / "pack8" / f"m{member}", [20, 4, 4, 5], 8)
    for member in range(4):
        write_run(runs / "pack4x2" / f"a{member}", [12, 3, 3], 4)
        write_run(runs / "pack4x2" / f"b{member}", [12.5, 2, 2, 2], 4)
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweep_check_summary.py"),
                           str(runs), "--epochs", "80"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    summary = json.loads((runs / "summary.json").read_text())
    solo = 3600 / (10 + 79 * 2)
    assert summary["solo"]["trials_per_hour"] == pytest.approx(solo)
    assert summary["pack8"]["trials_per_hour"] == pytest.approx(8 * 3600 / (20 + 79 * 4))
    assert summary["pack4x2"]["trials"] == 8
    assert summary["pack4x2"]["trials_per_hour"] == pytest.approx(8 * 3600 / (12 + 79 * 3))
    ratio = 8 * 3600 / (20 + 79 * 4) / solo
    assert f"{ratio:.2f}x" in done.stdout
