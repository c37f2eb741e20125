"""The two cache stages: T5 embeddings of every caption, VAE posteriors of every kept image.

Both are content-addressed (DESIGN.md section 6): the store root is named by the encoder's
fingerprint, items by what determines them, so only missing items are ever encoded.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import torch

from pixart_pipeline.cache.keys import text_item_key, vae_item_key
from pixart_pipeline.cache.store import ShardStore
from pixart_pipeline.cache.text import encode_captions
from pixart_pipeline.cache.vae import VaeItem, encode_images
from pixart_pipeline.config import ImageDataset, PipelineConfig
from pixart_pipeline.config import fingerprints as fp
from pixart_pipeline.data.stage import captions_path, metadata_path
from pixart_pipeline.fileio import read_parquet
from pixart_pipeline.models import (
    load_text_encoder,
    load_tokenizer,
    load_vae,
    resolve_device,
    resolve_pretrained,
)
from pixart_pipeline.stage_result import MissingInputError, StageResult

Log = Callable[[str], None]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
EMPTY_PROMPT = ""  # caption dropout trains on the empty prompt's embedding


def _quiet(_: str) -> None:
    pass


def text_store_root(cfg: PipelineConfig) -> Path:
    """``<cache_dir>/<hash of (stage revision, encoder fields)>``: a code change that alters what is
    encoded (a bumped revision) gets a new store instead of reusing stale items."""
    return cfg.text_cache_dir / fp.stable_hash([fp.STAGE_REVISIONS["text_embed_cache"], fp.text_encoder_fields(cfg)])


def vae_store_root(cfg: PipelineConfig, ds: ImageDataset) -> Path:
    """``<cache_dir_vae>/<hash of (stage revision, VAE fields)>`` (see ``text_store_root``)."""
    return cfg.vae_cache_dir(ds) / fp.stable_hash([fp.STAGE_REVISIONS["vae_cache"], fp.vae_fields(cfg)])


def base_model_path(cfg: PipelineConfig) -> str:
    """The base model as a loadable path: a built tiny model, a local folder, or a hub id."""
    t = cfg.training
    return resolve_pretrained(cfg.local_or_hub(t.pretrained_model_name_or_path), t.revision, cfg.model_cache_dir)


def all_captions(cfg: PipelineConfig) -> list[str]:
    """Every usable caption of every dataset, plus the empty prompt, deduplicated and sorted."""
    captions = {EMPTY_PROMPT}
    for ds in cfg.datasets:
        path = captions_path(cfg, ds)
        if not path.exists():
            raise MissingInputError(f"{path} does not exist: materialize captions/{ds.id} first")
        table = read_parquet(path)
        ok = table.filter(pc.equal(table.column("caption_status"), "ok"))
        captions.update(ok.column("caption").to_pylist())
    return sorted(captions)


def run_text_embed_cache(cfg: PipelineConfig, device: str, log: Log = _quiet) -> StageResult:
    start = time.perf_counter()
    t = cfg.training
    captions = all_captions(cfg)
    store = ShardStore(text_store_root(cfg))
    keys = sorted(text_item_key(c) for c in captions)
    missing = [c for c in captions if text_item_key(c) not in store]
    stats = None
    if missing:
        model = base_model_path(cfg)
        torch_device = resolve_device(device)
        log(f"encoding {len(missing)} of {len(captions)} caption(s) with {model} on {torch_device}")
        tokenizer = load_tokenizer(model, t.revision)
        encoder = load_text_encoder(model, t.revision, DTYPES[t.text_encoder_dtype]).to(torch_device)
        stats = encode_captions(
            store, missing, tokenizer, encoder, t.tokenizer_max_length,
            cfg.text_embeds.write_batch_size, torch_device,
        )
        if stats.failed:
            raise RuntimeError(f"text encoding failed for {len(stats.failed)} caption(s): {stats.failed[:5]}")
    log(f"text cache: {len(missing)} encoded, {len(captions) - len(missing)} reused")
    return StageResult(
        path=store.root,
        data_version=store.data_version(keys),
        metadata={
            "items": len(keys),
            "encoded": len(missing),
            "reused": len(captions) - len(missing),
            "encode_seconds": round(stats.seconds, 3) if stats else 0.0,
            "seconds": round(time.perf_counter() - start, 3),
            "store_bytes": store.stats().get("bytes", 0),
        },
        config=fp.text_encoder_fields(cfg),
    )


def vae_items(cfg: PipelineConfig, ds: ImageDataset) -> tuple[pa.Table, list[VaeItem]]:
    """The kept rows of a dataset's metadata and the VAE item of each (train and eval split)."""
    path = metadata_path(cfg, ds)
    if not path.exists():
        raise MissingInputError(f"{path} does not exist: materialize bucketed_metadata/{ds.id} first")
    table = read_parquet(path)
    kept = table.filter(pc.equal(table.column("status"), "ok"))
    root = cfg.dataset_dir(ds)
    items = [
        VaeItem(
            key=vae_item_key(
                r["sha256"],
                (r["intermediary_width"], r["intermediary_height"]),
                (r["crop_left"], r["crop_top"]),
                (r["target_width"], r["target_height"]),
            ),
            path=root / r["path"],
            intermediary=(r["intermediary_width"], r["intermediary_height"]),
            crop=(r["crop_left"], r["crop_top"]),
            target=(r["target_width"], r["target_height"]),
        )
        for r in kept.to_pylist()
    ]
    return kept, items


def run_vae_cache(cfg: PipelineConfig, ds: ImageDataset, device: str, log: Log = _quiet) -> StageResult:
    start = time.perf_counter()
    t = cfg.training
    _, items = vae_items(cfg, ds)
    store = ShardStore(vae_store_root(cfg, ds))
    missing = [item for item in items if item.key not in store]
    failed: list[tuple[str, str]] = []
    stats = None
    if missing:
        model = base_model_path(cfg)
        torch_device = resolve_device(device)
        log(f"encoding {len(missing)} of {len(items)} image(s) with the VAE of {model} on {torch_device}")
        vae = load_vae(model, t.revision, DTYPES[t.resolved_vae_dtype]).to(torch_device)
        stats = encode_images(store, missing, vae, t.vae_batch_size, torch_device)
        failed = stats.failed
        for path, reason in failed:
            log(f"not cached: {path}: {reason}")
    keys = sorted(item.key for item in items if item.key in store)
    log(f"vae cache: {stats.encoded if stats else 0} encoded, {len(items) - len(missing)} reused, {len(failed)} failed")
    return StageResult(
        path=store.root,
        data_version=store.data_version(keys),
        metadata={
            "items": len(keys),
            "encoded": stats.encoded if stats else 0,
            "reused": len(items) - len(missing),
            "failed": len(failed),
            "failed_files": [f"{p}: {r}" for p, r in failed][:20],
            "encode_seconds": round(stats.seconds, 3) if stats else 0.0,
            "seconds": round(time.perf_counter() - start, 3),
            "store_bytes": store.stats().get("bytes", 0),
        },
        config=fp.vae_fields(cfg),
    )
