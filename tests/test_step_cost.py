"""benchmarks/step_cost.py times every registered method, those that need what only the
trainer gives (the training split, a first stage) included."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from endebias.methods import method_names

ROOT = Path(__file__).resolve().parents[1]


def test_step_cost_times_every_method_once() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "step_cost.py"), "--rounds", "1",
         "--steps", "1", "--batch-size", "16", "--threads", "1"],
        capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")][1:]
    timed = {line.split("|")[1].strip() for line in rows}
    assert timed == set(method_names()) - {"gce"}
    vanilla = next(line for line in rows if line.startswith("| vanilla |"))
    assert vanilla.rstrip().endswith("| 1.00 |")
