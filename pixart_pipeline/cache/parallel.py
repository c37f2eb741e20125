"""Data-parallel cache encoding: ``torchrun`` ranks each encode one slice of the missing items.

The cache stage (``num_processes > 1``) writes the work list to a JSON file and launches
``python -m torch.distributed.run --standalone --nproc_per_node N -m pixart_pipeline.cache.parallel``.
Rank ``r`` of ``N`` takes items ``r, r+N, r+2N, ...`` of that fixed list (not of the store's state,
which changes while ranks write), encodes them with the same functions as one process, and writes its
own shards: uuid shard names never collide, so the ranks need no lock. Each rank reports what it
encoded and what failed in ``result-<rank>.json``; the stage merges them.

The process group (gloo on CPU, nccl on CUDA) only provides the final barrier: SimpleTuner's
multi-GPU caching also splits the work list by rank and lets each rank write its own files.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pixart_pipeline.cache.store import EncodeStats
from pixart_pipeline.fileio import atomic_write_json

if TYPE_CHECKING:
    from pixart_pipeline.config import PipelineConfig


def launch_parallel(
    cfg: PipelineConfig,
    stage: str,
    dataset_id: str | None,
    work: list[str],
    device: str,
    nproc: int,
    sources: dict[str, str] | None = None,
) -> EncodeStats:
    """Run ``stage`` ("text": ``work`` = captions, "vae": ``work`` = item keys) on ``nproc`` ranks."""
    from pixart_pipeline.cache.stage import base_model_path

    base_model_path(cfg)  # build/resolve the model once here, not racing in every rank
    with tempfile.TemporaryDirectory(prefix="pixart-cache-") as tmp:
        spec = Path(tmp) / "work.json"
        atomic_write_json(spec, {"stage": stage, "dataset": dataset_id, "device": device, "work": work,
                                 "sources": sources or {}})
        command = [
            sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            "-m", "pixart_pipeline.cache.parallel", "--config", str(cfg.config_path), "--work", str(spec),
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


def run_rank(config_path: str, spec_path: str) -> None:
    """One torchrun rank: encode this rank's slice of the work list."""
    import torch.distributed as dist

    from pixart_pipeline.cache.stage import encode_text_items, encode_vae_items, vae_items
    from pixart_pipeline.config import load_config

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    spec = json.loads(Path(spec_path).read_text())
    backend = "nccl" if spec["device"].startswith("cuda") else "gloo"
    dist.init_process_group(backend)
    try:
        cfg = load_config(config_path)
        mine = spec["work"][rank::world]
        if spec["stage"] == "text":
            stats = encode_text_items(cfg, mine, spec["sources"], spec["device"])
        else:
            ds = next(d for d in cfg.datasets if d.id == spec["dataset"])
            wanted = set(mine)
            items = [item for item in vae_items(cfg, ds)[1] if item.key in wanted]
            stats = encode_vae_items(cfg, ds, items, spec["device"])
        atomic_write_json(
            Path(spec_path).parent / f"result-{rank}.json",
            {"encoded": stats.encoded, "failed": stats.failed, "seconds": stats.seconds},
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one torchrun rank of data-parallel cache encoding")
    parser.add_argument("--config", required=True)
    parser.add_argument("--work", required=True)
    args = parser.parse_args(argv)
    run_rank(args.config, args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
