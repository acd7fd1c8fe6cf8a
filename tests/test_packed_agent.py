"""`endebias sweep agent --pack K` for real: a packed sweep equals solo trainings of its
trials, incompatible trials never share a pack, a pruned trial leaves its pack, a killed
packed agent's trials are re-queued and resumed, and sweeps that cannot pack are refused."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from endebias.cli.main import main
from endebias.sweeps import storage as sweep_storage
from endebias.training import records
from endebias.training.config import TrainConfig
from endebias.training.fit import fit
from tiny_sweep import FAST_HEARTBEATS, tiny_sweep_spec, write_sweep_file

pytestmark = pytest.mark.slow


def sweep_file(tmp_path: Path, *, run_cap: int, epochs: int, method: str = "bayes",
               **parameters) -> Path:
    """The tiny EnD sweep with the batch and learning rate that packing requires alike,
    in float32 (packed and solo runs agree to float32 rounding; under bf16 autocast, which
    "auto" picks on a CPU with native bf16, they drift apart)."""
    spec = tiny_sweep_spec(run_cap=run_cap, epochs=epochs, method=method,
                           optuna=FAST_HEARTBEATS, batch_size={"value": 64},
                           lr={"value": 0.01}, amp={"value": "off"}, **parameters)
    return write_sweep_file(tmp_path / f"sweep-{uuid.uuid4().hex[:6]}.yaml",
                            {"name": "tiny packed sweep", **spec})


def create(tmp_path: Path, capsys, file: Path) -> tuple[str, str]:
    storage = f"sqlite:///{tmp_path}/runs/sweeps.db"
    sweep_id = f"packed-{uuid.uuid4().hex[:8]}"
    capsys.readouterr()
    assert main(["sweep", "create", str(file), "--storage", storage, "--id", sweep_id]) == 0
    return sweep_id, storage


def agent(sweep_id: str, storage: str, tmp_path: Path, *options: str) -> int:
    return main(["sweep", "agent", sweep_id, "--storage", storage,
                 "--runs", str(tmp_path / "runs"), *options])


def test_a_packed_sweep_equals_solo_trainings_of_its_trials(tmp_path, capsys):
    sweep_id, storage = create(tmp_path, capsys, sweep_file(tmp_path, run_cap=3, epochs=2))
    assert agent(sweep_id, storage, tmp_path, "--pack", "3") == 0
    study = sweep_storage.load_study(sweep_id, storage=storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
    for trial in study.trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        history = records.read_metrics(run_dir)
        assert [r["pack_size"] for r in history] == [3, 3]  # trained as one pack of three
        assert trial.intermediate_values == {r["epoch"]: r["valid_acc"] for r in history}
        config = TrainConfig.from_dict(records.read_json(run_dir / records.CONFIG))
        assert config.method_options == trial.params
        solo = fit(config, tmp_path / "solo" / run_dir.name, progress=False)
        assert trial.value == solo["valid_acc"]
        for key in ("valid_acc", "biased_test_acc", "unbiased_test_acc", "epoch"):
            assert records.read_json(run_dir / records.BEST)[key] == solo[key], key
            if key != "epoch":
                assert trial.user_attrs[key] == solo[key]


def test_trials_that_cannot_share_batches_are_never_packed_together(tmp_path, capsys):
    """A grid over two seeds and two alphas, four trials asked at once: two packs of two,
    each of one seed."""
    file = sweep_file(tmp_path, run_cap=4, epochs=1, method="grid",
                      alpha={"values": [0.1, 0.5]}, beta={"value": 0.2},
                      seed={"values": [1, 2]})
    sweep_id, storage = create(tmp_path, capsys, file)
    assert agent(sweep_id, storage, tmp_path, "--pack", "4") == 0
    study = sweep_storage.load_study(sweep_id, storage=storage)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 4
    assert {(t.params["seed"], t.params["alpha"]) for t in complete} == {
        (1, 0.1), (1, 0.5), (2, 0.1), (2, 0.5)}
    for trial in complete:
        history = records.read_metrics(Path(trial.user_attrs["run_dir"]))
        assert history[0]["pack_size"] == 2


def test_a_pruned_trial_leaves_its_pack_and_the_others_finish(tmp_path, capsys, monkeypatch):
    sweep_id, storage = create(tmp_path, capsys, sweep_file(tmp_path, run_cap=3, epochs=3))
    # The pruner's verdict is Optuna's business; here trial 1 is told to stop after epoch 1.
    monkeypatch.setattr(optuna.Trial, "should_prune", lambda trial: trial.number == 1)
    assert agent(sweep_id, storage, tmp_path, "--pack", "3") == 0
    study = sweep_storage.load_study(sweep_id, storage=storage)
    states = [t.state for t in study.trials]
    assert states == [TrialState.COMPLETE, TrialState.PRUNED, TrialState.COMPLETE]
    pruned = study.trials[1]
    assert len(records.read_metrics(Path(pruned.user_attrs["run_dir"]))) == 1
    assert pruned.user_attrs["epochs_done"] == 1
    finished = records.read_metrics(Path(study.trials[0].user_attrs["run_dir"]))
    assert [r["pack_size"] for r in finished] == [3, 2, 2]


def test_sweeps_that_cannot_pack_are_refused_in_one_line(tmp_path, capsys):
    file = sweep_file(tmp_path, run_cap=2, epochs=1, model={"value": "mlp"},
                      **{"model_options.channels": {"value": None}})
    file_mapping = yaml.safe_load(file.read_text())
    del file_mapping["parameters"]["model_options.channels"]
    file.write_text(yaml.safe_dump(file_mapping))
    sweep_id, storage = create(tmp_path, capsys, file)
    capsys.readouterr()
    assert agent(sweep_id, storage, tmp_path, "--pack", "2") == 2
    err = capsys.readouterr().err
    assert err.startswith("endebias: error: --pack trains model simple-conv only, not 'mlp'")
    assert err.count("\n") == 1
    assert agent(sweep_id, storage, tmp_path, "--pack", "0") == 2
    assert "--pack must be >= 1, got 0" in capsys.readouterr().err
    assert sweep_storage.load_study(sweep_id, storage=storage).trials == []  # nothing asked


def test_a_killed_packed_agent_is_requeued_and_resumed(tmp_path, capsys):
    epochs = 4
    sweep_id, storage = create(tmp_path, capsys, sweep_file(tmp_path, run_cap=2, epochs=epochs))
    command = [sys.executable, "-m", "endebias", "sweep", "agent", sweep_id, "--storage", storage,
               "--pack", "2"]
    victim = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    folder = tmp_path / "runs" / sweep_id
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        started = [p for p in folder.glob("*/metrics.jsonl") if p.stat().st_size > 0]
        if len(started) == 2:
            break
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.communicate(timeout=30)
    before = {p.parent: records.read_metrics(p.parent) for p in folder.glob("*/metrics.jsonl")}
    assert len(before) == 2 and all(1 <= len(h) < epochs for h in before.values()), before
    time.sleep(3.5)  # the grace period: the two trials' heartbeats are now stale
    resumed = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    study = sweep_storage.load_study(sweep_id, storage=storage)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 2 and len(study.get_trials(states=(TrialState.FAIL,))) == 2
    assert all(t.system_attrs.get("failed_trial") in (0, 1) for t in complete)
    for run_dir, earlier in before.items():
        after = records.read_metrics(run_dir)
        # Resumed from each member's own checkpoint: the epochs before the kill stay as they were.
        assert len(after) == epochs and after[: len(earlier)] == earlier
        assert (run_dir / records.DONE).exists()


def test_ctrl_c_puts_the_packed_trials_back_in_the_queue(tmp_path, capsys):
    # Many epochs: a tiny epoch takes milliseconds, and the trials must still be running
    # when the signal comes (Ctrl-C ends them at the next batch).
    sweep_id, storage = create(tmp_path, capsys, sweep_file(tmp_path, run_cap=2, epochs=500))
    command = [sys.executable, "-m", "endebias", "sweep", "agent", sweep_id, "--storage", storage,
               "--pack", "2"]
    # SIGINT at its default in the agent, as in a terminal: a shell starts background jobs
    # with SIGINT ignored, and a test run from one would pass that on.
    agent_process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                      signal.SIG_DFL))
    folder = tmp_path / "runs" / sweep_id
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not any(
            p.stat().st_size > 0 for p in folder.glob("*/metrics.jsonl")):
        time.sleep(0.05)
    agent_process.send_signal(signal.SIGINT)
    try:
        _, err = agent_process.communicate(timeout=60)
    finally:
        agent_process.kill()  # a failed test must not leave an agent training for ever
    assert agent_process.returncode == 130, err[-2000:]
    assert "the packed trials are back in the queue" in err
    study = sweep_storage.load_study(sweep_id, storage=storage)
    failed = study.get_trials(states=(TrialState.FAIL,))
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert len(failed) == 2 and len(waiting) == 2
    assert sorted(t.user_attrs["requeued_from"] for t in waiting) == sorted(
        t.number for t in failed)
    # A waiting trial holds its parameters as fixed ones until an agent asks for it.
    assert {tuple(sorted(t.system_attrs["fixed_params"].items())) for t in waiting} == {
        tuple(sorted(t.params.items())) for t in failed}
