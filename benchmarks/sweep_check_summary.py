"""Trials per hour of the three ways gpu_sweep_check.sh trains the same trials (solo,
``--pack 8``, ``--pack 4`` x 2 processes), from their run records.

Each variant ran for part of its 80 epochs; its 80-epoch time is extrapolated as the first
epoch (warm-up and compilation included) plus the later epochs at the median of the
measured ones. A record's ``seconds`` is its whole pack's epoch, so a pack of K finishes K
trials in that time; packs in parallel processes finish together in the longest one's.

    python benchmarks/sweep_check_summary.py RUNS_FOLDER --epochs 80
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def histories(folder: Path) -> list[list[dict]]:
    found = []
    for path in sorted(folder.glob("*/metrics.jsonl")):
        lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if lines:
            found.append(lines)
    return found


def full_run_seconds(history: list[dict], epochs: int) -> float:
    seconds = [record["seconds"] for record in history]
    steady = statistics.median(seconds[1:]) if len(seconds) > 1 else seconds[0]
    return seconds[0] + (epochs - 1) * steady


def packs(runs: list[list[dict]]) -> list[list[list[dict]]]:
    """Group runs trained in one pack: same pack size and the same epoch times."""
    groups: dict[tuple, list[list[dict]]] = {}
    for history in runs:
        key = (history[0].get("pack_size", 1), round(history[0]["seconds"], 6))
        groups.setdefault(key, []).append(history)
    return list(groups.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="the runs folder (RUNS/<sweep id>/<hash>)")
    parser.add_argument("--epochs", type=int, default=80)
    args = parser.parse_args()
    print(f"\n## summary: trials per hour at {args.epochs} epochs (extrapolated)")
    print("| variant | trials measured | epochs measured | s/epoch (pack) | 80-epoch s | "
          "trials/hour | vs solo |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    solo_rate = None
    results = {}
    for variant in ("solo", "pack8", "pack4x2"):
        runs = histories(args.runs / variant)
        if not runs:
            print(f"| {variant} | 0 | - | - | - | - | - |")
            continue
        groups = packs(runs)
        # The longest pack sets the time; each pack finishes its size in trials.
        longest = max(full_run_seconds(max(g, key=len), args.epochs) for g in groups)
        trials = sum(g[0][0].get("pack_size", 1) for g in groups)
        rate = 3600 * trials / longest
        if variant == "solo":
            solo_rate = rate
        steady = statistics.median(r["seconds"] for g in groups for r in max(g, key=len)[1:]
                                   ) if max(len(r) for r in runs) > 1 else runs[0][0]["seconds"]
        ratio = f"{rate / solo_rate:.2f}x" if solo_rate else "-"
        epochs = min(len(r) for r in runs), max(len(r) for r in runs)
        print(f"| {variant} | {len(runs)} | {epochs[0]}-{epochs[1]} | {steady:.2f} | "
              f"{longest:.0f} | {rate:.1f} | {ratio} |")
        results[variant] = {"trials": trials, "full_run_seconds": longest, "trials_per_hour": rate}
    if solo_rate:
        minutes = 20 * 3600 / max(r["trials_per_hour"] for r in results.values()) / 60
        print(f"\na 20-trial sweep at one rho at the best rate: {minutes:.1f} minutes")
    (args.runs / "summary.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
