"""Where a run's training bias labels come from: the dataset (``given``) or a
bias-capturing model (``pseudo``, see :mod:`endebias.training.pseudo_label_stages`).

This module only defines and checks the options (no torch, no argparse), so
``TrainConfig`` can validate them and the CLI (:mod:`endebias.cli.options`) can offer them.
"""

from __future__ import annotations

from typing import Any

BIAS_LABELS = ("given", "pseudo")
STAGE1_KINDS = ("vanilla", "gce")
LABELLINGS = ("cluster", "predictions")
# A pseudo-label run's agreement of its labels with the dataset's (where it has them),
# read by `results --by-method` (report.comparison).
AGREEMENT = "pseudo_labels.json"
AGREEMENT_KEYS = ("nmi", "matched_acc")

# The defaults of ``pseudo_options``, each recorded in config.json so a run says how its
# labels were made. Chosen by the measurements in docs/results.md ("EnD without bias
# labels"): a short plain stage 1 already reads the colour alone on Biased MNIST, and
# wherever the labels helped at all (Biased MNIST at rho 0.997 and 0.990, Colored MNIST
# with a 1x1-kernel stage 1) EnD did better on the stage-1 model's predictions than on
# k-means clusters of its features (by 0.6 to 17 points).
PSEUDO_DEFAULTS: dict[str, Any] = {
    "stage1": "vanilla",  # vanilla | gce: the bias-capturing model's loss
    "stage1_epochs": 2,
    "stage1_model": None,  # None: the main run's model and model options
    # A mapping of model options laid over the stage-1 model's (the main run's options
    # when it is the main run's model): e.g. {kernel_size: 1}, a SimpleConvNet that sees
    # one pixel at a time and so can read colour but not shape.
    "stage1_model_options": None,
    "q": 0.7,  # GCE's exponent (stage1=gce), LfF's default
    "labelling": "predictions",  # predictions | cluster
    "k": 2,  # clusters per target class, or "auto" (best silhouette of k in 2..5)
    "layer": None,  # features clustered; None: the model's feature_layer
}


def _positive_int(name: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"pseudo option {name} must be a positive integer, got {value!r}")


def check_bias_labels(bias_labels: str, pseudo_options: dict[str, Any]) -> dict[str, Any]:
    """Validate the pair and return the pseudo options completed with their defaults
    (empty for ``given``, which takes no options)."""
    if bias_labels not in BIAS_LABELS:
        raise ValueError(
            f"bias_labels must be one of {', '.join(BIAS_LABELS)}, got {bias_labels!r}"
        )
    if not isinstance(pseudo_options, dict):
        raise ValueError(f"pseudo_options must be a mapping, got {pseudo_options!r}")
    if bias_labels == "given":
        if pseudo_options:
            raise ValueError(
                f"pseudo option {sorted(pseudo_options)[0]!r} needs --bias-labels pseudo"
            )
        return {}
    unknown = sorted(set(pseudo_options) - set(PSEUDO_DEFAULTS))
    if unknown:
        raise ValueError(
            f"unknown pseudo option {unknown[0]!r}; known: {', '.join(PSEUDO_DEFAULTS)}"
        )
    options = {**PSEUDO_DEFAULTS, **pseudo_options}
    if options["stage1"] not in STAGE1_KINDS:
        raise ValueError(
            f"pseudo option stage1 must be one of {', '.join(STAGE1_KINDS)}, "
            f"got {options['stage1']!r}"
        )
    if options["labelling"] not in LABELLINGS:
        raise ValueError(
            f"pseudo option labelling must be one of {', '.join(LABELLINGS)}, "
            f"got {options['labelling']!r}"
        )
    _positive_int("stage1_epochs", options["stage1_epochs"])
    if options["k"] != "auto":
        _positive_int("k", options["k"])
    q = options["q"]
    if isinstance(q, bool) or not isinstance(q, int | float) or not 0 < q <= 1:
        raise ValueError(f"pseudo option q must be in (0, 1], got {q!r}")
    extra = options["stage1_model_options"]
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(
            f"pseudo option stage1_model_options must be a mapping such as "
            f"{{kernel_size: 1}}, got {extra!r}"
        )
    for name in ("stage1_model", "layer"):
        if options[name] is not None and (not isinstance(options[name], str) or not options[name]):
            raise ValueError(f"pseudo option {name} must be a name or null, got {options[name]!r}")
    return options

