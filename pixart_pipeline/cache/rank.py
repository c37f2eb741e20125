"""One torchrun rank of data-parallel cache encoding (launched by ``cache.parallel.launch_parallel``).

Rank ``r`` of ``N`` encodes items ``r, r+N, ...`` of the work list with the same functions as one
process (``cache.stage.encode_text_items`` / ``encode_vae_items``) and reports in ``result-<rank>.json``.
This entry point lives apart from ``cache/parallel.py`` so that imports run one way:
``cache.stage`` -> ``cache.parallel`` (launch), and ``cache.rank`` -> ``cache.stage`` (encode).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch.distributed as dist

from pixart_pipeline.cache.stage import encode_text_items, encode_vae_items, vae_items
from pixart_pipeline.config import load_config
from pixart_pipeline.fileio import atomic_write_json


def run_rank(config_path: str, spec_path: str) -> None:
    """One torchrun rank: encode this rank's slice of the work list."""
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
