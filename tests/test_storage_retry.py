"""The sweep storage's retries (src/endebias/sweeps/retry.py) against a real SQLite
storage whose calls are made to fail the way a dropped connection fails."""

from __future__ import annotations

import optuna
import pytest
from sqlalchemy import exc as sql_errors

from endebias.sweeps import retry
from endebias.sweeps.retry import StorageUnavailable, retrying

URL_WITH_PASSWORD = "postgresql://user:s3cret@db.example/sweeps"


def dropped_connection() -> sql_errors.OperationalError:
    return sql_errors.OperationalError("COMMIT", {}, Exception("server closed the connection"))


@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(retry, "FIRST_DELAY", 0.001)
    monkeypatch.setattr(retry, "LONGEST_DELAY", 0.002)


@pytest.fixture
def storage(tmp_path):
    raw = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'sweeps.db'}")
    study_id = raw.create_new_study([optuna.study.StudyDirection.MAXIMIZE], "s")
    return raw, raw.create_new_trial(study_id)


def failing_first(method, calls, *, commit_first: bool):
    """``method`` whose first call raises a dropped connection, after committing its write
    when ``commit_first`` (the answer lost, not the write)."""
    def wrapped(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            if commit_first:
                method(*args, **kwargs)
            raise dropped_connection()
        return method(*args, **kwargs)
    return wrapped


@pytest.mark.parametrize("commit_first", [False, True], ids=["write-lost", "answer-lost"])
def test_a_finishing_write_is_retried_once_and_never_repeated(storage, fast_retries,
                                                              commit_first):
    raw, trial_id = storage
    calls = []
    raw.set_trial_state_values = failing_first(raw.set_trial_state_values, calls,
                                               commit_first=commit_first)
    wrapped = retrying(raw, url="sqlite:///x.db", limit=5)
    assert wrapped.set_trial_state_values(trial_id, optuna.trial.TrialState.COMPLETE, [0.75])
    trial = wrapped.get_trial(trial_id)
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.values == [0.75]
    # Lost write: tried again. Lost answer: seen to have landed, not written twice.
    assert len(calls) == (1 if commit_first else 2)


def test_a_landed_write_of_other_values_is_not_taken_for_ours(storage, fast_retries):
    raw, trial_id = storage
    original = raw.set_trial_state_values
    calls = []

    def someone_else_finished_it(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            original(trial_id, optuna.trial.TrialState.COMPLETE, [0.1])
            raise dropped_connection()
        return original(*args, **kwargs)

    raw.set_trial_state_values = someone_else_finished_it
    wrapped = retrying(raw, url="sqlite:///x.db", limit=5)
    with pytest.raises(RuntimeError, match="already finished"):
        wrapped.set_trial_state_values(trial_id, optuna.trial.TrialState.COMPLETE, [0.75])
    assert len(calls) == 2


def session_left_invalid() -> optuna.exceptions.StorageInternalError:
    """What Optuna raises when a session's connection dropped mid-transaction (seen on a
    PostgreSQL restart): the drop is only the context of SQLAlchemy's PendingRollbackError."""
    try:
        try:
            raise dropped_connection()
        except sql_errors.OperationalError:
            raise sql_errors.PendingRollbackError("Can't reconnect until invalid transaction "
                                                  "is rolled back.") from None
    except sql_errors.PendingRollbackError as pending:
        internal = optuna.exceptions.StorageInternalError("An exception is raised during "
                                                          "the commit.")
        internal.__cause__ = pending
        return internal


def test_a_session_left_invalid_by_a_drop_is_retried(storage, fast_retries):
    raw, trial_id = storage
    calls = []
    real_get_trial = raw.get_trial

    def invalid_once(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise session_left_invalid()
        return real_get_trial(*args, **kwargs)

    raw.get_trial = invalid_once
    wrapped = retrying(raw, url="sqlite:///x.db", limit=5)
    assert wrapped.get_trial(trial_id).number == 0
    assert len(calls) == 2


def test_errors_that_waiting_cannot_mend_are_not_retried(storage, fast_retries):
    raw, trial_id = storage
    calls = []

    def bad_query(*args, **kwargs):
        calls.append(args)
        raise sql_errors.ProgrammingError("SELECT", {}, Exception("no such column"))

    raw.get_trial = bad_query
    wrapped = retrying(raw, url="sqlite:///x.db", limit=5)
    with pytest.raises(sql_errors.ProgrammingError):
        wrapped.get_trial(trial_id)
    assert len(calls) == 1


def test_after_the_limit_one_line_without_the_password_and_later_calls_fail_at_once(
        storage, fast_retries):
    raw, trial_id = storage
    calls = []

    def always_down(*args, **kwargs):
        calls.append(args)
        raise dropped_connection()

    raw.get_trial = always_down
    wrapped = retrying(raw, url=URL_WITH_PASSWORD, limit=0.05)
    with pytest.raises(StorageUnavailable) as caught:
        wrapped.get_trial(trial_id)
    message = str(caught.value)
    assert "s3cret" not in message and "db.example" in message
    assert "unreachable for 0.05 s" in message and "\n" not in message
    tries = len(calls)
    assert tries >= 2
    with pytest.raises(StorageUnavailable):
        wrapped.get_n_trials(0)
    assert len(calls) == tries  # no further try once the storage was given up


def test_negative_limit_is_refused(storage):
    with pytest.raises(ValueError, match="retry limit must be >= 0"):
        retrying(storage[0], url="sqlite:///x.db", limit=-1)
