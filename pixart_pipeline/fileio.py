"""Atomic file writes (and the few matching reads and hashes) shared by every stage.

Why: DESIGN.md principle 6, "crash-safe by construction". Every file the pipeline writes -- metadata
and caption tables, cache shards and their index parts, checkpoints, run results, eval reports -- is
written to a temp name in the destination folder, fsync-ed, then renamed into place with
``os.replace`` (atomic on POSIX and Windows). A killed run therefore leaves the old file or the new
one, never half of one, and a failed write leaves no temp file behind.

:func:`atomic_write` is the one core; everything else is a thin wrapper. Arguments are always
``(path, payload)``. No Dagster here, and torch, safetensors and pyarrow are imported lazily inside
the functions that need them, so importing this module stays light (the training spec imports it
without torch).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import pyarrow as pa
    import torch


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable: without it a power loss can keep the old directory entry (POSIX)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which races with other threads.
_UMASK = _read_umask()


def atomic_write(path: Path | str, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temp name beside ``path``, fsync it, then ``os.replace`` it into place.

    Parent folders are created. The temp file (``.<name>.<random>.tmp`` in the same folder, so the
    rename never crosses a filesystem) is removed if anything fails, including KeyboardInterrupt.
    Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        # mkstemp creates 0600; give the file the mode a plain open() would (exported pipelines and
        # reports are meant to be read by others).
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write raw bytes to ``path`` atomically."""

    def _write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, _write)


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write ``text`` as UTF-8 to ``path`` atomically (written exactly as given)."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    """Write ``obj`` as JSON (indent 2, sorted keys, trailing newline) to ``path`` atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_write_parquet(path: Path | str, table: pa.Table) -> Path:
    """Write a pyarrow ``table`` to ``path`` as parquet, atomically."""
    import pyarrow.parquet as pq

    return atomic_write(path, lambda tmp: pq.write_table(table, tmp))


def read_parquet(path: Path | str) -> pa.Table:
    """Read a parquet file (as written by :func:`atomic_write_parquet`; no pickle anywhere).

    ``ParquetFile.read`` rather than ``pq.read_table``: the latter goes through ``pyarrow.dataset``,
    whose first import costs 30-100 ms in a fresh process (each Dagster step is one; the data steps
    read only through here), for a single file it does not need.
    """
    import pyarrow.parquet as pq

    with pq.ParquetFile(Path(path)) as reader:
        return reader.read()


def atomic_save_tensors(
    path: Path | str, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None
) -> Path:
    """Save ``tensors`` as a safetensors file, atomically. Tensors are made contiguous and moved to CPU."""
    from safetensors.torch import save_file

    cpu = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(cpu, tmp, metadata=metadata))


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) in name order: the same weights give the same hash
    whatever the file format or metadata."""
    import torch

    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def sha256_file(path: Path | str, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks.

    Plain ``os.read`` on a descriptor: for the small files a dataset is made of (a 2 KB thumbnail),
    ``open()``'s buffered reader doubled the time per file, and hashing 100,000 of them is the cold
    manifest's main cost.
    """
    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))  # O_BINARY: Windows would translate CRLF
    try:
        while block := os.read(fd, chunk):
            h.update(block)
    finally:
        os.close(fd)
    return h.hexdigest()
