"""Forward + backward time of the closed-form EnD loss against an official-style loop.

The baseline below is written from docs/design.md section 2's description of the official
code: a clamped Gram matrix, per-bias-class masks from outer products of indicator
vectors cut with ``torch.tril(..., diagonal=-1)``, a Python loop over target classes x
pairs of bias classes, and ``if mask.sum() > 0`` checks (one host sync each); it is
checked against ``end_loss(pairs="reference")`` before timing. Both run in one process in
alternating rounds, so that load from other processes hits them alike; still, run it on a
quiet machine: two-thread ops that wait on a busy core slow the loop most.

Labels follow Biased MNIST (docs/design.md section 3) at rho = 0.99: 10 targets, 10 bias colours,
99 % of samples with the aligned colour, the rest spread over the other nine.

    .venv/bin/python benchmarks/bench_regularizer.py            # full table + model step
    .venv/bin/python benchmarks/bench_regularizer.py --quick    # B <= 256, about 20 s
    .venv/bin/python benchmarks/bench_regularizer.py --against OLD/regularizer.py
        # this closed form against another version's (a regularizer.py that imports only
        # torch), side by side in one process: a change's cost without the loop
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import torch
from torch import Tensor, nn

from endebias import capture_features, end_loss
from endebias.models.simple_conv import SimpleConvNet
from machine_info import cpu_model

NUM_CLASSES = 10


def official_style_loss(
    features: Tensor, targets: Tensor, biases: Tensor, alpha: float = 1.0, beta: float = 1.0
) -> Tensor:
    """The official code's arithmetic and structure (the pairs="reference" semantics)."""
    flat = features.reshape(features.shape[0], -1)
    gram = torch.clamp(flat @ flat.T, -1.0, 1.0)
    target_classes = torch.unique(targets)
    bias_classes = torch.unique(biases)

    disentangle = torch.zeros((), device=flat.device)
    perp_pairs = 0.0
    for bias_class in bias_classes:
        indicator = (biases == bias_class).float().unsqueeze(1)
        mask = torch.tril(indicator @ indicator.T, diagonal=-1)
        count = mask.sum()
        perp_pairs += count
        if count > 0:  # host sync, as in the official code
            disentangle = disentangle + torch.abs(torch.sum(gram * mask))
    if perp_pairs > 0:
        disentangle = disentangle / perp_pairs

    entangle = torch.zeros((), device=flat.device)
    par_pairs = 0.0
    for target_class in target_classes:
        in_class = (targets == target_class).float().unsqueeze(1)
        for index, bias_class in enumerate(bias_classes):
            rows = in_class * (biases == bias_class).float().unsqueeze(1)
            for other_class in bias_classes[index + 1 :]:
                columns = in_class * (biases == other_class).float().unsqueeze(1)
                mask = torch.tril(rows @ columns.T, diagonal=-1)
                count = mask.sum()
                par_pairs += count
                if count > 0:
                    entangle = entangle - torch.sum((1.0 + gram) * mask * 0.5)
    if par_pairs > 0:
        entangle = 1.0 + entangle / par_pairs
    return alpha * disentangle + beta * entangle


def check_baseline() -> None:
    """The loop must compute what it claims to: the official arithmetic."""
    features, targets, biases = biased_batch(64, 16, 0.8, torch.device("cpu"))
    expected = end_loss(features, targets, biases, pairs="reference")
    torch.testing.assert_close(official_style_loss(features, targets, biases), expected)


def closed_form_loss(features: Tensor, targets: Tensor, biases: Tensor) -> Tensor:
    # As the trainer calls it: its features are unit-norm already (L2Normalize), so it
    # passes normalize=False; explicit, so that versions with either default time alike.
    return end_loss(
        features, targets, biases, pairs="all", normalize=False, num_targets=NUM_CLASSES,
        num_biases=NUM_CLASSES,
    )


def biased_batch(
    batch: int, width: int, rho: float, device: torch.device, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    targets = torch.randint(NUM_CLASSES, (batch,), generator=generator)
    shift = torch.randint(1, NUM_CLASSES, (batch,), generator=generator)
    conflicting = torch.rand(batch, generator=generator) >= rho
    biases = torch.where(conflicting, (targets + shift) % NUM_CLASSES, targets)
    features = nn.functional.normalize(torch.randn(batch, width, generator=generator), dim=1)
    features = features.to(device).requires_grad_(True)
    return features, targets.to(device), biases.to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(step: Callable[[], None], device: torch.device) -> float:
    start = time.perf_counter()
    step()
    _sync(device)
    return time.perf_counter() - start


def side_by_side(
    ours: Callable[[], None], theirs: Callable[[], None], device: torch.device, rounds: int
) -> tuple[float, float]:
    """Median seconds of each, measured in alternating rounds so that load from other
    processes on a shared machine hits both alike. Each round: one baseline call, then
    our call repeated for about as long (10 to 2000 times), after one warm-up call each.
    A baseline call of over 5 s is timed once, warm-up included: its overheads are noise."""
    timed(ours, device)
    first = timed(theirs, device)
    slow = first > 5.0
    theirs_times = [first] if slow else []
    ours_times: list[float] = []
    for _ in range(1 if slow else rounds):
        if not slow:
            theirs_times.append(timed(theirs, device))
        spent = 0.0
        for count in range(2000):
            if count >= 10 and spent > min(theirs_times[-1], 0.5):
                break
            ours_times.append(timed(ours, device))
            spent += ours_times[-1]
    return statistics.median(ours_times), statistics.median(theirs_times)


def forward_backward(loss_fn: Callable[[Tensor, Tensor, Tensor], Tensor], inputs) -> Callable:
    features, targets, biases = inputs

    def step() -> None:
        features.grad = None
        loss_fn(features, targets, biases).backward()

    return step


def format_time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.2f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds * 1e6:.0f} µs"


def loss_table(devices: list[torch.device], sizes: list[int], widths: list[int], rounds: int):
    print("| device | B | F | official-style loop | closed form | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for device in devices:
        for batch in sizes:
            for width in widths:
                inputs = biased_batch(batch, width, 0.99, device)
                ours, theirs = side_by_side(
                    forward_backward(closed_form_loss, inputs),
                    forward_backward(official_style_loss, inputs),
                    device,
                    rounds,
                )
                print(
                    f"| {device.type} | {batch} | {width} | {format_time(theirs)} | "
                    f"{format_time(ours)} | {theirs / ours:,.0f}× |",
                    flush=True,
                )


def training_step_share(batch: int, rounds: int) -> None:
    """One Adam step of the paper's SimpleConvNet with CE + EnD (docs/design.md section 3) on
    CPU, against the EnD loss alone on its (B, 128) features, side by side."""
    torch.manual_seed(0)
    model = SimpleConvNet(num_classes=NUM_CLASSES)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    images = torch.randn(batch, 3, 28, 28)
    cpu = torch.device("cpu")
    inputs = biased_batch(batch, 128, 0.99, cpu)
    _, targets, biases = inputs

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with capture_features(model, model.feature_layer) as captured:
            logits = model(images)
        loss = nn.functional.cross_entropy(logits, targets) + closed_form_loss(
            captured.get(), targets, biases
        )
        loss.backward()
        optimizer.step()

    loss_seconds, step_seconds = side_by_side(
        forward_backward(closed_form_loss, inputs), train_step, cpu, rounds
    )
    print(
        f"\nSimpleConvNet training step (B={batch}, CPU, forward + backward + Adam, CE + EnD): "
        f"{format_time(step_seconds)}; EnD loss alone (forward + backward, F=128): "
        f"{format_time(loss_seconds)} = {100 * loss_seconds / step_seconds:.3f} % of the step"
    )


def alternating(first: Callable[[], None], second: Callable[[], None], rounds: int,
                calls: int = 20) -> tuple[float, float]:
    """Median seconds per call of each (each call timed, so that a descheduled call on a
    loaded machine is an outlier, not part of a mean): in every round both run ``calls``
    times in a row, which one goes first alternating, so that warm caches and load favour
    neither."""
    times: tuple[list[float], list[float]] = ([], [])
    steps = (first, second)
    for step in steps:
        step()  # warm-up
    for index in range(rounds):
        for which in ((0, 1) if index % 2 == 0 else (1, 0)):
            for _ in range(calls):
                start = time.perf_counter()
                steps[which]()
                times[which].append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def versions_table(path: Path, sizes: list[int], widths: list[int], rounds: int) -> None:
    """The closed form of this checkout against the one in ``path``, same inputs and call."""
    spec = importlib.util.spec_from_file_location("other_regularizer", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"--against: cannot load {path}")
    other = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(other)

    def other_loss(features: Tensor, targets: Tensor, biases: Tensor) -> Tensor:
        return other.end_loss(features, targets, biases, pairs="all", normalize=False,
                              num_targets=NUM_CLASSES, num_biases=NUM_CLASSES)

    cpu = torch.device("cpu")
    print(f"| device | B | F | {path} | this checkout | this / other |")
    print("|---|---:|---:|---:|---:|---:|")
    for batch in sizes:
        for width in widths:
            inputs = biased_batch(batch, width, 0.99, cpu)
            ours, theirs = alternating(forward_backward(closed_form_loss, inputs),
                                       forward_backward(other_loss, inputs), rounds)
            print(f"| cpu | {batch} | {width} | {format_time(theirs)} | {format_time(ours)} | "
                  f"{ours / theirs:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B in {64, 256}, F=128, short")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per cell")
    parser.add_argument("--no-step", action="store_true", help="skip the SimpleConvNet step")
    parser.add_argument("--threads", type=int, help="CPU threads (default: torch's choice)")
    parser.add_argument("--against", type=Path, metavar="REGULARIZER_PY",
                        help="time the closed form against this file's, instead of the loop")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    sizes = [64, 256] if args.quick else [64, 256, 1024, 4096]
    widths = [128] if args.quick else [128, 512]
    rounds = 3 if args.quick else args.rounds
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    print(
        f"{datetime.now(UTC):%Y-%m-%d}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} CPU threads, {cpu_model()}"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "")
        + f"\ncommand: python {' '.join(sys.argv)}\n"
        "forward + backward, median over alternating rounds; labels: 10 targets x 10 "
        "biases, 99 % bias-aligned\n"
    )
    if args.against:
        versions_table(args.against, [64, 256, 1024, 4096], [128, 512], args.rounds)
        return
    check_baseline()
    loss_table(devices, sizes, widths, rounds)
    if not args.no_step:
        training_step_share(batch=256, rounds=rounds)


if __name__ == "__main__":
    main()
