"""``--bias-labels pseudo``: a run in three stages, each resumable.

1. **stage 1** trains a bias-capturing model (vanilla or GCE, a few epochs) on the training
   split, as a normal run folder ``RUN/stage1/``;
2. **stage 2** derives one pseudo bias label per training sample from it
   (:func:`endebias.pseudo_labels.pseudo_bias_labels`) and writes them, with a checksum,
   to ``RUN/pseudo_labels.npz`` (atomically), and their agreement with the dataset's own
   bias labels to ``RUN/pseudo_labels.json``;
3. **stage 3** is the run itself in ``RUN``: the method trains on the pseudo labels,
   while evaluation keeps the dataset's true groups.

``RUN/config.json`` is written first and records ``bias_labels`` and every
``pseudo_options`` value. A killed run resumes at the stage it was killed in: a finished
stage 1 is not retrained, and labels whose file is missing or fails its checksum are
derived again from the finished stage 1 (deterministically, so they are the same).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from endebias.agreement import label_agreement
from endebias.data import Benchmark, Split
from endebias.methods import method_class
from endebias.metrics import aligned_groups, group_counts
from endebias.pseudo_labels import pseudo_bias_labels
from endebias.training import records
from endebias.training.bias_labels import AGREEMENT
from endebias.training.checkpoint import load_checkpoint, run_identity
from endebias.training.config import TrainConfig
from endebias.training.fit import existing_run, fit, load_benchmark, resolve_device
from endebias.training.prepared import build_run_method
from endebias.training.run_lock import RunInUseError, RunLock

log = logging.getLogger(__name__)

STAGE1 = "stage1"
STAGE1_WAIT_SECONDS = 5  # how often a run waiting for a shared stage 1 looks again
LABELS = "pseudo_labels.npz"


def stage1_config(config: TrainConfig) -> TrainConfig:
    """The bias-capturing run: the main run's data, seed, optimiser and device, with the
    stage-1 loss, epochs and (optionally) model and model options."""
    options = config.pseudo_options
    values = config.to_dict()
    values.pop("bias_labels", None)
    values.pop("pseudo_options", None)
    values["method"] = options["stage1"]
    values["method_options"] = {"gce_q": options["q"]} if options["stage1"] == "gce" else {}
    values["epochs"] = options["stage1_epochs"]
    values["save_features"] = 0
    model = options["stage1_model"] or config.model
    base = config.model_options if model == config.model else {}
    values["model"] = model
    values["model_options"] = {**base, **(options.get("stage1_model_options") or {})}
    return TrainConfig.from_dict(values)


def _checksum(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()


def write_labels(path: Path, labels: np.ndarray) -> None:
    """The labels and their SHA-256, written to a temporary file and renamed over ``path``."""
    labels = np.asarray(labels, dtype=np.int64)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, labels=labels, sha256=np.array(_checksum(labels)))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_labels(path: Path) -> np.ndarray | None:
    """The labels in ``path``, or None (with a warning) when the file is missing, cannot
    be read or fails its checksum."""
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            labels, expected = data["labels"], str(data["sha256"])
    except Exception as error:  # a truncated or garbled file: any reader error
        log.warning("%s is unreadable (%s); deriving the labels again", path, error)
        return None
    if labels.ndim != 1 or labels.dtype != np.int64 or _checksum(labels) != expected:
        log.warning("%s fails its checksum; deriving the labels again", path)
        return None
    return labels


def derive_labels(
    config: TrainConfig, stage1_dir: Path, *, data_dir: str | None
) -> tuple[np.ndarray, Benchmark]:
    """Stage 2: the finished stage-1 model's pseudo labels for the training split."""
    first = stage1_config(config)
    device = resolve_device(config.device)
    benchmark = load_benchmark(first, data_dir=data_dir, device=device)
    method = build_run_method(first, benchmark).to(device)
    # Verified, and stage 1's own (not a checkpoint copied in from another run); falls
    # back to the previous good one.
    state = load_checkpoint(stage1_dir, run_identity(records.config_hash(first.to_dict()),
                                                     records.read_metrics(stage1_dir)))
    if state is None:
        raise FileNotFoundError(f"{stage1_dir} holds no checkpoint of the stage-1 model")
    method.load_state_dict(state["method"])
    options = config.pseudo_options
    labels = pseudo_bias_labels(
        method.model, benchmark.train.inputs, benchmark.train.targets,
        labelling=options["labelling"], k=options["k"], layer=options["layer"],
        prepare=benchmark.prepare, batch_size=config.eval_batch_size, seed=config.seed,
    )
    return labels.numpy().astype(np.int64), benchmark


def use_labels(benchmark: Benchmark, labels: np.ndarray) -> None:
    """Train on ``labels`` instead of the dataset's bias labels; keep evaluating on the
    true groups. The bias-label range widens to cover both (empty columns are ignored by
    the group metrics)."""
    train = benchmark.train
    if len(labels) != len(train):
        raise ValueError(
            f"pseudo labels for {len(labels)} samples, but the training split has {len(train)}"
        )
    if benchmark.aligned is None:
        counts = group_counts(train.targets, train.targets, train.biases,
                              num_targets=benchmark.num_targets,
                              num_biases=benchmark.num_biases)[0]
        benchmark.aligned = aligned_groups(counts)
    width = max(benchmark.num_biases, int(labels.max()) + 1)
    aligned = torch.zeros(benchmark.num_targets, width, dtype=torch.bool)
    aligned[:, : benchmark.aligned.shape[1]] = benchmark.aligned.cpu()
    benchmark.aligned = aligned
    benchmark.num_biases = width
    benchmark.has_bias_labels = True  # the pseudo labels are the training bias labels now
    device = train.targets.device
    benchmark.train = Split(train.inputs, train.targets, torch.from_numpy(labels).to(device))


def _check_method(config: TrainConfig) -> None:
    if not method_class(config.method).uses_bias_labels:
        raise ValueError(
            f"--bias-labels pseudo: method {config.method!r} does not use bias labels; "
            "use one that does (end, groupdro, biasbal)"
        )


def shared_stage1_dir(config: TrainConfig, folder: Path) -> Path:
    """Where runs that differ only in what stage 1 does not see (their method options,
    labelling...) share one bias-capturing model: ``folder/.stage1/<hash of its config>``
    (a hidden folder, so that listing ``folder``'s runs does not show it)."""
    return folder / ".stage1" / records.config_hash(stage1_config(config).to_dict())


def fit_with_bias_labels(
    config: TrainConfig, run_dir: str | Path, *, data_dir: str | None = None,
    resume: bool = False, progress: bool = True,
    echo: Callable[[str], None] | None = None, stage1_dir: Path | None = None,
    **fit_options: Any,
) -> dict[str, Any]:
    """:func:`~endebias.training.fit.fit` for any ``config.bias_labels``: ``given`` is
    ``fit`` itself; ``pseudo`` runs the three stages into ``run_dir``. Stage 1 gets
    ``progress`` and ``echo`` (its lines marked ``stage 1``) but not the other options
    (``on_epoch``...), which belong to the run itself. ``stage1_dir`` (default
    ``run_dir/stage1``) may be a folder other runs share (:func:`shared_stage1_dir`): the
    first trains it, the others wait for it and reuse it."""
    if config.bias_labels == "given":
        return fit(config, run_dir, data_dir=data_dir, resume=resume, progress=progress,
                   echo=echo, **fit_options)
    _check_method(config)
    run_dir = Path(run_dir)
    main = int(os.environ.get("RANK", "0")) == 0
    # The run's folder is held from the first look to the last write, across all three
    # stages (stage 1 has its own folder and lock), as fit holds a solo run's.
    lock = RunLock.acquire(run_dir) if main else RunLock.unlocked(run_dir)
    try:
        if main:
            records.remove_temp_files(run_dir)
        finished = existing_run(config, run_dir, resume=resume)  # fit's rules for the folder
        if finished is not None:
            return finished
        # Written before stage 1, so the folder is this run from the start: a second launch
        # without --resume is refused, and `results` lists it as unfinished.
        if main:
            records.atomic_write_json(run_dir / records.CONFIG, config.to_dict())
        labels = _stages_1_and_2(config, run_dir, lock, main=main, data_dir=data_dir,
                                 progress=progress, echo=echo,
                                 stage1_dir=stage1_dir or run_dir / STAGE1)
        log.info("stage 3: %s on the pseudo labels in %s", config.method, run_dir)
        return fit(config, run_dir, data_dir=data_dir, resume=True, progress=progress,
                   echo=echo, prepare_benchmark=lambda benchmark: use_labels(benchmark, labels),
                   lock=lock, **fit_options)
    finally:
        lock.release()


def _stages_1_and_2(
    config: TrainConfig, run_dir: Path, lock: RunLock, *, main: bool, data_dir: str | None,
    progress: bool, echo: Callable[[str], None] | None, stage1_dir: Path,
) -> np.ndarray:
    """Train (or resume, or reuse) the bias-capturing model, then read the pseudo labels
    or derive and write them."""
    labels_path = run_dir / LABELS
    labels = read_labels(labels_path)
    if labels is not None:
        return labels  # stage 2 done: stage 1 is not needed again
    first = stage1_config(config)
    log.info("stage 1: %s bias-capturing model, %d epochs, in %s",
             first.method, first.epochs, stage1_dir)
    while True:
        try:
            fit(first, stage1_dir, data_dir=data_dir, resume=True, progress=progress,
                echo=None if echo is None else lambda line: echo(f"stage 1 | {line}"))
            break
        except RunInUseError as error:  # a shared stage 1 another run is training now
            log.info("stage 1: %s; waiting for it to finish", error)
            time.sleep(STAGE1_WAIT_SECONDS)
    log.info("stage 2: %s pseudo bias labels", config.pseudo_options["labelling"])
    labels, benchmark = derive_labels(config, stage1_dir, data_dir=data_dir)
    if benchmark.has_bias_labels:
        agreement = label_agreement(labels, benchmark.train.biases.cpu().numpy())
        compared = (f"agreement with the true bias labels: NMI {agreement['nmi']:.3f}, "
                    f"matched accuracy {agreement['matched_acc']:.4f}")
    else:  # nothing to compare with: the file keeps what the labels are
        agreement = {"num_pseudo_labels": len(np.unique(labels))}
        compared = "the dataset has no bias labels to compare them with"
    agreement["labelling"] = config.pseudo_options["labelling"]
    if main:
        lock.check()
        # The labels file last: it is what marks stage 2 as done.
        records.atomic_write_json(run_dir / AGREEMENT, agreement)
        write_labels(labels_path, labels)
    log.info("pseudo labels: %d values; %s", agreement["num_pseudo_labels"], compared)
    return labels
