"""Shared pieces of the run-folder fault tests: a tiny synthetic run, the CLI's one-line
error, and a small tmpfs (a real full disk) where the machine allows mounting one."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

from endebias.cli.main import main
from endebias.training import records

TINY = ["--dataset", "synthetic", "--dataset-option", "train_size=128",
        "--dataset-option", "eval_size=64", "--batch-size", "32", "--no-progress"]


class Stop(Exception):
    """Raised by an ``on_epoch`` callback to stop a run as a kill would, after an epoch."""


def stop_after(last: int):
    """An ``on_epoch`` callback that stops the run once epoch ``last`` is on record."""
    def on_epoch(epoch, record):
        if epoch == last:
            raise Stop

    return on_epoch


def train_args(out: Path, *extra: str, epochs: int = 2) -> list[str]:
    return ["train", *TINY, "--epochs", str(epochs), "--out", str(out), *extra]


def run_cli(capsys, args: list[str]) -> tuple[int, str]:
    """Exit code and stderr of one in-process CLI call."""
    capsys.readouterr()
    code = main(args)
    return code, capsys.readouterr().err


def one_error_line(err: str) -> str:
    """The single ``endebias: error:`` line of stderr; fails if there is no such line, if
    there are several, or if a traceback was printed."""
    lines = [line for line in err.splitlines() if line.startswith("endebias: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def epochs_on_record(run: Path) -> list[int]:
    return [r["epoch"] for r in records.read_metrics(run)]


def without_timings(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in history]


def stray_temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.endswith(".tmp"))


@contextlib.contextmanager
def small_tmpfs(size: str) -> Iterator[Path | None]:
    """A fresh tmpfs of ``size`` (a disk that really fills up), or None where mounting is
    not permitted (not root, or a sandbox that forbids it)."""
    folder = Path(tempfile.mkdtemp(prefix="endebias-tmpfs-"))
    mounted = False
    if os.geteuid() == 0:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(folder)], capture_output=True)
        mounted = done.returncode == 0
    try:
        yield folder if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=False)
        folder.rmdir()


def hold_lock(run: Path) -> subprocess.Popen:
    """A second process that takes the run's lock and keeps it until killed; returns once
    the lock is held."""
    code = ("import sys, time\n"
            "from endebias.training.run_lock import RunLock\n"
            f"RunLock.acquire({str(run)!r})\n"
            "print('locked', flush=True)\n"
            "time.sleep(120)\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder
