"""benchmarks/gpu_sweep_check.sh's flow on CPU: tiny synthetic trials, each variant to the
end, a report with trials per hour for solo, --pack 8 and --pack 4 x 2, and one archive."""

from __future__ import annotations

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
