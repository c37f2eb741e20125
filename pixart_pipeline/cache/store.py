"""A content-addressed, append-only store of tensor dicts in safetensors shards (DESIGN.md section 6).

Layout under a store root (``<cache_dir>/<encoder fingerprint>/``)::

    shards/<uuid>.safetensors   tensors named "<item_key>.<field>"
    index/<uuid>.parquet        one row per item: key, shard, fields, shapes, dtypes, shard_sha256

A write puts the shard in place first, then its index part, each written to a temp name in the same
folder and ``os.replace``d. An item exists iff an index row names it, so a crash between the two leaves
an invisible shard (``prune`` removes it), never a half item. Readers take no locks and memory-map
shards (``mapped.py``); two writers never collide (uuid names) and an item written twice
is harmless (the first shard in name order wins; both copies are equal). No pickle anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors.torch import save as safetensors_save

from pixart_pipeline.cache.mapped import ShardMaps
from pixart_pipeline.fileio import atomic_write_bytes, atomic_write_text, sha256_file

SHARDS = "shards"
INDEX = "index"
CRASH_HOLD_ENV = "PIXART_CACHE_CRASH_HOLD"  # crash-test hook, see ShardStore._crash_test_hold
VERIFIED = "verified.json"  # size/mtime/ctime/sha256 of shards that passed a check (quick re-verify)
_INDEX_SCHEMA = pa.schema(
    [
        ("key", pa.string()),
        ("shard", pa.string()),
        ("fields", pa.list_(pa.string())),
        ("shapes", pa.list_(pa.list_(pa.int64()))),
        ("dtypes", pa.list_(pa.string())),
        ("shard_sha256", pa.string()),
    ]
)


def stat_stamp(st: os.stat_result, digest: str) -> list:
    """What ``verified.json`` remembers of a shard that passed: ``[size, mtime_ns, ctime_ns, sha256]``.

    ctime is in it because user space cannot set it: a rewrite that restores size and mtime still
    differs here and is re-hashed.
    """
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, digest]


@dataclass
class EncodeStats:
    """What an encode pass did: items encoded now, items already cached, and failures (what, why)."""

    encoded: int = 0
    reused: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class _Entry:
    shard: str
    fields: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]


class ShardStore:
    """Items (``dict[str, Tensor]``) keyed by a content hash, stored in immutable shards.

    The index is read lazily and kept on the instance; ``refresh()`` re-reads it to see shards other
    processes wrote since. ``get`` of an unknown key refreshes once before failing.
    """

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self._index: dict[str, _Entry] | None = None
        self._maps = ShardMaps()

    def __repr__(self) -> str:
        return f"ShardStore({str(self.root)!r})"

    # -- index
    def _index_parts(self) -> list[Path]:
        folder = self.root / INDEX
        if not folder.is_dir():
            return []
        return sorted(p for p in folder.glob("*.parquet") if not p.name.startswith("."))

    def refresh(self) -> None:
        """Re-read every index part (cheap: one small parquet per shard)."""
        index: dict[str, _Entry] = {}
        for part in self._index_parts():
            try:
                table = pq.read_table(part, schema=_INDEX_SCHEMA)
            except (OSError, pa.ArrowException) as e:
                raise ValueError(f"{part}: unreadable index part of the cache store ({e})") from e
            rows = table.to_pydict()
            for key, shard, fields, shapes, dtypes in zip(
                rows["key"], rows["shard"], rows["fields"], rows["shapes"], rows["dtypes"]
            ):
                # Parts are read in name order: the first copy of a duplicate item wins.
                index.setdefault(
                    key, _Entry(shard, tuple(fields), tuple(tuple(s) for s in shapes), tuple(dtypes))
                )
        self._index = index
        self._maps.forget()  # shards may have been dropped or pruned since

    @property
    def _entries(self) -> dict[str, _Entry]:
        if self._index is None:
            self.refresh()
        assert self._index is not None
        return self._index

    def keys(self) -> set[str]:
        """Every item key in the store."""
        return set(self._entries)

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    # -- write
    def write(self, items: dict[str, dict[str, torch.Tensor]]) -> str | None:
        """Write ``items`` as one new shard (+ its index part). Returns the shard id (None if empty).

        Tensors are copied to contiguous CPU tensors; their dtype is kept.
        """
        if not items:
            return None
        tensors: dict[str, torch.Tensor] = {}
        rows: dict[str, list] = {name: [] for name in _INDEX_SCHEMA.names}
        shard_id = uuid.uuid4().hex
        for key, fields in items.items():
            if not fields:
                raise ValueError(f"cache item {key!r} has no tensors")
            names = sorted(fields)
            for name in names:
                value = fields[name]
                if not isinstance(value, torch.Tensor):
                    raise TypeError(f"cache item {key!r} field {name!r} is {type(value).__name__}, not a Tensor")
                if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                    # Last guard: the encoders drop such items (naming the source file) before this.
                    raise ValueError(f"cache item {key!r} field {name!r} has NaN/Inf values; not written")
                # clone: safetensors refuses tensors that share storage (e.g. rows of one batch).
                tensors[f"{key}.{name}"] = value.detach().to("cpu").contiguous().clone()
            rows["key"].append(key)
            rows["shard"].append(f"{shard_id}.safetensors")
            rows["fields"].append(names)
            rows["shapes"].append([list(fields[n].shape) for n in names])
            rows["dtypes"].append([str(fields[n].dtype).removeprefix("torch.") for n in names])
        blob = safetensors_save(tensors)
        digest = hashlib.sha256(blob).hexdigest()
        rows["shard_sha256"] = [digest] * len(rows["key"])

        (self.root / SHARDS).mkdir(parents=True, exist_ok=True)
        (self.root / INDEX).mkdir(parents=True, exist_ok=True)
        # Shard first, then the index part that makes its items visible.
        self._crash_test_hold("before-shard", shard_id)
        atomic_write_bytes(self.root / SHARDS / f"{shard_id}.safetensors", blob)
        self._crash_test_hold("before-index", shard_id)
        sink = pa.BufferOutputStream()
        pq.write_table(pa.Table.from_pydict(rows, schema=_INDEX_SCHEMA), sink)
        atomic_write_bytes(self.root / INDEX / f"{shard_id}.parquet", sink.getvalue().to_pybytes())

        if self._index is not None:
            for i, key in enumerate(rows["key"]):
                self._index.setdefault(
                    key,
                    _Entry(
                        rows["shard"][i],
                        tuple(rows["fields"][i]),
                        tuple(tuple(s) for s in rows["shapes"][i]),
                        tuple(rows["dtypes"][i]),
                    ),
                )
        return shard_id

    def _crash_test_hold(self, point: str, shard_id: str) -> None:
        """Test hook for the crash tests (tests/cache/test_crash.py); a no-op unless the environment
        sets ``PIXART_CACHE_CRASH_HOLD="<point>:<n>:<ready file>"``.

        Then the write of the shard that finds ``n`` index parts in the store stops at ``point``
        (``before-shard``: nothing of it on disk; ``before-index``: the shard in place, its index
        part not yet), writes ``shard_id`` to ``<ready file>`` and sleeps, so the test can SIGKILL
        the process exactly there instead of hoping a timed kill lands in that window.
        """
        hold = os.environ.get(CRASH_HOLD_ENV)
        if not hold:
            return
        want_point, n, ready = hold.split(":", 2)
        if want_point != point or len(self._index_parts()) != int(n):
            return
        atomic_write_text(Path(ready), shard_id)
        time.sleep(600)  # killed here by the test
        raise RuntimeError(f"{CRASH_HOLD_ENV}: held at {point} for 600 s and nobody killed this process")

    # -- read
    def _entry(self, key: str) -> _Entry:
        entry = self._entries.get(key)
        if entry is None:
            self.refresh()  # another process may have written it since we read the index
            entry = self._entries.get(key)
        if entry is None:
            raise KeyError(f"item {key!r} is not in the cache store {self.root}")
        return entry

    def get(self, key: str) -> dict[str, torch.Tensor]:
        """The tensors of one item, ``{field: Tensor}``."""
        return self.get_many([key])[0]

    def get_many(self, keys: list[str]) -> list[dict[str, torch.Tensor]]:
        """The tensors of many items, in the order of ``keys``: views into memory-mapped shards (each
        shard mapped once per store object, copy-on-write). Writing into one never changes the file,
        but later reads of that item through the same store object see the write: ``clone`` first."""
        entries = [self._entry(k) for k in keys]
        by_shard: dict[str, list[int]] = defaultdict(list)
        for i, entry in enumerate(entries):
            by_shard[entry.shard].append(i)
        out: list[dict[str, torch.Tensor] | None] = [None] * len(keys)
        for shard, positions in by_shard.items():
            path = self.root / SHARDS / shard
            try:
                f = self._maps.get(path)  # mapped once; tensors are views, no per-read parse or copy
                for i in positions:
                    out[i] = {name: f.tensor(f"{keys[i]}.{name}") for name in entries[i].fields}
            except (OSError, ValueError, KeyError) as e:  # missing file, bad header, missing tensor
                raise ValueError(
                    f"{path}: cannot read cache shard for item(s) {[keys[i] for i in positions][:3]}: {e}. "
                    "Delete the store folder (or re-materialize the cache) to rebuild it."
                ) from e
        return out  # type: ignore[return-value]

    # -- bookkeeping
    def stats(self) -> dict:
        """``{"items", "shards", "bytes"}`` of what the index references."""
        shards = {e.shard for e in self._entries.values()}
        size = 0
        for shard in shards:
            path = self.root / SHARDS / shard
            size += path.stat().st_size if path.exists() else 0
        return {"items": len(self._entries), "shards": len(shards), "bytes": size}

    def data_version(self, keys: Iterable[str] | None = None) -> str:
        """A hash of the (given, else all) sorted item keys and the store root's folder name.

        The root's name is the encoder fingerprint, and keys are content hashes, so equal versions
        mean equal contents.
        """
        chosen = sorted(set(self._entries if keys is None else keys))
        h = hashlib.sha256(self.root.name.encode())
        for key in chosen:
            h.update(b"\n" + key.encode())
        return h.hexdigest()[:16]

    def shard_digests(self) -> dict[str, str]:
        """``{shard file name: sha256 recorded in its index part}`` for every referenced shard."""
        expected: dict[str, str] = {}
        for part in self._index_parts():
            table = pq.read_table(part, columns=["shard", "shard_sha256"]).to_pydict()
            expected.update(zip(table["shard"], table["shard_sha256"]))
        return expected

    def verify(self, quick: bool = False) -> list[tuple[str, str]]:
        """Check each referenced shard against the sha256 in its index; returns ``(shard, problem)``.

        ``quick=True`` (what the cache stages do on every run) re-hashes only shards whose size,
        mtime or ctime changed since they last passed, remembered in ``verified.json``. Any write
        through the file system (and ``os.utime`` itself) moves the inode's ctime, which user space
        cannot set back, so a rewrite that restores the old mtime is still re-hashed. What it cannot
        see is corruption below the file system (bit rot, a disk returning other bytes): only the
        full check (``pixart-pipeline cache verify``) re-hashes everything. Either check re-stamps
        what passed and drops the stamp of a shard that failed, so a shard the full check reported
        is re-hashed (and dropped by ``maintenance.repair``) on the next quick check.
        """
        stamp_path = self.root / VERIFIED
        try:
            stamps = json.loads(stamp_path.read_text()) if stamp_path.exists() else {}
        except (OSError, ValueError):
            stamps = {}  # a damaged stamp file only costs a full re-hash
        problems, passed = [], {}
        for shard, digest in sorted(self.shard_digests().items()):
            path = self.root / SHARDS / shard
            if not path.exists():
                problems.append((shard, "missing"))
                continue
            stamp = stat_stamp(path.stat(), digest)
            if quick and stamps.get(shard) == stamp:
                passed[shard] = stamp
            elif sha256_file(path) != digest:
                problems.append((shard, "sha256 mismatch"))
            else:
                passed[shard] = stamp
        if passed != stamps:
            try:
                atomic_write_text(stamp_path, json.dumps(passed, sort_keys=True))
            except OSError:
                pass  # a read-only store still verifies; it just re-hashes next time
        return problems

    def drop_shard(self, shard: str) -> list[str]:
        """Forget a (corrupt) shard: delete its index part (its items vanish), then the shard file.

        Returns the item keys it held; they are encoded again by the next cache run. Index first, so a
        crash in between leaves an orphan shard (``prune`` removes it), never a dangling index row.
        """
        part = self.root / INDEX / (Path(shard).stem + ".parquet")
        keys = pq.read_table(part, columns=["key"]).column("key").to_pylist() if part.exists() else []
        part.unlink(missing_ok=True)
        (self.root / SHARDS / shard).unlink(missing_ok=True)
        self._index = None
        return keys

    def orphans(self, min_age_s: float = 3600.0) -> list[Path]:
        """Shards no index part references, and temp files, older than ``min_age_s``."""
        referenced = {p.stem for p in self._index_parts()}
        now = time.time()
        found = []
        for folder in (self.root / SHARDS, self.root / INDEX):
            if not folder.is_dir():
                continue
            for path in folder.iterdir():
                orphan = folder.name == SHARDS and path.suffix == ".safetensors" and path.stem not in referenced
                try:
                    old = now - path.stat().st_mtime >= min_age_s
                except FileNotFoundError:
                    continue  # a writer renamed its temp file meanwhile
                if (orphan or path.name.startswith(".")) and old:
                    found.append(path)
        return found

    def prune(self, min_age_s: float = 3600.0) -> int:
        """Delete shards no index part references, and stale temp files. Returns files removed.

        ``min_age_s`` protects a writer in flight (its shard exists briefly before its index part).
        Items no metadata references are ``maintenance.prune_store``'s job.
        """
        found = self.orphans(min_age_s)
        for path in found:
            path.unlink(missing_ok=True)
        return len(found)


class ShardWriter:
    """Buffers items and writes a shard every ``items_per_shard`` items (and the rest on ``close``).

    Small shards mean less work lost to a crash; large ones mean fewer files. ``written`` counts the
    items already durable in the store.
    """

    def __init__(self, store: "ShardStore", items_per_shard: int) -> None:
        self.store = store
        self.items_per_shard = items_per_shard
        self.pending: dict[str, dict[str, torch.Tensor]] = {}
        self.written = 0

    def add(self, key: str, fields: dict[str, torch.Tensor]) -> bool:
        """Queue one item; returns True when this call flushed a shard."""
        self.pending[key] = fields
        if len(self.pending) < self.items_per_shard:
            return False
        self.close()
        return True

    def close(self) -> None:
        if self.pending:
            self.store.write(self.pending)
            self.written += len(self.pending)
            self.pending = {}
