"""Step 2 of a run (see :mod:`endebias.training.fit`): everything built and checked before
the run folder becomes a run: each member's method, and a solo run's stepper.
Nothing here writes a file.
"""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import torch

from endebias.data import Benchmark, default_model
from endebias.methods import Method, TrainingRows, build_method, method_class
from endebias.models import build_model
from endebias.training import distributed
from endebias.training.config import TrainConfig
from endebias.training.distributed import DistContext
from endebias.training.loop import Shared
from endebias.training.steppers import SoloStepper


def build_run_method(config: TrainConfig, benchmark: Benchmark, **method_inputs: Any) -> Method:
    """The config's model wrapped in its method, with the weights the run starts from (the
    config's seed): what a solo run, a packed member and a finished stage's model share.
    ``method_inputs``: what earlier stages hand the method (``first_stage``)."""
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
        **method_inputs,
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


def check_training_step(method: Method, benchmark: Benchmark, config: TrainConfig) -> None:
    """One training step of a copy of the method on a few training inputs, its weights,
    statistics and the random generators left as they were: what fails only once training
    starts (a layer name the model lacks, an option that overflows in the loss) fails
    here, before the run folder holds a record."""
    count = min(len(benchmark.train), 4)
    trial = copy.deepcopy(method).train()
    try:
        with torch.random.fork_rng(devices=range(torch.cuda.device_count())):
            loss, _, parts = trial.training_step(
                benchmark.prepare(benchmark.train.inputs[:count]),
                benchmark.train.targets[:count], benchmark.train.biases[:count],
                torch.arange(count, device=benchmark.train.targets.device))
    except (RuntimeError, ValueError, TypeError, IndexError, KeyError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"method {config.method!r} cannot train model {config.model!r}: "
                         f"{reason}") from None
    terms = {"loss": loss, **parts}
    bad = {name: float(value.detach().float().sum()) for name, value in terms.items()
           if not bool(torch.isfinite(value.detach()).all())}
    if bad:  # an option that overflows at once (alpha=1e39): before the folder is a run
        shown = ", ".join(f"{name} {value}" for name, value in bad.items())
        options = ", ".join(f"{k}={v}" for k, v in config.method_options.items()) or "none"
        raise ValueError(f"method {config.method!r}: the first training step's loss is not "
                         f"finite ({shown}) with options {options}; nothing was written")


def training_rows(shared: Shared) -> TrainingRows:
    """The training split for methods that draw batches of their own, prepared as the
    trainer's batches are (train_epoch)."""
    benchmark, fast = shared.benchmark, shared.fast
    train = benchmark.train
    return TrainingRows(train.inputs, train.targets, train.biases,
                        prepare=lambda rows: fast.inputs(benchmark.prepare(rows)))


def prepare_solo(config: TrainConfig, shared: Shared, context: DistContext | None,
                 **method_inputs: Any) -> SoloStepper:
    """The config's method on its device, checked with one forward pass, set up for
    several processes if need be, with its optimisers: a solo run ready to step."""
    method = build_run_method(config, shared.benchmark, **method_inputs).to(shared.device)
    method.training_rows = training_rows(shared)
    check_forward(method, shared.benchmark, config)
    check_training_step(method, shared.benchmark, config)
    distributed.prepare_method(method, context, shared.device)
    shared.fast.apply(method)
    stepper = SoloStepper(method, config, device=shared.device, fast=shared.fast, context=context)
    # Every process has checked its options above before rank 0 writes.
    distributed.barrier(context)
    return stepper
