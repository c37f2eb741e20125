"""pixart_pipeline.fileio: a failed write leaves the old file and no temp file; round trips."""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from pixart_pipeline.fileio import (
    atomic_save_tensors,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
    atomic_write_text,
    read_parquet,
    tensors_sha256,
)


class Boom(Exception):
    pass


def test_write_that_raises_midway_keeps_old_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "out.bin"
    atomic_write_bytes(target, b"old contents")

    def half_then_fail(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(b"new but only ha")
        raise Boom("killed midway")

    with pytest.raises(Boom):
        atomic_write(target, half_then_fail)
    assert target.read_bytes() == b"old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_keyboard_interrupt_and_missing_target_leave_nothing(tmp_path):
    target = tmp_path / "new" / "deeper" / "x.json"

    def interrupted(tmp: str) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, interrupted)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # parents are made, but no temp file stays


def test_parquet_write_failure_keeps_old_table(tmp_path):
    target = tmp_path / "t.parquet"
    old = pa.table({"a": [1, 2, 3]})
    atomic_write_parquet(target, old)
    with pytest.raises(Exception):
        atomic_write_parquet(target, "not a table")  # type: ignore[arg-type]
    assert read_parquet(target).equals(old)
    assert [p.name for p in tmp_path.iterdir()] == ["t.parquet"]


def test_bytes_and_text_round_trip_and_overwrite(tmp_path):
    path = atomic_write_bytes(tmp_path / "a" / "b.bin", b"\x00\x01\x02")
    assert path == tmp_path / "a" / "b.bin"
    assert path.read_bytes() == b"\x00\x01\x02"
    atomic_write_text(path, "héllo\n")
    assert path.read_bytes() == "héllo\n".encode("utf-8")
    assert [p.name for p in path.parent.iterdir()] == ["b.bin"]


def test_json_round_trip_format(tmp_path):
    obj = {"b": [1, 2.5, None], "a": {"z": "x", "y": True}}
    path = atomic_write_json(str(tmp_path / "o.json"), obj)
    text = path.read_text(encoding="utf-8")
    assert json.loads(text) == obj
    assert text == json.dumps(obj, indent=2, sort_keys=True) + "\n"


def test_parquet_round_trip(tmp_path):
    table = pa.table({"path": ["a.png", "b.png"], "w": [64, 128], "score": [0.5, None]})
    path = atomic_write_parquet(tmp_path / "sub" / "m.parquet", table)
    back = read_parquet(path)
    assert back.equals(table)
    assert back.schema == table.schema


def test_tensors_round_trip_with_metadata(tmp_path):
    base = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    tensors = {
        "w": base.t(),  # non-contiguous: saved contiguous
        "b": torch.tensor([1, 2], dtype=torch.int64),
        "h": torch.ones(2, 2, dtype=torch.bfloat16),
        "empty": torch.zeros(0),
    }
    path = atomic_save_tensors(tmp_path / "ck" / "t.safetensors", tensors, metadata={"step": "7"})
    loaded = load_file(str(path))
    assert sorted(loaded) == sorted(tensors)
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype
        assert torch.equal(loaded[name], t)
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata() == {"step": "7"}
    assert tensors_sha256(loaded) == tensors_sha256(tensors)
    assert [p.name for p in path.parent.iterdir()] == ["t.safetensors"]


def test_tensors_sha256_is_pinned():
    # Pinned so a refactor can never change the hashes recorded in existing run results.
    tensors = {
        "b": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "a": torch.tensor([1, 2], dtype=torch.int64),
        "e": torch.zeros(0),
        "h": torch.ones(2, 2, dtype=torch.bfloat16).t(),
    }
    assert tensors_sha256(tensors) == "4f1cbab7565ea5c926a650779a3c6053daf8ada95bd2cdda8f60bac7c74cf0c4"
    assert tensors_sha256(dict(reversed(tensors.items()))) == tensors_sha256(tensors)


def test_importing_fileio_stays_light():
    code = (
        "import sys, pixart_pipeline.fileio\n"
        "heavy = [m for m in ('torch', 'safetensors', 'pyarrow', 'dagster') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_written_files_get_the_umask_mode_not_mkstemps_0600(tmp_path, umask, mode):
    """A written file gets what ``open()`` would give it under the process's umask (others can read
    a report under the usual 022), not the 0600 of the temp file it was renamed from."""
    code = (
        "import os, sys\n"
        f"os.umask({umask:#o})\n"  # before the import: fileio reads the umask once, at import
        "from pixart_pipeline.fileio import atomic_write_text\n"
        "atomic_write_text(sys.argv[1], '{}')\n"
    )
    path = tmp_path / "report.json"
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    assert oct(path.stat().st_mode & 0o777) == oct(mode)
