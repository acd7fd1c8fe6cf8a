"""Ctrl-C held back while the main thread talks to the sweep storage.

A KeyboardInterrupt raised inside a storage call can leave SQLAlchemy's connection halfway
through a commit, still holding SQLite's write lock; the agent's clean-up after Ctrl-C
(putting its trials back in the queue) then waits on that lock for ever. So a Ctrl-C that
arrives during a storage call is raised the moment the call returns; anywhere else (most
of the time: training) it is raised at once, as usual. A second Ctrl-C during the same
call is raised at once, for a user who will not wait.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


class _State:
    depth = 0  # storage calls of the main thread in progress (they may nest)
    pending = False  # a Ctrl-C arrived during one of them
    installed = False


def _on_sigint(signum: int, frame: object) -> None:
    if _State.depth > 0 and not _State.pending:
        _State.pending = True
        return
    signal.default_int_handler(signum, frame)


def _install() -> None:
    """Take over SIGINT once, and only from Python's default handler (a program that set
    its own keeps it)."""
    _State.installed = True
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, _on_sigint)


@contextmanager
def held_interrupts() -> Iterator[None]:
    """Hold a Ctrl-C that arrives inside the block until the block ends (main thread only:
    signal handlers run there, and the heartbeat threads' calls are never interrupted)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if not _State.installed:
        _install()
    _State.depth += 1
    try:
        yield
    finally:
        _State.depth -= 1
        if _State.depth == 0 and _State.pending:
            _State.pending = False
            raise KeyboardInterrupt
