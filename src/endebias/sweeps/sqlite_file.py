"""What is wrong with an SQLite study file, told apart (no torch here).

A file another process holds locked, one it is writing to, a folder, a file that is no
database at all, one without read permission and a damaged database all fail inside
SQLite with a handful of codes; each needs different advice (waiting mends a lock, while
"restore it from a copy" would throw away the trials finished since that copy). Every
message names the file.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote

MAGIC = b"SQLite format 3\x00"
# SQLite's POSIX lock bytes (os_unix.c): the PENDING byte, the RESERVED byte, and the
# SHARED range after them. A writer holds RESERVED; an exclusive holder holds SHARED
# range for writing, which keeps readers out.
PENDING_BYTE = 0x40000000
RESERVED_BYTE = PENDING_BYTE + 1
SHARED_FIRST = PENDING_BYTE + 2
BTREE_PAGE_TYPES = {2, 5, 10, 13}  # the first byte of an SQLite b-tree page
FIRST_DELAY = 0.2
LONGEST_DELAY = 5.0

T = TypeVar("T")


class StorageBusy(RuntimeError):
    """The study file is locked by another process for longer than we may wait."""


def is_busy(error: BaseException) -> bool:
    """SQLite's "database is locked" (SQLITE_BUSY) or "table is locked" (SQLITE_LOCKED),
    seen directly or behind SQLAlchemy's and Optuna's wrappers."""
    seen: BaseException | None = error
    while seen is not None:
        orig = getattr(seen, "orig", None)
        for candidate in (seen, orig):
            if isinstance(candidate, sqlite3.Error):
                name = getattr(candidate, "sqlite_errorname", "") or ""
                if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "is locked" in str(
                        candidate):
                    return True
        seen = seen.__cause__ or seen.__context__
    return False


def lock_holders(path: Path) -> tuple[list[int], list[int]]:
    """(processes holding ``path`` exclusively, processes writing to it), read from
    ``/proc/locks`` (Linux); empty lists where it cannot be read."""
    try:
        inode = path.stat().st_ino
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return [], []
    exclusive: list[int] = []
    writing: list[int] = []
    for line in lines:
        fields = line.split()
        if "->" in fields:  # a waiter, not a holder
            continue
        try:
            kind, mode, pid = fields[1], fields[3], int(fields[4])
            file_inode = int(fields[5].rsplit(":", 1)[1])
            start = int(fields[6])
            end = PENDING_BYTE * 4 if fields[7] == "EOF" else int(fields[7])
        except (IndexError, ValueError):
            continue
        if kind != "POSIX" or mode != "WRITE" or file_inode != inode:
            continue
        if start <= SHARED_FIRST <= end:
            exclusive.append(pid)
        elif start <= RESERVED_BYTE <= end:
            writing.append(pid)
    return sorted(set(exclusive)), sorted(set(writing))


def _processes(pids: list[int]) -> str:
    return ("process " if len(pids) == 1 else "processes ") + ", ".join(map(str, pids))


def busy_message(path: Path, waited: float) -> str:
    exclusive, writing = lock_holders(path)
    if exclusive:
        what = f"is locked by {_processes(exclusive)}, which holds it exclusively"
    elif writing:
        what = f"is busy: {_processes(writing)} is writing to it"
    else:
        what = "is locked by another process"
    return (
        f"sweep storage {path} {what}, still after {waited:.0f} s: nothing is damaged; wait "
        "for it to finish, stop it, or give --storage-retry SECONDS to wait longer"
    )


def damaged(where: str | Path, detail: str) -> str:
    return (
        f"sweep storage {where} is damaged ({detail}): restore it from a copy; each trial's "
        "records stay in its run folder (endebias results RUNS/SWEEP_ID reads them)"
    )


def looks_like_sqlite(path: Path) -> bool:
    """An SQLite database, even one whose header is damaged: the magic string, or the
    schema's b-tree page header at byte 100, or a b-tree page right after the first
    page, in a file made of whole pages."""
    with path.open("rb") as handle:
        head = handle.read(101)
        if head.startswith(MAGIC):
            return True
        size = path.stat().st_size
        if size < 1024 or size % 512:
            return False
        if len(head) > 100 and head[100] in (5, 13):
            return True
        page = 512
        while page <= 65536:
            if size > page and size % page == 0:
                handle.seek(page)
                if handle.read(1)[0] in BTREE_PAGE_TYPES:
                    return True
            page *= 2
    return False


def describe(path: Path, error: BaseException, *, waited: float = 0.0) -> str:
    """One line for an SQLite error on the study file ``path``, by what it means."""
    if is_busy(error):
        return busy_message(path, waited)
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    detail = text[0] if text else type(error).__name__
    if "unable to open" in detail or "readonly" in detail or "read-only" in detail:
        return (
            f"sweep storage {path} cannot be opened for writing ({detail}): check the "
            "permissions of the file and its folder"
        )
    if "not a database" in detail and path.is_file() and not looks_like_sqlite(path):
        return not_a_database(path)
    return damaged(path, detail[:160])


def not_a_database(path: Path) -> str:
    with path.open("rb") as handle:
        start = handle.read(16)
    return (
        f"sweep storage {path} is not an SQLite database (it starts with {start!r}): give "
        "the sweep's database file (sqlite:///RUNS/sweeps.db); this one is left as it is"
    )


def check_path(path: Path) -> None:
    """A folder or an unreadable file, refused before SQLite is asked."""
    if path.is_dir():
        raise ValueError(
            f"sweep storage {path} is a folder, not an SQLite file: give the file in it "
            f"(sqlite:///{path / 'sweeps.db'})"
        )
    try:
        with path.open("rb") as handle:
            start = handle.read(len(MAGIC))
    except PermissionError:
        raise ValueError(
            f"sweep storage {path}: permission denied (cannot read it); check the "
            "permissions of the file and its folder"
        ) from None
    if start != MAGIC and not looks_like_sqlite(path):
        raise ValueError(not_a_database(path))


def waiting_while_busy(action: Callable[[], T], *, path: Path, wait: float) -> T:
    """``action()``, tried again with doubling pauses while the file is locked by another
    process, for up to ``wait`` seconds; then :class:`StorageBusy` naming the holder."""
    started = time.monotonic()
    delay = FIRST_DELAY
    while True:
        try:
            return action()
        except Exception as error:
            if not is_busy(error):
                raise
            waited = time.monotonic() - started
            if waited + delay > wait:
                raise StorageBusy(busy_message(path, waited)) from None
            time.sleep(delay)
            delay = min(2 * delay, LONGEST_DELAY)


def check_study_file(path: Path, *, create: bool, wait: float = 0.0) -> None:
    """Refuse a missing or empty file (unless ``create``), a folder, a file that is no
    database, and a damaged one, reading it without writing a byte (no schema goes into a
    file that holds none); a lock another process holds is waited for up to ``wait`` s."""
    if not path.exists() or (path.is_file() and path.stat().st_size == 0):
        if create:
            return
        what = "an empty file" if path.exists() else "no such file"
        raise FileNotFoundError(
            f"no sweep storage at {path} ({what}): create a sweep first (endebias sweep "
            "create FILE), or give --storage / --runs"
        )
    check_path(path)

    def read() -> tuple[set[str], list[str]]:
        # mode=rw never creates the file, yet may roll back a killed writer's journal.
        uri = f"file:{quote(str(path))}?mode=rw"
        with closing(sqlite3.connect(uri, uri=True, timeout=min(wait, 1.0))) as db:
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
            return tables, [row[0] for row in db.execute("PRAGMA quick_check")]

    try:
        tables, problems = waiting_while_busy(read, path=path, wait=wait)
    except sqlite3.DatabaseError as error:
        raise RuntimeError(describe(path, error)) from None
    if problems != ["ok"]:
        detail = "; ".join(line.strip("* ") for line in problems[0].splitlines())
        raise RuntimeError(damaged(path, detail[:160]))
    if "studies" not in tables and not create:
        raise FileNotFoundError(
            f"no sweep storage at {path}: an SQLite file without sweeps (no Optuna tables); "
            "create a sweep first (endebias sweep create FILE)"
        )


def study_file_problem(url: str) -> str | None:
    """Why the SQLite study file behind ``url`` cannot be used now (damaged, gone, not a
    database), asked after an unexplained storage error; None for a server URL or a file
    that reads as sound (a lock held a moment is no such reason)."""
    if not url.startswith("sqlite:///"):
        return None
    try:
        check_study_file(Path(url.removeprefix("sqlite:///")), create=False)
    except StorageBusy:
        return None
    except (RuntimeError, ValueError, OSError) as error:
        return str(error)
    return None
