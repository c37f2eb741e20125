"""Read back an offline W&B run (``run-<id>.wandb``) without network: the tests' view of what was logged.

The file is W&B's record log: a 7-byte header (``:W&B``, magic 0xBEE1, version), then LevelDB-style
32 KiB blocks of chunks (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last), each
record a serialized ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7
CHUNK_HEADER = 7


def read_records(path: Path) -> list:
    """Every ``Record`` of one ``.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run log"
    records, pos, parts = [], HEADER, b""
    while pos + CHUNK_HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < CHUNK_HEADER:  # block trailer padding
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + CHUNK_HEADER])
        if length == 0 and kind == 0:
            pos += left_in_block
            continue
        payload = data[pos + CHUNK_HEADER:pos + CHUNK_HEADER + length]
        pos += CHUNK_HEADER + length
        parts = payload if kind in (1, 2) else parts + payload
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(parts)
            records.append(record)
            parts = b""
    return records


def history_rows(path: Path) -> list[dict]:
    """The ``run.log`` rows of one offline run: ``{key: value}`` (values JSON-decoded)."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                         for item in record.history.item})
    return rows


def run_ids(path: Path) -> set[str]:
    """The run id(s) a ``.wandb`` file's run records name."""
    return {r.run.run_id for r in read_records(path) if r.WhichOneof("record_type") == "run"}
