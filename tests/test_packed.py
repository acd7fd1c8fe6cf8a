"""Packed trials (endebias.training.packed*): a member of a pack trains exactly as its solo
run, leaves the pack alone when stopped or diverged, and writes the solo run's records."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from endebias.methods import build_method
from endebias.models import build_model
from endebias.training import records
from endebias.training.config import make_config
from endebias.training.fit import fit, fit_packed
from endebias.training.packed import (
    PackError,
    build_packed,
    check_packable,
    join_optimizer_states,
    join_states,
    member_optimizer_state,
    member_state,
    pack_key,
)
from run_faults_helpers import Stop, stop_after

SETTINGS = [(0.1, 0.2), (1.0, 0.0), (0.5, 3.0)]
# FairKL members: two whose classifier reads the features detached (ce_weight 0, the
# default) and one whose cross-entropy trains the encoder too.
FAIRKL = [{"fairkl_weight": 1.0, "epsilon": 0.1}, {"fairkl_weight": 10.0, "temperature": 0.5},
          {"fairkl_weight": 0.1, "ce_weight": 0.5}]
TINY = {"channels": [4, 8, 8], "kernel_size": 3, "pool_after": [0]}


def solo_methods(settings, *, method: str = "end", dtype=torch.float64):
    targets, biases = torch.arange(10).repeat(7)[:64], torch.arange(10).repeat(7)[3:67] % 10
    solos = []
    for setting in settings:
        torch.manual_seed(0)  # every member starts where its solo run starts
        model = build_model("simple-conv", num_classes=10, input_shape=(3, 16, 16), **TINY)
        if method == "end":
            options = dict(zip(("alpha", "beta"), setting, strict=True))
        else:
            options = setting if method == "fairkl" else {}
        solos.append(build_method(method, model=model, num_targets=10, num_biases=10,
                                  train_targets=targets, train_biases=biases, **options).to(dtype))
    return solos, targets, biases


@pytest.mark.parametrize("method", ["end", "vanilla", "fairkl"])
def test_packed_steps_equal_solo_steps_in_float64(method):
    """K = 3 members, several Adam steps with weight decay on changing batches: weights,
    BatchNorm statistics and Adam's moments equal the three solo runs' (float64)."""
    solos, targets, biases = solo_methods(FAIRKL if method == "fairkl" else SETTINGS,
                                          method=method)
    packed = build_packed(solos, [s.state_dict() for s in solos], model_options=TINY,
                          num_classes=10, in_channels=3).double()
    packed_optimizer = torch.optim.Adam(packed.parameters(), lr=1e-2, weight_decay=1e-4)
    optimizers = [torch.optim.Adam(s.parameters(), lr=1e-2, weight_decay=1e-4) for s in solos]
    generator = torch.Generator().manual_seed(1)
    for _ in range(6):
        inputs = torch.randn(64, 3, 16, 16, generator=generator, dtype=torch.float64)
        losses, logits, parts = packed.training_step(inputs, targets, biases)
        packed_optimizer.zero_grad()
        losses.sum().backward()
        packed_optimizer.step()
        for position, (solo, optimizer) in enumerate(zip(solos, optimizers, strict=True)):
            loss, solo_logits, solo_parts = solo.training_step(inputs, targets, biases, None)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            expected = float(loss.detach())
            assert float(losses[position].detach()) == pytest.approx(expected, rel=1e-10)
            torch.testing.assert_close(logits[:, position], solo_logits, rtol=1e-9, atol=1e-10)
            assert set(parts) == set(solo_parts)
    names = [name for name, _ in packed.named_parameters()]
    for position, (solo, optimizer) in enumerate(zip(solos, optimizers, strict=True)):
        mine = member_state(packed.state_dict(), position, 3)
        assert mine.keys() == solo.state_dict().keys()
        for key, value in solo.state_dict().items():
            torch.testing.assert_close(mine[key], value, rtol=1e-9, atol=1e-10, msg=key)
        ours = member_optimizer_state(packed_optimizer.state_dict(), names, position, 3)
        theirs = optimizer.state_dict()
        assert ours["param_groups"] == theirs["param_groups"]
        for index, entry in theirs["state"].items():
            for key, value in entry.items():
                torch.testing.assert_close(ours["state"][index][key], value, rtol=1e-9, atol=1e-12)
    # The members really differ (their options matter), so the comparison above has teeth.
    if method != "vanilla":
        first, second = (member_state(packed.state_dict(), p, 3) for p in (0, 1))
        assert not torch.allclose(first["model.fc.weight"], second["model.fc.weight"])


def test_state_mapping_round_trips_and_keeps_every_member_apart():
    solos, *_ = solo_methods(SETTINGS)
    states = []
    for number, solo in enumerate(solos):
        # Distinct values per member, so a slice taken from the wrong member shows.
        states.append({k: (v + number if v.is_floating_point() else v)
                       for k, v in solo.state_dict().items()})
    joined = join_states(states)
    assert joined["model.blocks.0.weight"].shape[0] == 3 * 4  # first conv: K x 4 channels
    assert joined["model.fc.weight"].shape == (3, 10, 8)  # per-member classifier, stacked
    for position, state in enumerate(states):
        again = member_state(joined, position, 3)
        assert all(torch.equal(again[k], state[k]) for k in state)
    names = [f"model.{n}" for n, _ in solos[0].model.named_parameters()]
    optimizer_states = [
        {"state": {i: {"step": torch.tensor(5.0), "exp_avg": torch.full(p.shape, float(m))}
                   for i, (_, p) in enumerate(solos[0].model.named_parameters())},
         "param_groups": [{"lr": 0.1, "params": list(range(len(names)))}]}
        for m in range(3)
    ]
    joined_optimizer = join_optimizer_states(optimizer_states, names)
    for position in range(3):
        again = member_optimizer_state(joined_optimizer, names, position, 3)
        assert all(torch.equal(again["state"][i]["exp_avg"], optimizer_states[position]["state"][i][
            "exp_avg"]) for i in again["state"])


def config(**changes):
    # float32 ("amp": "off"): packed and solo agree to float32 rounding there; under bf16
    # autocast (auto on a CPU with native bf16) grouped and separate convolutions round
    # differently, and the runs drift apart as mixed-precision runs do.
    values = {
        "method": "end", "dataset": "synthetic", "epochs": 2, "batch_size": 64, "lr": 1e-2,
        "dataset_options": {"train_size": 256, "eval_size": 128},
        "model_options": {"channels": [8, 16]}, "device": "cpu", "amp": "off",
    }
    return make_config("quick", **{**values, **changes})


def test_pack_key_separates_trials_that_cannot_share_batches():
    base = config(method_options={"alpha": 0.1, "beta": 0.2})
    assert pack_key(base) == pack_key(config(method_options={"alpha": 3.0, "beta": 0.0}))
    for change in ({"seed": 1}, {"batch_size": 32}, {"lr": 1e-3}, {"lr_step": 1},
                   {"epochs": 3}, {"dataset_options": {"rho": 0.5}},
                   {"model_options": {"channels": [8, 8]}}, {"method": "vanilla"}):
        assert pack_key(config(**change)) != pack_key(base), change
    assert pack_key(make_config("paper")) != pack_key(make_config("quick"))
    with pytest.raises(PackError, match="differ in more than method options"):
        fit_packed([base, config(seed=1)], ["a", "b"])


def test_models_and_methods_that_cannot_pack_are_refused_in_one_line():
    for bad, culprit in ((config(model="mlp"), "'mlp'"), (config(method="groupdro"), "'groupdro'"),
                         (config(method_options={"layer": "blocks.2"}), "blocks.2")):
        with pytest.raises(PackError, match=culprit) as error:
            check_packable(bad)
        assert "\n" not in str(error.value)
    with pytest.raises(PackError, match="trains methods end, fairkl, vanilla only"):
        check_packable(config(method="biascon"))
    check_packable(config(method="fairkl"))  # a packable method: no error


@pytest.mark.parametrize("method", ["end", "fairkl"])
def test_packed_runs_write_the_solo_runs_records(tmp_path: Path, method: str):
    """Three members, 2 epochs: every epoch's record equals the solo run's (accuracies
    exactly, losses to float32 rounding), and the folders hold the same files."""
    configs = ([config(method_options={"alpha": a, "beta": b}) for a, b in SETTINGS]
               if method == "end" else
               [config(method="fairkl", method_options=options) for options in FAIRKL])
    outcomes = fit_packed(configs, [tmp_path / f"packed{i}" for i in range(3)])
    for number, (cfg, outcome) in enumerate(zip(configs, outcomes, strict=True)):
        solo_dir = tmp_path / f"solo{number}"
        best = fit(cfg, solo_dir, progress=False)
        packed_dir = tmp_path / f"packed{number}"
        solo_files = {p.name for p in solo_dir.iterdir()}
        for name in (records.CONFIG, records.METRICS, records.BEST, records.CHECKPOINT,
                     records.DONE):
            assert (packed_dir / name).is_file() and name in solo_files, name
        assert records.read_json(packed_dir / records.CONFIG) == cfg.to_dict()
        assert_same_history(records.read_metrics(packed_dir), records.read_metrics(solo_dir))
        assert outcome["valid_acc"] == best["valid_acc"]
        assert outcome["unbiased_test_acc"] == best["unbiased_test_acc"]
        assert records.read_json(packed_dir / records.BEST)["epoch"] == best["epoch"]
    losses = [records.read_metrics(tmp_path / f"packed{i}")[-1]["train_loss"] for i in range(3)]
    assert len(set(losses)) == 3  # three different trainings, not one copied three times


def assert_same_history(packed: list[dict], solo: list[dict]) -> None:
    assert len(packed) == len(solo)
    for ours, theirs in zip(packed, solo, strict=True):
        assert set(ours) - {"pack_size"} == set(theirs) - {"pack_size"}
        for key, value in theirs.items():
            if key.endswith("seconds"):
                continue
            if isinstance(value, float) and key.startswith("train_") and key != "train_acc":
                assert ours[key] == pytest.approx(value, rel=1e-4, abs=1e-6), key
            else:
                assert ours[key] == value, key


def test_a_stopped_member_leaves_and_its_folder_resumes_solo(tmp_path: Path):
    """Member 1 is stopped after epoch 1 (as a pruner would): the others finish equal to
    their solo runs, and a solo fit resumes member 1's folder from its packed checkpoint to
    the solo run's result."""
    configs = [config(epochs=3, method_options={"alpha": a, "beta": b}) for a, b in SETTINGS]

    def on_epoch(index, epoch, record):
        if index == 1 and epoch == 1:
            raise Stop("pruned at epoch 1")

    dirs = [tmp_path / f"packed{i}" for i in range(3)]
    outcomes = fit_packed(configs, dirs, on_epoch=on_epoch)
    assert isinstance(outcomes[1], Stop)
    assert len(records.read_metrics(dirs[1])) == 1 and not (dirs[1] / records.DONE).exists()
    assert records.read_metrics(dirs[0])[-1]["pack_size"] == 2  # rebuilt without member 1
    for number in range(3):
        solo_dir = tmp_path / f"solo{number}"
        fit(configs[number], solo_dir, progress=False)
        if number == 1:
            fit(configs[1], dirs[1], resume=True, progress=False)  # the solo trainer resumes
        assert_same_history(records.read_metrics(dirs[number]), records.read_metrics(solo_dir))


def test_a_diverged_member_fails_alone(tmp_path: Path):
    """alpha = 1e300 makes one member's float32 loss infinite at its first step: it fails with the
    solo run's error record, and the other two train on as their solo runs."""
    settings = [(0.1, 0.2), (1e300, 0.0), (0.5, 3.0)]
    configs = [config(method_options={"alpha": a, "beta": b}) for a, b in settings]
    dirs = [tmp_path / f"packed{i}" for i in range(3)]
    outcomes = fit_packed(configs, dirs)
    assert type(outcomes[1]).__name__ == "NonFiniteLossError"
    assert "epoch 1, step 0" in str(outcomes[1])
    error = records.read_json(dirs[1] / records.ERROR)
    assert error["error"] == "NonFiniteLossError"
    assert not (dirs[1] / records.CHECKPOINT).exists()  # nothing good to keep
    for number in (0, 2):
        best = fit(configs[number], tmp_path / f"solo{number}", progress=False)
        assert outcomes[number]["valid_acc"] == best["valid_acc"]
        assert_same_history(records.read_metrics(dirs[number]),
                            records.read_metrics(tmp_path / f"solo{number}"))


def test_members_resumed_at_different_epochs_finish_equal_to_solo(tmp_path: Path):
    """A kill between two members' checkpoints leaves them an epoch apart: each resumes
    from its own checkpoint and ends as its solo run."""
    configs = [config(epochs=3, method_options={"alpha": a, "beta": b}) for a, b in SETTINGS[:2]]
    dirs = [tmp_path / "packed0", tmp_path / "packed1"]
    for run_dir, cfg, epochs in ((dirs[0], configs[0], 1), (dirs[1], configs[1], 2)):
        with pytest.raises(_Killed):
            fit(cfg, run_dir, progress=False, on_epoch=_stop_after(epochs))
    outcomes = fit_packed(configs, dirs, resume=True)
    for number in range(2):
        best = fit(configs[number], tmp_path / f"solo{number}", progress=False)
        assert outcomes[number]["valid_acc"] == best["valid_acc"]
        assert_same_history(records.read_metrics(dirs[number]),
                            records.read_metrics(tmp_path / f"solo{number}"))
    # Already finished: a second call trains nothing and returns the recorded best.
    assert fit_packed(configs, dirs, resume=True) == outcomes


class _Killed(Exception):
    """Stands for a kill -9 right after an epoch's records were written."""


def _stop_after(epochs: int):
    def on_epoch(epoch, record):
        if epoch == epochs:
            raise _Killed

    return on_epoch


def test_the_rebias_variant_packs_with_its_raw_feature_classifier():
    """normalize_features=False (ReBias's SimpleConvNet): packed logits equal the solo
    models', whose classifier reads the raw pooled features."""
    options = {**TINY, "normalize_features": False}
    labels = torch.arange(10).repeat(7)[:64]
    solos = []
    for _ in range(2):
        model = build_model("simple-conv", num_classes=10, input_shape=(3, 16, 16), **options)
        solos.append(build_method("vanilla", model=model, num_targets=10, num_biases=10,
                                  train_targets=labels, train_biases=labels).double().eval())
    packed = build_packed(solos, [s.state_dict() for s in solos], model_options=options,
                          num_classes=10, in_channels=3).double().eval()
    inputs = torch.randn(8, 3, 16, 16, dtype=torch.float64)
    logits, _ = packed.model(inputs)
    for position, solo in enumerate(solos):
        torch.testing.assert_close(logits[:, position], solo(inputs), rtol=1e-9, atol=1e-10)


def test_a_member_whose_folder_another_process_holds_is_left_out(tmp_path: Path):
    """A second process holds member 1's run folder: member 1 is refused with fit's
    message, nothing is written there, and the others train."""
    import subprocess
    import sys

    configs = [config(epochs=1, method_options={"alpha": a, "beta": b}) for a, b in SETTINGS]
    dirs = [tmp_path / f"packed{i}" for i in range(3)]
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom endebias.training.run_lock import RunLock\n"
         "RunLock.acquire(sys.argv[1]); print('locked', flush=True); time.sleep(120)",
         str(dirs[1])], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        outcomes = fit_packed(configs, dirs)
    finally:
        holder.kill()
        holder.wait()
    assert type(outcomes[1]).__name__ == "RunInUseError"
    assert f"in use by process {holder.pid}" in str(outcomes[1])
    assert not (dirs[1] / records.CONFIG).exists()
    assert all((dirs[n] / records.DONE).exists() for n in (0, 2))
    assert records.read_metrics(dirs[0])[0]["pack_size"] == 2


def test_a_damaged_member_checkpoint_falls_back_to_the_previous_one(tmp_path: Path):
    """Both members stop after epoch 2; a flipped byte in member 0's checkpoint makes its
    resume start from the previous checkpoint (epoch 1), member 1's from epoch 2: they
    train as two packs and both end as their solo runs."""
    configs = [config(epochs=3, method_options={"alpha": a, "beta": b}) for a, b in SETTINGS[:2]]
    dirs = [tmp_path / "packed0", tmp_path / "packed1"]

    def stop_at_two(index, epoch, record):
        if epoch == 2:
            raise _Killed

    assert all(isinstance(o, _Killed) for o in fit_packed(configs, dirs, on_epoch=stop_at_two))
    checkpoint = dirs[0] / records.CHECKPOINT
    data = bytearray(checkpoint.read_bytes())
    data[len(data) // 2] ^= 0xFF
    checkpoint.write_bytes(bytes(data))
    outcomes = fit_packed(configs, dirs, resume=True)
    history = records.read_metrics(dirs[0])
    assert [r["pack_size"] for r in history] == [2, 1, 1]  # epoch 2 trained again, alone
    for number in range(2):
        best = fit(configs[number], tmp_path / f"solo{number}", progress=False)
        assert outcomes[number]["valid_acc"] == best["valid_acc"]
        assert_same_history(records.read_metrics(dirs[number]),
                            records.read_metrics(tmp_path / f"solo{number}"))


def test_pseudo_bias_labels_and_saved_features_cannot_pack():
    with pytest.raises(PackError, match="pseudo labels"):
        check_packable(config(bias_labels="pseudo"))
    with pytest.raises(PackError, match="save_features"):
        check_packable(config(save_features=8))


def test_a_member_folder_holding_another_run_fails_that_member_only(tmp_path: Path):
    configs = [config(epochs=1, method_options={"alpha": a, "beta": b}) for a, b in SETTINGS]
    dirs = [tmp_path / f"packed{i}" for i in range(3)]
    dirs[2].mkdir()
    records.atomic_write_json(dirs[2] / records.CONFIG, config(seed=9).to_dict())
    outcomes = fit_packed(configs, dirs, resume=True)
    assert type(outcomes[2]).__name__ == "RunAlreadyExistsError"
    assert "holds a run with another config" in str(outcomes[2])
    assert records.read_json(dirs[2] / records.CONFIG)["seed"] == 9  # left as it was
    assert all((dirs[n] / records.DONE).exists() for n in (0, 1))


def test_a_member_folder_trained_on_other_data_fails_that_member_only(tmp_path: Path):
    """A member resumed from a folder whose run recorded another data checksum is refused
    (its epochs were trained on other images); its folder is left as it was."""
    configs = [config(epochs=2, method_options={"alpha": a, "beta": b}) for a, b in SETTINGS[:2]]
    dirs = [tmp_path / f"packed{i}" for i in range(2)]
    stop_after_one = stop_after(1)
    outcomes = fit_packed(configs, dirs, on_epoch=lambda _, epoch, record: stop_after_one(
        epoch, record))
    assert all(isinstance(o, Stop) for o in outcomes)
    records.atomic_write_json(dirs[1] / records.DATA, {"checksum": "sha256:other"})
    before = (dirs[1] / records.METRICS).read_bytes()
    outcomes = fit_packed(configs, dirs, resume=True)
    assert type(outcomes[1]).__name__ == "DataChangedError"
    assert "trained on other data" in str(outcomes[1]) and "\n" not in str(outcomes[1])
    assert (dirs[1] / records.METRICS).read_bytes() == before  # nothing trained into it
    assert records.read_json(dirs[1] / records.DATA) == {"checksum": "sha256:other"}
    assert len(records.read_metrics(dirs[0])) == 2 and (dirs[0] / records.DONE).exists()


def test_a_failed_start_leaves_no_run_folders(tmp_path: Path):
    """A start that fails while loading the data (here an option the dataset lacks) raises
    one error naming it and leaves none of the members' folders behind, as fit does."""
    configs = [config(dataset_options={"bogus": 1}, method_options={"alpha": a, "beta": b})
               for a, b in SETTINGS[:2]]
    dirs = [tmp_path / "runs" / "a", tmp_path / "runs" / "b"]
    with pytest.raises(ValueError, match="bogus"):
        fit_packed(configs, dirs)
    assert not any(d.exists() for d in dirs)
