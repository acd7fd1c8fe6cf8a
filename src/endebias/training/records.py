"""Run folders and their records, written atomically (no torch here: results read these).

A run folder holds ``config.json``, ``metrics.jsonl`` (one line per epoch), ``best.json``
(the epoch with the best validation accuracy), ``checkpoint.pt`` (and the previous good
one, ``checkpoint.prev.pt``), a ``.lock`` file while a process owns the run and, once
finished, a ``done`` marker; a failed run leaves ``error.json``.

Every write goes to a uniquely named temporary file in the same folder, is fsynced and
renamed over its target, so a reader or a killed writer never sees half a file; the
temporary file is removed whatever happens, so a full disk does not stay full.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

CONFIG = "config.json"
# The checksum of the data the run trains on (training.loading.data_checksum).
DATA = "data.json"
METRICS = "metrics.jsonl"
BEST = "best.json"
CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
DONE = "done"
ERROR = "error.json"
LOCK = ".lock"


# What makes a folder a run: any of these, with or without its config.
RUN_RECORDS = (METRICS, BEST, CHECKPOINT, PREVIOUS_CHECKPOINT, DONE, ERROR)


def run_records(run_dir: Path) -> list[str]:
    """The run records ``run_dir`` holds (its config apart)."""
    return [name for name in RUN_RECORDS if (Path(run_dir) / name).exists()]


def without_config(run_dir: Path) -> str | None:
    """Why ``run_dir`` may not be trained into though it has no ``config.json``: it holds
    another run's records (or this run's, its config lost). None when it holds none."""
    found = run_records(run_dir)
    if (Path(run_dir) / CONFIG).exists() or not found:
        return None
    return (
        f"{run_dir} holds run records ({', '.join(found)}) but no {CONFIG}: it is a run whose "
        f"config was lost, and is not overwritten; put its {CONFIG} back to resume it, or "
        "choose another --out (or move the folder away) to train anew"
    )


class DamagedRecordError(ValueError):
    """A record file is unreadable, truncated or not what it should be; names the file."""


class DiskFullError(OSError):
    """No space left on the device while writing a record (the partial file is removed)."""

    @classmethod
    def writing(cls, path: Path) -> DiskFullError:
        error = cls(f"no space left on device while writing {path}")
        error.errno = errno.ENOSPC
        return error


def json_safe(value: Any) -> Any:
    """NaN/inf are not JSON: store them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)


def file_mode() -> int:
    """The mode a plain ``open`` would give a new file: 0666 less the process umask.
    (mkstemp makes 0600 files; records in a shared results folder must stay readable.)"""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename itself is atomic
    finally:
        os.close(fd)


def atomic_write(
    path: Path,
    write: Callable[[IO[bytes]], None],
    *,
    before_replace: Callable[[], None] | None = None,
) -> None:
    """Call ``write`` on a fresh temporary file beside ``path``, fsync it, give it the
    umask's mode and rename it over ``path`` (``before_replace`` runs just before, once
    the new file is complete). A full disk raises :class:`DiskFullError` naming ``path``;
    the temporary file never outlives the call."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
            os.fchmod(handle.fileno(), file_mode())
        if before_replace is not None:
            before_replace()
        os.replace(tmp, path)
    except BaseException as error:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError.writing(path) from None
        raise
    fsync_folder(path.parent)


def remove_temp_files(folder: Path) -> list[Path]:
    """Remove the temporary files a killed writer left in ``folder`` (and its features/);
    only the process holding the run's lock may call this. Returns what was removed."""
    removed = []
    for pattern in (".*.tmp", "features/.*.tmp"):
        for path in Path(folder).glob(pattern):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically; see :func:`atomic_write`."""
    atomic_write(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def atomic_write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, dumps(value, indent=2, sort_keys=True) + "\n")


def write_metrics(run_dir: Path, history: list[dict[str, Any]]) -> None:
    atomic_write_text(run_dir / METRICS, "".join(dumps(r, sort_keys=True) + "\n" for r in history))


def _read_text(path: Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except PermissionError:
        raise DamagedRecordError(f"{path}: permission denied (cannot read it)") from None
    except UnicodeDecodeError:
        raise DamagedRecordError(f"{path}: damaged (not UTF-8 text)") from None
    except IsADirectoryError:
        raise DamagedRecordError(f"{path}: is a folder, not a record file") from None


def read_json(path: Path) -> Any:
    """A JSON record; a damaged or unreadable one raises :class:`DamagedRecordError`
    naming the file (a missing one raises FileNotFoundError)."""
    text = _read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise DamagedRecordError(
            f"{path}: damaged JSON ({error.msg} at line {error.lineno})"
        ) from None


def read_json_object(path: Path) -> dict[str, Any]:
    """As :func:`read_json`, and the record must be a JSON object."""
    value = read_json(path)
    if not isinstance(value, dict):
        raise DamagedRecordError(
            f"{path}: damaged (a JSON {type(value).__name__} where an object belongs)"
        )
    return value


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """The per-epoch records; a truncated or damaged line raises :class:`DamagedRecordError`
    naming the file and the line."""
    path = Path(run_dir) / METRICS
    if not path.exists():
        return []
    history = []
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise DamagedRecordError(f"{path}: line {number} is damaged or truncated") from None
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            raise DamagedRecordError(f"{path}: line {number} is not an epoch record")
        history.append(record)
    return history


def config_hash(config: dict[str, Any]) -> str:
    """A short stable name for a run folder: the hash of its canonical config JSON."""
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]
