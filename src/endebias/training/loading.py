"""A run's data as its config says: the benchmark built, cut to the config's subsets and
moved to its device; and the device a config names."""

from __future__ import annotations

import hashlib
import logging

import torch

from endebias.data import Benchmark, Split, build_dataset, check_dataset_options
from endebias.training.config import TrainConfig

log = logging.getLogger(__name__)


def random_subset(split: Split, size: int | None, seed: int) -> Split:
    if size is None or size >= len(split):
        return split
    generator = torch.Generator().manual_seed(seed)
    return split.subset(torch.randperm(len(split), generator=generator)[:size])


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but torch sees no CUDA device")
    return torch.device(name)


def data_checksum(benchmark: Benchmark) -> str:
    """SHA-256 (first 16 hex digits) of what a run trains and is scored on: every split's
    name, inputs, targets and bias labels, after the config's subsets. A run folder records
    it, so another ``--data-dir`` (or files changed under the same one) never continues or
    reuses a run trained on other data."""
    digest = hashlib.sha256()
    for name, split in [("train", benchmark.train), *benchmark.evaluations.items()]:
        for part, tensor in (("inputs", split.inputs), ("targets", split.targets),
                             ("biases", split.biases)):
            array = tensor.detach().cpu().contiguous().numpy()
            digest.update(f"{name}.{part}:{array.dtype}{array.shape};".encode())
            digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()[:16]


def _split_sizes(benchmark: Benchmark) -> dict[str, int]:
    return {"train": len(benchmark.train), **{n: len(s) for n, s in benchmark.evaluations.items()}}


def load_benchmark(config: TrainConfig, *, data_dir: str | None, device: torch.device) -> Benchmark:
    check_dataset_options(config.dataset, config.dataset_options)
    benchmark = build_dataset(
        config.dataset, data_dir=data_dir, seed=config.seed, **config.dataset_options
    )
    # Subsets are fixed by the config's seed (train) or by a constant (evaluation), so
    # runs with different seeds are evaluated on the same images.
    full = _split_sizes(benchmark)
    benchmark.train = random_subset(benchmark.train, config.train_subset, config.seed)
    benchmark.evaluations = {
        name: random_subset(split, config.eval_subset, 0)
        for name, split in benchmark.evaluations.items()
    }
    if config.train_subset is not None or config.eval_subset is not None:
        # The dataset logged its full sizes; say what this run actually uses.
        used = _split_sizes(benchmark)
        log.info("%s subsets: %s", config.dataset,
                 ", ".join(f"{name} {used[name]} of {full[name]}" for name in full))
    benchmark.info["data_checksum"] = data_checksum(benchmark)
    benchmark.train = benchmark.train.to(device)
    benchmark.evaluations = {name: s.to(device) for name, s in benchmark.evaluations.items()}
    return benchmark
