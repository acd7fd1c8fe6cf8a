"""Check a training config without data: what a trial would refuse, found before it runs.

A sweep checks the configs at the corners of its search space with this at create time, so
that a range such as ``rho: {min: 0.5, max: 1.5}`` or an option the method lacks is
refused in one line before any agent starts (not by each agent dying on a bad draw).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch
from torch import nn

from endebias.data import check_dataset_options
from endebias.methods import StageResult, build_method, method_class
from endebias.models import build_model, check_model_options
from endebias.training.config import TrainConfig


class _StandInModel(nn.Module):
    """The smallest model a method can wrap: a method's own option checks run on it."""

    feature_layer = "features"

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Identity()
        self.fc = nn.Linear(2, 2)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        # Any input shape: methods that size a head by the features run it once.
        return self.fc(self.features(inputs.flatten(1)[:, :2]))

    def reset_parameters(self) -> None:  # methods with a twin model (LfF) call this
        self.fc.reset_parameters()


def check_method_options(method: str, options: dict) -> None:
    """Build the method around a stand-in model: unknown options and bad values (a negative
    alpha, a string where a number goes) fail as they would in a trial."""
    two = torch.tensor([0, 1, 0, 1])
    cls = method_class(method)
    # A method with a first stage is handed that stage's result: a stand-in's here.
    staged = cls.first_stage({**cls.defaults, **options}) is not None
    first_stage = StageResult(_StandInModel(), torch.zeros(4, 2)) if staged else None
    try:
        build_method(
            method,
            model=_StandInModel(),
            num_targets=2,
            num_biases=2,
            train_targets=two,
            train_biases=two.flip(0),
            # A stand-in image: a bias-only network (RUBi, ReBias...) is built for it, so
            # its options are checked too; its fit to the real inputs is checked at run time.
            input_shape=(3, 8, 8),
            build_network=partial(build_model, num_classes=2, input_shape=(3, 8, 8)),
            first_stage=first_stage,
            **options,
        )
    except TypeError as error:  # e.g. '<' between str and float: a value of the wrong type
        raise ValueError(
            f"method {method!r}: an option has a value of the wrong type ({error})"
        ) from None


def check_config(config: TrainConfig) -> None:
    """Raise ValueError naming the first option a run of ``config`` would refuse."""
    check_dataset_options(config.dataset, config.dataset_options)
    check_model_options(config.model, config.model_options)
    check_method_options(config.method, config.method_options)
    if config.bias_labels == "pseudo":  # the bias-capturing model of stage 1
        from endebias.training.pseudo_label_stages import stage1_config

        first = stage1_config(config)
        check_model_options(first.model, first.model_options)
    from endebias.training.stages import method_stages

    for stage in method_stages(config, Path("RUN")):  # a first stage the method declares
        check_model_options(stage.config.model, stage.config.model_options)
        check_method_options(stage.config.method, stage.config.method_options)
