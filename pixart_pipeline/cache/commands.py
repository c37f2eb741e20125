"""``pixart-pipeline cache verify|prune|stats``: the stores of one config, checked, pruned, counted.

The stores of a config are the current text store and each dataset's current VAE store, plus any
other store in the same cache folders (left behind by an earlier encoder, dtype or max length): those
hold only items no current metadata references, so ``prune`` empties them.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from pixart_pipeline.cache.maintenance import PruneResult, _size, is_store, prune_store, store_stats
from pixart_pipeline.cache.stage import caption_sources, text_key, vae_items
from pixart_pipeline.cache.store import ShardStore
from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.stages import text_store_root, vae_store_root

Print = Callable[[str], None]


@dataclass
class StoreRef:
    """One store of a config: a label for people, and the keys current metadata references.

    ``live`` is None when the metadata to compute it is missing (then ``prune`` leaves the store alone).
    """

    label: str
    store: ShardStore
    live: set[str] | None
    current: bool


def config_stores(cfg: PipelineConfig) -> list[StoreRef]:
    """The config's current stores and the stale stores beside them, each with its live keys."""
    refs: list[StoreRef] = []
    try:
        text_live: set[str] | None = {text_key(cfg, c) for c in caption_sources(cfg)}
    except FileNotFoundError:
        text_live = None
    refs.append(StoreRef("text", ShardStore(text_store_root(cfg)), text_live, True))
    vae_live: dict[Path, set[str] | None] = {}
    for ds in cfg.datasets:
        root = vae_store_root(cfg, ds)
        try:
            keys: set[str] | None = {item.key for item in vae_items(cfg, ds)[1]}
        except FileNotFoundError:
            keys = None
        # Datasets may share a cache folder: a store's live keys are every dataset's that uses it.
        if root in vae_live:
            prev = vae_live[root]
            vae_live[root] = None if prev is None or keys is None else prev | keys
        else:
            vae_live[root] = keys
            refs.append(StoreRef(f"vae/{ds.id}", ShardStore(root), keys, True))
    for ref in refs:
        if ref.label.startswith("vae/"):
            ref.live = vae_live[ref.store.root]
    current = {ref.store.root.resolve() for ref in refs}
    for parent in sorted({ref.store.root.parent for ref in refs}):
        if not parent.is_dir():
            continue
        for folder in sorted(parent.iterdir()):
            if folder.resolve() not in current and is_store(folder):
                refs.append(StoreRef(f"stale {folder.name}", ShardStore(folder), set(), False))
    return refs


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def cache_stats(cfg: PipelineConfig, out: Print = print) -> int:
    """Print items, bytes and shards per store."""
    for ref in config_stores(cfg):
        s = store_stats(ref.store)
        out(f"{ref.label:<20} {s['items']:>8} items {s['shards']:>6} shards {_human(s['bytes']):>10}  {ref.store.root}")
        if s["orphan_files"]:
            out(f"{'':<20} {s['orphan_files']} unreferenced file(s), {_human(s['orphan_bytes'])} (`cache prune`)")
    return 0


def cache_verify(cfg: PipelineConfig, out: Print = print) -> int:
    """Re-hash every shard of every store; 1 if any is corrupt or missing."""
    bad = 0
    for ref in config_stores(cfg):
        problems = ref.store.verify(quick=False)
        shards = ref.store.stats()["shards"]
        out(f"{ref.label:<20} {shards} shard(s) checked, {len(problems)} bad  {ref.store.root}")
        for shard, problem in problems:
            out(f"  BAD {ref.store.root / 'shards' / shard}: {problem}")
        bad += len(problems)
    if bad:
        out(f"{bad} bad shard(s): the next cache run (`pixart-pipeline sync`) drops them and re-encodes their items")
        return 1
    out("All shards match their checksums.")
    return 0


def cache_prune(cfg: PipelineConfig, min_age_s: float = 3600.0, out: Print = print) -> int:
    """Remove items no current metadata references; print what went and the space freed."""
    total = PruneResult()
    for ref in config_stores(cfg):
        if ref.live is None:
            out(f"{ref.label:<20} skipped: its metadata/captions are not materialized, so live items are unknown")
            continue
        if not ref.current:
            size = sum(_size(p) for p in ref.store.root.rglob("*") if p.is_file())
            items = len(ref.store)
            shutil.rmtree(ref.store.root)
            result = PruneResult(items=items, files=0, bytes_freed=size)
            out(f"{ref.label:<20} removed the whole store ({items} items, {_human(size)})  {ref.store.root}")
        else:
            result = prune_store(ref.store, ref.live, min_age_s)
            out(f"{ref.label:<20} removed {result.items} item(s), freed {_human(result.bytes_freed)}  {ref.store.root}")
        total += result
    out(f"Freed {_human(total.bytes_freed)} ({total.bytes_freed} bytes) in total; {total.items} item(s) removed.")
    return 0
