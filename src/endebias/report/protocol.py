"""What a run's numbers may be called: a run is "the paper protocol" only when everything the
paper fixed is as the paper had it; otherwise every difference is said beside the number.
Also the names of a run's target and bias, for the axes of its figures. No torch here.
"""

from __future__ import annotations

from typing import Any

from endebias.training.presets import DEFAULT_MODEL, PAPER, PRESETS

# Datasets whose target and bias have a name of their own; tables and image folders name
# theirs in their options (target=COLUMN, bias=COLUMN).
NAMED_AXES = {
    "biased-mnist": ("digit", "colour"),
    "colored-mnist": ("digit", "colour"),
    "celeba": (None, "gender"),
}
_DEFAULT_MODEL = DEFAULT_MODEL
# The training options a preset fixes: a run whose options equal a preset's trained that
# preset, whatever name its config records (quick with 24 epochs and the step at 20 is cpu).
PRESET_KEYS = ("model_options", "epochs", "batch_size", "lr", "weight_decay", "lr_step",
               "lr_gamma")
# Each dataset's default rho, which `train` leaves out of config.json (a run at the default
# is the same run as one that spelt it): filled back in so that both sit in one column.
# tests/test_report_protocol.py checks these against the dataset builders.
DEFAULT_RHO = {"biased-mnist": 0.997, "synthetic": 0.99}


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def effective_preset(config: dict[str, Any]) -> str | None:
    """The preset whose training options the run's config has (the recorded one first),
    or the recorded preset when none matches exactly."""
    recorded = config.get("preset")
    if config.get("model", _DEFAULT_MODEL) != _DEFAULT_MODEL:
        return recorded
    names = sorted(PRESETS, key=lambda name: name != recorded)
    for name in names:
        if all(config.get(key) == PRESETS[name][key] for key in PRESET_KEYS):
            return name
    return recorded


def resolved_config(config: dict[str, Any]) -> dict[str, Any]:
    """The config as what it trains: its effective preset, and the dataset's default rho
    where the config leaves it out."""
    resolved = dict(config)
    resolved["preset"] = effective_preset(config)
    rho = DEFAULT_RHO.get(str(config.get("dataset")))
    options = dict(config.get("dataset_options") or {})
    if rho is not None and "rho" not in options:
        options["rho"] = rho
    resolved["dataset_options"] = options
    return resolved


def differences_from_paper(config: dict[str, Any]) -> list[str]:
    """What this run's config changes from the paper's protocol (docs/design.md section 3),
    in words, e.g. ``["1 epoch", "2000 training images"]``; empty for the paper's run. A
    run of another preset is named by its preset, then what it changes from that preset."""
    preset = effective_preset(config)
    differences = [] if preset == "paper" else [f"{preset or 'no'} preset"]
    reference = PRESETS.get(preset or "", PAPER)
    epochs = config.get("epochs")
    if epochs is not None and epochs != reference["epochs"]:
        differences.append(_plural(int(epochs), "epoch"))
    if config.get("train_subset") is not None:
        differences.append(f"{config['train_subset']} training images")
    if config.get("eval_subset") is not None:
        differences.append(f"{config['eval_subset']} images per evaluation split")
    model = config.get("model", _DEFAULT_MODEL)
    if model != _DEFAULT_MODEL:
        differences.append(f"model {model}")
    else:
        options = config.get("model_options") or {}
        expected = reference["model_options"]
        differences += [f"{key} {value}" for key, value in options.items()
                        if expected.get(key) != value]
    for key in ("batch_size", "lr", "weight_decay", "lr_step", "lr_gamma"):
        if key in config and config[key] != reference[key]:
            differences.append(f"{key} {config[key]:g}")
    if (config.get("dataset_options") or {}).get("validation", "overlap") != "overlap":
        differences.append(f"validation {config['dataset_options']['validation']}")
    return differences


def protocol_words(config: dict[str, Any]) -> str:
    """``paper protocol`` or the differences: ``1 epoch, 2000 training images``."""
    return ", ".join(differences_from_paper(config)) or "paper protocol"


def axis_labels(config: dict[str, Any]) -> tuple[str, str]:
    """(target, bias) axis names of a run's group matrix: ``target (digit)``,
    ``bias (colour)`` on Biased MNIST; a table's column names; else plain target and bias."""
    options = config.get("dataset_options") or {}
    target, bias = NAMED_AXES.get(config.get("dataset", ""), (None, None))
    target = options.get("target") or target
    bias = options.get("bias") or bias
    return (f"target ({target})" if target else "target", f"bias ({bias})" if bias else "bias")
