"""Data-parallel cache encoding: ``torchrun`` ranks each encode one slice of the missing items.

The cache stage (``num_processes > 1``) writes the work list to a JSON file and launches
``python -m torch.distributed.run --standalone --nproc_per_node N -m pixart_pipeline.cache.rank``.
Rank ``r`` of ``N`` takes items ``r, r+N, r+2N, ...`` of that fixed list (not of the store's state,
which changes while ranks write), encodes them with the same functions as one process, and writes its
own shards: uuid shard names never collide, so the ranks need no lock. Each rank reports what it
encoded and what failed in ``result-<rank>.json``; the stage merges them.

The process group (gloo on CPU, nccl on CUDA) only provides the final barrier: SimpleTuner's
multi-GPU caching also splits the work list by rank and lets each rank write its own files.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

from pixart_pipeline.cache.store import EncodeStats
from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.fileio import atomic_write_json


def launch_parallel(
    cfg: PipelineConfig,
    stage: str,
    dataset_id: str | None,
    work: list[str],
    device: str,
    nproc: int,
    sources: dict[str, str] | None = None,
) -> EncodeStats:
    """Run ``stage`` ("text": ``work`` = captions, "vae": ``work`` = item keys) on ``nproc`` ranks.

    The caller resolves (or builds) the base model first, so the ranks do not race to build it.
    """
    with tempfile.TemporaryDirectory(prefix="pixart-cache-") as tmp:
        spec = Path(tmp) / "work.json"
        atomic_write_json(spec, {"stage": stage, "dataset": dataset_id, "device": device, "work": work,
                                 "sources": sources or {}})
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "pixart_pipeline.cache.rank", "--config", str(cfg.config_path), "--work", str(spec),
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout)[-3000:]
            raise RuntimeError(f"data-parallel {stage} encoding ({nproc} processes) failed:\n{tail}")
        stats = EncodeStats()
        for rank in range(nproc):
            result = json.loads((Path(tmp) / f"result-{rank}.json").read_text())
            stats.encoded += result["encoded"]
            stats.failed += [tuple(f) for f in result["failed"]]
            stats.seconds = max(stats.seconds, result["seconds"])
    return stats
