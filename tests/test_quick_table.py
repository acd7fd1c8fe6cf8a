"""benchmarks/quick_table.py trains the preset it is given, into that preset's folder."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_cpu_preset_table_trains_the_cpu_preset_into_its_own_folder(tmp_path) -> None:
    from mnist_fixtures import real_mnist_dir

    mnist = real_mnist_dir()
    if mnist is None:
        pytest.skip("real MNIST not found (set ENDEBIAS_DATA)")
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "quick_table.py"), "--data-dir", str(mnist),
         "--preset", "cpu", "--methods", "vanilla", "--rhos", "0.99", "--seeds", "1",
         "--train-subset", "64", "--eval-subset", "32", "--threads", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    (run,) = (tmp_path / "runs" / "cpu-table").iterdir()
    config = json.loads((run / "config.json").read_text())
    assert config["preset"] == "cpu" and (config["epochs"], config["lr_step"]) == (24, 20)
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 24
    assert not (tmp_path / "runs" / "quick-table").exists()
