"""``--bias-labels pseudo``: a run in three stages, each resumable (the stage mechanism:
:mod:`endebias.training.stages`).

1. **stage 1** trains a bias-capturing model (vanilla or GCE, a few epochs) on the training
   split, as a normal run folder ``RUN/stage1/`` (or one that sweep trials share);
2. **stage 2**, stage 1's hand-on, derives one pseudo bias label per training sample from it
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
from pathlib import Path

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
from endebias.training.loading import load_benchmark, resolve_device
from endebias.training.prepared import build_run_method
from endebias.training.run import Handoff
from endebias.training.stages import Stage, StageInput, shared_folder, stage_config

log = logging.getLogger(__name__)

STAGE1 = "stage1"
LABELS = "pseudo_labels.npz"


def stage1_config(config: TrainConfig) -> TrainConfig:
    """The bias-capturing run: the main run's data, seed, optimiser and device, with the
    stage-1 loss, epochs and (optionally) model and model options."""
    options = config.pseudo_options
    return stage_config(
        config, method=options["stage1"],
        method_options={"gce_q": options["q"]} if options["stage1"] == "gce" else {},
        epochs=options["stage1_epochs"], model=options["stage1_model"],
        model_options=options.get("stage1_model_options") or {},
    )


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
    labelling...) share one bias-capturing model: ``folder/.stage1/<hash of its config>``."""
    return shared_folder(STAGE1, stage1_config(config), folder)


def pseudo_label_stage(config: TrainConfig, run_dir: Path, *,
                       shared: Path | None = None) -> Stage:
    """Stage 1, the bias-capturing run (in ``RUN/stage1``, or with ``shared`` in a folder
    other runs share), whose hand-on is stage 2: the pseudo labels, read from
    ``RUN/pseudo_labels.npz`` or derived and written there, become the run's training bias
    labels. Labels already written make stage 1 unnecessary."""
    _check_method(config)
    labels_path = Path(run_dir) / LABELS
    first = stage1_config(config)

    def hand_on(given: StageInput) -> Handoff:
        labels = read_labels(labels_path)
        if labels is None:
            labels = _derive_and_write(config, given, labels_path)
        return Handoff(prepare_benchmark=lambda benchmark: use_labels(benchmark, labels))

    return Stage(
        "stage 1", first,
        Path(run_dir) / STAGE1 if shared is None else shared_stage1_dir(config, shared),
        hand_on, needs_training=lambda: read_labels(labels_path) is None,
    )


def _derive_and_write(config: TrainConfig, given: StageInput, labels_path: Path) -> np.ndarray:
    """Stage 2: the finished stage 1's pseudo labels and their agreement with the true bias
    labels, written into the run's folder (the labels file last: it marks stage 2 done)."""
    log.info("stage 2: %s pseudo bias labels", config.pseudo_options["labelling"])
    labels, benchmark = derive_labels(config, given.folder, data_dir=given.data_dir)
    if benchmark.has_bias_labels:
        agreement = label_agreement(labels, benchmark.train.biases.cpu().numpy())
        compared = (f"agreement with the true bias labels: NMI {agreement['nmi']:.3f}, "
                    f"matched accuracy {agreement['matched_acc']:.4f}")
    else:  # nothing to compare with: the file keeps what the labels are
        agreement = {"num_pseudo_labels": len(np.unique(labels))}
        compared = "the dataset has no bias labels to compare them with"
    agreement["labelling"] = config.pseudo_options["labelling"]
    if given.main:
        given.lock.check()
        records.atomic_write_json(given.run_dir / AGREEMENT, agreement)
        write_labels(labels_path, labels)
    log.info("pseudo labels: %d values; %s", agreement["num_pseudo_labels"], compared)
    return labels
