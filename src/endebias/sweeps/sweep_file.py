"""Sweep files: the original tracker's YAML format, read strictly (no torch here).

A sweep file names a search (``name``), a search ``method`` (bayes, random, grid), the
``metric`` it optimises and ``parameters``, each a constant (``value``), a list
(``values``) or a ``distribution`` with ``min``/``max``/``q``. ``program`` and ``command``
are accepted so that existing files work unchanged, but nothing is ever executed: every
trial is an in-process :func:`endebias.training.fit.fit`. Our own settings live under an
``optuna:`` section (sampler, seed, heartbeats), so the original keys keep their meaning.

Every error names the file and the key, e.g. ``sweeps/a.yaml: parameters.alpha: min 2
> max 1``.
"""

from __future__ import annotations

import copy
import logging
import math
import re
from pathlib import Path
from typing import Any

import yaml

from endebias.sweeps.safe_yaml import check_size, load_yaml
from endebias.sweeps.search_space import (
    Parameter,
    SweepFileError,
    SweepSpec,
    check_configs,
    place_parameters,
)

log = logging.getLogger(__name__)

SEARCH_METHODS = ("bayes", "random", "grid")
DISTRIBUTIONS = (
    "constant",
    "categorical",
    "uniform",
    "int_uniform",
    "q_uniform",
    "log_uniform_values",
    "log_uniform",
)
# Keys of the original format that mean nothing here but must not break a file.
TRACKER_KEYS = ("program", "command", "project", "entity", "description")
TOP_KEYS = (
    "name",
    "method",
    "metric",
    "parameters",
    "early_terminate",
    "run_cap",
    "optuna",
    *TRACKER_KEYS,
)
PARAMETER_KEYS = ("value", "values", "distribution", "min", "max", "q")
OPTUNA_DEFAULTS: dict[str, Any] = {
    "sampler": "tpe",  # for method bayes: tpe (robust default) or gp (needs scipy)
    "seed": None,  # base sampler seed; each agent adds its own id, never all the same
    "n_startup_trials": 10,  # random trials before the Bayesian model takes over
    # A killed agent's trial is failed and re-queued once its heartbeat is this old; an
    # agent at the run cap waits this long (plus a beat) for such trials before it stops.
    # Shorter stalls less, but a live agent cut off from the database for longer than
    # this loses its trial to a retry (docs/sweeps.md, "Killed agents").
    "heartbeat_interval": 10,
    "grace_period": 60,
    "max_retry": 3,
}
EARLY_TERMINATE_KEYS = ("type", "min_iter", "max_iter", "eta", "s")
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?(inf|nan)", re.IGNORECASE)
_said_not_executed = False


def coerce_number(value: Any) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string: turn numeric strings into numbers."""
    if isinstance(value, list):
        return [coerce_number(v) for v in value]
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            return float(text)
    return value


def load_sweep_file(path: str | Path) -> SweepSpec:
    path = Path(path)
    try:
        if path.is_file():  # before reading: a huge file is refused by its size alone
            check_size(path.stat().st_size, source=str(path))
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SweepFileError(f"{path}: cannot read the sweep file ({error.strerror})") from None
    except UnicodeDecodeError as error:
        raise SweepFileError(
            f"{path}: not a text file (byte {error.object[error.start]:#04x} at offset "
            f"{error.start} is not UTF-8); a sweep file is YAML text"
        ) from None
    try:
        mapping = load_yaml(text, source=str(path))
    except yaml.YAMLError as error:
        first = str(error).splitlines()[0]
        raise SweepFileError(f"{path}: not valid YAML ({first})") from None
    return parse_sweep(mapping, source=str(path))


def parse_sweep(mapping: Any, *, source: str, announce: bool = True) -> SweepSpec:
    """Validate a sweep file's mapping; ``announce`` logs that program/command are ignored."""

    def fail(key: str, problem: str) -> SweepFileError:
        return SweepFileError(f"{source}: {key}: {problem}")

    if not isinstance(mapping, dict):
        raise SweepFileError(
            f"{source}: a sweep file must be a mapping of keys, got {type(mapping).__name__}"
        )
    unknown = [k for k in mapping if k not in TOP_KEYS]
    if unknown:
        raise fail(str(unknown[0]), f"unknown key; known: {', '.join(TOP_KEYS)}")
    definition = copy.deepcopy(mapping)
    if announce:
        _say_not_executed(mapping, source)
    method = mapping.get("method")
    if method not in SEARCH_METHODS:
        raise fail("method", f"must be one of {', '.join(SEARCH_METHODS)}, got {method!r}")
    metric = mapping.get("metric", {"name": "valid_acc", "goal": "maximize"})
    if not isinstance(metric, dict) or set(metric) - {"name", "goal", "target"}:
        raise fail("metric", "must be a mapping with name and goal")
    # The trainer selects a run's epoch by valid accuracy; another metric would not match.
    if metric.get("name", "valid_acc") != "valid_acc":
        raise fail("metric.name", f"only valid_acc is supported, got {metric.get('name')!r}")
    if metric.get("goal", "maximize") != "maximize":
        raise fail("metric.goal", f"valid_acc is maximised, got {metric.get('goal')!r}")
    raw_parameters = mapping.get("parameters")
    if not isinstance(raw_parameters, dict) or not raw_parameters:
        raise fail("parameters", "must be a non-empty mapping of parameter names")
    parameters = {}
    for name, entry in raw_parameters.items():
        parameter = _parse_parameter(str(name), entry, fail)
        parameters[parameter.name] = parameter
        definition["parameters"][name] = _coerced_entry(entry)
    run_cap = mapping.get("run_cap")
    if run_cap is not None and (
        not isinstance(run_cap, int) or isinstance(run_cap, bool) or run_cap < 1
    ):
        raise fail("run_cap", f"must be a positive integer, got {run_cap!r}")
    spec = SweepSpec(
        name=str(mapping.get("name") or Path(source).stem),
        method=method,
        parameters=parameters,
        run_cap=run_cap,
        early_terminate=_parse_early_terminate(mapping.get("early_terminate"), fail),
        optuna=_parse_optuna(mapping.get("optuna"), fail),
        definition=definition,
        source=source,
    )
    if method == "grid":
        for parameter in parameters.values():
            if parameter.grid_values() is None:
                raise fail(
                    f"parameters.{parameter.name}",
                    f"grid search needs a finite set of values, not the continuous "
                    f"distribution {parameter.kind}",
                )
    place_parameters(spec, fail)
    check_configs(spec, fail)
    return spec


def _say_not_executed(mapping: dict[str, Any], source: str) -> None:
    global _said_not_executed
    present = [k for k in ("program", "command") if k in mapping]
    if present and not _said_not_executed:
        _said_not_executed = True
        log.info(
            "%s: %s accepted but never executed: each trial trains in the agent process",
            source,
            " and ".join(present),
        )


def _coerced_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (coerce_number(v) if k in ("value", "values", "min", "max", "q") else v)
        for k, v in entry.items()
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _parse_parameter(name: str, entry: Any, fail) -> Parameter:
    key = f"parameters.{name}"
    if not isinstance(entry, dict):
        raise fail(key, "must be a mapping with value, values or distribution/min/max")
    unknown = [k for k in entry if k not in PARAMETER_KEYS]
    if unknown:
        raise fail(f"{key}.{unknown[0]}", f"unknown key; known: {', '.join(PARAMETER_KEYS)}")
    entry = _coerced_entry(entry)
    name = name.replace("-", "_")
    kind = entry.get("distribution")
    if kind is None:
        if "value" in entry:
            kind = "constant"
        elif "values" in entry:
            kind = "categorical"
        elif "min" in entry or "max" in entry:
            both_ints = all(isinstance(entry.get(k), int) for k in ("min", "max"))
            kind = "int_uniform" if both_ints else "uniform"
        else:
            raise fail(key, "needs value, values or distribution with min and max")
    if kind not in DISTRIBUTIONS:
        raise fail(
            f"{key}.distribution", f"unsupported {kind!r}; supported: {', '.join(DISTRIBUTIONS)}"
        )
    allowed = {"constant": {"value"}, "categorical": {"values"}, "q_uniform": {"min", "max", "q"}}
    extra = set(entry) - {"distribution"} - allowed.get(kind, {"min", "max"})
    if extra:
        raise fail(f"{key}.{sorted(extra)[0]}", f"not allowed with distribution {kind}")
    if kind == "constant":
        if "value" not in entry:
            raise fail(key, "distribution constant needs value")
        return Parameter(name, (), kind, value=entry["value"])
    if kind == "categorical":
        values = entry.get("values")
        if not isinstance(values, list) or not values:
            raise fail(f"{key}.values", "must be a non-empty list")
        for value in values:
            if value is not None and not isinstance(value, bool | int | float | str):
                raise fail(
                    f"{key}.values", f"must hold numbers, strings or booleans, got {value!r}"
                )
        if len({repr(v) for v in values}) != len(values):
            raise fail(f"{key}.values", "holds a value twice")
        return Parameter(name, (), kind, values=tuple(values))
    for bound in ("min", "max") + (("q",) if kind == "q_uniform" else ()):
        if bound not in entry:
            raise fail(key, f"distribution {kind} needs {bound}")
        if not _is_number(entry[bound]):
            raise fail(f"{key}.{bound}", f"must be a finite number, got {entry[bound]!r}")
    low, high = entry["min"], entry["max"]
    if low > high:
        raise fail(key, f"min {low} > max {high}")
    if kind == "int_uniform" and not all(isinstance(v, int) for v in (low, high)):
        raise fail(key, f"int_uniform needs integer min and max, got {low!r}, {high!r}")
    if kind == "log_uniform_values" and low <= 0:
        raise fail(f"{key}.min", f"log_uniform_values needs min > 0, got {low}")
    q = entry.get("q")
    if kind == "q_uniform":
        steps = (high - low) / q if q > 0 else -1
        if q <= 0 or abs(steps - round(steps)) > 1e-9:
            raise fail(f"{key}.q", f"must be > 0 and divide max - min ({high - low}), got {q}")
    if kind == "log_uniform":  # min and max are natural-log exponents in the original format
        low, high = math.exp(low), math.exp(high)
    return Parameter(name, (), kind, low=low, high=high, q=q)


def _parse_early_terminate(entry: Any, fail) -> dict[str, Any] | None:
    if entry is None:
        return None
    if not isinstance(entry, dict):
        raise fail("early_terminate", "must be a mapping with type: hyperband")
    unknown = [k for k in entry if k not in EARLY_TERMINATE_KEYS]
    if unknown:
        raise fail(
            f"early_terminate.{unknown[0]}",
            f"unknown key; known: {', '.join(EARLY_TERMINATE_KEYS)}",
        )
    if entry.get("type") != "hyperband":
        raise fail(
            "early_terminate.type", f"only hyperband is supported, got {entry.get('type')!r}"
        )
    for key in ("min_iter", "max_iter", "eta", "s"):
        value = coerce_number(entry.get(key))
        if value is not None and (not isinstance(value, int) or value < 1):
            raise fail(f"early_terminate.{key}", f"must be a positive integer, got {value!r}")
    return {k: coerce_number(v) for k, v in entry.items()}


def _parse_optuna(entry: Any, fail) -> dict[str, Any]:
    if entry is None:
        return dict(OPTUNA_DEFAULTS)
    if not isinstance(entry, dict):
        raise fail("optuna", "must be a mapping")
    unknown = [k for k in entry if k not in OPTUNA_DEFAULTS]
    if unknown:
        raise fail(f"optuna.{unknown[0]}", f"unknown key; known: {', '.join(OPTUNA_DEFAULTS)}")
    settings = {**OPTUNA_DEFAULTS, **{k: coerce_number(v) for k, v in entry.items()}}
    if settings["sampler"] not in ("tpe", "gp"):
        raise fail("optuna.sampler", f"must be tpe or gp, got {settings['sampler']!r}")
    minimum = {
        "seed": 0,
        "n_startup_trials": 0,
        "heartbeat_interval": 1,
        "grace_period": 1,
        "max_retry": 0,
    }
    for key, least in minimum.items():
        value = settings[key]
        if value is None and key in ("seed", "max_retry"):
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise fail(f"optuna.{key}", f"must be an integer >= {least}, got {value!r}")
    if settings["grace_period"] <= settings["heartbeat_interval"]:
        raise fail("optuna.grace_period", "must be longer than heartbeat_interval")
    return settings
