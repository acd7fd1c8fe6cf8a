"""optuna-dashboard, started on loopback against a finished SQLite sweep, serves our study
and its trials over its HTTP API: the searched parameters, the per-epoch valid accuracy
the agent reports, the objective and our trial attributes."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest

from tiny_sweep import run_tiny_sweep

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 (loopback only)
        return json.load(response)


def dashboard_command() -> list[str]:
    beside = Path(sys.executable).with_name("optuna-dashboard")
    found = str(beside) if beside.exists() else shutil.which("optuna-dashboard")
    if found is None:
        pytest.skip("optuna-dashboard is not installed (pip install optuna-dashboard)")
    return [found]


def test_dashboard_serves_the_sweep_and_our_trial_attributes(tmp_path):
    command = dashboard_command()
    storage = run_tiny_sweep(tmp_path)
    port = free_port()
    server = subprocess.Popen(
        [*command, storage, "--host", "127.0.0.1", "--port", str(port), "--server", "wsgiref",
         "--quiet"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # bounded wait for the server to answer
            try:
                get_json(f"{base}/api/meta")
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, server.stdout.read().decode()
                assert time.monotonic() < deadline, "optuna-dashboard did not answer in 60 s"
                time.sleep(0.3)
        (listed,) = get_json(f"{base}/api/studies")["study_summaries"]
        assert listed["study_name"] == "tiny"
        shown_attrs = {a["key"] for a in listed["user_attrs"]}
        detail = get_json(f"{base}/api/studies/{listed['study_id']}")
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()

    study = optuna.load_study(study_name="tiny", storage=storage)
    trials = {t.number: t for t in study.get_trials()}
    assert sorted(t["number"] for t in detail["trials"]) == sorted(trials)
    for shown in detail["trials"]:
        trial = trials[shown["number"]]
        assert shown["state"] == "Complete"
        assert shown["values"] == [pytest.approx(trial.value)]
        params = {p["name"]: float(p["param_external_value"]) for p in shown["params"]}
        assert params == pytest.approx(trial.params)
        assert {v["step"]: v["value"] for v in shown["intermediate_values"]} == pytest.approx(
            trial.intermediate_values)
        attributes = {a["key"]: a["value"] for a in shown["user_attrs"]}
        for key in ("valid_acc", "biased_test_acc", "unbiased_test_acc", "best_epoch",
                    "epochs_done", "run_dir", "config_hash"):
            assert attributes[key] == str(trial.user_attrs[key]), key
        assert json.loads(attributes["config"])["method"] == "end"
    union = {a["key"] for a in detail["union_user_attrs"]}
    assert {"valid_acc", "unbiased_test_acc", "unbiased_test_acc_conflicting"} <= union
    assert {"alpha", "beta"} <= {s["name"] for s in detail["union_search_space"]}
    assert set(study.user_attrs) == shown_attrs  # the sweep definition among them
