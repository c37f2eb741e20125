"""Fixtures for trainer tests: a tiny PixArt, caches filled with random tensors of the right shapes,
and the items parquet that ties them together (what the Dagster assets would have written)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from pixart_pipeline.cache import ShardStore, text_item_key, vae_item_key
from pixart_pipeline.training.spec import RunSpec

CAPTIONS = ["a red circle", "a blue square on green", "a star", "two yellow dots", "a big purple heart here",
            "an orange ring", "a cyan line", "grey triangle"]
# (width, height) per item: two buckets (six square, two landscape)
TARGETS = [(128, 128)] * 6 + [(192, 128)] * 2


def fill_caches(root: Path, seed: int = 0) -> dict:
    """Write a text store (T5 d_model 32) and a VAE store ([4, H/8, W/8] mean/std) and the items table."""
    gen = torch.Generator().manual_seed(seed)
    text = ShardStore(root / "text")
    vae = ShardStore(root / "vae")
    text_items = {text_item_key(c): {"prompt_embeds": torch.randn(2 + len(c.split()), 32, generator=gen)}
                  for c in CAPTIONS}
    empty_key = text_item_key("")
    text_items[empty_key] = {"prompt_embeds": torch.randn(1, 32, generator=gen)}
    text.write(text_items)
    columns = ("vae_store", "vae_key", "text_key", "target_width", "target_height", "dataset_id", "repeats")
    rows = {c: [] for c in columns}
    vae_items = {}
    for i, (caption, (w, h)) in enumerate(zip(CAPTIONS, TARGETS)):
        key = vae_item_key(f"{i:064x}", (w, h), (0, 0), (w, h))
        vae_items[key] = {"mean": torch.randn(4, h // 8, w // 8, generator=gen),
                          "std": torch.full((4, h // 8, w // 8), 0.05)}
        rows["vae_store"].append(str(root / "vae"))
        rows["vae_key"].append(key)
        rows["text_key"].append(text_item_key(caption))
        rows["target_width"].append(w)
        rows["target_height"].append(h)
        rows["dataset_id"].append("shapes")
        rows["repeats"].append(0)
    vae.write(vae_items)
    items = root / "items.parquet"
    pq.write_table(pa.table(rows), items)
    return {"items": str(items), "text_store": str(root / "text"), "empty_text_key": empty_key}


@pytest.fixture(scope="session")
def caches(tmp_path_factory) -> dict:
    return fill_caches(tmp_path_factory.mktemp("caches"))


@pytest.fixture
def make_spec(tiny_pixart_path, caches, tmp_path):
    """``make_spec(name, **values)`` -> a RunSpec for a tiny CPU run under tmp_path/name (values:
    hyperparameters and trainer settings by name)."""

    def make(name: str = "run", checkpointing_steps: int = 10, **values) -> RunSpec:
        defaults = {"learning_rate": 1e-3, "lr_scheduler": "constant", "train_batch_size": 2,
                    "max_train_steps": 20, "mixed_precision": "no", "seed": 7}
        return RunSpec.build(run_dir=str(tmp_path / name), base_model=tiny_pixart_path, items=caches["items"],
                             text_store=caches["text_store"], empty_text_key=caches["empty_text_key"],
                             checkpointing_steps=checkpointing_steps, device="cpu", log_every_steps=5,
                             **(defaults | values))

    return make
