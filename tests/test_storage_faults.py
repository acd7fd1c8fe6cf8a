"""SQLite study files that are locked by another process, busy, a folder, not a database,
or left half made by a killed `sweep create`: each is told apart, in one line naming the
file, with advice that fits; nothing in the file is changed."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import optuna
import pytest
import yaml

from endebias.cli.main import main
from endebias.sweeps import storage as sweep_storage
from endebias.sweeps.sweep_file import parse_sweep

SPEC = {"method": "random", "parameters": {
    "alpha": {"distribution": "uniform", "min": 0.0, "max": 1.0}, "preset": {"value": "quick"}}}
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


def cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def study_file(tmp_path_factory):
    db = tmp_path_factory.mktemp("good") / "sweeps.db"
    url = f"sqlite:///{db}"
    sweep_storage.create_sweep(parse_sweep(SPEC, source="t.yaml"), storage=url, sweep_id="s1")
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study = optuna.load_study(study_name="s1", storage=url)
    trial = study.ask()
    trial.suggest_float("alpha", 0.0, 1.0)
    for key, value in {"valid_acc": 0.5, "biased_test_acc": 0.9, "unbiased_test_acc": 0.4,
                       "run_dir": "/runs/s1/0"}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, 0.5)
    return db


def hold_lock(db, mode: str, seconds: float) -> subprocess.Popen:
    """A second process that takes SQLite's lock on ``db`` (EXCLUSIVE: nobody may read;
    IMMEDIATE plus a write: readers may, writers wait) and keeps it ``seconds``."""
    code = textwrap.dedent(f"""
        import sqlite3, time
        db = sqlite3.connect({str(db)!r}, isolation_level=None)
        db.execute("BEGIN {mode}")
        db.execute("CREATE TABLE IF NOT EXISTS scratch (a)")
        print("held", flush=True)
        time.sleep({seconds})
    """)
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    return holder


def commands(tmp_path) -> list[list[str]]:
    (tmp_path / "x.yaml").write_text(yaml.safe_dump(SPEC))
    return [["results", "s1"], ["sweep", "agent", "s1", "--runs", str(tmp_path / "runs")],
            ["sweep", "create", str(tmp_path / "x.yaml")]]


def test_a_locked_study_file_is_called_locked_with_its_holder_not_damaged(
        tmp_path, capsys, study_file):
    db = tmp_path / "sweeps.db"
    shutil.copyfile(study_file, db)
    holder = hold_lock(db, "EXCLUSIVE", 60)
    try:
        before = db.read_bytes()
        for command in commands(tmp_path):
            code, out, err = cli(capsys, *command, "--storage", f"sqlite:///{db}",
                                 "--storage-retry", "1")
            assert (code, out) == (2, ""), err
            assert err.startswith(f"endebias: error: sweep storage {db} is locked by process "
                                  f"{holder.pid}, which holds it exclusively"), err
            assert "restore" not in err and "--storage-retry" in err and err.count("\n") == 1
        assert db.read_bytes() == before
    finally:
        holder.kill()
        holder.wait()


def test_a_busy_writer_is_named_and_the_wait_at_start_up_rides_it_out(
        tmp_path, capsys, study_file):
    db = tmp_path / "sweeps.db"
    shutil.copyfile(study_file, db)
    holder = hold_lock(db, "IMMEDIATE", 60)
    try:
        create = commands(tmp_path)[2]
        code, _, err = cli(capsys, *create, "--storage", f"sqlite:///{db}", "--storage-retry",
                           "1", "--id", "s2")
        assert code == 2 and f"{db} is busy: process {holder.pid} is writing to it" in err
    finally:
        holder.kill()
        holder.wait()
    # A lock released within --storage-retry is waited out at start-up.
    holder = hold_lock(db, "EXCLUSIVE", 3)
    started = time.monotonic()
    code, out, err = cli(capsys, "results", "s1", "--storage", f"sqlite:///{db}",
                         "--storage-retry", "60", "--format", "json")
    holder.wait()
    assert code == 0 and '"rows"' in out, err
    assert time.monotonic() - started >= 2


def test_a_folder_a_text_file_and_a_binary_sweep_file_are_named(tmp_path, capsys):
    folder = tmp_path / "sweeps.db"
    folder.mkdir()
    text = tmp_path / "notes.db"
    text.write_text("these are my notes, not a database\n" * 100)
    before = text.read_bytes()
    for command in commands(tmp_path):
        code, _, err = cli(capsys, *command, "--storage", f"sqlite:///{folder}")
        assert code == 2 and err == (
            f"endebias: error: sweep storage {folder} is a folder, not an SQLite file: give "
            f"the file in it (sqlite:///{folder / 'sweeps.db'})\n")
        code, _, err = cli(capsys, *command, "--storage", f"sqlite:///{text}")
        assert code == 2 and err.startswith(
            f"endebias: error: sweep storage {text} is not an SQLite database (it starts "
            "with b'these are my not'")
        assert "restore" not in err and text.read_bytes() == before
    binary = tmp_path / "sweep.yaml"
    binary.write_bytes(b"method: random\n\xff\xfe\x00binary")
    code, _, err = cli(capsys, "sweep", "create", str(binary),
                       "--storage", f"sqlite:///{tmp_path / 'new.db'}")
    assert code == 2 and err.startswith(f"endebias: error: {binary}: ") and "UTF-8" in err
    assert err.count("\n") == 1


KILLED_CREATE = """
import os, signal, sys
import sqlalchemy
from sqlalchemy import event
from endebias.cli.main import main
commits = 0
@event.listens_for(sqlalchemy.engine.Engine, "commit")
def after(conn):
    global commits
    commits += 1
    if commits == int(sys.argv[1]):
        # The commit is under way; die before it returns, as a kill -9 would.
        conn.connection.dbapi_connection.commit()
        os.kill(os.getpid(), signal.SIGKILL)
sys.exit(main(sys.argv[2:]))
"""


def test_a_create_killed_at_any_commit_leaves_no_sweep_or_a_whole_one(tmp_path, capsys):
    sweep_file = tmp_path / "x.yaml"
    sweep_file.write_text(yaml.safe_dump(SPEC))
    for kill_at in range(1, 12):
        db = tmp_path / f"sweeps{kill_at}.db"
        url = f"sqlite:///{db}"
        done = subprocess.run(
            [sys.executable, "-c", KILLED_CREATE, str(kill_at), "sweep", "create",
             str(sweep_file), "--storage", url, "--id", "s1"], env=ENV, capture_output=True)
        if done.returncode == 0:
            break  # this create needed fewer commits than kill_at: all were tried
        assert done.returncode == -signal.SIGKILL, done.stderr
        names = [s.study_name for s in optuna.get_all_study_summaries(url)] if (
            db.exists() and db.stat().st_size) else []
        if names:  # a whole sweep, usable at once
            study = optuna.load_study(study_name="s1", storage=url)
            assert sweep_storage.sweep_spec(study).definition == SPEC
        # The same create again succeeds, or says the (whole) sweep exists.
        code, out, err = cli(capsys, "sweep", "create", str(sweep_file), "--storage", url,
                             "--id", "s1")
        assert (code, out) == ((2, "") if names else (0, "s1\n")), err
    else:
        pytest.fail("create never finished")


def test_a_half_made_sweep_of_an_older_create_is_named_and_completed(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'sweeps.db'}"
    optuna.create_study(study_name="s1", storage=url, direction="maximize")  # no definition
    code, _, err = cli(capsys, "sweep", "agent", "s1", "--storage", url)
    assert code == 2 and "sweep 's1' is half made" in err and "--id s1" in err
    sweep_file = tmp_path / "x.yaml"
    sweep_file.write_text(yaml.safe_dump(SPEC))
    code, out, _ = cli(capsys, "sweep", "create", str(sweep_file), "--storage", url, "--id", "s1")
    assert (code, out) == (0, "s1\n")
    study = optuna.load_study(study_name="s1", storage=url)
    assert sweep_storage.sweep_spec(study).definition == SPEC


def test_an_unreachable_server_at_start_up_is_retried_for_storage_retry(capsys, caplog):
    """PostgreSQL still starting when an agent starts: waited for, as mid-trial."""
    url = "postgresql://endebias:pw@127.0.0.1:1/nowhere"  # nothing listens on port 1
    started = time.monotonic()
    code, out, err = cli(capsys, "sweep", "agent", "s1", "--storage", url,
                         "--storage-retry", "2")
    assert time.monotonic() - started >= 1.5
    assert (code, out) == (2, "") and err.count("\n") == 1
    assert "cannot open sweep storage postgresql://endebias:***@127.0.0.1:1/nowhere" in err
    assert "still after 2 s of retries" in err and "pw" not in err.split("@", 1)[0]
    assert "unreachable" in caplog.text and "retrying for up to 2 s" in caplog.text


def test_a_study_file_damaged_under_a_running_agent_is_one_line(tmp_path):
    """Bytes of the study file flipped while the agent trains its first trial: Optuna
    then fails with "record does not exist" and its own UnboundLocalError; the agent
    names the file and the trial's kept epochs instead, without a traceback."""
    from tiny_sweep import tiny_sweep_spec

    sweep_file = tmp_path / "s.yaml"
    # Enough epochs that the trial is still training when the bytes flip, however fast
    # the machine: the damage is seen at the next epoch's report.
    sweep_file.write_text(yaml.safe_dump(tiny_sweep_spec(run_cap=1, epochs=500)))
    db = tmp_path / "s.db"
    url = f"sqlite:///{db}"
    assert main(["sweep", "create", str(sweep_file), "--storage", url, "--id", "s1"]) == 0
    agent = subprocess.Popen(
        [sys.executable, "-m", "endebias", "sweep", "agent", "s1", "--storage", url, "--runs",
         str(tmp_path / "runs"), "--storage-retry", "1"],
        env=ENV, stderr=subprocess.PIPE, text=True)
    try:
        for line in agent.stderr:  # an epoch is on record: the trial is RUNNING
            if "trial 0: epoch" in line:
                break
        size = db.stat().st_size
        with open(db, "r+b") as handle:  # every page past the first, its cell area
            for offset in range(4096, size, 4096):
                handle.seek(offset + 8)
                handle.write(b"\xff" * 200)
        err = agent.stderr.read()
        agent.wait(timeout=120)
    finally:
        agent.kill()
    assert agent.returncode == 2, err[-2000:]
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("endebias: error:")]
    assert len(lines) == 1 and lines[0].startswith(
        f"endebias: error: sweep storage {db} is damaged (")
    assert "trial 0 stopped with" in lines[0] and "finished epochs kept in" in lines[0]
