"""Crash-safe training checkpoints: ``run_dir/checkpoints/step-N/``.

Layout of one checkpoint (safetensors + JSON only; nothing is unpickled on the read path):

    transformer.safetensors   every transformer weight (float32 as trained)
    ema.safetensors           EMA shadow of the trained parameters (only with use_ema)
    optimizer.safetensors     AdamW per-parameter tensors   optimizer.json   param groups, scalars
    lr_scheduler.json         LambdaLR state
    rng.safetensors           torch (and CUDA) RNG states   rng.json         numpy + python RNG states
    rng-<r>.safetensors/json  the same for process r >= 1 (rank 0's are rng.*)
    trainer_state.json        global step, sampler state (epoch, position), EMA update count
    COMPLETE                  written last: file sizes + sha256; its presence means "complete"

It is written into ``step-N.tmp/`` and renamed to ``step-N/`` after ``COMPLETE`` is in place, so a
killed run leaves either no ``step-N`` or a complete one; ``latest_checkpoint`` ignores ``*.tmp``
folders and any folder without the marker.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from pixart_pipeline.errors import InputError
from pixart_pipeline.fileio import atomic_save_tensors, atomic_write_json, atomic_write_text

MARKER = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_OLD_DIR = re.compile(r"^(step-\d+)\.old-[0-9a-f]+$")


@dataclass
class CheckpointState:
    """What a checkpoint holds, ready to be put back into the trainer."""

    path: Path
    global_step: int
    transformer: dict[str, torch.Tensor]
    optimizer: dict  # {"tensors": ..., "rest": ...}: see optim.optimizer_state_from_flat
    lr_scheduler: str  # JSON text, see optim.scheduler_state_from_json
    sampler: dict
    rng: tuple[dict[str, torch.Tensor], dict]
    ema: dict[str, torch.Tensor] | None = None
    ema_updates: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    rng_by_rank: dict[int, tuple[dict[str, torch.Tensor], dict]] = field(default_factory=dict)

    def rng_for(self, rank: int) -> tuple[dict[str, torch.Tensor], dict]:
        """Process ``rank``'s RNG states (rank 0's for a checkpoint written before per-rank states)."""
        return self.rng_by_rank.get(rank, self.rng)


def checkpoints_dir(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# -- RNG states without pickle ---------------------------------------------------------------------
def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """torch / CUDA states as uint8 tensors; numpy's MT19937 keys as a tensor + scalars in JSON;
    python's ``random`` state (ints) in JSON."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["numpy.keys"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, py_state, gauss_next = random.getstate()
    rest = {
        "numpy": {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(py_state), "gauss_next": gauss_next},
    }
    return tensors, rest


def restore_rng_state(tensors: dict[str, torch.Tensor], rest: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda."))]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    n = rest["numpy"]
    keys = tensors["numpy.keys"].numpy().astype(np.uint32)
    np.random.set_state((n["kind"], keys, n["pos"], n["has_gauss"], n["cached_gaussian"]))
    p = rest["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss_next"]))


# -- save ------------------------------------------------------------------------------------------
def save_checkpoint(
    run_dir: Path,
    global_step: int,
    transformer_state: dict[str, torch.Tensor],
    optimizer_flat: tuple[dict[str, torch.Tensor], dict],
    lr_scheduler_json: str,
    sampler_state: dict,
    ema_state: dict[str, torch.Tensor] | None = None,
    ema_updates: int = 0,
    extra: dict[str, Any] | None = None,
    rng_states: list[tuple[dict[str, torch.Tensor], dict]] | None = None,
) -> Path:
    """Write ``checkpoints/step-<global_step>/`` atomically and return its path.

    ``rng_states``: every process's ``capture_rng_state()``, by rank (default: this process's only)."""
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{global_step}"
    tmp = root / f"step-{global_step}.tmp"
    if tmp.exists():  # left by a killed run
        shutil.rmtree(tmp)
    tmp.mkdir()

    atomic_save_tensors(tmp / "transformer.safetensors", transformer_state)
    if ema_state is not None:
        atomic_save_tensors(tmp / "ema.safetensors", ema_state)
    opt_tensors, opt_rest = optimizer_flat
    atomic_save_tensors(tmp / "optimizer.safetensors", opt_tensors)
    atomic_write_json(tmp / "optimizer.json", opt_rest)
    atomic_write_text(tmp / "lr_scheduler.json", lr_scheduler_json)
    for rank, (rng_tensors, rng_rest) in enumerate(rng_states or [capture_rng_state()]):
        name = "rng" if rank == 0 else f"rng-{rank}"
        atomic_save_tensors(tmp / f"{name}.safetensors", rng_tensors)
        atomic_write_json(tmp / f"{name}.json", rng_rest)
    atomic_write_json(
        tmp / "trainer_state.json",
        {"global_step": global_step, "sampler": sampler_state, "ema_updates": ema_updates, "extra": extra or {}},
    )
    files = sorted(p for p in tmp.iterdir() if not p.name.startswith("."))
    marker = {"step": global_step, "files": {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in files}}
    atomic_write_json(tmp / MARKER, marker)  # last: from here on the folder is complete

    if final.exists():  # re-saving the same step (e.g. a run restarted from scratch)
        # Two renames, not one: a folder cannot atomically replace a non-empty one. A kill between
        # them leaves only step-N.old-*, which remove_incomplete renames back (never lost).
        old = root / f"step-{global_step}.old-{uuid.uuid4().hex[:8]}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    _fsync_dir(root)
    return final


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# -- find, load, prune -----------------------------------------------------------------------------
def is_complete(path: Path) -> bool:
    path = Path(path)
    return path.is_dir() and _STEP_DIR.match(path.name) is not None and (path / MARKER).is_file()


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints as ``(step, path)``, oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = _STEP_DIR.match(child.name)
        if match and is_complete(child):
            found.append((int(match.group(1)), child))
    return sorted(found)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The complete checkpoint with the highest step, or ``None``."""
    found = list_checkpoints(run_dir)
    return found[-1][1] if found else None


def remove_incomplete(run_dir: Path) -> list[Path]:
    """Clean up after a killed run: a ``step-N.old-*`` folder (a re-save killed between its two
    renames, see ``save_checkpoint``) goes back to ``step-N`` when that is missing; then every
    ``*.tmp`` / ``*.old-*`` / ``*.deleting-*`` folder and marker-less ``step-N`` folder is deleted."""
    root = checkpoints_dir(run_dir)
    removed = []
    if root.is_dir():
        for child in sorted(root.iterdir()):
            match = _OLD_DIR.match(child.name)
            if match and (child / MARKER).is_file() and not (root / match.group(1)).exists():
                os.rename(child, root / match.group(1))
        for child in root.iterdir():
            if child.is_dir() and not is_complete(child):
                shutil.rmtree(child, ignore_errors=True)
                removed.append(child)
    return removed


def prune_checkpoints(run_dir: Path, limit: int | None, protect: Path | list[Path] | None = None) -> list[Path]:
    """Delete the oldest complete checkpoints until ``limit`` remain, never one in ``protect`` (the
    one just written, the one this run resumed from). More than ``limit`` remain only when the
    protected ones alone exceed it. Returns the deleted folders."""
    if limit is None:
        return []
    found = list_checkpoints(run_dir)
    if protect is None:
        protect = []
    elif isinstance(protect, (str, Path)):
        protect = [protect]
    protected = {Path(p).resolve() for p in protect}
    excess = len(found) - limit
    deleted = []
    for _, path in found:
        if excess <= 0:
            break
        if path.resolve() in protected:
            continue
        # rename first so a half-deleted folder never looks complete (and is never restored)
        doomed = path.with_name(f"{path.name}.deleting-{uuid.uuid4().hex[:8]}")
        os.rename(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
        deleted.append(path)
        excess -= 1
    return deleted


def load_checkpoint(path: Path, verify: bool = True) -> CheckpointState:
    """Read a complete checkpoint (safetensors + JSON). ``verify`` checks every file's sha256."""
    path = Path(path)
    if not is_complete(path):
        raise InputError(
            f"{path} is not a complete checkpoint (expected a 'step-N' folder with a {MARKER} marker)"
        )
    marker = json.loads((path / MARKER).read_text())
    if verify:
        for name, info in marker["files"].items():
            file = path / name
            if not file.is_file() or _sha256(file) != info["sha256"]:
                raise InputError(f"checkpoint {path}: {name} is missing or does not match its recorded sha256")
    state = json.loads((path / "trainer_state.json").read_text())
    ema_file = path / "ema.safetensors"
    return CheckpointState(
        path=path,
        global_step=int(state["global_step"]),
        transformer=load_file(str(path / "transformer.safetensors")),
        optimizer={"tensors": load_file(str(path / "optimizer.safetensors")),
                   "rest": json.loads((path / "optimizer.json").read_text())},
        lr_scheduler=(path / "lr_scheduler.json").read_text(),
        sampler=state["sampler"],
        rng=(load_file(str(path / "rng.safetensors")), json.loads((path / "rng.json").read_text())),
        ema=load_file(str(ema_file)) if ema_file.exists() else None,
        ema_updates=int(state.get("ema_updates", 0)),
        extra=state.get("extra", {}),
        rng_by_rank={int(f.name[4:-12]): (load_file(str(f)), json.loads(f.with_suffix(".json").read_text()))
                     for f in path.glob("rng-*.safetensors")},
    )
