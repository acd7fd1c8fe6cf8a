"""One process per run folder: an exclusive ``flock`` on ``RUN/.lock`` for the run's life.

The lock is taken before anything else (before data loads, before any record is read or
written), so two ``train`` commands on one ``--out`` never interleave: the second one
stops at once with ``RUN is in use by process PID``. The kernel drops a ``flock`` when its
process dies, so a killed run never leaves the folder locked. The holder checks before
every write of records that the lock file is still the one it locked (the folder was not
deleted or replaced under it), and stops rather than write into someone else's run.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

from endebias.training import records


class RunInUseError(RuntimeError):
    """Another process holds the run folder."""


class RunLockLostError(RuntimeError):
    """The run folder's lock file was removed or replaced while this process held it."""


class RunLock:
    """An exclusive lock on ``run_dir``; :meth:`acquire` creates the folder if need be."""

    def __init__(self, run_dir: Path, fd: int | None, created: bool) -> None:
        self.run_dir = run_dir
        self.path = run_dir / records.LOCK
        self._fd = fd
        self._created = created

    @classmethod
    def acquire(cls, run_dir: str | Path) -> RunLock:
        run_dir = Path(run_dir)
        if run_dir.exists() and not run_dir.is_dir():
            raise ValueError(f"{run_dir} is a file, not a run folder; choose another --out")
        created = not run_dir.exists()
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OSError(error.errno, f"cannot create the run folder {run_dir}: "
                          f"{error.strerror}") from None
        path = run_dir / records.LOCK
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, records.file_mode())
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                who = f"process {holder}" if holder.isdigit() else "another process"
                raise RunInUseError(f"{run_dir} is in use by {who}") from None
            except BaseException:
                os.close(fd)
                raise
            # The previous holder may have removed the file between our open and our lock:
            # then we locked an orphan, and must lock the file that is there now.
            if _same_file(fd, path):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(run_dir, fd, created)

    @classmethod
    def unlocked(cls, run_dir: str | Path) -> RunLock:
        """A stand-in for the processes of a multi-process run other than rank 0 (which
        alone writes records and holds the lock)."""
        return cls(Path(run_dir), None, False)

    def check(self) -> None:
        """Raise :class:`RunLockLostError` unless this process still holds the run."""
        if self._fd is not None and not _same_file(self._fd, self.path):
            raise RunLockLostError(
                f"{self.run_dir}: the run's lock file was removed or replaced while this "
                "process trained; stopping without writing"
            )

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        if _same_file(self._fd, self.path):
            self.path.unlink(missing_ok=True)
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def abandon(self) -> None:
        """Release, and remove the folder too if this process created it and it is empty:
        a failed start leaves nothing behind to block the next try."""
        created = self._created and self._fd is not None
        self.release()
        if created:
            with contextlib.suppress(OSError):  # not empty: someone put files there
                self.run_dir.rmdir()


def holder(run_dir: str | Path) -> str | None:
    """``process PID`` (or ``another process``) when a live process holds ``run_dir``'s
    lock, else None; asks without creating or changing anything."""
    path = Path(run_dir) / records.LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file (or no folder): nobody holds it
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode(errors="replace").strip()
            return f"process {pid}" if pid.isdigit() else "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def check_run_folder(run_dir: str | Path, *, resume: bool) -> None:
    """Before a command says anything about ``run_dir``: in use by a live process (even
    one still starting, before its first checkpoint), a run without its config, or
    nothing to resume."""
    run_dir = Path(run_dir)
    who = holder(run_dir)
    if who is not None:
        raise RunInUseError(f"{run_dir} is in use by {who}")
    if run_dir.is_dir():
        problem = records.without_config(run_dir)
        if problem is not None:
            raise ValueError(problem)
    if resume and not run_dir.is_file() and not (run_dir / records.CONFIG).is_file():
        raise ValueError(f"nothing to resume in {run_dir}")


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)
