"""Step 2 of a run (see :mod:`endebias.training.fit`): everything built and checked before
the run folder becomes a run. Nothing here writes a file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import Tensor

from endebias.data import Benchmark, Split, default_model
from endebias.methods import Method, build_method, method_class
from endebias.metrics import aligned_groups, group_counts
from endebias.models import build_model
from endebias.training import distributed
from endebias.training.config import TrainConfig
from endebias.training.distributed import DistContext
from endebias.training.epoch import StepRunner
from endebias.training.fastpath import FastPath
from endebias.training.optimizers import Optimizers


@dataclass
class PreparedRun:
    """A run ready to train: its data, method, optimisers and how steps run."""

    config: TrainConfig
    run_dir: Path
    device: torch.device
    context: DistContext | None
    benchmark: Benchmark
    aligned: Tensor
    method: Method
    optimizers: Optimizers
    fast: FastPath
    runner: StepRunner
    # This process's share of every evaluation split; the counts are summed over processes.
    evaluations: dict[str, Split]
    reduce_counts: Callable[[Tensor], Tensor] | None


def build_run_method(config: TrainConfig, benchmark: Benchmark) -> Method:
    """The config's model wrapped in its method, with the weights the run starts from (the
    config's seed): what a solo run, a packed member and stage 2 of pseudo labels share."""
    if not benchmark.has_bias_labels and method_class(config.method).uses_bias_labels:
        raise ValueError(
            f"dataset {config.dataset!r} has no bias labels (no bias column named) and method "
            f"{config.method!r} reads them: train with --bias-labels pseudo, or name the bias "
            "column with --dataset-option bias=COLUMN"
        )
    torch.manual_seed(config.seed)
    model = build_model(
        config.model,
        num_classes=benchmark.num_targets,
        input_shape=benchmark.input_shape,
        **config.model_options,
    )
    return build_method(
        config.method,
        model=model,
        num_targets=benchmark.num_targets,
        num_biases=benchmark.num_biases,
        train_targets=benchmark.train.targets,
        train_biases=benchmark.train.biases,
        input_shape=benchmark.input_shape,
        build_network=partial(build_model, num_classes=benchmark.num_targets,
                              input_shape=benchmark.input_shape),
        **config.method_options,
    )


def check_forward(method: Method, benchmark: Benchmark, config: TrainConfig) -> None:
    """One forward pass of two training inputs in eval mode (no statistics updated, no
    random numbers drawn): a model that cannot take the dataset's inputs fails here, in
    one line, before any record is written."""
    method.eval()
    inputs = benchmark.prepare(benchmark.train.inputs[:2])
    try:
        with torch.no_grad():
            logits = method(inputs)
    except (RuntimeError, ValueError, TypeError, IndexError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        declared = default_model(config.dataset)
        hint = f"; the dataset is made for model {declared!r}" if declared else ""
        raise ValueError(
            f"model {config.model!r} cannot take the inputs of dataset {config.dataset!r} "
            f"(shape {tuple(benchmark.input_shape)}): {reason}{hint}"
        ) from None
    expected = (len(inputs), benchmark.num_targets)
    if tuple(logits.shape) != expected:
        raise ValueError(
            f"model {config.model!r} gives outputs of shape {tuple(logits.shape)} for dataset "
            f"{config.dataset!r}, expected {expected}"
        )


def prepare(
    config: TrainConfig,
    run_dir: Path,
    *,
    data_dir: str | None,
    device: torch.device,
    context: DistContext | None,
    prepare_benchmark: Callable[[Benchmark], None] | None = None,
) -> PreparedRun:
    from endebias.training.fit import load_benchmark

    device = distributed.local_device(device, context)
    torch.manual_seed(config.seed)
    benchmark = load_benchmark(config, data_dir=data_dir, device=device)
    if prepare_benchmark is not None:  # e.g. pseudo bias labels (training.pseudo_label_stages)
        prepare_benchmark(benchmark)
    train_counts = group_counts(
        benchmark.train.targets,
        benchmark.train.targets,
        benchmark.train.biases,
        num_targets=benchmark.num_targets,
        num_biases=benchmark.num_biases,
    )[0]
    aligned = benchmark.aligned if benchmark.aligned is not None else aligned_groups(train_counts)
    aligned = aligned.to(train_counts.device)

    method = build_run_method(config, benchmark).to(device)
    check_forward(method, benchmark, config)
    distributed.prepare_method(method, context, device)
    fast = FastPath.resolve(
        device, amp=config.amp, compile=config.compile, channels_last=config.channels_last
    )
    fast.apply(method)
    if device.type == "cuda":
        # Fixed batch shapes: cuDNN times its kernels once per shape and keeps the fastest.
        torch.backends.cudnn.benchmark = True
    optimizers = Optimizers(method, config, device=device)  # one Adam + StepLR per group
    # Every process has checked its options above before rank 0 writes.
    distributed.barrier(context)
    return PreparedRun(
        config=config,
        run_dir=run_dir,
        device=device,
        context=context,
        benchmark=benchmark,
        aligned=aligned,
        method=method,
        optimizers=optimizers,
        fast=fast,
        runner=StepRunner(distributed.wrap_step(method, context, device), fast, context),
        evaluations={
            name: distributed.shard_split(split, context)
            for name, split in benchmark.evaluations.items()
        },
        reduce_counts=partial(distributed.sum_over_ranks, context=context) if context else None,
    )
