"""Two ways to train K SimpleConvNets on one shared batch, timed against each other:

* ``grouped``: the trainer's pack (``endebias.training.packed``): one network whose later
  convolutions are grouped (``groups=K``), stepped by the trainer's ``train_epoch`` with a
  packed stepper;
* ``vmap``: ``torch.func`` model ensembling: the K networks' parameters and buffers
  stacked (``stack_module_state``), one network run under ``torch.vmap`` with
  ``functional_call``, one backward of the summed losses, one Adam over the stacked
  parameters (Adam is per element, so each member's update is its own).

Both train K vanilla members (cross-entropy; the convolutions dominate either way) on the
same batches, one batch per turn, in alternating turns after a warm-up batch each, so that
load on a shared machine hits both alike. Before timing, one step of each is checked to
give the same losses as the K solo networks.

    .venv/bin/python benchmarks/bench_pack_vmap.py --preset quick --pack 4 --batches 8
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import time

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from endebias.data import Split
from endebias.methods import build_method
from endebias.models import build_model
from endebias.training.config import make_config
from endebias.training.epoch import train_epoch
from endebias.training.fastpath import FastPath
from endebias.training.fit import load_benchmark
from endebias.training.steppers import PackedStepper


class VmapPack:
    """K networks as stacked parameters run under ``torch.vmap``."""

    def __init__(self, models: list[nn.Module], *, lr: float, weight_decay: float) -> None:
        self.params, self.buffers = stack_module_state(models)
        self.base = copy.deepcopy(models[0]).to("meta")  # the function; weights come stacked
        self.optimizer = torch.optim.Adam(self.params.values(), lr=lr,
                                          weight_decay=weight_decay)

        def one(params, buffers, inputs):
            return functional_call(self.base, (params, buffers), (inputs,))

        self.forward = torch.vmap(one, in_dims=(0, 0, None))

    def step(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.forward(self.params, self.buffers, inputs)  # (K, B, classes)
        losses = torch.stack([nn.functional.cross_entropy(member, targets)
                              for member in logits])
        self.optimizer.zero_grad()
        losses.sum().backward()
        self.optimizer.step()
        return losses.detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="quick", choices=["paper", "quick"])
    parser.add_argument("--pack", type=int, default=4)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per variant")
    parser.add_argument("--threads", type=int, help="torch intra-op threads")
    parser.add_argument("--data-dir",
                        default=os.environ.get("ENDEBIAS_DATA", "../shared/data/mnist"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    config = make_config(args.preset, method="vanilla", device="cpu", eval_subset=1,
                         train_subset=(args.batches + 2) * 256, amp="off",
                         dataset_options={"rho": 0.997})
    benchmark = load_benchmark(config, data_dir=args.data_dir, device=device)
    solos = []
    for _ in range(args.pack):  # K members with different initial weights
        model = build_model(config.model, num_classes=10, input_shape=benchmark.input_shape,
                            **config.model_options)
        solos.append(build_method("vanilla", model=model, num_targets=10, num_biases=10,
                                  train_targets=benchmark.train.targets,
                                  train_biases=benchmark.train.biases))
    fast = FastPath()
    grouped = PackedStepper(copy.deepcopy(solos), [config] * args.pack,
                            [{"method": s.state_dict()} for s in solos],
                            benchmark_shape=(10, benchmark.input_shape[0]), device=device,
                            fast=fast)
    vmapped = VmapPack([copy.deepcopy(s.model).train() for s in solos], lr=config.lr,
                       weight_decay=config.weight_decay)
    train = benchmark.train

    def batch(number: int) -> Split:
        return Split(*(t[number * 256 : (number + 1) * 256]
                       for t in (train.inputs, train.targets, train.biases)))

    # Same losses as the solo networks on the first batch (before either has stepped).
    first = batch(0)
    inputs = benchmark.prepare(first.inputs)
    expected = torch.stack([nn.functional.cross_entropy(copy.deepcopy(s.model).train()(inputs),
                                                        first.targets) for s in solos])
    grouped.train()
    packed_losses = grouped.step(inputs, first.targets, first.biases, None)[0].detach()
    torch.testing.assert_close(packed_losses, expected, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(vmapped.step(inputs, first.targets), expected,
                               rtol=1e-4, atol=1e-5)

    def grouped_turn(number: int) -> float:
        started = time.perf_counter()
        train_epoch(grouped, dataclasses.replace(benchmark, train=batch(number)), config, 1,
                    False)
        return time.perf_counter() - started

    def vmap_turn(number: int) -> float:
        part = batch(number)
        started = time.perf_counter()
        vmapped.step(benchmark.prepare(part.inputs), part.targets)
        return time.perf_counter() - started

    grouped_turn(1), vmap_turn(1)  # warm-up
    times: dict[str, list[float]] = {"grouped": [], "vmap": []}
    for number in range(2, args.batches + 2):
        times["grouped"].append(grouped_turn(number))
        times["vmap"].append(vmap_turn(number))
    ratio = statistics.median(v / g for g, v in zip(times["grouped"], times["vmap"],
                                                    strict=True))
    print(f"{args.preset} preset, cpu, pack {args.pack}, {args.batches} batches of 256, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}")
    print("| variant | seconds per batch (median) |\n|---|---:|")
    for name, values in times.items():
        print(f"| {name} | {statistics.median(values):.3f} |")
    print(f"vmap / grouped: {ratio:.2f}x the time (median of {args.batches} paired turns)")


if __name__ == "__main__":
    main()
