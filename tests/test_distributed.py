"""One run over two processes (gloo, CPU) equals one process on the global batch.

The equivalence checks run the library's own pieces in two spawned processes: the
DDP-wrapped EnD step with the all-reduced group sums (loss terms and gradients), and a
whole trainer epoch with an uneven last batch (parameters and metrics after it). The
model has no BatchNorm: on CPU, BN statistics stay per process (SyncBatchNorm is
GPU-only in torch), so only a BN-free model can match one process exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from endebias import end_terms
from endebias.data import Benchmark, Split
from endebias.hooks import L2Normalize
from endebias.methods import build_method
from endebias.training import distributed
from endebias.training.config import TrainConfig
from endebias.training.distributed import DistContext
from endebias.training.epoch import train_epoch
from endebias.training.fastpath import FastPath
from endebias.training.steppers import SoloStepper

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch built without distributed")

WORLD = 2
NUM_TARGETS, NUM_BIASES, WIDTH = 3, 4, 12


class TinyNet(nn.Module):
    """Linear -> Tanh -> L2 norm (EnD's layer) -> Linear; float64 for tight tolerances."""

    feature_layer = "pattern_norm"

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(WIDTH, 8), nn.Tanh())
        self.pattern_norm = L2Normalize()
        self.fc = nn.Linear(8, NUM_TARGETS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pattern_norm(self.body(x)))


def make_method(alpha: float = 0.7, beta: float = 1.3) -> nn.Module:
    torch.manual_seed(0)
    targets = torch.zeros(1, dtype=torch.long)
    return build_method(
        "end", model=TinyNet(), num_targets=NUM_TARGETS, num_biases=NUM_BIASES,
        train_targets=targets, train_biases=targets, alpha=alpha, beta=beta,
    ).double()


def make_data(size: int) -> Split:
    generator = torch.Generator().manual_seed(size)
    inputs = torch.randn(size, WIDTH, generator=generator, dtype=torch.float64)
    targets = torch.randint(NUM_TARGETS, (size,), generator=generator)
    biases = torch.randint(NUM_BIASES, (size,), generator=generator)
    return Split(inputs, targets, biases)


def one_step_batch() -> Split:
    """7 samples (shares of 4 and 3). Group (target 2, bias 3) sits only in rank 1's share,
    bias 3 only there too; target 0 appears on both ranks with different biases."""
    targets = torch.tensor([0, 1, 0, 1, 2, 0, 2])
    biases = torch.tensor([0, 1, 1, 0, 3, 2, 3])
    inputs = torch.randn(7, WIDTH, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return Split(inputs, targets, biases)


def epoch_benchmark() -> Benchmark:
    split = make_data(37)  # batch 8: four full batches and a last one of 5 (shares 3 and 2)
    return Benchmark(
        name="tiny", train=split, evaluations={"valid": split}, num_targets=NUM_TARGETS,
        num_biases=NUM_BIASES, input_shape=(WIDTH,), prepare=lambda x: x,
    )


def single_process_step(batch: Split) -> dict[str, object]:
    method = make_method()
    loss, _, parts = method.training_step(batch.inputs, batch.targets, batch.biases, None)
    loss.backward()
    return {"loss": loss.detach(), **{k: v for k, v in parts.items()},
            "grads": {n: p.grad.clone() for n, p in method.named_parameters()}}


class SGD:
    """Plain SGD in the trainer's place of the method's Adams: its updates show the
    gradients themselves (Adam's first steps hide their scale)."""

    def __init__(self, method: nn.Module) -> None:
        self.sgd = torch.optim.SGD(method.parameters(), lr=0.5)

    def zero_grad(self) -> None:
        self.sgd.zero_grad()

    def step(self) -> None:
        self.sgd.step()


def trainer_epoch(method: nn.Module, context: DistContext | None) -> dict[str, float]:
    """One epoch of the trainer's own loop (a solo stepper: the step inside DDP when
    ``context`` is given) with SGD."""
    config, cpu = TrainConfig(batch_size=8), torch.device("cpu")
    stepper = SoloStepper(method, config, device=cpu, fast=FastPath(), context=context)
    stepper.optimizers = SGD(method)
    stats, diverged = train_epoch(stepper, epoch_benchmark(), config, 1, False)
    assert diverged == {}
    return stats[0]


def single_process_epoch() -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    method = make_method()
    stats = trainer_epoch(method, None)
    return stats, {n: p.detach().clone() for n, p in method.named_parameters()}


def _worker(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=WORLD)
    context, cpu = DistContext(rank, WORLD), torch.device("cpu")
    try:
        # One step: this rank's share of the global batch through the DDP-wrapped step.
        batch = one_step_batch()
        method = make_method()
        distributed.prepare_method(method, context, cpu)
        step = distributed.wrap_step(method, context, cpu)
        indices, weight = distributed.local_share(torch.arange(len(batch)), context)
        loss, _, parts = step(batch.inputs[indices], batch.targets[indices],
                              batch.biases[indices], indices)
        (loss * weight).backward()
        size = float(len(indices))
        result = {
            "size": size,
            "global_loss": distributed.sum_over_ranks(loss.detach() * size, context) / len(batch),
            **{k: v for k, v in parts.items()},
            "grads": {n: p.grad.clone() for n, p in method.named_parameters()},
        }
        # One epoch of the trainer itself.
        method = make_method()
        distributed.prepare_method(method, context, cpu)
        stats = trainer_epoch(method, context)
        result["epoch_stats"] = stats
        result["epoch_params"] = {n: p.detach().clone() for n, p in method.named_parameters()}
        torch.save(result, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


# gloo on CPU now and then aborts one process of a correct run (SIGABRT, "terminate called
# without an active exception"): about one run of this file in 20 on a 2-core machine,
# also with a barrier before destroy_process_group. A start that dies that way is retried:
# under torchrun we see its message; under mp.spawn only the signal, so any SIGABRT there.
# The same abort three times running, or any other failure, still fails the test.
GLOO_ABORT = "terminate called without an active exception"
ATTEMPTS = 3


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    for attempt in range(1, ATTEMPTS + 1):
        folder = tmp_path_factory.mktemp("ddp")
        try:
            mp.spawn(_worker, args=(str(folder / "store"), str(folder)), nprocs=WORLD, join=True)
            break
        except mp.ProcessExitedException as error:
            if error.signal_name != "SIGABRT" or attempt == ATTEMPTS:
                raise
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def test_end_terms_and_loss_are_those_of_the_global_batch(two_rank_results: list[dict]) -> None:
    expected = single_process_step(one_step_batch())
    assert [r["size"] for r in two_rank_results] == [4.0, 3.0]  # uneven shares
    for result in two_rank_results:
        for key in ("r_perp", "r_par"):  # every rank holds the global terms
            torch.testing.assert_close(result[key], expected[key], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(result["global_loss"], expected["loss"], rtol=1e-12, atol=1e-12)


def test_gradients_are_those_of_the_global_batch(two_rank_results: list[dict]) -> None:
    expected = single_process_step(one_step_batch())["grads"]
    for result in two_rank_results:
        assert result["grads"].keys() == expected.keys()
        for name, grad in expected.items():
            torch.testing.assert_close(result["grads"][name], grad, rtol=1e-10, atol=1e-12)


def test_trainer_epoch_with_uneven_last_batch_matches_one_process(
    two_rank_results: list[dict],
) -> None:
    stats, params = single_process_epoch()
    for result in two_rank_results:
        for name, value in params.items():
            torch.testing.assert_close(result["epoch_params"][name], value, rtol=1e-9, atol=1e-11)
        assert result["epoch_stats"].keys() == stats.keys()
        for key, value in stats.items():
            assert result["epoch_stats"][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_reducing_sums_equals_concatenating_batches() -> None:
    """Without processes: summing the group sums of two halves (here, a batch with itself)
    is the loss of the concatenated batch."""
    batch = make_data(10)
    features = nn.functional.normalize(batch.inputs, dim=1)
    counts = {"num_targets": NUM_TARGETS, "num_biases": NUM_BIASES}
    doubled = end_terms(
        torch.cat([features, features]), batch.targets.repeat(2), batch.biases.repeat(2), **counts
    )
    reduced = end_terms(
        features, batch.targets, batch.biases, reduce_group_sums=lambda sums: 2 * sums, **counts
    )
    torch.testing.assert_close(reduced, doubled)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"pairs": "reference", "num_targets": 3, "num_biases": 4}, "pairs='all'"),
     ({"num_biases": 4}, "num_targets and num_biases")],
)
def test_reduce_group_sums_rejects_unsupported_options(options: dict, message: str) -> None:
    batch = make_data(6)
    with pytest.raises(ValueError, match=message):
        end_terms(batch.inputs, batch.targets, batch.biases, reduce_group_sums=lambda s: s,
                  **options)


def test_reference_pairs_are_refused_before_training_with_several_processes() -> None:
    """The paper preset's EnD default (the official pairs) cannot span processes: refused
    when the method is prepared, naming the fix, not at the first step."""
    model = nn.Sequential(nn.Flatten(), L2Normalize())
    model.feature_layer = "1"
    labels = torch.tensor([0, 1, 0, 1])
    method = build_method("end", model=model, num_targets=2, num_biases=2,
                          train_targets=labels, train_biases=labels, pairs="reference")
    with pytest.raises(ValueError, match="add --method-option pairs=all"):
        distributed.prepare_method(method, DistContext(rank=0, world_size=2), torch.device("cpu"))
    assert method.reduce_group_sums is None
    method.pairs = "all"
    distributed.prepare_method(method, DistContext(rank=0, world_size=2), torch.device("cpu"))
    assert method.reduce_group_sums is distributed.all_reduce_sum


def test_global_batches_and_shares() -> None:
    context = DistContext(rank=1, world_size=2)
    order = torch.arange(9)
    # A last batch smaller than the number of processes joins the one before it.
    assert [len(b) for b in distributed.global_batches(order, 4, context)] == [4, 5]
    assert [len(b) for b in distributed.global_batches(order, 4, None)] == [4, 4, 1]
    share, weight = distributed.local_share(torch.arange(5), context)
    assert share.tolist() == [3, 4] and weight == pytest.approx(2 * 2 / 5)
    shard = distributed.shard_split(make_data(5), context)
    assert len(shard) == 2


def test_torchrun_end_to_end(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    for attempt in range(1, ATTEMPTS + 1):
        out = tmp_path / f"run{attempt}"
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone",
            f"--nproc_per_node={WORLD}", "-m", "endebias", "train", "--dataset", "synthetic",
            "--method", "end", "--preset", "quick", "--epochs", "2", "--device", "cpu",
            "--out", str(out), "--no-progress",
        ]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
        if done.returncode == 0 or GLOO_ABORT not in done.stderr:
            break
    assert done.returncode == 0, done.stderr[-3000:]
    # only rank 0 talks
    assert sum(line.startswith("run folder ") for line in done.stdout.splitlines()) == 1
    assert done.stdout.count("epoch   1 |") == 1
    for name in ("config.json", "metrics.jsonl", "best.json", "checkpoint.pt", "done"):
        assert (out / name).exists(), name
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in history] == [1, 2]
    # Each process evaluated half of every split; the counts were summed.
    assert all(r["valid_n"] == 256 and r["unbiased_test_n"] == 256 for r in history)
    assert all(0.0 <= r["train_acc"] <= 1.0 and r["train_loss"] > 0 for r in history)
