"""The probe cache: what probing found for each image content, kept beside the manifest.

Keyed by the file's sha256 from the manifest (so a renamed or copied image is not probed again),
and versioned by ``PROBE_VERSION`` in the file name (a change to what probing reports starts a
fresh cache instead of reusing stale answers). ``missing`` is never cached: it describes the
folder at one moment, not the content. Saving keeps only the entries of the current manifest, so
the cache never outgrows the dataset by more than 10%. Lookups and pruning are column-wise (pyarrow), and the file
is rewritten only when an entry was added or dropped.

A re-run after adding or editing a few files therefore probes only those files: the manifest
re-hashes only files whose (size, mtime_ns) changed, and every other sha256 hits this cache.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from pixart_pipeline.data.probe import MISSING, Probe, iter_probes
from pixart_pipeline.data.progress import Progress
from pixart_pipeline.fileio import atomic_write, read_parquet

# Bump when probe_image's answers change (new reason code, new note, different size rule).
PROBE_VERSION = "2"
CACHE_SCHEMA = pa.schema(
    [("sha256", pa.string()), ("width", pa.int64()), ("height", pa.int64()), ("status", pa.string()),
     ("note", pa.string())]
)


def probe_cache_path(folder: Path) -> Path:
    return Path(folder) / f"probe_cache.v{PROBE_VERSION}.parquet"


def load_probe_table(path: Path) -> pa.Table:
    """The cache table; empty when the file is absent or unreadable (a cache is never required)."""
    try:
        return read_parquet(path).select(CACHE_SCHEMA.names).cast(CACHE_SCHEMA)
    except (OSError, KeyError, pa.ArrowException):
        return CACHE_SCHEMA.empty_table()


def lookup(table: pa.Table, shas: list[str]) -> dict[str, Probe]:
    """``{sha256: Probe}`` for the entries of ``shas`` present in ``table``."""
    if not shas or table.num_rows == 0:
        return {}
    hits = table.filter(pc.is_in(table.column("sha256"), value_set=pa.array(shas, pa.string())))
    cols = [hits.column(c).to_pylist() for c in CACHE_SCHEMA.names]
    return {sha: Probe(w, h, s, n or "") for sha, w, h, s, n in zip(*cols)}


def load_probe_cache(path: Path) -> dict[str, Probe]:
    """Every entry as ``{sha256: Probe}`` (for inspection and tests)."""
    table = load_probe_table(path)
    return lookup(table, table.column("sha256").to_pylist())


def updated_table(table: pa.Table, new: dict[str, Probe], keep: pa.Array | list[str]) -> tuple[pa.Table, bool]:
    """(``table`` minus entries whose sha256 is not in ``keep``, plus ``new``; whether it changed).

    Pruning is amortised: it runs only once the cache holds 10% (and 100) more entries than
    ``keep``, so a re-run that adds a few files does not rebuild a 100,000-entry hash set.
    """
    kept = table
    if table.num_rows + len(new) > 1.1 * len(keep) + 100:
        keep = keep if isinstance(keep, (pa.Array, pa.ChunkedArray)) else pa.array(keep, pa.string())
        if isinstance(keep, pa.ChunkedArray):
            keep = keep.combine_chunks()
        kept = table.filter(pc.is_in(table.column("sha256"), value_set=keep))
    changed = kept.num_rows != table.num_rows or bool(new)
    if new:
        shas = sorted(new)
        rows = pa.table({"sha256": shas, "width": [new[s].width for s in shas], "height": [new[s].height for s in shas],
                         "status": [new[s].status for s in shas], "note": [new[s].note for s in shas]},
                        schema=CACHE_SCHEMA)
        kept = pa.concat_tables([kept, rows])
    return kept, changed


class LazyProbes(Mapping):
    """``{path: Probe}`` filled as the pool finishes: cache hits at once, the other paths in order as
    their probes arrive. Looking paths up in the order they were given (as the metadata table does)
    lets the caller compute rows while the pool is still probing later images."""

    def __init__(
        self, hits: dict[str, Probe], todo: list[tuple[str, str]], probes: Iterator[Probe],
        progress: Progress | None = None,
    ):
        self._done = dict(hits)
        self._progress = progress
        self._order = list(hits) + [p for p, _ in todo]
        self._pending = zip(todo, probes)
        self.new: dict[str, Probe] = {}  # {sha256: Probe} of new cacheable answers (complete after finish())
        self.probed = len(todo)

    def _pull(self) -> bool:
        try:
            (path, sha), probe = next(self._pending)
        except StopIteration:
            return False
        self._done[path] = probe
        if self._progress is not None:
            self._progress.advance()
        if probe.status != MISSING:
            self.new[sha] = probe
        return True

    def __getitem__(self, path: str) -> Probe:
        while path not in self._done:
            if not self._pull():
                raise KeyError(path)
        return self._done[path]

    def __iter__(self) -> Iterator[str]:
        return iter(self._order)

    def __len__(self) -> int:
        return len(self._order)

    def finish(self) -> dict[str, Probe]:
        """Wait for every probe; return the new cacheable answers."""
        while self._pull():
            pass
        return self.new


def probe_with_cache(
    root: Path, paths: list[str], shas: list[str], table: pa.Table, workers: int | None = None,
    log: Callable[[str], None] | None = None,
) -> LazyProbes:
    """``{path: Probe}`` for ``paths`` (a :class:`LazyProbes`); only paths whose sha256 is not in
    ``table`` are probed (``.probed`` of them; ``.finish()`` gives the new cacheable answers).
    ``log`` gets a progress line each tenth of the probing (see ``progress.py``)."""
    cached = lookup(table, sorted(set(shas)))
    hits: dict[str, Probe] = {}
    todo: list[tuple[str, str]] = []
    for path, sha in zip(paths, shas):
        hit = cached.get(sha)
        if hit is not None:
            hits[path] = hit
        else:
            todo.append((path, sha))
    base = str(root)  # plain strings: 100,000 Path objects cost a second of parsing
    progress = Progress(log, "probing", len(todo)) if log else None
    return LazyProbes(hits, todo, iter_probes([os.path.join(base, p) for p, _ in todo], workers=workers), progress)


def save_probe_table(path: Path, table: pa.Table) -> None:
    """Write the cache as it is (kept entries, then the new ones): no re-sort of 100,000 digests, and
    no compression (hex sha256 values do not compress; snappy doubled the write and read time)."""
    import pyarrow.parquet as pq

    atomic_write(path, lambda tmp: pq.write_table(table, tmp, compression="none"))
