"""Keeping shard stores honest: repair corrupt shards, prune what no metadata references, stats.

These back ``pixart-pipeline cache verify|prune|stats`` and the first step of every cache run.
A store never edits a shard in place: pruning rewrites a partly-live shard as a new one (new shard,
then its index part) and only then deletes the old index part and shard, so a crash at any point
leaves every live item readable (at worst twice, which readers tolerate).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow.parquet as pq

from pixart_pipeline.cache.store import INDEX, SHARDS, ShardStore


@dataclass
class PruneResult:
    """What ``prune_store`` removed: items no longer referenced, files deleted, bytes freed."""

    items: int = 0
    files: int = 0
    bytes_freed: int = 0

    def __iadd__(self, other: "PruneResult") -> "PruneResult":
        self.items += other.items
        self.files += other.files
        self.bytes_freed += other.bytes_freed
        return self


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def is_store(folder: Path) -> bool:
    """A folder laid out as a ShardStore (``index/`` or ``shards/`` inside)."""
    return folder.is_dir() and ((folder / INDEX).is_dir() or (folder / SHARDS).is_dir())


def repair(store: ShardStore, log: Callable[[str], None] = lambda _: None) -> list[str]:
    """Drop every shard that fails its checksum (quick check, see ``ShardStore.verify``).

    Returns the keys that were in them: they are missing now, so the caller encodes them again.
    """
    lost: list[str] = []
    for shard, problem in store.verify(quick=True):
        keys = store.drop_shard(shard)
        log(f"cache shard {store.root / SHARDS / shard}: {problem}; dropped, its {len(keys)} item(s) will be re-encoded")
        lost += keys
    store.refresh()
    return lost


def prune_store(store: ShardStore, live: set[str], min_age_s: float = 3600.0) -> PruneResult:
    """Remove items whose key is not in ``live`` (and second copies of duplicated items).

    A shard with no live item is deleted (index part first); a shard with some is rewritten with only
    its live items. Then orphan shards and temp files older than ``min_age_s`` go (a writer in flight
    has a young one). Do not prune a store a trainer is reading: its open index would name deleted shards.
    """
    result = PruneResult()
    seen: set[str] = set()
    for part in store._index_parts():  # name order: the copy readers use comes first
        keys = pq.read_table(part, columns=["key"]).column("key").to_pylist()
        shard_path = store.root / SHARDS / f"{part.stem}.safetensors"
        keep = [k for k in keys if k in live and k not in seen]
        seen.update(keep)
        if len(keep) == len(keys):
            continue
        old_bytes = _size(shard_path) + _size(part)
        if keep:
            items = store.get_many(keep)
            new_id = store.write(dict(zip(keep, items)))
            new_bytes = _size(store.root / SHARDS / f"{new_id}.safetensors") + _size(store.root / INDEX / f"{new_id}.parquet")
            result.files -= 2
        else:
            new_bytes = 0
        part.unlink(missing_ok=True)
        shard_path.unlink(missing_ok=True)
        result.items += len(keys) - len(keep)
        result.files += 2
        result.bytes_freed += old_bytes - new_bytes
    orphans = store.orphans(min_age_s)
    result.bytes_freed += sum(_size(p) for p in orphans)
    result.files += store.prune(min_age_s)
    store.refresh()
    return result


def store_stats(store: ShardStore) -> dict:
    """Items, shards and bytes referenced by the index, plus unreferenced (orphan) files and bytes."""
    stats = store.stats()
    orphans = store.orphans(0.0)
    stats["orphan_files"] = len(orphans)
    stats["orphan_bytes"] = sum(_size(p) for p in orphans)
    return stats
