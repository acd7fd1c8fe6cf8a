"""Sweep-side faults injected for real: passwords in URLs, YAML alias bombs, empty and
damaged study files. Each gives one line naming the culprit, exit 2, and loses nothing."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from endebias.cli.main import main
from endebias.sweeps import storage as sweep_storage
from endebias.sweeps.search_space import SweepFileError
from endebias.sweeps.sweep_file import load_sweep_file, parse_sweep
from endebias.sweeps.urls import mask_url, scrub

SPEC = {"method": "random", "parameters": {
    "alpha": {"distribution": "uniform", "min": 0.0, "max": 1.0}, "preset": {"value": "quick"}}}


def cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


# -- passwords (18.2) ------------------------------------------------------------------

@pytest.mark.parametrize(
    ("url", "shown", "secret"),
    [
        # Written by hand from how the driver splits each URL (SQLAlchemy's make_url).
        ("postgresql://u:pa/ss@db.example:5432/sweeps", "postgresql://u:***@db.example:5432/sweeps",
         "pa/ss"),
        ("postgresql://u:pa ss@db/sweeps", "postgresql://u:***@db/sweeps", "pa ss"),
        ("postgresql://u:s3cr:t@db/sweeps", "postgresql://u:***@db/sweeps", "s3cr:t"),
        # An @ not percent-encoded: the driver's password stops at the first @; all of
        # "p@ss" is hidden, and the host shown is the real one.
        ("postgresql://u:p@ssword@db/sweeps", "postgresql://u:***@db/sweeps", "p@ssword"),
        ("postgresql+psycopg2://u:p%40ss%2Fw@10.0.0.2/x?sslmode=require",
         "postgresql+psycopg2://u:***@10.0.0.2/x?sslmode=require", "p%40ss%2Fw"),
        ("postgresql://db/x?user=d&password=hunter2&a=1",
         "postgresql://db/x?user=d&password=***&a=1", "hunter2"),
        ("postgresql://carol@localhost/db", "postgresql://carol@localhost/db", None),
        ("postgresql://u:pw@[::1]:5432/db", "postgresql://u:***@[::1]:5432/db", None),
        ("sqlite:///runs/sweeps.db", "sqlite:///runs/sweeps.db", None),
    ],
)
def test_mask_url_hides_the_whole_password(url, shown, secret):
    assert mask_url(url) == shown
    if secret:
        assert secret not in mask_url(url)


def test_scrub_hides_every_form_of_the_password_but_keeps_the_message_readable():
    url = "postgresql://u:p@ss/w rd@db/sweeps"
    message = (f"could not connect to {url}: password p@ss/w rd, p%40ss%2Fw%20rd; "
               'could not translate host name "ss" to address')
    assert scrub(message, url) == ("could not connect to postgresql://u:***@db/sweeps: "
                                   'password ***, ***; could not translate host name "***" '
                                   "to address")
    # A short password is hidden as a word, never inside other words.
    assert scrub("user u password ab failed: about", "postgresql://u:ab@db/x") == (
        "user u password *** failed: about")


@pytest.mark.parametrize("password", ["pa/ss", "p@ss", "pa ss", "p@ss/w rd"])
def test_unreachable_storage_is_one_line_without_the_password(capsys, caplog, password):
    url = f"postgresql://endebias:{password}@127.0.0.1:1/nowhere"
    caplog.set_level(logging.DEBUG)
    for command in (["results", "s1"], ["sweep", "agent", "s1"]):
        code, out, err = cli(capsys, *command, "--storage", url, "--storage-retry", "0")
        assert code == 2 and out == ""
        assert err.startswith("endebias: error: cannot open sweep storage postgresql://endebias:***@")
        assert err.count("\n") == 1
        for text in (err, caplog.text):
            assert password not in text and "ss" not in text.split("@", 1)[0]
    if "@" in password:  # the URL the driver read is not the one meant: say how to write it
        assert "percent-encoded as %40" in err


# -- YAML alias bombs (18.3) ------------------------------------------------------------

BOMB = """\
a: &a [x, x, x, x, x, x, x, x, x, x]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d, *d]
method: random
parameters: {alpha: {values: *e}}
"""


def expanded_by_brute_force(value) -> int:
    """Values of the document written out: every alias visited again (one per scalar,
    list and mapping, and one per key)."""
    if isinstance(value, list):
        return 1 + sum(expanded_by_brute_force(v) for v in value)
    if isinstance(value, dict):
        return 1 + sum(1 + expanded_by_brute_force(v) for v in value.values())
    return 1


def test_an_alias_bomb_is_refused_before_anything_is_stored(tmp_path, capsys):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    assert len(BOMB) < 400
    db = tmp_path / "sweeps.db"
    code, out, err = cli(capsys, "sweep", "create", str(bomb), "--storage", f"sqlite:///{db}")
    expected = expanded_by_brute_force(yaml.safe_load(BOMB))
    assert expected > 100_000
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith(f"endebias: error: {bomb}: YAML aliases expand this file to "
                          f"{expected:,} values (at most 10,000)")
    assert not db.exists()


def test_size_count_is_exact_on_a_small_case_and_plain_aliases_still_work(tmp_path):
    text = "method: random\nparameters:\n  alpha: &unit {min: 0.0, max: 1.0}\n" \
           "  beta: *unit\n  preset: {value: quick}\n"
    path = tmp_path / "ok.yaml"
    path.write_text(text)
    spec = load_sweep_file(path)
    for name in ("alpha", "beta"):
        assert (spec.parameters[name].low, spec.parameters[name].high) == (0.0, 1.0)
    from endebias.sweeps.safe_yaml import _expanded_size

    # Hand count: the mapping 1, key p 1, list l 1 + 3 * (1 + 3) = 13, key q 1, the list
    # [*l, *l] 1 + 2 * 13.
    text = "p: &l [[1, 2, 3], [1, 2, 3], [1, 2, 3]]\nq: [*l, *l]"
    assert _expanded_size(yaml.compose(text), "x") == 1 + 1 + 13 + 1 + 1 + 26
    assert expanded_by_brute_force(yaml.safe_load(text)) == 43


def test_runaway_nesting_is_one_line(tmp_path, capsys):
    deep = tmp_path / "deep.yaml"
    deep.write_text("method: random\nparameters: " + "[" * 100_000 + "]" * 100_000 + "\n")
    code, _, err = cli(capsys, "sweep", "create", str(deep), "--storage",
                       f"sqlite:///{tmp_path}/s.db")
    assert code == 2 and err == f"endebias: error: {deep}: nested deeper than 50 levels\n"
    with pytest.raises(SweepFileError, match="nested deeper"):
        deep.write_text("method: random\nparameters: " + "[" * 60 + "]" * 60 + "\n")
        load_sweep_file(deep)


# -- empty, foreign and damaged study files (18.5, 18.6) ---------------------------------

def sweep_with_trials(db, n: int = 12) -> str:
    """A sweep whose n finished trials carry the attributes results read."""
    url = f"sqlite:///{db}"
    sweep_id = sweep_storage.create_sweep(parse_sweep(SPEC, source="t.yaml"), storage=url,
                                          sweep_id="s1")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name=sweep_id, storage=url)
    for i in range(n):
        trial = study.ask()
        trial.suggest_float("alpha", 0.0, 1.0)
        for key, value in {"valid_acc": 0.5 + i / 100, "biased_test_acc": 0.9,
                           "unbiased_test_acc": 0.4, "run_dir": f"/runs/s1/{i}"}.items():
            trial.set_user_attr(key, value)
        study.tell(trial, 0.5 + i / 100)
    return sweep_id


@pytest.mark.parametrize("command", [["results", "s1"], ["sweep", "agent", "s1", "--count", "1"]])
def test_an_empty_or_foreign_sqlite_file_stays_untouched(tmp_path, capsys, command):
    empty = tmp_path / "empty.db"
    empty.touch()
    code, out, err = cli(capsys, *command, "--storage", f"sqlite:///{empty}")
    assert (code, out) == (2, "")
    assert err.startswith(f"endebias: error: no sweep storage at {empty} (an empty file): ")
    assert err.count("\n") == 1 and empty.stat().st_size == 0  # no schema written into it
    foreign = tmp_path / "foreign.db"
    with sqlite3.connect(foreign) as db:
        db.execute("CREATE TABLE notes (text TEXT)")
        db.execute("INSERT INTO notes VALUES ('mine')")
    before = foreign.read_bytes()
    code, _, err = cli(capsys, *command, "--storage", f"sqlite:///{foreign}")
    assert code == 2 and f"no sweep storage at {foreign}: an SQLite file without sweeps" in err
    assert foreign.read_bytes() == before
    missing = tmp_path / "runs" / "sweeps.db"
    code, _, err = cli(capsys, *command, "--storage", f"sqlite:///{missing}")
    assert code == 2 and f"no sweep storage at {missing} (no such file)" in err
    assert not missing.parent.exists()


def flip(path, offset: int, count: int = 64) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        data = file.read(count)
        file.seek(offset)
        file.write(bytes(b ^ 0xFF for b in data))


@pytest.fixture(scope="module")
def good_study_file(tmp_path_factory):
    """Made once: SQLite commits are slow on a busy machine."""
    db = tmp_path_factory.mktemp("good") / "sweeps.db"
    sweep_with_trials(db)
    return db


@pytest.mark.parametrize("offset", [0, 4096, 8192, -4096])
def test_a_damaged_study_file_is_one_line_naming_it(tmp_path, capsys, good_study_file, offset):
    """The header (0), the first table's root page, an inner page and the last page."""
    db = tmp_path / "sweeps.db"
    shutil.copyfile(good_study_file, db)
    code, out, _ = cli(capsys, "results", "s1", "--storage", f"sqlite:///{db}", "--format", "json")
    assert code == 0 and len(json.loads(out)["rows"]) == 12
    flip(db, offset if offset >= 0 else db.stat().st_size + offset)
    damaged = db.read_bytes()
    for command in (["results", "s1"], ["sweep", "agent", "s1"], ["sweep", "create", "x.yaml"]):
        if command[-1] == "x.yaml":
            (tmp_path / "x.yaml").write_text(yaml.safe_dump(SPEC))
            command = ["sweep", "create", str(tmp_path / "x.yaml")]
        code, out, err = cli(capsys, *command, "--storage", f"sqlite:///{db}")
        assert (code, out) == (2, ""), err
        assert err.startswith(f"endebias: error: sweep storage {db} is damaged (")
        assert "restore it from a copy" in err and err.count("\n") == 1
        assert db.read_bytes() == damaged  # nothing written into it


# -- stale trials and storage retries, without training ------------------------------------

def heartbeat_study(tmp_path, *, grace: int = 2):
    url = f"sqlite:///{tmp_path}/s.db"
    sweep_storage.create_sweep(parse_sweep(SPEC, source="t.yaml"), storage=url, sweep_id="s1")
    rdb = sweep_storage.open_storage(url, heartbeat_interval=1, grace_period=grace, max_retry=3)
    return optuna.load_study(study_name="s1", storage=rdb)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_a_trial_that_never_beat_is_failed_and_requeued_once_old(tmp_path):
    from endebias.sweeps import stale

    study = heartbeat_study(tmp_path)
    silent = study.ask()  # as if its agent died before the first heartbeat
    silent.suggest_float("alpha", 0.0, 1.0)
    beating = study.ask()
    beating.suggest_float("alpha", 0.0, 1.0)
    study._storage.record_heartbeat(beating._trial_id)
    stale.fail_stale(study, 60)  # both are young: nothing happens
    assert [t.state for t in study.trials] == [TrialState.RUNNING] * 2
    stale.fail_stale(study, 0)  # the silent one is old enough; the beating one is fresh
    states = [t.state for t in study.get_trials()]
    assert states == [TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING]
    retry = study.get_trials()[2]
    assert retry.system_attrs["failed_trial"] == silent.number
    assert stale.work_left(study, cap=2)  # the re-queued trial is work even at the cap


def test_storage_calls_are_retried_with_backoff_then_given_up(monkeypatch, caplog):
    from sqlalchemy.exc import DatabaseError, OperationalError

    from endebias.sweeps import retry

    sleeps: list[float] = []
    monkeypatch.setattr(retry.time, "sleep", sleeps.append)
    clock = iter(range(0, 10_000, 3))  # every call to the clock: 3 s later
    monkeypatch.setattr(retry.time, "monotonic", lambda: next(clock))

    class Flaky:
        def __init__(self, failures: int, error: Exception) -> None:
            self.failures, self.error, self.calls = failures, error, 0

        def __call__(self, *args):
            self.calls += 1
            if self.calls <= self.failures:
                raise optuna.exceptions.StorageInternalError("commit failed") from self.error
            return args

    class DriverError(Exception):
        pass

    gone = OperationalError("SELECT 1", {}, DriverError("server closed the connection"))
    url = "postgresql://u:pa/ss@db:5432/sweeps"
    retrier = retry._Retrier(url, limit=20)
    flaky = Flaky(3, gone)
    assert retrier.call(flaky, 7) == (7,) and flaky.calls == 4
    assert sleeps == [0.5, 1.0, 2.0]  # doubling
    assert "reachable again" in caplog.text and "pa/ss" not in caplog.text
    # A damaged database is not waited for.
    damaged = Flaky(1, DatabaseError("SELECT 1", {}, Exception("database disk image is malformed")))
    with pytest.raises(optuna.exceptions.StorageInternalError):
        retrier.call(damaged)
    assert damaged.calls == 1
    # Gone for good: one line naming the storage without its password, then fail fast.
    with pytest.raises(retry.StorageUnavailable) as lost:
        retrier.call(Flaky(10**6, gone))
    assert str(lost.value) == ("sweep storage postgresql://u:***@db:5432/sweeps unreachable for "
                               "20 s (DriverError: server closed the connection)")
    never_called = Flaky(0, gone)
    with pytest.raises(retry.StorageUnavailable):
        retrier.call(never_called)
    assert never_called.calls == 0
    retrier.heartbeat(never_called)  # heartbeats never raise, and stop once it is lost
    assert never_called.calls == 0


def test_every_storage_call_optuna_makes_is_retried():
    """The names Optuna's storage cache calls on the storage, read from its source: a new
    Optuna version that calls something else fails here instead of in a lost storage."""
    import inspect
    import re

    from optuna.storages import _cached_storage

    from endebias.sweeps import retry

    called = set(re.findall(r"self\._backend\.(\w+)\(", inspect.getsource(_cached_storage)))
    not_storage = {"get_heartbeat_interval", "get_heartbeat_stale_trial_callback",
                   "record_heartbeat"}  # settings, and the heartbeat (never raises)
    assert called - not_storage <= set(retry.RETRIED), called - not_storage - set(retry.RETRIED)
