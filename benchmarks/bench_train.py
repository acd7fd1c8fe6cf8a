"""Images per second of a whole EnD training step, paper preset: ours against the original's
style, in the same process, on Biased MNIST (rho 0.997, batch 256, SimpleConvNet 7x7).

* ``original``: built like the official code: coloured digits kept as an HWC uint8 array,
  each item made a PIL image then ``ToTensor`` + ``Normalize(0.5, 0.5)`` (written out here:
  torchvision cannot be installed beside our torch) in a ``torch.utils.data.DataLoader``;
  features from a forward hook; the EnD loss as a Gram matrix and Python loops over
  classes with a host sync per mask (written from docs/design.md section 2); ``.item()`` per
  step for the logs.
* ``ours``: the library's trainer epoch (``endebias.training.epoch.train_epoch``): uint8 images
  resident on the device, normalised per batch, closed-form EnD, metrics read once per
  epoch and, on CUDA, the fast path (channels_last, bf16 autocast, torch.compile); on CPU
  float32.
* ``ours-eager`` (CUDA only): the same with the fast path off.
* ``ours-bf16`` (CPU only): ``ours`` under bf16 autocast (what ``--amp auto`` picks where bf16
  is native), beside the float32
  ``ours``; the paired ratio of the two is printed (bf16 is native on CPUs with
  avx512_bf16 or AMX, emulated and slow elsewhere).

Training only, no evaluation. Variants take turns (on CPU batch by batch, on CUDA whole
rounds), so that load on a shared machine hits them alike, and the median ratio of paired
turns is reported beside the overall rates; each first runs one untimed warm-up turn.
FLOPs per image come from the conv/linear shapes (2 x multiply-adds forward, x3 for a
training step); the peak is the best rate of a large matmul on the same device (float32
on CPU, bf16 on CUDA: the precision each path computes in).

    .venv/bin/python benchmarks/bench_train.py                   # CPU: 16 batches, alternating
    .venv/bin/python benchmarks/bench_train.py --preset quick    # the CPU preset
    .venv/bin/python benchmarks/bench_train.py --device cuda --batches 0 --rounds 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from endebias.data import Split
from endebias.hooks import capture_features
from endebias.methods import build_method
from endebias.models import build_model
from endebias.regularizer import end_terms
from endebias.training.config import make_config
from endebias.training.epoch import train_epoch
from endebias.training.fastpath import FastPath, cpu_bf16_native
from endebias.training.fit import load_benchmark
from endebias.training.steppers import SoloStepper
from machine_info import cpu_model

BATCH = 256


def official_style_end(features: Tensor, targets: Tensor, biases: Tensor) -> tuple[Tensor, Tensor]:
    """(R_perp, R_par) the official way: clamped Gram matrix, one masked B x B product per
    bias class and per (target, pair of bias classes), each checked on the host."""
    flat = features.reshape(features.shape[0], -1)
    gram = torch.clamp(flat @ flat.T, -1.0, 1.0)
    bias_classes = torch.unique(biases).tolist()
    perp_sum, perp_pairs = flat.new_zeros(()), 0.0
    for bias in bias_classes:
        member = (biases == bias).float()
        mask = torch.tril(torch.outer(member, member), diagonal=-1)  # row later than column
        count = mask.sum().item()
        if count > 0:
            perp_sum = perp_sum + torch.abs((gram * mask).sum())
            perp_pairs += count
    r_perp = perp_sum / perp_pairs if perp_pairs else flat.new_zeros(())

    par_sum, par_pairs = flat.new_zeros(()), 0.0
    for target in torch.unique(targets).tolist():
        in_target = (targets == target).float()
        for index, lower in enumerate(bias_classes):
            rows = in_target * (biases == lower).float()
            for upper in bias_classes[index + 1 :]:
                columns = in_target * (biases == upper).float()
                mask = torch.tril(torch.outer(rows, columns), diagonal=-1)
                count = mask.sum().item()
                if count > 0:
                    par_sum = par_sum + ((1 + gram) / 2 * mask).sum()
                    par_pairs += count
    r_par = 1 - par_sum / par_pairs if par_pairs else flat.new_zeros(())
    return r_perp, r_par


class OriginalStyleDataset(torch.utils.data.Dataset):
    """One PIL image per item, then ToTensor and Normalize((0.5,)*3, (0.5,)*3)."""

    def __init__(self, split: Split) -> None:
        self.images = split.inputs.permute(0, 2, 3, 1).contiguous().cpu().numpy()  # HWC
        self.targets = split.targets.cpu().numpy()
        self.biases = split.biases.cpu().numpy()

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        image = Image.fromarray(self.images[index])
        tensor = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)
        tensor = (tensor - 0.5) / 0.5
        return tensor, int(self.targets[index]), int(self.biases[index])


def new_method(config, num_targets: int, device: torch.device) -> nn.Module:
    torch.manual_seed(config.seed)
    model = build_model(config.model, num_classes=num_targets, input_shape=(3, 28, 28),
                        **config.model_options)
    labels = torch.zeros(1, dtype=torch.long)
    return build_method("end", model=model, num_targets=num_targets, num_biases=num_targets,
                        train_targets=labels, train_biases=labels).to(device)


class Original:
    """``run(k)`` trains on the loader's next k batches (``None``: one whole pass)."""

    def __init__(self, config, split: Split, device: torch.device, workers: int) -> None:
        self.method = new_method(config, 10, device)
        self.model, self.device = self.method.model, device
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr,
                                          weight_decay=config.weight_decay)
        self.loader = torch.utils.data.DataLoader(
            OriginalStyleDataset(split), batch_size=BATCH, shuffle=True, num_workers=workers,
            pin_memory=device.type == "cuda",
        )
        self.batches = iter(self.loader)

    def _next_batches(self, count: int | None):
        if count is None:
            yield from self.loader
            return
        for _ in range(count):
            batch = next(self.batches, None)
            if batch is None:  # a new epoch of the loader
                self.batches = iter(self.loader)
                batch = next(self.batches)
            yield batch

    def run(self, count: int | None) -> int:
        self.model.train()
        seen, total_loss, correct = 0, 0.0, 0
        for inputs, targets, biases in self._next_batches(count):
            inputs, targets = inputs.to(self.device), targets.to(self.device)
            biases = biases.to(self.device)
            with capture_features(self.model, self.model.feature_layer) as captured:
                logits = self.model(inputs)
            r_perp, r_par = official_style_end(captured.get(), targets, biases)
            loss = nn.functional.cross_entropy(logits, targets) + r_perp + r_par
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            total_loss += loss.item()
            correct += (logits.argmax(dim=1) == targets).sum().item()
            seen += len(targets)
        return seen


class Ours:
    """``run(k)``: one trainer epoch over the next k batches of the data (``None``: all)."""

    def __init__(self, config, benchmark, device: torch.device, fast: FastPath) -> None:
        self.method = new_method(config, benchmark.num_targets, device)
        fast.apply(self.method)
        # The trainer's solo stepper: its Adam (fused on CUDA) and step, one process.
        self.stepper = SoloStepper(self.method, config, device=device, fast=fast, context=None)
        self.config, self.benchmark = config, benchmark
        self.epoch, self.position = 0, 0

    def run(self, count: int | None) -> int:
        self.epoch += 1
        benchmark, train = self.benchmark, self.benchmark.train
        if count is not None:  # the next count batches, as a benchmark of their own
            if self.position >= len(train):
                self.position = 0
            end = self.position + count * BATCH
            part = Split(*(t[self.position : end] for t in (train.inputs, train.targets,
                                                            train.biases)))
            benchmark, self.position = dataclasses.replace(benchmark, train=part), end
        train_epoch(self.stepper, benchmark, self.config, self.epoch, False)
        return len(benchmark.train)


def forward_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """2 x multiply-adds of every conv and linear layer for one image, from their shapes."""
    total = 0

    def count(module: nn.Module, _inputs: tuple, output: Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            height, width = module.kernel_size
            per_output = module.in_channels // module.groups * height * width
            total += 2 * per_output * output.numel()
        elif isinstance(module, nn.Linear):
            total += 2 * module.in_features * module.out_features

    handles = [m.register_forward_hook(count) for m in model.modules()
               if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        model.eval()(torch.zeros(1, *input_shape))
    for handle in handles:
        handle.remove()
    return total


def matmul_peak(device: torch.device) -> tuple[float, str]:
    """Best FLOP/s of a square matmul: 2048 float32 on CPU, 8192 bf16 on CUDA."""
    size, dtype = (2048, torch.float32) if device.type == "cpu" else (8192, torch.bfloat16)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(8 if device.type == "cpu" else 30):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    name = str(dtype).removeprefix("torch.")
    return 2 * size**3 / best, f"{size}x{size} {name} matmul, best of runs"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--preset", default="paper", choices=["paper", "quick"])
    parser.add_argument("--batches", type=int, default=16,
                        help="batches per variant per round; 0 = a whole epoch (60,000 images)")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--turn", type=int,
                        help="batches per variant before the next one takes over; 0 = the whole "
                        "round (default: 1 on CPU, where load changes by the minute; 0 on CUDA)")
    parser.add_argument("--workers", type=int, help="DataLoader workers (default: 0 CPU, 6 CUDA)")
    parser.add_argument("--threads", type=int,
                        help="torch intra-op threads (default: torch's). On a CPU that other "
                        "jobs keep busy, 1 avoids the stall of multi-threaded small ops "
                        "waiting for a descheduled thread, which hits the looped loss hardest")
    parser.add_argument("--data-dir",
                        default=os.environ.get("ENDEBIAS_DATA", "../shared/data/mnist"))
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    workers = args.workers if args.workers is not None else (0 if device.type == "cpu" else 6)
    turn = args.turn if args.turn is not None else (1 if device.type == "cpu" else 0)
    if turn and args.batches % turn:
        parser.error("--batches must be a multiple of --turn")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # as the trainer sets it; for every variant

    config = make_config(args.preset, method="end", device=args.device, eval_subset=1,
                         train_subset=args.batches * BATCH if args.batches else None,
                         dataset_options={"rho": 0.997})
    started = time.perf_counter()
    benchmark = load_benchmark(config, data_dir=args.data_dir, device=device)
    print(f"data: {len(benchmark.train)} training images in {time.perf_counter() - started:.1f} s")

    # The two losses agree (official pair selection) before anything is timed; labels drawn
    # uniformly, so that every kind of pair occurs.
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(BATCH, 128, dtype=torch.float64, generator=generator)
    features = nn.functional.normalize(features, dim=1)
    targets, biases = torch.randint(10, (2, BATCH), generator=generator)
    expected = end_terms(features, targets, biases, pairs="reference", num_targets=10,
                         num_biases=10)
    torch.testing.assert_close(official_style_end(features, targets, biases), expected)

    variants = {"original": lambda: Original(config, benchmark.train, device, workers)}
    if device.type == "cuda":
        variants["ours-eager"] = lambda: Ours(config, benchmark, device, FastPath())
    # On CPU "ours" is float32 (the fast path's "auto" would pick bf16 where it is native),
    # so that the bf16 ratio below compares the two arithmetics.
    ours_fast = FastPath.resolve(device) if device.type == "cuda" else FastPath()
    variants["ours"] = lambda: Ours(config, benchmark, device, ours_fast)
    if device.type == "cpu":
        variants["ours-bf16"] = lambda: Ours(config, benchmark, device, FastPath(amp=True))
    # The peak is measured before and after the timed rounds; the higher one counts (a
    # shared machine's load only ever lowers it).
    peak, peak_how = matmul_peak(device)
    runs, warmup, totals = {}, {}, {name: [0, 0.0] for name in variants}
    turns: dict[str, list[float]] = {name: [] for name in variants}
    count = turn or None  # batches per call; None: the whole subset (a whole round)
    for name, build in variants.items():
        started = time.perf_counter()
        runs[name] = build()
        runs[name].run(count)  # warm-up: allocator, cuDNN autotuning, compilation
        warmup[name] = time.perf_counter() - started
    calls = args.rounds * (args.batches // turn if turn and args.batches else 1)
    for _ in range(calls):
        for name, run in runs.items():
            started = time.perf_counter()
            totals[name][0] += run.run(count)
            turns[name].append(time.perf_counter() - started)
            totals[name][1] += turns[name][-1]

    flops = 3 * forward_flops(build_model(config.model, num_classes=10, input_shape=(3, 28, 28),
                                          **config.model_options), (3, 28, 28))
    peak = max(peak, matmul_peak(device)[0])
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    print(f"\n{device_name}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"DataLoader workers {workers}")
    print(f"training FLOPs per image: {flops / 1e9:.3f} GFLOP; "
          f"peak {peak / 1e12:.3f} TFLOP/s ({peak_how})")
    print("\n| variant | images | seconds | images/s | TFLOP/s | of peak | warm-up s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    results = {}
    for name, (images, seconds) in totals.items():
        rate = images / seconds
        results[name] = {"images": images, "seconds": seconds, "images_per_s": rate,
                         "tflops": rate * flops / 1e12, "fraction_of_peak": rate * flops / peak,
                         "warmup_s": warmup[name]}
        print(f"| {name} | {images} | {seconds:.1f} | {rate:.1f} | {rate * flops / 1e12:.3f} | "
              f"{100 * rate * flops / peak:.1f} % | {warmup[name]:.1f} |")
    base = results["original"]["images_per_s"]
    for name in results:
        if name != "original":
            # The median of paired turns (each variant's turn right after the other's) is
            # robust to load that comes and goes on a shared machine.
            pairs = zip(turns["original"], turns[name], strict=True)
            paired = statistics.median(a / b for a, b in pairs)
            results[name]["speedup"] = results[name]["images_per_s"] / base
            results[name]["speedup_paired_median"] = paired
            print(f"speed-up {name} vs original: {results[name]['speedup']:.2f}x overall, "
                  f"{paired:.2f}x median of {len(turns[name])} paired turns")
    if "ours-bf16" in turns:  # the same trainer, float32 against bf16 autocast
        paired = statistics.median(a / b for a, b in zip(turns["ours"], turns["ours-bf16"],
                                                         strict=True))
        results["ours-bf16"]["speedup_vs_fp32_paired_median"] = paired
        print(f"bf16 vs float32 (ours): {paired:.2f}x median of paired turns; native bf16: "
              f"{cpu_bf16_native() or 'no'}")
    if args.json:
        info = {"preset": args.preset, "device": device_name, "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "workers": workers, "train_flops_per_image": flops, "peak_flops": peak,
                "peak_how": peak_how, "batches": args.batches, "rounds": args.rounds,
                "turn": turn,
                "date": time.strftime("%Y-%m-%d %H:%M %Z"), "results": results}
        Path(args.json).write_text(json.dumps(info, indent=2) + "\n")


if __name__ == "__main__":
    main()
