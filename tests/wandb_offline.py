"""Read a W&B offline run (``offline-run-*/run-*.wandb``) back, independently of wandb's
writer: the file is a LevelDB-style log of protobuf ``Record`` messages.

Layout (as wandb writes it): a 7-byte file header (``:W&B``, magic 0xBEE1, version 0),
then 32 KiB blocks of chunks, each chunk a 7-byte header (CRC-32 of type byte + data,
uint16 length, uint8 type: 1 full, 2 first, 3 middle, 4 last) and its data; a block's
tail shorter than a chunk header is zero padding. Only the message classes come from the
installed wandb (``wandb.proto.wandb_internal_pb2``).
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BLOCK = 32768
HEADER = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[Any]:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path}: not a W&B log"
    records, pending, position = [], b"", 7
    while position + HEADER.size <= len(data):
        if BLOCK - position % BLOCK < HEADER.size:
            position += BLOCK - position % BLOCK  # padding at a block's end
            continue
        checksum, length, kind = HEADER.unpack_from(data, position)
        if (checksum, length, kind) == (0, 0, 0):
            break
        chunk = data[position + HEADER.size:position + HEADER.size + length]
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) == checksum, f"{path}: bad CRC"
        position += HEADER.size + length
        pending = chunk if kind in (FULL, FIRST) else pending + chunk
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    project: str = ""
    name: str = ""
    group: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None


def read_offline_run(folder: Path) -> OfflineRun:
    """Config, history rows (wandb's own ``_`` keys dropped) and the final summary (its
    updates applied in order) of one ``offline-run-*`` folder."""
    (path,) = folder.glob("run-*.wandb")
    run = OfflineRun()
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run.project, run.name = record.run.project, record.run.display_name
            run.group = record.run.run_group
            run.config.update({_key(i): json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            run.config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            row = {_key(i): json.loads(i.value_json) for i in record.history.item}
            run.history.append({k: v for k, v in row.items() if not k.startswith("_")}
                               | {"_step": row.get("_step")})
        elif kind == "summary":
            for item in record.summary.update:
                run.summary[_key(item)] = json.loads(item.value_json)
            for item in record.summary.remove:
                run.summary.pop(_key(item), None)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    run.config.pop("_wandb", None)
    return run
