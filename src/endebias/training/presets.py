"""The named presets and each preset's method defaults: plain data, no torch, so the
reports (which never import torch) can say how a run differs from them."""

from __future__ import annotations

from typing import Any

DEFAULT_MODEL = "simple-conv"

# The paper's protocol, docs/design.md section 3, exactly.
PAPER = {
    "model_options": {"channels": [16, 32, 64, 128], "kernel_size": 7, "pool_after": []},
    "epochs": 80,
    "batch_size": 256,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "lr_step": 20,
    "lr_gamma": 0.1,
}

# The same network family made cheap enough for 2 CPU cores: 3x3 kernels and max-pooling
# after the first two blocks cut the cost per image about 60-fold; the schedule is squeezed
# to the same shape (a 10x learning-rate drop late in training).
QUICK = {
    "model_options": {"channels": [16, 32, 64, 128], "kernel_size": 3, "pool_after": [0, 1]},
    "epochs": 6,
    "batch_size": 256,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "lr_step": 4,
    "lr_gamma": 0.1,
}

# The quick preset's network trained long enough that vanilla learns the digit from the
# bias-conflicting images, as the paper's 80-epoch vanilla does: the budget the search of
# docs/results.md ("Budget search for a CPU preset") chose by its rule stated before the
# runs (benchmarks/budget_search.csv, budget e24): about 13 minutes per run on one idle
# core. The paper's schedule shape, cut to 24 epochs (x0.1 after epoch 20).
CPU = {**QUICK, "epochs": 24, "lr_step": 20}

PRESETS: dict[str, dict[str, Any]] = {"paper": PAPER, "quick": QUICK, "cpu": CPU}

# Each preset's defaults for a method's options, applied under explicit options and sweep
# parameters. Weights tuned for one network and schedule do not transfer: on the paper's
# protocol at rho 0.997 (one H200, 2026-12-04, ../shared/measurements/gpu-2026-12-04/)
# EnD reached 70.43 % unbiased at the official code's alpha = beta = 0.1 but 25.11 % at
# alpha = beta = 1, the quick preset's choice (64.50 % there, docs/results.md). The paper
# preset also uses the official code's pair selection.
METHOD_DEFAULTS: dict[str, dict[str, dict[str, Any]]] = {
    "paper": {"end": {"alpha": 0.1, "beta": 0.1, "pairs": "reference"}},
    # LearnedMixin without its entropy term: at rho 0.997 it reached 35.47 and 27.69 %
    # unbiased (seeds 1, 2) where Bahng et al.'s 0.36 reached 24.60 and 20.75 (docs/results.md).
    "quick": {"end": {"alpha": 1.0, "beta": 1.0}, "learned-mixin": {"entropy_weight": 0.0}},
    # The weights the budget search measured EnD at; at rho 0.997 (one seed) 0.5 gave 60.10,
    # 1 gave 67.35 and 2 gave 69.76 % unbiased: 1 and 2 within one seed's spread
    # (docs/methods.md). A sweep over seeds and rhos is pending.
    # LearnedMixin without its entropy term here too: 69.26 against 49.32 % at 0.36 (rho
    # 0.997, seed 42, docs/results.md).
    "cpu": {"end": {"alpha": 1.0, "beta": 1.0}, "learned-mixin": {"entropy_weight": 0.0}},
}
DEFAULT_METHOD = "vanilla"
