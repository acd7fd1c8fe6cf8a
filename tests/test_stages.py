"""Runs in stages (endebias.training.stages): a method that declares a first stage gets it
trained in its own run folder first, is handed its result, and resumes at the stage it
stopped in; runs with the same stage can share one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import endebias.methods as methods
from endebias.methods import FirstStage, Method
from endebias.training import records
from endebias.training.checkpoint import load_checkpoint
from endebias.training.config import TrainConfig, make_config
from endebias.training.fit import fit, load_benchmark, planned_stages
from endebias.training.prepared import build_run_method
from endebias.training.validation import check_config
from run_faults_helpers import Stop


class UpweightErrors(Method):
    """Cross-entropy with the samples a first ERM stage got wrong weighted ``up`` times
    (the shape of JTT), to exercise the stage mechanism."""

    defaults = {"up": 5.0, "erm_epochs": 1}

    @classmethod
    def first_stage(cls, options):
        return FirstStage("erm", method="vanilla", epochs=options["erm_epochs"])

    def __init__(self, model, *, up: float, erm_epochs: int, first_stage, train_targets,
                 **common) -> None:
        super().__init__(model, train_targets=train_targets, **common)
        if up < 1:
            raise ValueError(f"up must be >= 1, got {up!r}")
        wrong = first_stage.train_logits.argmax(dim=1) != train_targets.cpu()
        self.register_buffer("weights", 1 + (up - 1) * wrong.float())

    def training_step(self, inputs, targets, biases, indices):
        logits = self.model(inputs)
        ce = nn.functional.cross_entropy(logits, targets, reduction="none")
        loss = (self.weights[indices] * ce).mean()
        return loss, logits, {"ce": ce.mean().detach()}


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    monkeypatch.setitem(methods._METHODS._entries, "upweight-errors", UpweightErrors)


def config(**options):
    return make_config("quick", dataset="synthetic", method="upweight-errors",
                       dataset_options={"train_size": 128, "eval_size": 64, "rho": 0.9},
                       model_options={"channels": [4, 8]}, method_options=options,
                       epochs=3, batch_size=32, lr=1e-2, seed=2, amp="off")


def untimed(history):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in history]


def test_the_first_stage_trains_in_its_folder_and_hands_its_errors_on(tmp_path):
    run = tmp_path / "run"
    best = fit(config(), run, progress=False)
    stage = run / "erm"
    stage_config = records.read_json(stage / records.CONFIG)
    assert stage_config["method"] == "vanilla" and stage_config["epochs"] == 1
    assert stage_config["seed"] == 2 and stage_config["dataset_options"]["rho"] == 0.9
    assert (stage / records.DONE).exists() and (run / records.DONE).exists()
    assert records.read_json(run / records.CONFIG) == config().to_dict()
    assert best == records.read_json(run / records.BEST)
    # What the method got, recomputed by hand from the stage's checkpoint.
    erm = TrainConfig.from_dict(stage_config)
    benchmark = load_benchmark(erm, data_dir=None, device=torch.device("cpu"))
    model = build_run_method(erm, benchmark)
    model.load_state_dict(load_checkpoint(stage)["method"])
    with torch.no_grad():
        wrong = model.eval()(benchmark.prepare(benchmark.train.inputs)).argmax(1) != \
            benchmark.train.targets
    weights = load_checkpoint(run)["method"]["weights"]
    assert torch.equal(weights, 1 + 4.0 * wrong.float())
    assert 0 < int(wrong.sum()) < len(wrong)  # some errors, not all: the test has teeth


@pytest.mark.parametrize("stop_in", ["stage", "run"])
def test_a_stopped_run_resumes_at_its_stage_and_equals_an_uninterrupted_one(tmp_path, stop_in):
    whole = tmp_path / "whole"
    fit(config(erm_epochs=2), whole, progress=False)
    run = tmp_path / "run"

    def echo(line):  # after each epoch's records, of the stage or of the run
        if stop_in == "stage" and line.startswith("erm | epoch   1"):
            raise Stop

    def on_epoch(epoch, record):
        if stop_in == "run" and epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        fit(config(erm_epochs=2), run, progress=False, echo=echo, on_epoch=on_epoch)
    assert not (run / records.DONE).exists()
    stage_bytes = (run / "erm" / records.CHECKPOINT).read_bytes()
    fit(config(erm_epochs=2), run, resume=True, progress=False)
    if stop_in == "run":  # a finished stage is not trained again
        assert (run / "erm" / records.CHECKPOINT).read_bytes() == stage_bytes
    for folder in ("", "erm"):
        assert untimed(records.read_metrics(run / folder)) == untimed(
            records.read_metrics(whole / folder)), folder


def test_runs_with_the_same_first_stage_share_it(tmp_path):
    shared = tmp_path / "sweep"
    for up in (2.0, 8.0):
        fit(config(up=up), shared / f"up{up}", progress=False, shared_stages=shared)
    folders = list((shared / ".erm").iterdir())
    assert len(folders) == 1 and (folders[0] / records.DONE).exists()
    assert not (shared / "up2.0" / "erm").exists()
    # Another stage setting is another stage.
    fit(config(erm_epochs=2), shared / "longer", progress=False, shared_stages=shared)
    assert len(list((shared / ".erm").iterdir())) == 2


def test_stages_are_planned_and_checked_before_a_run(tmp_path):
    assert [s.title for s in planned_stages(config(), tmp_path)] == ["erm"]
    assert planned_stages(make_config("quick", dataset="synthetic"), tmp_path) == []
    with pytest.raises(ValueError, match="up must be >= 1"):
        check_config(config(up=0.5))
    with pytest.raises(ValueError, match="up must be >= 1"):
        fit(config(up=0.5), tmp_path / "bad", progress=False)
    assert not (tmp_path / "bad").exists()  # refused before any stage trained
