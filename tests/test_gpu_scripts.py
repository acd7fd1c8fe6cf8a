"""The prepared GPU check runs its whole flow on CPU with tiny budgets, so that the script
a lent GPU runs once is known to work before then."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_on_cpu(script: str, results: Path) -> Path:
    """Run ``benchmarks/SCRIPT`` on CPU with a tiny synthetic budget; its results folder."""
    env = {
        **os.environ,
        "DEVICE": "cpu",
        "BUDGET": "240",
        "PY": sys.executable,
        "RESULTS": str(results),
        "DATASET_ARGS": "--dataset synthetic --dataset-option train_size=128 "
        "--dataset-option eval_size=64",
        "TRAIN_ARGS": "--epochs 1 --model-option channels=[4,8]",
        "OMP_NUM_THREADS": "1",
    }
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / script)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return results


@pytest.mark.slow
def test_gpu_fidelity_flow_on_cpu(tmp_path):
    results = run_on_cpu("gpu_fidelity.sh", tmp_path / "results")
    report = (results / "gpu_fidelity.txt").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "---" not in line]
    assert [row.split(" | ")[0] for row in rows[1:]] == [
        "| end", "| end-fp32", "| vanilla", "| vanilla-rebias",
    ]
    end_row = rows[1]
    assert "alpha=0.1 beta=0.1 pairs=reference" in end_row and "1 of 1" in end_row
    with tarfile.open(results / "gpu_fidelity_records.tar.gz") as archive:
        names = archive.getnames()
    for run in ("end", "end-fp32", "vanilla", "vanilla-rebias"):
        assert f"./{run}/metrics.jsonl" in names and f"./{run}/config.json" in names
    assert not any(name.endswith(".pt") for name in names)


@pytest.mark.slow
def test_gpu_table1_flow_on_cpu(tmp_path):
    """Every trained Table 1 row runs, the table lists them beside the published numbers,
    and the records are packed (tiny synthetic budget; the GPU run itself is pending)."""
    results = run_on_cpu("gpu_table1.sh", tmp_path / "results")
    report = (results / "gpu_table1.txt").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| ") and "---" not in line]
    names = ["vanilla", "hex", "learned-mixin", "rubi", "rebias", "end"]
    assert [row.split(" | ")[0] for row in rows[1:]] == [f"| {n}" for n in names]
    assert all("1 of 1" in row for row in rows[1:]), rows
    assert rows[5].startswith("| rebias | - |") and "alpha=0.1 beta=0.1" in rows[6]
    assert rows[1].endswith("| - |")  # synthetic data: no published number to show
    with tarfile.open(results / "gpu_table1_records.tar.gz") as archive:
        archived = archive.getnames()
    for run in names:
        assert f"./{run}/metrics.jsonl" in archived and f"./{run}/config.json" in archived
    assert not any(name.endswith(".pt") for name in archived)
