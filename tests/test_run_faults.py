"""Faults of run folders, injected for real: a second process, kill -9, damaged and
flipped checkpoints, a full disk, file modes, a lost lock, --out on a file. Each test
asserts the one-line message, the exit code and that finished epochs are intact."""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from endebias.cli.main import build_parser, config_from_args
from endebias.training import records
from endebias.training.checkpoint import load_checkpoint
from endebias.training.config import make_config
from endebias.training.fit import fit
from endebias.training.run_lock import RunLock, RunLockLostError
from run_faults_helpers import (
    Stop,
    epochs_on_record,
    hold_lock,
    one_error_line,
    run_cli,
    small_tmpfs,
    stop_after,
    stray_temp_files,
    train_args,
    without_timings,
)


def tiny_config(**overrides):
    options = dict(dataset="synthetic", dataset_options={"train_size": 128, "eval_size": 64},
                   method="end", method_options={"alpha": 1.0, "beta": 1.0}, epochs=3,
                   batch_size=32, seed=5)
    options.update(overrides)
    return make_config("quick", **options)


@pytest.mark.slow
def test_a_second_process_on_the_run_is_refused_with_the_holders_pid(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(capsys, train_args(run, epochs=1))[0] == 0
    before = (run / records.METRICS).read_bytes()
    holder = hold_lock(run)
    try:
        # Another config, and this one with --resume: neither touches the held run.
        for extra in (["--seed", "9"], ["--resume"]):
            code, err = run_cli(capsys, train_args(run, *extra, epochs=3))
            assert code == 2
            expected = f"endebias: error: {run} is in use by process {holder.pid}"
            assert one_error_line(err) == expected
    finally:
        holder.kill()
        holder.wait()
    assert (run / records.METRICS).read_bytes() == before
    # The kernel dropped the killed holder's lock: the run continues.
    assert run_cli(capsys, train_args(run, "--resume", epochs=1))[0] == 0


@pytest.mark.slow
# LfF and ReBias: two networks, each with its own optimiser (group) in the checkpoint;
# ReBias's g with a learning rate of its own; LNL: a bias predictor in its own group;
# FairKL: a loss that couples the batch; BiasCon: a second batch of augmented views drawn
# by the method's own seeded state; HEX: an NGLCM branch reading the stored images.
@pytest.mark.parametrize("method", [[], ["--method", "lff"],
                                    ["--method", "rebias", "--method-option", "bias_lr=0.003"],
                                    ["--method", "lnl"], ["--method", "fairkl"],
                                    ["--method", "biascon"], ["--method", "hex"]],
                         ids=["vanilla", "lff", "rebias", "lnl", "fairkl", "biascon", "hex"])
def test_kill_9_mid_run_then_resume_equals_an_uninterrupted_run(tmp_path, capsys, method):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    assert run_cli(capsys, train_args(whole, *method, epochs=8))[0] == 0
    command = [sys.executable, "-m", "endebias", *train_args(killed, *method, epochs=8)]
    # One thread, as this process (conftest): the same arithmetic, the same numbers.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(_lines(killed / records.METRICS)) < 2:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    finished = epochs_on_record(killed)
    assert 2 <= len(finished) < 8, "the kill came too late to test anything"
    assert not (killed / records.DONE).exists()
    assert run_cli(capsys, train_args(killed, *method, "--resume", epochs=8))[0] == 0
    assert without_timings(records.read_metrics(killed)) == without_timings(
        records.read_metrics(whole)
    )
    assert stray_temp_files(killed) == [] and not (killed / records.LOCK).exists()


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except FileNotFoundError:
        return []


@pytest.mark.parametrize(
    "damage",
    ["empty", "random", "flip64", "truncate"],
)
def test_a_damaged_checkpoint_falls_back_to_the_previous_good_one(
    tmp_path, capsys, caplog, damage
):
    whole, run = tmp_path / "whole", tmp_path / "run"
    assert run_cli(capsys, train_args(whole, epochs=3))[0] == 0
    assert run_cli(capsys, train_args(run, epochs=3))[0] == 0
    (run / records.DONE).unlink()  # as if killed after epoch 3's records
    _damage(run / records.CHECKPOINT, damage)
    code, err = run_cli(capsys, train_args(run, "--resume", epochs=3))
    assert code == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert warnings[0].startswith(f"{run / records.CHECKPOINT}: damaged")
    assert "previous good checkpoint" in warnings[0]
    assert "weights_only" not in err + caplog.text
    # Epoch 3 was trained again from epoch 2's checkpoint, to the same numbers.
    assert without_timings(records.read_metrics(run)) == without_timings(
        records.read_metrics(whole)
    )


def test_damaged_checkpoints_with_nothing_to_fall_back_to_are_refused(tmp_path, capsys):
    run = tmp_path / "run"
    assert run_cli(capsys, train_args(run, epochs=2))[0] == 0
    (run / records.DONE).unlink()
    metrics = (run / records.METRICS).read_bytes()
    _damage(run / records.CHECKPOINT, "flip64")
    _damage(run / records.PREVIOUS_CHECKPOINT, "random")
    code, err = run_cli(capsys, train_args(run, "--resume", epochs=2))
    assert code == 2
    line = one_error_line(err)
    assert f"{run / records.CHECKPOINT}: damaged (checksum mismatch)" in line
    assert "--resume refuses" in line and "weights_only" not in err
    assert (run / records.METRICS).read_bytes() == metrics  # nothing overwritten


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    generator = torch.Generator().manual_seed(0)
    if how == "empty":
        data = b""
    elif how == "random":
        data = bytes(torch.randint(256, (4096,), generator=generator, dtype=torch.uint8).tolist())
    elif how == "truncate":
        data = data[: len(data) // 2]
    else:  # 64 flipped bytes in the middle of the tensors
        start = len(data) // 2
        flipped = bytes(b ^ 0xFF for b in data[start : start + 64])
        data = data[:start] + flipped + data[start + 64 :]
    path.write_bytes(data)


def test_checkpoints_still_load_with_torch_load_and_need_no_unsafe_unpickling(tmp_path):
    fit(tiny_config(epochs=1), tmp_path / "run", progress=False)
    state = torch.load(tmp_path / "run" / records.CHECKPOINT, weights_only=True)
    assert [r["epoch"] for r in state["history"]] == [1]
    assert load_checkpoint(tmp_path / "run")["history"] == state["history"]


@pytest.mark.parametrize("disk", ["tmpfs", "injected"])
def test_a_full_disk_is_one_line_leaves_no_temp_file_and_resumes(
    tmp_path, capsys, monkeypatch, disk
):
    whole = tmp_path / "whole"
    assert run_cli(capsys, train_args(whole, epochs=3))[0] == 0
    # tmpfs: a disk that really fills up (where this machine lets us mount one); injected:
    # the same fault raised by the fsync of every large file (a full disk at write-back).
    with small_tmpfs("6m") if disk == "tmpfs" else contextlib.nullcontext(tmp_path) as folder:
        if folder is None:
            pytest.skip("mounting a tmpfs is not permitted here")
        run = folder / "run"
        _one_epoch_of(train_args(run, epochs=3))
        if disk == "tmpfs":
            # Leave less room than one checkpoint (1.2 MB): the filler takes all but 8 KiB.
            free = os.statvfs(folder).f_bavail * os.statvfs(folder).f_frsize
            (folder / "filler").write_bytes(b"\0" * (free - 8192))
        else:
            _inject_enospc(monkeypatch)
        config_text = (run / records.CONFIG).read_text()
        code, err = run_cli(capsys, train_args(run, "--resume", epochs=3))
        assert code == 2
        assert one_error_line(err) == (
            f"endebias: error: no space left on device while writing {run / records.CHECKPOINT}"
        )
        assert stray_temp_files(run) == []
        assert epochs_on_record(run) == [1]
        assert load_checkpoint(run)["history"][0]["epoch"] == 1
        assert (run / records.CONFIG).read_text() == config_text
        if disk == "tmpfs":
            (folder / "filler").unlink()
        else:
            monkeypatch.undo()
        code, err = run_cli(capsys, train_args(run, "--resume", epochs=3))
        assert code == 0, err
        assert without_timings(records.read_metrics(run)) == without_timings(
            records.read_metrics(whole)
        )


def _one_epoch_of(args: list[str]) -> None:
    """The first epoch of the run the CLI ``args`` describe, then a stop (as a kill)."""
    parsed = build_parser().parse_args(args)
    with pytest.raises(Stop):
        fit(config_from_args(parsed), parsed.out, progress=False, on_epoch=stop_after(1))


def _inject_enospc(monkeypatch) -> None:
    real_fsync = os.fsync

    def full(fd):
        if os.fstat(fd).st_size > 65536:  # a checkpoint, not the small records
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_fsync(fd)

    monkeypatch.setattr(records.os, "fsync", full)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_records_honour_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        fit(tiny_config(epochs=1), tmp_path / "run", progress=False)
    finally:
        os.umask(old)
    for name in (records.CONFIG, records.METRICS, records.BEST, records.CHECKPOINT, records.DONE):
        mode = stat.S_IMODE((tmp_path / "run" / name).stat().st_mode)
        assert mode == 0o666 & ~umask, (name, oct(mode))


def test_a_removed_lock_stops_the_run_before_it_writes_again(tmp_path):
    run = tmp_path / "run"

    def remove_lock(epoch, record):
        if epoch == 1:
            (run / records.LOCK).unlink()

    with pytest.raises(RunLockLostError, match="lock file was removed"):
        fit(tiny_config(epochs=3), run, progress=False, on_epoch=remove_lock)
    assert epochs_on_record(run) == [1]
    assert not (run / records.DONE).exists()


def test_a_failed_start_leaves_no_folder_and_does_not_block_the_next(tmp_path, capsys):
    run = tmp_path / "run"
    code, err = run_cli(capsys, train_args(run, "--model", "resnet18", "--dataset-option",
                                           "num_classes=7"))
    line = one_error_line(err)
    assert code == 2 and "num_classes must be" in line and "2..6" in line
    assert not run.exists()
    code, err = run_cli(capsys, train_args(run, "--model-option", "channels=[4,8]",
                                           "--model-option", "kernel_size=3",
                                           "--model-option", "pool_after=[5]", "--model",
                                           "mlp"))
    assert code == 2 and "model 'mlp' has no option 'channels'" in one_error_line(err)
    assert not run.exists()
    assert run_cli(capsys, train_args(run, epochs=1))[0] == 0


def test_resume_of_a_missing_folder_and_out_on_a_file_are_one_line(tmp_path, capsys):
    code, err = run_cli(capsys, train_args(tmp_path / "nothere", "--resume"))
    assert code == 2
    assert one_error_line(err) == f"endebias: error: nothing to resume in {tmp_path / 'nothere'}"
    assert not (tmp_path / "nothere").exists()
    a_file = tmp_path / "hostname"
    a_file.write_text("machine\n")
    code, err = run_cli(capsys, train_args(a_file))
    assert code == 2 and f"{a_file} is a file, not a run folder" in one_error_line(err)
    code, err = run_cli(capsys, train_args(a_file / "run"))
    assert code == 2 and f"cannot create the run folder {a_file / 'run'}" in one_error_line(err)
    assert a_file.read_text() == "machine\n"


def test_lock_release_and_reacquire(tmp_path):
    lock = RunLock.acquire(tmp_path / "run")
    assert (tmp_path / "run" / records.LOCK).read_text().strip() == str(os.getpid())
    lock.check()
    lock.release()
    lock.release()  # idempotent
    assert not (tmp_path / "run" / records.LOCK).exists()
    again = RunLock.acquire(tmp_path / "run")
    again.abandon()  # the folder existed before this acquire: it stays
    assert (tmp_path / "run").is_dir()


def test_finished_epochs_without_any_checkpoint_are_not_trained_over(tmp_path, capsys):
    run = tmp_path / "run"
    _one_epoch_of(train_args(run, epochs=2))
    (run / records.CHECKPOINT).unlink()
    metrics = (run / records.METRICS).read_bytes()
    code, err = run_cli(capsys, train_args(run, "--resume", epochs=2))
    assert code == 2
    assert one_error_line(err) == (
        f"endebias: error: {run} has finished epochs on record but no checkpoint; --resume "
        "refuses (move the folder away to train the run again)"
    )
    assert (run / records.METRICS).read_bytes() == metrics
