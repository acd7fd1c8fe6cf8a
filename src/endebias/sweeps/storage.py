"""Sweeps on Optuna storage: create a study from a sweep file, rebuild its sampler and
pruner in every agent, open SQLite or PostgreSQL storage with heartbeats (no torch here).

Optuna keeps trials, parameters and reported values in the storage, but not the sampler
or the pruner: the sweep file's mapping is stored as a study user attribute and every
agent rebuilds both from it, each with its own sampler seed.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import secrets
import socket
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.storages._rdb import models as rdb_models
from optuna.storages._rdb.storage import _create_scoped_session

from endebias.sweeps import sqlite_file
from endebias.sweeps.retry import DEFAULT_RETRY_SECONDS, first_line, is_transient, retry_transient
from endebias.sweeps.search_space import SweepSpec, grid_search_space
from endebias.sweeps.sweep_file import parse_sweep
from endebias.sweeps.urls import encoding_hint, mask_url, scrub
from endebias.training.config import make_config

log = logging.getLogger(__name__)

STORAGE_ENV = "ENDEBIAS_STORAGE"
DEFAULT_DB = "sweeps.db"
SPEC_ATTR = "sweep"  # study user attribute: the sweep file's mapping
SOURCE_ATTR = "sweep_source"
PRUNERS = ("none", "median", "hyperband")


def default_storage(runs_dir: str | Path = "runs") -> str:
    """``$ENDEBIAS_STORAGE`` if set, else a SQLite file under the runs folder."""
    if os.environ.get(STORAGE_ENV):
        return os.environ[STORAGE_ENV]
    return f"sqlite:///{Path(runs_dir) / DEFAULT_DB}"


def open_storage(
    url: str,
    *,
    heartbeat_interval: int | None = None,
    grace_period: int | None = None,
    max_retry: int | None = None,
    create: bool = False,
    wait: float = DEFAULT_RETRY_SECONDS,
) -> optuna.storages.RDBStorage:
    """RDB storage for ``url`` (``sqlite:///path`` or ``postgresql://...``). Only ``create``
    (``sweep create``) may make a new one: otherwise a missing or empty SQLite file, or a
    database without Optuna's tables, is "no sweep storage" and is left untouched, and a
    damaged SQLite file is named as such. A file another process holds locked is waited
    for, up to ``wait`` seconds (``--storage-retry``), then named with its holder.

    With ``heartbeat_interval``, a trial whose agent stops beating for ``grace_period``
    seconds is failed by the next agent and re-queued with the same parameters (up to
    ``max_retry`` times), so it resumes its run folder.
    """
    if not url.startswith(("sqlite:", "postgresql:", "postgresql+", "mysql:", "mysql+")):
        raise ValueError(f"storage {mask_url(url)!r}: expected sqlite:///PATH or postgresql://...")
    engine_kwargs: dict[str, Any] = {}
    shown, given = mask_url(url), url
    url = _with_driver(url)
    sqlite_path: Path | None = None
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:///")
        if path and path != ":memory:":
            sqlite_path = Path(path)
            sqlite_file.check_study_file(sqlite_path, create=create, wait=wait)
            sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        # Several agents share one file: wait for the writer's lock instead of failing
        # (a lock held longer is waited out by the retries, up to ``wait``).
        engine_kwargs["connect_args"] = {"timeout": max(1.0, min(60.0, wait))}
    elif url.startswith("postgresql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
        engine_kwargs["pool_pre_ping"] = True
    heartbeat: dict[str, Any] = {}
    with warnings.catch_warnings():
        # Heartbeats are "experimental" in Optuna 5.0 and say so on every use.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if heartbeat_interval is not None:
            heartbeat = {
                "heartbeat_interval": heartbeat_interval,
                "grace_period": grace_period,
                "heartbeat_stale_trial_callback": optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=max_retry
                ),
            }
        try:
            if sqlite_path is not None:
                return sqlite_file.waiting_while_busy(
                    lambda: optuna.storages.RDBStorage(
                        url, engine_kwargs=engine_kwargs, **heartbeat),
                    path=sqlite_path, wait=wait)

            def connect() -> optuna.storages.RDBStorage:
                if not create and not url.startswith("sqlite:"):
                    _check_has_sweeps(url, shown, engine_kwargs)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)

            # A server still starting (or a network blip) at start-up is waited for too.
            return retry_transient(connect, url=given, limit=wait)
        except (FileNotFoundError, sqlite_file.StorageBusy):
            raise
        except Exception as error:  # driver errors have many types; all mean the same here
            if sqlite_path is not None:
                raise RuntimeError(sqlite_file.describe(sqlite_path, error)) from None
            first = scrub(str(error), url).strip().splitlines()[0] if str(error) else ""
            waited = f" (still after {wait:g} s of retries: --storage-retry SECONDS waits " \
                "longer)" if wait and is_transient(error) else ""
            raise RuntimeError(
                f"cannot open sweep storage {shown}: {type(error).__name__}: {first}"
                f"{waited}{encoding_hint(url)}"
            ) from None


damaged = sqlite_file.damaged


def _check_has_sweeps(url: str, shown: str, engine_kwargs: dict[str, Any]) -> None:
    """A server database without Optuna's tables holds no sweeps: say so, create nothing."""
    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        if not sqlalchemy.inspect(engine).has_table("studies"):
            raise FileNotFoundError(
                f"no sweep storage at {shown}: the database holds no sweeps; create one "
                "first (endebias sweep create FILE --storage URL)"
            )
    finally:
        engine.dispose()


@contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """Errors the storage raises while in use, as one line naming it (no password)."""
    try:
        yield
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as error:
        detail = first_line(error, url)
        if url.startswith("sqlite:///"):
            path = Path(url.removeprefix("sqlite:///"))
            raise RuntimeError(sqlite_file.describe(path, error)) from None
        if "malformed" in detail or "not a database" in detail:
            raise RuntimeError(damaged(mask_url(url), detail)) from None
        raise RuntimeError(f"sweep storage {mask_url(url)} failed: {detail}") from None


def _with_driver(url: str) -> str:
    """``postgresql://`` means psycopg (3) to SQLAlchemy 2.1; use psycopg2 when only it is
    installed (``pip install endebias[postgres]`` brings psycopg2-binary)."""
    if not url.startswith("postgresql://"):
        return url
    for module, scheme in (
        ("psycopg", "postgresql+psycopg://"),
        ("psycopg2", "postgresql+psycopg2://"),
    ):
        if importlib.util.find_spec(module) is not None:
            return scheme + url.removeprefix("postgresql://")
    raise RuntimeError(
        f"storage {mask_url(url)}: no PostgreSQL driver; pip install psycopg2-binary"
    )


def new_sweep_id(spec: SweepSpec) -> str:
    slug = re.sub(r"[^a-z0-9.]+", "-", Path(spec.source).stem.lower()).strip("-") or "sweep"
    return f"{slug}-{secrets.token_hex(3)}"


def create_sweep(spec: SweepSpec, *, storage: str, sweep_id: str | None = None,
                 wait: float = DEFAULT_RETRY_SECONDS) -> str:
    """Create the study for ``spec`` in ``storage`` and return its id (the study name).

    The study and the sweep file's attributes are written in one transaction, so a
    ``create`` killed midway leaves either no sweep or a whole one. A half-made sweep left
    by an older version (a study with no definition and no trials) is completed.
    """
    sweep_id = sweep_id or new_sweep_id(spec)
    rdb = open_storage(storage, create=True, wait=wait)
    attrs = {SPEC_ATTR: spec.definition, SOURCE_ATTR: spec.source, "name": spec.name}
    path = Path(storage.removeprefix("sqlite:///")) if storage.startswith("sqlite:") else None

    def insert() -> None:
        with _create_scoped_session(rdb.scoped_session) as session:
            study = rdb_models.StudyModel(
                study_name=sweep_id,
                directions=[rdb_models.StudyDirectionModel(
                    objective=0, direction=optuna.study.StudyDirection.MAXIMIZE)],
            )
            study.user_attributes = [
                rdb_models.StudyUserAttributeModel(key=key, value_json=json.dumps(value))
                for key, value in attrs.items()
            ]
            session.add(study)

    with storage_errors(storage):
        try:
            if path is None:
                insert()
            else:
                sqlite_file.waiting_while_busy(insert, path=path, wait=wait)
        except sqlalchemy.exc.IntegrityError:
            _complete_half_made(rdb, sweep_id, attrs, storage)
    return sweep_id


def _complete_half_made(
    rdb: optuna.storages.RDBStorage, sweep_id: str, attrs: dict[str, Any], storage: str
) -> None:
    """``sweep_id`` exists: complete it if a killed ``create`` left it without its
    definition and no trial ever ran, else refuse."""
    study_id = rdb.get_study_id_from_name(sweep_id)
    if SPEC_ATTR in rdb.get_study_user_attrs(study_id) or rdb.get_n_trials(study_id):
        raise ValueError(f"sweep {sweep_id!r} already exists in {mask_url(storage)}")
    for key, value in attrs.items():
        rdb.set_study_user_attr(study_id, key, value)
    log.warning("sweep %s was half made (a stopped `sweep create`): completed it", sweep_id)


def load_study(
    sweep_id: str, *, storage: str | optuna.storages.RDBStorage,
    wait: float = DEFAULT_RETRY_SECONDS, **kwargs: Any
) -> optuna.Study:
    rdb = open_storage(storage, wait=wait) if isinstance(storage, str) else storage
    try:
        return optuna.load_study(study_name=sweep_id, storage=rdb, **kwargs)
    except KeyError:
        known = [s.study_name for s in optuna.get_all_study_summaries(rdb)]
        shown = ", ".join(known[-10:]) or "none"
        raise ValueError(f"no sweep {sweep_id!r} in {mask_url(rdb.url)}; known: {shown}") from None


def sweep_spec(study: optuna.Study) -> SweepSpec:
    definition = study.user_attrs.get(SPEC_ATTR)
    if definition is None and not study.trials:
        raise ValueError(
            f"sweep {study.study_name!r} is half made (its `sweep create` was stopped before "
            f"storing the sweep file): run `endebias sweep create FILE --id "
            f"{study.study_name}` again to complete it"
        )
    if definition is None:
        raise ValueError(f"study {study.study_name!r} was not created by `endebias sweep create`")
    source = study.user_attrs.get(SOURCE_ATTR, study.study_name)
    return parse_sweep(definition, source=source, announce=False)


def agent_seed(spec: SweepSpec, agent_id: int | None) -> int | None:
    """None (fresh entropy) unless the file sets a base seed; then base + this agent's id,
    so no two agents draw the same points (all agents on one seed gave duplicate trials)."""
    base = spec.optuna["seed"]
    if base is None:
        return None
    if agent_id is None:
        agent_id = zlib.crc32(f"{socket.gethostname()}:{os.getpid()}".encode()) % 1_000_000
    return base + agent_id


def build_sampler(spec: SweepSpec, *, seed: int | None) -> optuna.samplers.BaseSampler:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if spec.method == "grid":
            return optuna.samplers.GridSampler(grid_search_space(spec), seed=seed)
        if spec.method == "random":
            return optuna.samplers.RandomSampler(seed=seed)
        startup = spec.optuna["n_startup_trials"]
        if spec.optuna["sampler"] == "gp":
            try:
                import scipy  # noqa: F401  (GPSampler needs it; fail here, not mid-trial)
            except ImportError:
                raise RuntimeError(
                    "optuna.sampler gp needs scipy: pip install scipy, or use sampler tpe"
                ) from None
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=startup)
        # constant_liar: parallel agents treat running trials as bad, so they spread out.
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=startup, multivariate=True, constant_liar=True
        )


def warmup_epochs(spec: SweepSpec) -> tuple[int, int]:
    """(warm-up, epochs) of the sweep's base config: no pruning before the first
    learning-rate drop (epoch 20 in the paper protocol), as accuracies jump there."""
    preset, overrides = spec.overrides({})
    config = make_config(preset, **overrides)
    return min(config.lr_step, config.epochs), config.epochs


def build_pruner(spec: SweepSpec, kind: str | None) -> optuna.pruners.BasePruner:
    """``kind`` from the command line; None takes the file's ``early_terminate``."""
    if kind is None:
        kind = "hyperband" if spec.early_terminate else "none"
    if kind not in PRUNERS:
        raise ValueError(f"--prune must be one of {', '.join(PRUNERS)}, got {kind!r}")
    warmup, epochs = warmup_epochs(spec)
    if kind == "none":
        return optuna.pruners.NopPruner()
    if kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=warmup)
    settings = spec.early_terminate or {}
    min_iter = settings.get("min_iter") or warmup
    if min_iter < warmup:
        log.info(
            "early_terminate.min_iter %d raised to %d: no pruning before the first "
            "learning-rate drop",
            min_iter,
            warmup,
        )
        min_iter = warmup
    return optuna.pruners.HyperbandPruner(
        min_resource=min_iter,
        max_resource=settings.get("max_iter") or epochs,
        reduction_factor=settings.get("eta") or 3,
    )
