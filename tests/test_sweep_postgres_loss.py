"""The sweep storage goes away mid-trial, for real: a throwaway PostgreSQL server of this
test's own is stopped under a training agent. A short outage is ridden out; a long one ends
the agent with one line naming the storage (no password) and what was kept, and the next
agent finishes the sweep from the run folders."""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import pytest
from optuna.trial import TrialState

from endebias.sweeps import storage as sweep_storage
from endebias.training import records
from test_sweep_agents import create, endebias, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.postgres]
PASSWORD = "p@ss/w rd:1"  # every character a URL needs encoded


def server_binaries() -> Path | None:
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.access(f"{folder}/initdb", os.X_OK) and os.access(f"{folder}/pg_ctl", os.X_OK):
            return Path(folder)
    found = shutil.which("pg_ctl")
    return Path(found).parent if found and shutil.which("initdb") else None


def skip_reason() -> str | None:
    if server_binaries() is None:
        return "no PostgreSQL server binaries (apt-get install postgresql)"
    if os.geteuid() == 0 and subprocess.run(["id", "postgres"], capture_output=True).returncode:
        return "running as root without a postgres user to run the server"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "no PostgreSQL driver (pip install psycopg2-binary)"
    return None


class Server:
    """A PostgreSQL cluster in a temporary folder, on a free loopback port (as the
    postgres user when we are root: the server refuses to run as root)."""

    def __init__(self) -> None:
        self.bin = server_binaries()
        self.folder = Path(tempfile.mkdtemp(prefix="endebias-pg-test-"))
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        (self.folder / "pwfile").write_text(PASSWORD + "\n")
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres")
            shutil.chown(self.folder / "pwfile", "postgres")
        self._run("initdb", "-D", str(self.folder / "data"), "-U", "endebias",
                  f"--pwfile={self.folder / 'pwfile'}", "--auth=scram-sha-256", "-E", "UTF8")
        self.url = (f"postgresql://endebias:{quote(PASSWORD, safe='')}@127.0.0.1:{self.port}"
                    "/postgres")

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bin / tool), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-l", str(self.folder / "log"),
                  "-w", "-t", "60", "-o", options, "start")

    def stop(self) -> None:
        # immediate: the server goes away as in a crash, connections cut mid-session.
        self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):  # already stopped
            self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture
def server():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    pg = Server()
    pg.start()
    yield pg
    pg.remove()


def run_with_epochs(root: Path, done: bool | None = None) -> list[Path]:
    return [p.parent for p in root.glob("*/best.json")
            if done is None or (p.parent / records.DONE).exists() == done]


def test_a_lost_storage_is_ridden_out_or_named_and_nothing_is_lost(tmp_path, capsys, caplog,
                                                                   server):
    storage, epochs = server.url, 5
    caplog.set_level(logging.INFO)
    sweep_id = create(tmp_path, capsys, storage, run_cap=2, epochs=epochs)  # grace 3 s
    # sweep create's hint names the storage, never the password.
    shown = f"postgresql://endebias:***@127.0.0.1:{server.port}/postgres"
    assert f"endebias sweep agent {sweep_id} --storage '{shown}'" in caplog.text
    assert all(s not in caplog.text for s in (PASSWORD, quote(PASSWORD, safe=""), "w rd"))
    runs = tmp_path / "runs" / sweep_id
    # 20 s of retries: the short outage below (2 s, plus the server's restart, which takes
    # longer on a loaded machine) stays well inside it.
    agent = endebias("sweep", "agent", sweep_id, "--storage", storage, "--storage-retry", "20",
                     cwd=tmp_path)

    def wait_for_agent(condition, what: str):
        try:
            return wait_for(condition, timeout=120, what=what)
        except AssertionError:
            agent.kill()
            _, err = agent.communicate(timeout=30)
            raise AssertionError(f"timed out waiting for {what}; the agent said:\n"
                                 f"{err[-3000:]}") from None

    # A short outage in the first trial: the agent retries and carries on.
    wait_for_agent(lambda: run_with_epochs(runs), "the first epoch")
    server.stop()
    time.sleep(2)  # the agent blocks in its retries at the end of the epoch
    server.start()
    wait_for_agent(lambda: run_with_epochs(runs, done=True), "the first trial")
    # A long one in the second: the agent gives up after 20 s with one line.
    wait_for_agent(lambda: run_with_epochs(runs, done=False), "the second trial")
    server.stop()
    out, err = agent.communicate(timeout=180)
    assert agent.returncode == 2, err[-3000:]
    assert "Traceback" not in err and "UnboundLocalError" not in err
    for secret in (PASSWORD, quote(PASSWORD, safe=""), "w rd", "ss/w"):
        assert secret not in out + err
    assert "reachable again after" in err  # the short outage, ridden out
    last = err.strip().splitlines()[-1]
    (second,) = run_with_epochs(runs, done=False)
    kept = records.read_metrics(second)
    assert 0 < len(kept) < epochs
    assert last.startswith(f"endebias: error: sweep storage {shown} unreachable for 20 s (")
    assert last.endswith(
        f"; trial 1 stopped with {len(kept)} finished epochs kept in {second}; once the storage "
        "is back, an agent re-runs it from there after its heartbeat grace period")

    # Back up: nothing was lost, and the next agent finishes the sweep from the folders.
    server.start()
    study = sweep_storage.load_study(sweep_id, storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.RUNNING]
    (first,) = run_with_epochs(runs, done=True)
    assert len(records.read_metrics(first)) == epochs
    assert study.trials[0].intermediate_values == {
        r["epoch"]: r["valid_acc"] for r in records.read_metrics(first)}
    second_agent = endebias("sweep", "agent", sweep_id, "--storage", storage, cwd=tmp_path)
    out, err = second_agent.communicate(timeout=180)
    assert second_agent.returncode == 0, err[-3000:]
    study = sweep_storage.load_study(sweep_id, storage=storage)
    retry = next(t for t in study.trials if t.system_attrs.get("failed_trial") == 1)
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["run_dir"] == str(second)
    assert records.read_metrics(second)[: len(kept)] == kept  # resumed, not retrained
    assert len(records.read_metrics(second)) == epochs
