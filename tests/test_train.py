import json
import math

import pytest
import torch

from endebias.methods.vanilla import Vanilla
from endebias.training import records
from endebias.training.config import make_config
from endebias.training.fit import NonFiniteLossError, RunAlreadyExistsError, fit


def synthetic_config(**overrides):
    options = dict(
        dataset="synthetic",
        dataset_options={"rho": 0.95},
        method="end",
        method_options={"alpha": 1.0, "beta": 1.0},
        epochs=3,
        lr_step=2,
        batch_size=64,
        seed=3,
    )
    options.update(overrides)
    return make_config("quick", **options)


def without_timings(history):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in history]


def test_run_folder_records(tmp_path):
    best = fit(synthetic_config(), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in (records.CONFIG, records.METRICS, records.BEST, records.CHECKPOINT, records.DONE):
        assert (run / name).exists(), name
    history = records.read_metrics(run)
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert best == max(history, key=lambda r: (r["valid_acc"], -r["epoch"]))
    assert records.read_json(run / records.BEST) == best
    assert records.read_json(run / records.CONFIG) == synthetic_config().to_dict()
    # The learning rate steps down by lr_gamma after lr_step epochs.
    assert [r["lr"] for r in history] == pytest.approx([1e-3, 1e-3, 1e-4])
    record = history[-1]
    for key in (
        "train_ce",
        "train_r_perp",
        "train_r_par",
        "valid_acc",
        "biased_test_acc",
        "unbiased_test_acc_conflicting",
        "unbiased_test_acc_worst_group",
    ):
        assert math.isfinite(record[key]), key
    assert len(record["unbiased_test_group_acc"]) == 4
    # The loss parts add up to the total with the method's weights (alpha = beta = 1).
    parts = record["train_ce"] + record["train_r_perp"] + record["train_r_par"]
    assert record["train_loss"] == pytest.approx(parts, rel=1e-5)


def test_same_seed_same_run_and_other_seed_differs(tmp_path):
    fit(synthetic_config(), tmp_path / "a", progress=False)
    fit(synthetic_config(), tmp_path / "b", progress=False)
    fit(synthetic_config(seed=4), tmp_path / "c", progress=False)
    a, b, c = (without_timings(records.read_metrics(tmp_path / n)) for n in "abc")
    assert a == b
    assert a != c


def test_killed_run_resumes_to_the_same_result(tmp_path):
    config = synthetic_config(epochs=4)
    fit(config, tmp_path / "whole", progress=False)

    class Killed(Exception):
        pass

    def kill_after_two(epoch, record):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        fit(config, tmp_path / "killed", progress=False, on_epoch=kill_after_two)
    assert not (tmp_path / "killed" / records.DONE).exists()
    assert len(records.read_metrics(tmp_path / "killed")) == 2
    with pytest.raises(RunAlreadyExistsError, match="--resume"):
        fit(config, tmp_path / "killed", progress=False)
    best = fit(config, tmp_path / "killed", resume=True, progress=False)
    whole = without_timings(records.read_metrics(tmp_path / "whole"))
    resumed = without_timings(records.read_metrics(tmp_path / "killed"))
    assert resumed == whole
    assert best == records.read_json(tmp_path / "whole" / records.BEST) | {
        k: v for k, v in best.items() if "seconds" in k
    }
    # A finished run resumes to its recorded result without training again.
    assert fit(config, tmp_path / "killed", resume=True, progress=False) == best


def test_other_config_in_the_folder_is_refused(tmp_path):
    fit(synthetic_config(epochs=1), tmp_path / "run", progress=False)
    with pytest.raises(RunAlreadyExistsError, match="another config"):
        fit(synthetic_config(epochs=2), tmp_path / "run", resume=True, progress=False)


def test_non_finite_loss_stops_the_run_and_is_recorded(tmp_path, monkeypatch):
    original = Vanilla.training_step
    calls = []

    def poisoned(self, inputs, targets, biases, indices):
        # The start's check of one step (on a copy, before anything is written) passes;
        # the run's own steps give NaN.
        calls.append(len(inputs))
        loss, logits, parts = original(self, inputs, targets, biases, indices)
        return (loss if len(calls) == 1 else loss * float("nan")), logits, parts

    monkeypatch.setattr(Vanilla, "training_step", poisoned)
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 0"):
        fit(synthetic_config(method="vanilla", method_options={}), tmp_path / "run", progress=False)
    error = json.loads((tmp_path / "run" / records.ERROR).read_text())
    assert error["error"] == "NonFiniteLossError"
    assert not (tmp_path / "run" / records.DONE).exists()


def test_bad_options_leave_no_run_folder(tmp_path):
    with pytest.raises(ValueError, match="no option 'gamma'"):
        fit(synthetic_config(method_options={"gamma": 1.0}), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="unknown dataset"):
        fit(synthetic_config(dataset="nope"), tmp_path / "run2", progress=False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "run2").exists()


def test_end_beats_vanilla_on_the_bias_conflicting_samples(tmp_path):
    """The effect the library exists for, on data where the bias is a shortcut."""
    vanilla = fit(
        synthetic_config(method="vanilla", method_options={}, epochs=6, lr_step=5),
        tmp_path / "vanilla",
        progress=False,
    )
    end = fit(synthetic_config(epochs=6, lr_step=5), tmp_path / "end", progress=False)
    assert end["unbiased_test_acc_conflicting"] > vanilla["unbiased_test_acc_conflicting"] + 0.2


def test_subsets_and_saved_features(tmp_path):
    config = synthetic_config(epochs=2, train_subset=100, eval_subset=50, save_features=20)
    fit(config, tmp_path / "run", progress=False)
    history = records.read_metrics(tmp_path / "run")
    assert history[0]["valid_n"] == 50
    import numpy as np

    features = np.load(tmp_path / "run" / "features" / "epoch_002.npy")
    labels = np.load(tmp_path / "run" / "features" / "labels.npz")
    assert features.shape == (20, 128) and labels["targets"].shape == (20,)
    assert np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)


def test_checkpoint_loads_with_weights_only(tmp_path):
    fit(synthetic_config(epochs=1), tmp_path / "run", progress=False)
    state = torch.load(tmp_path / "run" / records.CHECKPOINT, weights_only=True)
    assert len(state["history"]) == 1 and "model.fc.weight" in state["method"]
