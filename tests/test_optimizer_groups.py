"""The method contract's optimizer groups: one Adam + StepLR per group, each group's own
settings, every parameter in exactly one group, and checkpoints keyed by group (older
one-optimiser checkpoints still resume)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import endebias.methods as methods
from endebias.methods import Method, OptimizerGroup
from endebias.methods.lff import LearningFromFailure
from endebias.models import build_model
from endebias.training import records
from endebias.training.checkpoint import load_checkpoint, save_checkpoint
from endebias.training.config import make_config
from endebias.training.fit import fit, load_benchmark
from endebias.training.optimizers import check_groups
from run_faults_helpers import Stop, stop_after

HEAD_LR = 1e-2


class FastHead(Method):
    """Cross-entropy, with the classifier in a group of its own at another learning rate
    and schedule."""

    def optimizer_groups(self) -> dict[str, OptimizerGroup]:
        head = list(self.model.fc.parameters())
        body = [p for p in self.model.parameters() if all(p is not h for h in head)]
        return {"model": OptimizerGroup(body),
                "head": OptimizerGroup(head, lr=HEAD_LR, lr_step=2)}

    def training_step(self, inputs, targets, biases, indices):
        logits = self.model(inputs)
        ce = nn.functional.cross_entropy(logits, targets)
        return ce, logits, {"ce": ce.detach()}


class Overlapping(FastHead):
    def optimizer_groups(self):
        return {"model": OptimizerGroup(list(self.model.parameters())),
                "head": OptimizerGroup(list(self.model.fc.parameters()))}


class Forgetful(FastHead):
    def optimizer_groups(self):
        return {"head": OptimizerGroup(list(self.model.fc.parameters()))}


@pytest.fixture
def registered(monkeypatch):
    for name, cls in (("fast-head", FastHead), ("overlapping", Overlapping),
                      ("forgetful", Forgetful)):
        monkeypatch.setitem(methods._METHODS._entries, name, cls)


def tiny(method: str = "fast-head", **overrides):
    options = dict(dataset="synthetic", dataset_options={"train_size": 96, "eval_size": 32},
                   method=method, epochs=3, lr_step=1, batch_size=32, seed=7,
                   amp="off")  # float32: the hand-run below computes in float32
    options.update(overrides)
    return make_config("quick", **options)


def without_timings(history):
    return [{k: v for k, v in r.items() if "seconds" not in k} for r in history]


def hand_run(config, *, head_lr: float, head_step: int) -> nn.Module:
    """The same run with two hand-made Adams (body at config.lr, head at ``head_lr``) and
    the trainer's batches: what the groups must reproduce."""
    torch.manual_seed(config.seed)  # as the trainer, before the data
    benchmark = load_benchmark(config, data_dir=None, device=torch.device("cpu"))
    torch.manual_seed(config.seed)
    model = build_model(config.model, num_classes=benchmark.num_targets,
                        input_shape=benchmark.input_shape, **config.model_options)
    head = list(model.fc.parameters())
    body = [p for p in model.parameters() if all(p is not h for h in head)]
    adams = [torch.optim.Adam(body, lr=config.lr, weight_decay=config.weight_decay),
             torch.optim.Adam(head, lr=head_lr, weight_decay=config.weight_decay)]
    schedules = [torch.optim.lr_scheduler.StepLR(adams[0], config.lr_step, config.lr_gamma),
                 torch.optim.lr_scheduler.StepLR(adams[1], head_step, config.lr_gamma)]
    train = benchmark.train
    for epoch in range(1, config.epochs + 1):
        model.train()
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        for indices in torch.randperm(len(train), generator=generator).split(config.batch_size):
            logits = model(benchmark.prepare(train.inputs[indices]))
            loss = nn.functional.cross_entropy(logits, train.targets[indices])
            for adam in adams:
                adam.zero_grad()
            loss.backward()
            for adam in adams:
                adam.step()
        for schedule in schedules:
            schedule.step()
    return model


def test_each_group_steps_with_its_own_learning_rate_and_schedule(tmp_path, registered):
    config = tiny()
    fit(config, tmp_path / "run", progress=False)
    trained = load_checkpoint(tmp_path / "run")
    weights = {k[len("model."):]: v for k, v in trained["method"].items()}
    expected = hand_run(config, head_lr=HEAD_LR, head_step=2).state_dict()
    assert weights.keys() == expected.keys()
    for name, value in expected.items():
        torch.testing.assert_close(weights[name], value, rtol=1e-6, atol=1e-7, msg=name)
    # One learning rate for both would have trained other weights.
    same_lr = hand_run(config, head_lr=config.lr, head_step=config.lr_step).state_dict()
    assert not torch.allclose(weights["fc.weight"], same_lr["fc.weight"])
    history = records.read_metrics(tmp_path / "run")
    assert [r["lr"] for r in history] == pytest.approx([1e-3, 1e-4, 1e-5])
    assert [r["lr_head"] for r in history] == pytest.approx([1e-2, 1e-2, 1e-3])
    assert set(trained["optimizers"]) == set(trained["schedulers"]) == {"model", "head"}


@pytest.mark.parametrize(("method", "message"), [
    ("overlapping", "method 'overlapping': parameter 'model.fc.weight' is in two optimizer "
                    "groups, 'model' and 'head'"),
    ("forgetful", "method 'forgetful': parameter 'model.blocks.0.weight' is in no optimizer "
                  "group"),
])
def test_a_parameter_in_two_groups_or_none_is_one_line_and_leaves_no_run(
    tmp_path, registered, method, message
):
    with pytest.raises(ValueError) as raised:
        fit(tiny(method), tmp_path / "run", progress=False)
    assert str(raised.value) == message
    assert not (tmp_path / "run" / records.CONFIG).exists()


def test_group_checks_name_the_group_and_the_option():
    model = nn.Linear(2, 2)
    method = FastHead(model, num_targets=2, num_biases=2, train_targets=torch.zeros(1),
                      train_biases=torch.zeros(1))
    everything = list(method.parameters())
    check_groups(method, {"model": OptimizerGroup(everything)}, name="x")
    cases = [
        ({}, "method 'x' declares no optimizer group"),
        ({"model": OptimizerGroup(everything), "empty": OptimizerGroup([])},
         "method 'x': optimizer group 'empty' has no parameters"),
        ({"model": OptimizerGroup([*everything, nn.Parameter(torch.zeros(1))])},
         "method 'x': optimizer group 'model' holds a parameter that is not the method's"),
        ({"model": OptimizerGroup(everything, lr=0.0)},
         "method 'x', optimizer group 'model': lr must be > 0, got 0.0"),
        ({"model": OptimizerGroup(everything, weight_decay=-1.0)},
         "method 'x', optimizer group 'model': weight_decay must be >= 0, got -1.0"),
        ({"model": OptimizerGroup(everything, lr=float("nan"))},
         "method 'x', optimizer group 'model': lr must be a finite number, got nan"),
        ({"model": OptimizerGroup(everything, lr_step=0)},
         "method 'x', optimizer group 'model': lr_step must be a positive integer, got 0"),
    ]
    for groups, message in cases:
        with pytest.raises(ValueError) as raised:
            check_groups(method, groups, name="x")
        assert str(raised.value) == message


def lff(**overrides):
    return tiny("lff", epochs=4, lr_step=2, method_options={}, **overrides)


def test_lff_twin_has_its_own_optimizer_and_changes_no_number(tmp_path, monkeypatch):
    fit(lff(), tmp_path / "groups", progress=False)
    state = load_checkpoint(tmp_path / "groups")
    assert set(state["optimizers"]) == {"model", "biased_model"}
    twin = [k for k in state["method"] if k.startswith("biased_model.") and "running" not in k
            and "num_batches" not in k]
    assert len(state["optimizers"]["biased_model"]["state"]) == len(twin)
    # The same run with one Adam over both networks (the contract's default) records the
    # same numbers: Adam is per parameter, and the twin keeps the run's settings.
    monkeypatch.setattr(LearningFromFailure, "optimizer_groups", Method.optimizer_groups)
    fit(lff(), tmp_path / "one", progress=False)
    assert without_timings(records.read_metrics(tmp_path / "groups")) == without_timings(
        records.read_metrics(tmp_path / "one"))
    assert "lr_biased_model" not in records.read_metrics(tmp_path / "groups")[0]


def as_one_optimizer(state: dict) -> dict:
    """A grouped LfF checkpoint as an endebias before groups wrote it: one Adam over
    ``method.parameters()`` (the model's, then the twin's) and one StepLR."""
    model, twin = state["optimizers"]["model"], state["optimizers"]["biased_model"]
    offset = len(model["param_groups"][0]["params"])
    single = {
        "state": {**model["state"], **{i + offset: v for i, v in twin["state"].items()}},
        "param_groups": [{**model["param_groups"][0],
                          "params": list(range(offset + len(twin["param_groups"][0]["params"])))}],
    }
    old = {k: v for k, v in state.items() if k not in ("optimizers", "schedulers")}
    return {**old, "optimizer": single, "scheduler": state["schedulers"]["model"]}


def test_a_one_optimizer_checkpoint_resumes_into_groups_exactly(tmp_path):
    fit(lff(), tmp_path / "whole", progress=False)
    with pytest.raises(Stop):
        fit(lff(), tmp_path / "old", progress=False, on_epoch=stop_after(2))
    run = tmp_path / "old"
    old = as_one_optimizer(load_checkpoint(run))
    save_checkpoint(run / records.CHECKPOINT, old)
    assert "optimizers" not in load_checkpoint(run)
    fit(lff(), run, resume=True, progress=False)
    assert without_timings(records.read_metrics(run)) == without_timings(
        records.read_metrics(tmp_path / "whole"))
    assert set(load_checkpoint(run)["optimizers"]) == {"model", "biased_model"}
