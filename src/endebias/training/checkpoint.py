"""Checkpoints that say when they are damaged.

A checkpoint file is the ``torch.save`` bytes followed by one trailer line,
``endebias-checkpoint 1 sha256=<hex> size=<bytes>`` (torch's zip reader ignores bytes after
the archive, so ``torch.load`` still reads the file as it is). Saving writes a uniquely
named temporary file, fsyncs it, moves the current checkpoint to ``checkpoint.prev.pt``
and renames the new one into place (then fsyncs the folder), so at every instant at
least one complete, verifiable checkpoint exists. Loading checks the size and the SHA-256
before torch reads a byte, and always with ``weights_only=True``: a damaged file is
reported by name, never handed to the unpickler, and torch's own error text (which
suggests ``weights_only=False``, unsafe advice for a file of unknown origin) is never
shown. A checkpoint also names its run (``config_hash``, ``epoch``): one copied in from
another run is refused on resume like a damaged one (:func:`run_identity`).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch

from endebias.training import records

log = logging.getLogger(__name__)

MAGIC = b"\nendebias-checkpoint 1"
_TRAILER_LIMIT = 256
_ZIP = b"PK\x03\x04"  # torch.save's own format: a checkpoint from before the trailer
REQUIRED = ("history", "method", "rng")
# Optimiser state by group (endebias.training.optimizers), or one optimiser (older files).
OPTIMIZER_KEYS = (("optimizers", "schedulers"), ("optimizer", "scheduler"))


class CheckpointError(ValueError):
    """A checkpoint is damaged and there is no good one to fall back to."""


# A check of a decoded state against the run it is loaded for: a reason, or None.
Identity = Callable[[dict[str, Any]], str | None]


def run_identity(config_hash: str, recorded: list[dict[str, Any]] | None) -> Identity:
    """Whether a checkpoint is this run's: it names the run's config hash (checkpoints
    of older versions name none), its epoch count is its history's, and that history
    agrees with the epochs on record. The records may lag the checkpoint by one epoch (a
    kill between the two writes) or lead it (the previous checkpoint, after a damaged
    latest one), never more; a copied-in checkpoint of another run fails here. Records
    that cannot be read (None) are not compared."""

    def check(state: dict[str, Any]) -> str | None:
        history = state["history"]
        theirs = state.get("config_hash")
        if theirs is not None and theirs != config_hash:
            return (f"belongs to another run (config hash {theirs}, this run's "
                    f"{config_hash})")
        if state.get("epoch", len(history)) != len(history):
            return f"damaged (epoch {state.get('epoch')} with {len(history)} epochs of history)"
        if recorded is None:
            return None
        if len(history) > len(recorded) + 1:
            return (f"holds {len(history)} epochs, but the run's records only {len(recorded)}: "
                    "not this run's")
        for mine, kept in zip(recorded, history, strict=False):
            if (mine.get("epoch"), mine.get("valid_acc")) != (
                    kept.get("epoch"), kept.get("valid_acc")):
                return (f"disagrees with the run's records at epoch {mine.get('epoch')} "
                        "(another run's, or the records were changed)")
        return None

    return check


def encode(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    return payload + MAGIC + f" sha256={digest} size={len(payload)}\n".encode()


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write ``state`` to ``path``, keeping the previous checkpoint as
    ``checkpoint.prev.pt`` until the new one is complete."""
    path = Path(path)
    data = encode(state)
    previous = path.with_name(records.PREVIOUS_CHECKPOINT)

    def write(handle: IO[bytes]) -> None:
        handle.write(data)

    def keep_previous() -> None:
        if path.exists():
            os.replace(path, previous)

    records.atomic_write(path, write, before_replace=keep_previous)


def _decode(path: Path, identity: Identity | None = None) -> dict[str, Any]:
    """The verified state of one checkpoint file; :class:`CheckpointError` says why not
    (damaged, or not this run's by ``identity``)."""
    try:
        data = path.read_bytes()
    except PermissionError:
        raise CheckpointError(f"{path}: permission denied (cannot read it)") from None
    at = data.rfind(MAGIC, max(0, len(data) - _TRAILER_LIMIT))
    if at >= 0:
        payload, trailer = data[:at], data[at + len(MAGIC):]
        fields = dict(part.split(b"=", 1) for part in trailer.split() if b"=" in part)
        if fields.get(b"size", b"").decode(errors="replace") != str(len(payload)):
            raise CheckpointError(f"{path}: damaged (its size does not match its trailer)")
        if fields.get(b"sha256") != hashlib.sha256(payload).hexdigest().encode():
            raise CheckpointError(f"{path}: damaged (checksum mismatch)")
    elif data.startswith(_ZIP):  # no trailer: an older endebias's, or one cut short
        payload = data
    elif not data:
        raise CheckpointError(f"{path}: damaged (empty file)")
    else:
        raise CheckpointError(f"{path}: damaged (not an endebias checkpoint)")
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch's text advises weights_only=False
        raise CheckpointError(f"{path}: damaged (torch cannot read it: "
                              f"{type(error).__name__})") from None
    if (not isinstance(state, dict) or any(key not in state for key in REQUIRED)
            or not any(all(key in state for key in keys) for keys in OPTIMIZER_KEYS)):
        raise CheckpointError(f"{path}: damaged (not a training checkpoint)")
    if not isinstance(state["history"], list):
        raise CheckpointError(f"{path}: damaged (no epoch history)")
    problem = identity(state) if identity is not None else None
    if problem is not None:
        raise CheckpointError(f"{path}: {problem}")
    if at < 0:
        log.warning("%s has no checksum (written by an older endebias); loaded unverified", path)
    return state


def load_checkpoint(run_dir: Path, identity: Identity | None = None) -> dict[str, Any] | None:
    """The run's latest good checkpoint (on the CPU), or None when it has none.

    A damaged ``checkpoint.pt``, or one that is not this run's by ``identity`` (see
    :func:`run_identity`), falls back, with a warning naming it, to the previous good
    checkpoint; with none to fall back to, :class:`CheckpointError` names the file and
    says that ``--resume`` refuses (restarting would overwrite finished epochs).
    """
    run_dir = Path(run_dir)
    latest, previous = run_dir / records.CHECKPOINT, run_dir / records.PREVIOUS_CHECKPOINT
    problem: CheckpointError | None = None
    if latest.exists():
        try:
            return _decode(latest, identity)
        except CheckpointError as error:
            problem = error
    if previous.exists():
        try:
            state = _decode(previous, identity)
        except CheckpointError as error:
            problem = problem or error
        else:
            log.warning("%s; --resume continues from the previous good checkpoint %s "
                        "(after epoch %d)", problem or f"{latest} is missing", previous,
                        len(state["history"]))
            return state
    if problem is not None:
        raise CheckpointError(
            f"{problem}, and there is no good previous checkpoint: --resume refuses to "
            f"continue (move {run_dir} away to train the run again)"
        )
    return None
