"""Atomic parquet/JSON writes and plain reads, shared by every stage that writes a table.

Every write goes to a temp file in the destination folder and is then ``os.replace``-d into
place, so a killed run leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


def _atomic_write(path: Path, write) -> Path:
    """Call ``write(tmp_path)`` on a temp name beside ``path``, fsync it, then rename into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_parquet_atomic(table: pa.Table, path: Path) -> Path:
    """Write ``table`` to ``path`` as parquet, atomically (temp file + ``os.replace``)."""
    return _atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


def read_parquet(path: Path) -> pa.Table:
    """Read a parquet file written by :func:`write_parquet_atomic` (no pickle anywhere)."""
    return pq.read_table(Path(path))


def write_bytes_atomic(data: bytes, path: Path) -> Path:
    """Write raw bytes to ``path`` atomically."""

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    return _atomic_write(Path(path), _write)


def write_json_atomic(obj: Any, path: Path) -> Path:
    """Write ``obj`` as pretty, key-sorted JSON to ``path`` atomically."""
    return write_bytes_atomic((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), Path(path))
