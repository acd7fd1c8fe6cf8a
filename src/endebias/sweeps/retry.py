"""Riding out a storage that goes away for a while (a PostgreSQL restart, a network blip).

An agent's storage calls are retried with exponential backoff while the database layer
reports a lost or refused connection, for a bounded time; then :class:`StorageUnavailable`
names the storage (never its password) and every later call fails at once, so that Optuna's
own clean-up after a trial does not wait out the same limit again. A damaged file or a bad
query is not retried: waiting would not mend it.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from sqlalchemy import exc as sql_errors

from endebias.sweeps import sqlite_file
from endebias.sweeps.interrupts import held_interrupts
from endebias.sweeps.urls import mask_url, scrub

log = logging.getLogger(__name__)

DEFAULT_RETRY_SECONDS = 120.0
FIRST_DELAY = 0.5
LONGEST_DELAY = 15.0
# Every storage call an agent makes, directly or through Optuna (heartbeats apart).
RETRIED = (
    "create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
    "get_study_id_from_name", "get_study_name_from_id", "get_study_directions",
    "get_study_user_attrs", "get_study_system_attrs", "get_all_studies", "create_new_trial",
    "set_trial_param", "get_trial_id_from_study_id_trial_number", "get_trial_number_from_id",
    "get_trial_param", "set_trial_state_values", "set_trial_intermediate_value",
    "set_trial_user_attr", "set_trial_system_attr", "get_trial", "get_all_trials",
    "get_n_trials", "get_best_trial", "get_trial_params", "get_trial_user_attrs",
    "get_trial_system_attrs", "_get_stale_trial_ids",
    # What Optuna's cache in front of the storage calls instead of the public methods.
    "_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials",
)


class StorageUnavailable(RuntimeError):
    """The sweep storage could not be reached within the retry limit."""


def is_transient(error: BaseException) -> bool:
    """A lost, refused or locked connection (retrying may help), seen directly or as the
    cause of Optuna's ``StorageInternalError``.

    A connection dropped inside a transaction surfaces on the session's next use as
    ``PendingRollbackError`` (the drop only its context): Optuna rolls that session back
    before raising, so the next try starts clean.
    """
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, sql_errors.OperationalError | sql_errors.InterfaceError
                      | sql_errors.PendingRollbackError):
            return True
        if isinstance(seen, sql_errors.DBAPIError) and seen.connection_invalidated:
            return True
        seen = seen.__cause__
    return False


def first_line(error: BaseException, url: str) -> str:
    """``Type: first line`` of the deepest database error, without any password."""
    deepest = error
    while deepest.__cause__ is not None:
        deepest = deepest.__cause__
    if isinstance(deepest, sql_errors.DBAPIError) and deepest.orig is not None:
        deepest = deepest.orig
    text = str(deepest).strip().splitlines()
    return f"{type(deepest).__name__}: {scrub(text[0], url) if text else ''}".rstrip(": ")


class _Retrier:
    def __init__(self, url: str, limit: float) -> None:
        self.url = url
        self.limit = limit
        self.dead: StorageUnavailable | None = None
        self.lock = threading.Lock()

    def call(self, method: Callable[..., Any], *args: Any,
             landed: Callable[[], bool] | None = None, **kwargs: Any) -> Any:
        """``method(*args, **kwargs)``, retried on transient errors. ``landed()``, if
        given, is asked before each retry whether the failed try was committed after all
        (the connection dropped after the commit, before its answer): then the write is
        not repeated, and the call returns True."""
        if self.dead is not None:
            raise StorageUnavailable(str(self.dead))
        started = time.monotonic()
        delay = FIRST_DELAY
        warned = False
        while True:
            try:
                with held_interrupts():  # Ctrl-C mid-commit would leave SQLite locked
                    if warned and landed is not None and landed():
                        result = True
                    else:
                        result = method(*args, **kwargs)
            except Exception as error:
                if not is_transient(error):
                    raise
                waited = time.monotonic() - started
                if waited + delay > self.limit:
                    with self.lock:
                        self.dead = StorageUnavailable(self._gone(error, waited))
                    raise StorageUnavailable(str(self.dead)) from None
                if not warned:
                    log.warning(
                        "sweep storage %s unreachable (%s); retrying for up to %g s",
                        mask_url(self.url), first_line(error, self.url), self.limit,
                    )
                    warned = True
                time.sleep(delay)
                delay = min(2 * delay, LONGEST_DELAY)
                continue
            if warned:
                log.warning(
                    "sweep storage %s reachable again after %.1f s",
                    mask_url(self.url), time.monotonic() - started,
                )
            return result

    def _gone(self, error: BaseException, waited: float) -> str:
        if self.url.startswith("sqlite:///") and sqlite_file.is_busy(error):
            # Not unreachable: another process holds the file's lock; name it.
            return sqlite_file.busy_message(Path(self.url.removeprefix("sqlite:///")), waited)
        return (f"sweep storage {mask_url(self.url)} unreachable for {self.limit:g} s "
                f"({first_line(error, self.url)})")

    def heartbeat(self, method: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        """One try, never an exception: the heartbeat thread would print a traceback,
        and a missed beat only matters after the grace period, which the retries of the
        trial's own calls already bound."""
        if self.dead is not None:
            return
        try:
            method(*args, **kwargs)
        except Exception as error:
            log.debug("heartbeat not recorded: %s", first_line(error, self.url))


def retrying(
    storage: optuna.storages.RDBStorage, *, url: str, limit: float = DEFAULT_RETRY_SECONDS
) -> optuna.storages.RDBStorage:
    """``storage`` with each call in :data:`RETRIED` retried for up to ``limit`` seconds.

    The wrappers are set on the instance, so Optuna's calls and the storage's calls to
    itself go through them too; a nested call that gave up is not retried again outside.
    """
    if limit < 0:
        raise ValueError(f"storage retry limit must be >= 0 seconds, got {limit:g}")
    retrier = _Retrier(url, limit)
    raw_get_trial = storage.get_trial
    raw_set_state = storage.set_trial_state_values
    for name in RETRIED:
        method = getattr(storage, name, None)
        if method is not None:
            setattr(storage, name, functools.partial(retrier.call, method))

    def set_trial_state_values(trial_id: int, state: Any, values: Any = None) -> bool:
        # Repeating a finishing write that did land would fail ("trial already finished")
        # and turn a finished trial into an agent error.
        def landed() -> bool:
            trial = raw_get_trial(trial_id)
            return trial.state == state and (
                values is None or list(trial.values or []) == list(values))
        return retrier.call(raw_set_state, trial_id, state, values,
                            landed=landed if state.is_finished() else None)

    storage.set_trial_state_values = set_trial_state_values
    storage.record_heartbeat = functools.partial(retrier.heartbeat, storage.record_heartbeat)
    return storage


# A server that answers "no" will answer the same on every retry.
_REFUSALS = ("authentication failed", "does not exist", "no password supplied")


def retry_transient(action: Callable[[], Any], *, url: str, limit: float) -> Any:
    """``action()`` at start-up, tried again with doubling pauses while the storage is
    unreachable, for up to ``limit`` seconds (``--storage-retry``); the last error is
    raised after that, or at once when waiting cannot help (a wrong password)."""
    started = time.monotonic()
    delay = FIRST_DELAY
    while True:
        try:
            return action()
        except Exception as error:
            text = first_line(error, url)
            if not is_transient(error) or any(refusal in text for refusal in _REFUSALS):
                raise
            if time.monotonic() - started + delay > limit:
                raise
            if delay == FIRST_DELAY:
                log.warning("sweep storage %s unreachable (%s); retrying for up to %g s",
                            mask_url(url), text, limit)
            time.sleep(delay)
            delay = min(2 * delay, LONGEST_DELAY)


def find_unavailable(error: BaseException) -> StorageUnavailable | None:
    """The :class:`StorageUnavailable` behind ``error``: Optuna's clean-up after a failed
    trial may raise something else (its own ``UnboundLocalError``) while handling it."""
    seen: BaseException | None = error
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        if isinstance(seen, StorageUnavailable):
            return seen
        visited.add(id(seen))
        seen = seen.__cause__ or seen.__context__
    return None
