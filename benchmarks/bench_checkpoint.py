"""What a safe checkpoint costs: ``save_checkpoint`` (serialise, SHA-256 trailer, fsync of
the file and its folder, the previous checkpoint kept) and ``load_checkpoint`` (size and
checksum verified before torch reads it) against plain ``torch.save`` / ``torch.load``,
for the state of a run: model, Adam's moments, scheduler and generator state.

    .venv/bin/python benchmarks/bench_checkpoint.py                   # ResNet-18 (134 MB)
    .venv/bin/python benchmarks/bench_checkpoint.py --model simple-conv --folder /data

The folder decides what fsync costs (a tmpfs makes it free); the default is a temporary
folder under /tmp. Each figure is the best of ``--repeats`` runs.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch

from endebias.models import build_model
from endebias.training import records
from endebias.training.checkpoint import load_checkpoint, save_checkpoint


def best_of(repeats: int, work: Callable[[], object]) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def run_state(model_name: str) -> dict:
    """A run's checkpoint state after one optimiser step (so Adam's moments exist)."""
    model = build_model(model_name, num_classes=10, input_shape=(3, 64, 64))
    optimizer = torch.optim.Adam(model.parameters())
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    optimizer.step()
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, 20)
    return {"history": [], "method": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="(default: %(default)s)")
    parser.add_argument("--folder", help="where to write (default: a temporary folder in /tmp)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    state = run_state(args.model)
    folder = Path(tempfile.mkdtemp(prefix="bench-checkpoint-", dir=args.folder or "/tmp"))
    try:
        plain = folder / "plain.pt"
        saves = (best_of(args.repeats, lambda: torch.save(state, plain)),
                 best_of(args.repeats, lambda: save_checkpoint(folder / records.CHECKPOINT,
                                                               state)))
        loads = (best_of(args.repeats, lambda: torch.load(plain, weights_only=True)),
                 best_of(args.repeats, lambda: load_checkpoint(folder)))
        size = (folder / records.CHECKPOINT).stat().st_size / 1e6
    finally:
        shutil.rmtree(folder)
    print(f"{datetime.now(UTC):%Y-%m-%d}, {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, folder {folder.parent}")
    print(f"{args.model} checkpoint, {size:.0f} MB:")
    print(f"  save: torch.save {saves[0]:.2f} s, save_checkpoint {saves[1]:.2f} s")
    print(f"  load: torch.load {loads[0]:.2f} s, load_checkpoint {loads[1]:.2f} s")


if __name__ == "__main__":
    main()
