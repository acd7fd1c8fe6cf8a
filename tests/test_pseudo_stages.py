"""``--bias-labels pseudo``: the three stages in a run folder, resuming after a real kill,
corrupt label files, and the options' validation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from endebias.agreement import label_agreement
from endebias.cli.main import main
from endebias.data import build_dataset
from endebias.report import comparison
from endebias.training import records
from endebias.training.bias_labels import PSEUDO_DEFAULTS, check_bias_labels
from endebias.training.config import TrainConfig, make_config
from endebias.training.fit import fit
from endebias.training.pseudo_label_stages import (
    AGREEMENT,
    LABELS,
    STAGE1,
    read_labels,
    stage1_config,
    write_labels,
)
from endebias.training.run_lock import RunInUseError
from endebias.training.validation import check_config

DATA = {"rho": 0.9, "train_size": 256, "eval_size": 64}
MODEL = {"channels": [4, 8], "kernel_size": 3}


def pseudo_config(**options) -> TrainConfig:
    # lr 1e-2 and batch 32: enough steps for stage 1 to learn the colour shortcut.
    return make_config("quick", dataset="synthetic", dataset_options=DATA, model_options=MODEL,
                       method="end", epochs=2, batch_size=32, lr=1e-2, device="cpu", seed=5,
                       bias_labels="pseudo", pseudo_options={"stage1_epochs": 2, **options})


def test_three_stages_write_their_records(tmp_path):
    config = pseudo_config()
    seen = []  # on_epoch belongs to the run itself: stage 3's epochs, not stage 1's
    best = fit(config, tmp_path, progress=False,
                                on_epoch=lambda epoch, record: seen.append(epoch))
    assert seen == [1, 2]
    recorded = records.read_json(tmp_path / records.CONFIG)
    assert recorded["bias_labels"] == "pseudo"
    # every option but stage1_model_options, left out at its default (null)
    expected = {**PSEUDO_DEFAULTS, "stage1_epochs": 2}
    del expected["stage1_model_options"]
    assert recorded["pseudo_options"] == expected
    stage1 = records.read_json(tmp_path / STAGE1 / records.CONFIG)
    assert stage1["method"] == "vanilla" and stage1["epochs"] == 2
    assert (tmp_path / STAGE1 / records.DONE).exists() and (tmp_path / records.DONE).exists()
    labels = read_labels(tmp_path / LABELS)
    assert labels is not None and len(labels) == DATA["train_size"]
    agreement = records.read_json(tmp_path / AGREEMENT)
    assert agreement["num_pseudo_labels"] == len(np.unique(labels))
    # Evaluation keeps the true groups: 4 bias values, the extra pseudo-label columns empty.
    test_groups = np.array(best["unbiased_test_group_acc"], dtype=float)
    assert test_groups.shape == (4, max(4, int(labels.max()) + 1))
    assert np.isnan(test_groups[:, 4:]).all() and not np.isnan(test_groups[:, :4]).any()
    # A second launch returns the finished run, with or without --resume.
    assert fit(config, tmp_path, resume=True, progress=False) == best
    assert fit(config, tmp_path, progress=False) == best
    with pytest.raises(RuntimeError, match="another config"):
        fit(pseudo_config(k=3), tmp_path, resume=True, progress=False)


@pytest.mark.parametrize("method", ["groupdro", "biasbal"])
def test_other_methods_that_read_bias_labels_train_on_pseudo_labels(tmp_path, method):
    config = make_config("quick", dataset="synthetic", dataset_options=DATA, model_options=MODEL,
                         method=method, epochs=1, batch_size=64, device="cpu", seed=5,
                         bias_labels="pseudo", pseudo_options={"stage1_epochs": 1})
    best = fit(config, tmp_path, progress=False)
    assert 0 <= best["unbiased_test_acc"] <= 1 and (tmp_path / records.DONE).exists()


def test_stage1_config_keeps_data_and_seed():
    config = pseudo_config(stage1="gce", q=0.5, stage1_model="mlp")
    first = stage1_config(config)
    assert (first.method, first.method_options) == ("gce", {"gce_q": 0.5})
    assert (first.model, first.model_options) == ("mlp", {})
    assert first.dataset_options == config.dataset_options and first.seed == config.seed
    assert first.bias_labels == "given"


def test_stage1_model_options_are_laid_over_the_stage1_models():
    same_model = stage1_config(pseudo_config(stage1_model_options={"kernel_size": 1}))
    assert (same_model.model, same_model.model_options) == (
        "simple-conv", {**pseudo_config().model_options, "kernel_size": 1})
    other_model = stage1_config(pseudo_config(stage1_model="mlp",
                                              stage1_model_options={"hidden": [8]}))
    assert (other_model.model, other_model.model_options) == ("mlp", {"hidden": [8]})
    # a sweep refuses a stage-1 option the stage-1 model lacks, before any trial runs
    with pytest.raises(ValueError, match="model 'simple-conv' has no option 'width'"):
        check_config(pseudo_config(stage1_model_options={"width": 3}))


@pytest.mark.parametrize("labelling", ["predictions", "cluster"])
def test_pseudo_labels_recover_the_synthetic_bias(tmp_path, labelling):
    """The synthetic colour is the shortcut a short stage 1 learns first."""
    fit(pseudo_config(labelling=labelling, stage1_epochs=3), tmp_path,
                         progress=False)
    labels = read_labels(tmp_path / LABELS)
    train = build_dataset("synthetic", seed=5, **DATA).train
    targets, biases = train.targets.numpy(), train.biases.numpy()
    agreement = records.read_json(tmp_path / AGREEMENT)
    assert agreement == {**label_agreement(labels, biases), "labelling": labelling}
    if labelling == "predictions":  # the predicted class is the colour's (chance: 0.25, 0)
        assert agreement["matched_acc"] > 0.95 and agreement["nmi"] > 0.9
    else:  # per target, the largest cluster is the aligned colour, the other the rest
        split = label_agreement(labels, 2 * targets + (biases != targets))
        assert split["matched_acc"] > 0.9


KILLER = """
import os, signal, sys
from endebias.training.fit import fit
from endebias.training.config import TrainConfig
config = TrainConfig.from_dict({config})
lines = []
def echo(line):  # an epoch line comes once per epoch of either stage, after its records
    if "train acc" not in line:  # a run's start line
        return
    lines.append(line)
    if len(lines) == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
fit(config, sys.argv[1], resume=True, progress=False, echo=echo)
"""


def untimed(record: dict) -> dict:
    return {k: v for k, v in record.items() if "seconds" not in k}


def run_killed(config: TrainConfig, run_dir: Path, kill_at: int) -> None:
    code = KILLER.format(config=repr(config.to_dict()), kill_at=kill_at)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code, str(run_dir)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == -signal.SIGKILL, done.stderr


@pytest.mark.slow
@pytest.mark.parametrize("kill_at", [1, 3], ids=["in-stage-1", "in-stage-3"])
def test_resumes_at_the_stage_it_was_killed_in(tmp_path, kill_at):
    config = pseudo_config()
    reference = fit(config, tmp_path / "reference", progress=False)
    run_dir = tmp_path / "killed"
    run_killed(config, run_dir, kill_at)  # after epoch 1 of stage 1, or of stage 3
    assert not (run_dir / records.DONE).exists()
    assert (run_dir / LABELS).exists() == (kill_at == 3)
    if kill_at == 3:
        stage1_before = (run_dir / STAGE1 / records.CHECKPOINT).read_bytes()
        labels_before = (run_dir / LABELS).read_bytes()
    best = fit(config, run_dir, resume=True, progress=False)
    assert untimed(best) == untimed(reference)  # the resumed run is the uninterrupted one
    if kill_at == 3:  # stages 1 and 2 were not redone
        assert (run_dir / STAGE1 / records.CHECKPOINT).read_bytes() == stage1_before
        assert (run_dir / LABELS).read_bytes() == labels_before
    for folder in (run_dir, run_dir / STAGE1):
        reference_folder = tmp_path / "reference" / folder.relative_to(run_dir)
        assert list(map(untimed, records.read_metrics(folder))) == list(
            map(untimed, records.read_metrics(reference_folder)))


def test_a_folder_held_by_another_process_is_refused_before_any_write(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys; from endebias.training.run_lock import RunLock; "
         f"lock = RunLock.acquire({str(tmp_path)!r}); print('held', flush=True); "
         "sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunInUseError, match=f"in use by process {holder.pid}"):
            fit(pseudo_config(), tmp_path, progress=False)
        assert sorted(path.name for path in tmp_path.iterdir()) == [records.LOCK]
    finally:
        holder.communicate("")
    # Once the holder has gone, the same call trains all three stages.
    fit(pseudo_config(stage1_epochs=1), tmp_path, progress=False)
    assert (tmp_path / records.DONE).exists() and not (tmp_path / records.LOCK).exists()


@pytest.mark.parametrize("damage", ["truncate", "flip", "wrong-labels"])
def test_a_damaged_labels_file_is_derived_again(tmp_path, damage, caplog):
    config = pseudo_config(stage1_epochs=1)
    fit(config, tmp_path, progress=False)
    path = tmp_path / LABELS
    good = read_labels(path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        at = data.index(good.tobytes()) + 8  # a byte of the stored labels themselves
        path.write_bytes(data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :])
    else:  # a well-formed file whose checksum does not match its labels
        np.savez(path, labels=good + 1, sha256=np.array("0" * 64))
    (tmp_path / records.DONE).unlink()  # as if killed before the end of stage 3
    assert read_labels(path) is None and "deriving the labels again" in caplog.text
    fit(config, tmp_path, resume=True, progress=False)
    assert np.array_equal(read_labels(path), good)


def test_labels_file_round_trip(tmp_path):
    labels = np.array([3, 0, 2, 2], dtype=np.int64)
    write_labels(tmp_path / LABELS, labels)
    assert np.array_equal(read_labels(tmp_path / LABELS), labels)
    assert read_labels(tmp_path / "missing.npz") is None
    assert [p.name for p in tmp_path.iterdir()] == [LABELS]  # no temporary file left


@pytest.mark.parametrize(
    ("bias_labels", "options", "message"),
    [
        ("guessed", {}, "bias_labels must be one of given, pseudo"),
        ("given", {"k": 2}, "'k' needs --bias-labels pseudo"),
        ("pseudo", {"clusters": 2}, "unknown pseudo option 'clusters'"),
        ("pseudo", {"stage1": "lff"}, "stage1 must be one of vanilla, gce"),
        ("pseudo", {"labelling": "votes"}, "labelling must be one of cluster, predictions"),
        ("pseudo", {"k": 0}, "k must be a positive integer"),
        ("pseudo", {"k": "many"}, "k must be a positive integer"),
        ("pseudo", {"stage1_epochs": 1.5}, "stage1_epochs must be a positive integer"),
        ("pseudo", {"q": 0}, r"q must be in \(0, 1\]"),
        ("pseudo", {"q": True}, r"q must be in \(0, 1\]"),
        ("pseudo", {"layer": ""}, "layer must be a name or null"),
        ("pseudo", {"stage1_model_options": 1}, "stage1_model_options must be a mapping"),
    ],
)
def test_option_validation(bias_labels, options, message):
    with pytest.raises(ValueError, match=message):
        check_bias_labels(bias_labels, options)
    with pytest.raises(ValueError, match=message):
        TrainConfig(bias_labels=bias_labels, pseudo_options=options)


def test_valid_options_are_completed_and_given_configs_are_unchanged():
    assert check_bias_labels("pseudo", {"k": "auto"}) == {**PSEUDO_DEFAULTS, "k": "auto"}
    assert check_bias_labels("given", {}) == {}
    # Runs made before these fields existed keep their config.json and hash.
    given = TrainConfig().to_dict()
    assert "bias_labels" not in given and "pseudo_options" not in given
    pseudo = TrainConfig(bias_labels="pseudo")
    assert TrainConfig.from_dict(pseudo.to_dict()) == pseudo
    # ... and so do pseudo-label runs made before stage1_model_options existed.
    assert "stage1_model_options" not in pseudo.to_dict()["pseudo_options"]
    laid_over = TrainConfig(bias_labels="pseudo",
                            pseudo_options={"stage1_model_options": {"kernel_size": 1}})
    assert laid_over.to_dict()["pseudo_options"]["stage1_model_options"] == {"kernel_size": 1}
    assert TrainConfig.from_dict(laid_over.to_dict()) == laid_over


def test_cli_trains_with_pseudo_labels(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--dataset", "synthetic", "--method", "end", "--device", "cpu",
            "--epochs", "1", "--batch-size", "64", "--no-progress", "--out", str(out),
            "--dataset-option", "train_size=128", "--dataset-option", "eval_size=32",
            "--model-option", "channels=[4,8]", "--bias-labels", "pseudo",
            "--pseudo-option", "stage1_epochs=1", "--pseudo-option", "labelling=predictions"]
    assert main(argv) == 0
    recorded = json.loads((out / records.CONFIG).read_text())
    assert recorded["pseudo_options"]["labelling"] == "predictions"
    printed = capsys.readouterr().out
    assert "stage 1 | epoch   1" in printed and "best epoch 1" in printed


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--method", "vanilla", "--bias-labels", "pseudo"], "method 'vanilla' does not use bias"),
        (["--method", "end", "--bias-labels", "pseudo", "--pseudo-option", "k=0"],
         "k must be a positive integer"),
        (["--method", "end", "--pseudo-option", "k=2"], "needs --bias-labels pseudo"),
    ],
)
def test_cli_rejects_bad_options_in_one_line(tmp_path, capsys, extra, message):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "synthetic", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("endebias: error:") and message in err and err.count("\n") == 0
    assert not out.exists()  # nothing written for a run that never started


def test_results_by_method_shows_pseudo_label_runs_and_their_agreement(tmp_path):
    """Records written here with known agreement values; the table is JSON-only code."""

    folder = tmp_path / "runs"
    agreements = {("cluster", 1): (0.5, 0.9), ("cluster", 2): (0.7, 0.95),
                  ("predictions", 1): (0.8, 0.99)}
    for name, labelling, seed in [("true-1", None, 1), ("cl-1", "cluster", 1),
                                  ("cl-2", "cluster", 2), ("pr-1", "predictions", 1)]:
        run_dir = folder / name
        config = {"dataset": "biased-mnist", "dataset_options": {"rho": 0.997},
                  "method": "end", "method_options": {"alpha": 1.0}, "seed": seed}
        if labelling:
            config["bias_labels"] = "pseudo"
            config["pseudo_options"] = {**PSEUDO_DEFAULTS, "labelling": labelling}
            nmi, matched = agreements[labelling, seed]
            records.atomic_write_json(run_dir / AGREEMENT, {"nmi": nmi, "matched_acc": matched})
        records.atomic_write_json(run_dir / records.CONFIG, config)
        records.atomic_write_json(run_dir / records.BEST, {
            "epoch": 1, "valid_acc": 0.5, "biased_test_acc": 0.9, "unbiased_test_acc": 0.6,
            "unbiased_test_acc_conflicting": 0.55})
        (run_dir / records.DONE).write_text("")
    cells, _ = comparison.group_runs(comparison.find_runs([folder]))
    assert [(c.label, c.column, c.seeds) for c in cells] == [
        ("end alpha=1", "biased-mnist", [1]),
        ("end alpha=1 [pseudo: cluster k=2]", "biased-mnist", [1, 2]),
        ("end alpha=1 [pseudo: predictions]", "biased-mnist", [1]),
    ]
    assert cells[0].agreement("nmi") is None
    assert cells[1].agreement("nmi") == pytest.approx((60.0, 10.0))  # population std
    assert cells[1].agreement("matched_acc") == pytest.approx((92.5, 2.5))
    table = comparison.method_table(comparison.find_runs([folder]))
    assert "| biased-mnist | end alpha=1 [pseudo: cluster k=2] | 1 2 |" in table
    assert table.splitlines()[-1].startswith("Pseudo labels: agreement")
    assert "60.00 ± 10.00 | 92.50 ± 2.50 |" in table
    flat = json.loads(comparison.method_table(comparison.find_runs([folder]), fmt="json"))
    assert [row["pseudo_nmi"] for row in flat] == [None, pytest.approx(60.0),
                                                   pytest.approx(80.0)]


def test_pseudo_label_kind_names_every_non_default_option():
    def kind(**options):
        return comparison.pseudo_label_kind(
            {"bias_labels": "pseudo", "pseudo_options": {**PSEUDO_DEFAULTS, **options}})

    assert comparison.pseudo_label_kind({"method": "end"}) == ""
    assert kind() == "pseudo: predictions"
    assert kind(labelling="cluster") == "pseudo: cluster k=2"
    assert kind(labelling="cluster", k=3) == "pseudo: cluster k=3"
    assert kind(k=3) == "pseudo: predictions"  # k counts for clusters only
    assert kind(labelling="cluster", stage1="gce") == "pseudo: cluster k=2, stage1=gce"
    # q counts only for a GCE stage 1
    assert kind(q=0.5) == "pseudo: predictions"
    assert kind(stage1="gce", q=0.5, stage1_epochs=4) == (
        "pseudo: predictions, stage1=gce, stage1_epochs=4, q=0.5")
    assert kind(stage1_model_options={"kernel_size": 1, "channels": [8]}) == (
        "pseudo: predictions, stage1_model_options={kernel_size: 1, channels: [8]}")


def test_sweep_trials_on_pseudo_labels_make_them_from_one_shared_stage1(tmp_path):
    """A sweep file may set bias_labels: pseudo; its trials run the three stages instead of
    training on the given labels, and trials that differ only in EnD's weights share one
    stage 1 (a hidden folder beside them, which results do not list as a trial)."""
    from endebias.report.results import rows_from_runs
    from tiny_sweep import tiny_sweep_spec, write_sweep_file

    spec = tiny_sweep_spec(run_cap=2, epochs=1, method="random", train_size=128,
                           eval_size=64, bias_labels={"value": "pseudo"},
                           pseudo_options={"value": {"stage1_epochs": 1}})
    sweep_file = write_sweep_file(tmp_path / "pseudo.yaml", spec)
    storage, runs = f"sqlite:///{tmp_path}/sweeps.db", tmp_path / "runs"
    assert main(["sweep", "create", str(sweep_file), "--storage", storage, "--id", "ps"]) == 0
    assert main(["sweep", "agent", "ps", "--storage", storage, "--runs", str(runs)]) == 0
    trials = sorted(p for p in (runs / "ps").iterdir() if not p.name.startswith("."))
    assert len(trials) == 2
    [shared] = list((runs / "ps" / ".stage1").iterdir())
    assert (shared / records.DONE).exists()
    assert records.read_json(shared / records.CONFIG)["method"] == "vanilla"
    labels = []
    for run_dir in trials:
        recorded = records.read_json(run_dir / records.CONFIG)
        assert recorded["bias_labels"] == "pseudo"
        assert recorded["pseudo_options"]["stage1_epochs"] == 1
        assert (run_dir / records.DONE).exists() and not (run_dir / STAGE1).exists()
        assert "nmi" in records.read_json(run_dir / AGREEMENT)
        labels.append(read_labels(run_dir / LABELS))
    assert labels[0] is not None and np.array_equal(labels[0], labels[1])
    assert sorted(row.id for row in rows_from_runs(runs / "ps")) == [p.name for p in trials]


def test_a_run_waits_for_a_shared_stage1_that_another_process_holds(tmp_path, monkeypatch):
    import threading

    from endebias.training import pseudo_label_stages, stages
    from endebias.training.run_lock import RunLock

    monkeypatch.setattr(stages, "WAIT_SECONDS", 0.2)
    config = pseudo_config()
    shared = pseudo_label_stages.shared_stage1_dir(config, tmp_path)
    held = RunLock.acquire(shared)  # as another agent training that stage 1 would
    done = threading.Event()
    result = {}

    def run() -> None:
        result["best"] = fit(config, tmp_path / "run", progress=False, shared_stages=tmp_path)
        done.set()

    worker = threading.Thread(target=run)
    worker.start()
    assert not done.wait(1.0)  # waiting, not failing
    held.release()
    worker.join(timeout=120)
    assert done.is_set() and (shared / records.DONE).exists()
    assert (tmp_path / "run" / records.DONE).exists()
