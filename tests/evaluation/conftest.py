"""Eval fixtures: random cache tensors of the right shapes in real ShardStores, and an items parquet."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

# (key, target (w, h), prompt length L): two sizes, so batches must split by latent shape.
EVAL_ITEMS = [
    ("img-a", (64, 64), 5),
    ("img-b", (64, 64), 9),
    ("img-c", (96, 64), 3),
    ("img-d", (64, 64), 7),
]


def write_eval_caches(root: Path, items=EVAL_ITEMS, seed: int = 0) -> tuple[Path, Path]:
    """Write VAE + text ShardStores and the eval items parquet under ``root``; returns (items, text_store)."""
    from pixart_pipeline.cache import ShardStore

    gen = torch.Generator().manual_seed(seed)
    vae_root, text_root = root / "vae", root / "text"
    vae_items, text_items, rows = {}, {}, []
    for key, (w, h), length in items:
        vae_items[key] = {
            "mean": torch.randn(4, h // 8, w // 8, generator=gen) * 5,  # roughly SDXL-VAE-like scale
            "std": torch.rand(4, h // 8, w // 8, generator=gen) * 0.1,
        }
        text_items[f"t-{key}"] = {"prompt_embeds": torch.randn(length, 32, generator=gen)}
        rows.append({"vae_store": str(vae_root), "vae_key": key, "text_key": f"t-{key}",
                     "target_width": w, "target_height": h, "dataset_id": "shapes", "repeats": 0})
    ShardStore(vae_root).write(vae_items)
    ShardStore(text_root).write(text_items)
    items_path = root / "eval_items.parquet"
    pq.write_table(pa.Table.from_pylist(rows), items_path)
    return items_path, text_root


@pytest.fixture(scope="module")
def eval_caches(tmp_path_factory) -> tuple[Path, Path]:
    return write_eval_caches(tmp_path_factory.mktemp("eval_caches"))
