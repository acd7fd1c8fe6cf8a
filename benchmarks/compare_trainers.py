"""The trainer's speed before and after a change, in one run: ``bench_train.py`` of an older
tree of the project (its own ``src/`` and ``benchmarks/``) and of this one, in turns.

Each turn is one ``bench_train.py`` process with that tree's code on ``PYTHONPATH``; the
trees alternate, and which one goes first alternates by round, so that load on a shared
machine hits both alike. Reported per tree: the median over rounds of the ``ours`` rate
(images/s of whole trainer steps) and of ``ours`` against the ``original`` variant timed in
the same process (a ratio that load moves less); then new / old of both.

    git worktree add /tmp/old-tree <commit>        # the code before the change
    .venv/bin/python benchmarks/compare_trainers.py --old /tmp/old-tree --rounds 3 \\
        -- --preset quick --threads 1 --batches 20
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]


def one_turn(tree: Path, bench_args: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "result.json"
        env = {**os.environ, "PYTHONPATH": str(tree / "src")}
        subprocess.run([sys.executable, str(tree / "benchmarks" / "bench_train.py"),
                        *bench_args, "--json", str(out)], env=env, check=True,
                       stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--old", type=Path, required=True, help="root of the older tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("bench_args", nargs=argparse.REMAINDER,
                        help="after --: the arguments of bench_train.py for both trees")
    args = parser.parse_args()
    bench_args = [a for a in args.bench_args if a != "--"]
    trees = {"old": args.old.resolve(), "new": HERE}
    rates: dict[str, list[float]] = {"old": [], "new": []}
    relative: dict[str, list[float]] = {"old": [], "new": []}
    for number in range(args.rounds):
        order = ["old", "new"] if number % 2 == 0 else ["new", "old"]
        for name in order:
            result = one_turn(trees[name], bench_args)
            ours = result["results"]["ours"]
            rates[name].append(ours["images_per_s"])
            relative[name].append(ours["speedup_paired_median"])
            print(f"round {number + 1} {name}: {ours['images_per_s']:.1f} images/s, "
                  f"{ours['speedup_paired_median']:.2f}x the original", flush=True)
    print(f"\nbench_train.py {' '.join(bench_args)}; {args.rounds} rounds; "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}; old tree {trees['old']}")
    print("| tree | images/s (median) | x original (median) |\n|---|---:|---:|")
    for name in ("old", "new"):
        print(f"| {name} | {statistics.median(rates[name]):.1f} | "
              f"{statistics.median(relative[name]):.2f} |")
    ratio = statistics.median(rates["new"]) / statistics.median(rates["old"])
    ratio_relative = statistics.median(relative["new"]) / statistics.median(relative["old"])
    print(f"new / old: {ratio:.3f} (images/s), {ratio_relative:.3f} (against the original)")


if __name__ == "__main__":
    main()
