"""The two cache stages: T5 embeddings of every caption, VAE posteriors of every kept image.

Both are content-addressed (DESIGN.md section 6): the store root is named by the encoder's
fingerprint, items by what determines them, so only missing items are ever encoded.
"""

from __future__ import annotations

import time
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from pixart_pipeline.cache.keys import text_item_key, vae_item_key
from pixart_pipeline.cache.maintenance import repair
from pixart_pipeline.cache.online import ONLINE_DIR, ONLINE_SPEC, OnlineVaeStore, check_images, write_online_spec
from pixart_pipeline.cache.parallel import launch_parallel
from pixart_pipeline.cache.store import EncodeStats, ShardStore
from pixart_pipeline.cache.text import encode_captions
from pixart_pipeline.cache.vae import VaeItem, encode_images, to_channels_last
from pixart_pipeline.config import ImageDataset, PipelineConfig
from pixart_pipeline.config.fingerprints import stable_hash
from pixart_pipeline.data.captions import usable_captions
from pixart_pipeline.fileio import read_parquet
from pixart_pipeline.models import (
    TORCH_DTYPES,
    load_text_encoder,
    load_tokenizer,
    load_vae,
    process_device,
    resolve_pretrained,
)
from pixart_pipeline.stage_result import MissingInputError, StageResult
from pixart_pipeline.stages import (
    TEXT_EMBED_CACHE, captions_path, metadata_path, text_store_root, vae_encoder_fields, vae_store_root,
)

Log = Callable[[str], None]
EMPTY_PROMPT = ""  # caption dropout trains on the empty prompt's embedding


def _quiet(_: str) -> None:
    pass


def text_encoder_id(cfg: PipelineConfig) -> str:
    """The text encoder's part of every text item key: T5 identity + revision, max length, dtype."""
    return stable_hash(TEXT_EMBED_CACHE.fingerprint_fields(cfg))


def vae_encoder_id(cfg: PipelineConfig) -> str:
    """The VAE's part of every VAE item key: VAE identity + revision, dtype."""
    return stable_hash(vae_encoder_fields(cfg))


def text_key(cfg: PipelineConfig, caption: str) -> str:
    """The text cache key of ``caption`` under ``cfg``'s encoder (what training looks up)."""
    return text_item_key(caption, text_encoder_id(cfg))


def base_model_path(cfg: PipelineConfig) -> str:
    """The base model as a loadable path: a built tiny model, a local folder, or a hub id."""
    t = cfg.training
    return resolve_pretrained(cfg.local_or_hub(t.pretrained_model_name_or_path), t.revision, cfg.model_cache_dir)


def caption_sources(cfg: PipelineConfig) -> dict[str, str]:
    """Every usable caption of every dataset (plus the empty prompt) -> the first image it came from.

    Every caption of an image with several (textfile lines, parquet list entries) is included: the
    trainer may draw any of them, so each needs its embedding before training starts.
    """
    sources = {EMPTY_PROMPT: "the empty prompt (caption dropout)"}
    for ds in cfg.datasets:
        path = captions_path(cfg, ds)
        if not path.exists():
            raise MissingInputError(f"{path} does not exist: materialize captions/{ds.id} first")
        root = cfg.dataset_dir(ds)
        for image, captions in usable_captions(read_parquet(path)):
            for caption in captions:
                sources.setdefault(caption, str(root / image))
    return sources


def all_captions(cfg: PipelineConfig) -> list[str]:
    """Every usable caption of every dataset, plus the empty prompt, deduplicated and sorted."""
    return sorted(caption_sources(cfg))


def encode_text_items(
    cfg: PipelineConfig, captions: list[str], sources: dict[str, str], device: str, log: Log = _quiet
) -> EncodeStats:
    """Encode ``captions`` into the text store in this process (one rank's share under torchrun)."""
    t = cfg.training
    model = base_model_path(cfg)
    torch_device = process_device(device)
    tokenizer = load_tokenizer(model, t.revision)
    encoder = load_text_encoder(model, t.revision, TORCH_DTYPES[t.text_encoder_dtype]).to(torch_device)
    return encode_captions(
        ShardStore(text_store_root(cfg)), captions, tokenizer, encoder, t.tokenizer_max_length,
        cfg.text_embeds.write_batch_size, torch_device, encoder=text_encoder_id(cfg), sources=sources, log=log,
    )


def encode_vae_items(cfg: PipelineConfig, ds: ImageDataset, items: list[VaeItem], device: str, log: Log = _quiet) -> EncodeStats:
    """Encode ``items`` into the dataset's VAE store in this process (one rank's share under torchrun)."""
    t = cfg.training
    model = base_model_path(cfg)
    torch_device = process_device(device)
    vae = load_vae(model, t.revision, TORCH_DTYPES[t.resolved_vae_dtype]).to(torch_device)
    if t.vae_channels_last:  # NHWC convolutions (cache/vae.py input_memory_format follows the weights)
        vae = to_channels_last(vae)
    return encode_images(ShardStore(vae_store_root(cfg, ds)), items, vae, t.vae_batch_size, torch_device, log=log)


def run_text_embed_cache(cfg: PipelineConfig, device: str, log: Log = _quiet) -> StageResult:
    start = time.perf_counter()
    sources = caption_sources(cfg)
    captions = sorted(sources)
    store = ShardStore(text_store_root(cfg))
    repaired = repair(store, log)
    keys = sorted(text_key(cfg, c) for c in captions)
    missing = [c for c in captions if text_key(cfg, c) not in store]
    stats = EncodeStats()
    if missing:
        procs = cfg.training.num_processes
        model = base_model_path(cfg)  # built/resolved once here, not racing in every parallel rank
        log(f"encoding {len(missing)} of {len(captions)} caption(s) with {model} on {device} ({procs} process(es))")
        if procs > 1:
            stats = launch_parallel(cfg, "text", None, missing, device, procs, {c: sources[c] for c in missing})
        else:
            stats = encode_text_items(cfg, missing, sources, device, log)
        if stats.failed:
            raise RuntimeError(f"text encoding failed for {len(stats.failed)} caption(s): {stats.failed[:5]}")
    store.refresh()
    log(f"text cache: {stats.encoded} encoded, {len(captions) - len(missing)} reused")
    return StageResult(
        path=store.root,
        data_version=store.data_version(keys),
        metadata={
            "items": len(keys),
            "encoded": stats.encoded,
            "reused": len(captions) - len(missing),
            "repaired_items": len(repaired),
            "encode_seconds": round(stats.seconds, 3),
            "seconds": round(time.perf_counter() - start, 3),
            "store_bytes": store.stats().get("bytes", 0),
        },
    )


def vae_items(cfg: PipelineConfig, ds: ImageDataset) -> tuple[pa.Table, list[VaeItem]]:
    """The kept rows of a dataset's metadata and the VAE item of each (train and eval split)."""
    path = metadata_path(cfg, ds)
    if not path.exists():
        raise MissingInputError(f"{path} does not exist: materialize bucketed_metadata/{ds.id} first")
    table = read_parquet(path)
    kept = table.filter(pc.equal(table.column("status"), "ok"))
    root = cfg.dataset_dir(ds)
    encoder = vae_encoder_id(cfg)
    items = [
        VaeItem(
            key=vae_item_key(
                r["sha256"],
                (r["intermediary_width"], r["intermediary_height"]),
                (r["crop_left"], r["crop_top"]),
                (r["target_width"], r["target_height"]),
                encoder,
            ),
            path=root / r["path"],
            intermediary=(r["intermediary_width"], r["intermediary_height"]),
            crop=(r["crop_left"], r["crop_top"]),
            target=(r["target_width"], r["target_height"]),
            sha256=r["sha256"],
        )
        for r in kept.to_pylist()
    ]
    return kept, items


def vae_source(cfg: PipelineConfig, ds: ImageDataset) -> ShardStore | OnlineVaeStore:
    """Where training reads a dataset's posteriors: its ShardStore, or the online encoder when
    ``vae_cache_disable`` is set (the vae_cache stage must have written its spec)."""
    if not cfg.training.vae_cache_disable:
        return ShardStore(vae_store_root(cfg, ds))
    folder = vae_store_root(cfg, ds) / ONLINE_DIR
    if not (folder / ONLINE_SPEC).is_file():
        raise MissingInputError(f"{folder / ONLINE_SPEC} does not exist: materialize vae_cache/{ds.id} first")
    return OnlineVaeStore(folder)


def run_vae_cache(cfg: PipelineConfig, ds: ImageDataset, device: str, log: Log = _quiet) -> StageResult:
    start = time.perf_counter()
    _, items = vae_items(cfg, ds)
    if cfg.training.vae_cache_disable:
        # Online mode (SimpleTuner's vae_cache_disable): nothing is stored; the trainer encodes each
        # batch from the same metadata rows (cache/online.py). Every image is checked now (exists,
        # same sha256, readable structure) so a bad one is left out of training like a failed encode
        # of the cached path, instead of stopping the run at its first batch. The data version
        # follows the usable items.
        failed = check_images(items)
        for path, reason in failed.values():
            log(f"not usable: {path}: {reason}")
        keys = sorted({item.key for item in items} - set(failed))
        folder = write_online_spec(vae_store_root(cfg, ds) / ONLINE_DIR, base_model_path(cfg),
                                   cfg.training.revision, cfg.training.resolved_vae_dtype, device, items, failed)
        log(f"vae cache disabled: {len(keys)} item(s) will be encoded on the fly by the trainer, "
            f"{len(failed)} left out ({folder})")
        return StageResult(
            path=folder,
            data_version=stable_hash(["disabled", keys]),
            metadata={"disabled": True, "items": len(keys), "encoded": 0, "reused": 0, "failed": len(failed),
                      "failed_files": [f"{p}: {r}" for p, r in sorted(failed.values())][:20],
                      "seconds": round(time.perf_counter() - start, 3)},
        )
    store = ShardStore(vae_store_root(cfg, ds))
    repaired = repair(store, log)
    missing = [item for item in items if item.key not in store]
    stats = EncodeStats()
    if missing:
        procs = cfg.training.num_processes
        model = base_model_path(cfg)  # built/resolved once here, not racing in every parallel rank
        log(f"encoding {len(missing)} of {len(items)} image(s) with the VAE of {model} "
            f"on {device} ({procs} process(es))")
        if procs > 1:
            stats = launch_parallel(cfg, "vae", ds.id, sorted({i.key for i in missing}), device, procs)
        else:
            stats = encode_vae_items(cfg, ds, missing, device, log)
        for path, reason in stats.failed:
            log(f"not cached: {path}: {reason}")
    store.refresh()
    failed = stats.failed
    keys = sorted(item.key for item in items if item.key in store)
    log(f"vae cache: {stats.encoded} encoded, {len(items) - len(missing)} reused, {len(failed)} failed")
    return StageResult(
        path=store.root,
        data_version=store.data_version(keys),
        metadata={
            "items": len(keys),
            "encoded": stats.encoded,
            "reused": len(items) - len(missing),
            "repaired_items": len(repaired),
            "failed": len(failed),
            "failed_files": [f"{p}: {r}" for p, r in failed][:20],
            "encode_seconds": round(stats.seconds, 3),
            "seconds": round(time.perf_counter() - start, 3),
            "store_bytes": store.stats().get("bytes", 0),
        },
    )
