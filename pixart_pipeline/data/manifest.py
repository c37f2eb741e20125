"""The manifest of a dataset folder: every image file and every ``.txt`` caption sidecar.

Columns: ``path`` (POSIX, relative to the root), ``size``, ``mtime_ns``, ``sha256``. Caption
sidecars are listed too, so editing a caption changes the dataset's data version.
A re-scan re-hashes only files whose (size, mtime_ns) changed since the previous manifest, so
scanning 10,000 unchanged images costs 10,000 ``stat`` calls and no reads.

The racy-mtime rule (as git's index has it): an edit within one timestamp tick of the previous scan
can keep both size and mtime, so a file whose mtime was not safely older than the scan that hashed
it (``mtime_ns >= scan start - RACY_MARGIN_NS``, the start kept in the manifest's schema metadata
under ``scan_started_ns``) is hashed again by the next scan even when its stat matches. Only such
recent files are re-read (``ScanStats.rechecked``); a file is trusted once a scan started well after
its mtime. ``folder_changes`` (the sensor's and planner's cheap look) stays stat-only: a same-size,
same-mtime edit is picked up by the next scan, not announced by a sensor. Which files are listed
(hidden names, symlinks, names that are not UTF-8) is decided in ``walk.py``; a file whose path is
not valid UTF-8 is skipped and counted (``ScanStats.skipped_names``) instead of failing the scan.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from pixart_pipeline.data.digest import in_order, table_digest
from pixart_pipeline.data.progress import Progress
from pixart_pipeline.data.walk import IMAGE_EXTENSIONS, list_files
from pixart_pipeline.fileio import sha256_file  # noqa: F401  (re-exported: callers hash the files the manifest lists)

# Files averaging less than this are hashed in one thread (see ``hashing_workers``).
SMALL_FILE_BYTES = 64 << 10
MANIFEST_SCHEMA = pa.schema(
    [("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("sha256", pa.string())]
)
# Schema metadata: when the scan that wrote the manifest started (time.time_ns(), as text).
SCAN_STARTED_KEY = "scan_started_ns"
# A file whose mtime is less than this before the scan start may still be rewritten within its
# mtime's tick: 2 s covers the coarsest common timestamps (FAT) and small clock skew (NFS).
RACY_MARGIN_NS = 2_000_000_000


@dataclass(frozen=True)
class ScanStats:
    """What a scan did: files hashed (new or whose size/mtime changed), hashes reused from the
    previous manifest, files now, files gone, image/caption files skipped because their path is not
    valid UTF-8, and files hashed again only because the previous scan saw them too recently to
    trust their stat (the racy-mtime rule in the module docstring)."""

    hashed: int
    reused: int
    total: int
    removed: int
    skipped_names: int = 0
    rechecked: int = 0


@dataclass(frozen=True)
class FolderChanges:
    """Differences between a folder and a manifest, by ``stat`` only (no hashing)."""

    new: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not (self.new or self.changed or self.removed)

    def __bool__(self) -> bool:
        """Truthy iff something changed, so ``if folder_changes(...):`` reads naturally."""
        return not self.is_empty

    def __str__(self) -> str:
        """``"3 new (a.png, b.png, c.png), 1 removed (d.png)"``: what a planner or sensor prints."""
        parts = []
        for label, paths in (("new", self.new), ("changed", self.changed), ("removed", self.removed)):
            if paths:
                shown = ", ".join(paths[:3]) + (f", ... (+{len(paths) - 3})" if len(paths) > 3 else "")
                parts.append(f"{len(paths)} {label} ({shown})")
        return ", ".join(parts) or "no changes"


def extension(path: str) -> str:
    """Lower-case extension without the dot (``"a/B.JPG"`` -> ``"jpg"``)."""
    return os.path.splitext(path)[1][1:].lower()


def is_image_path(path: str) -> bool:
    return extension(path) in IMAGE_EXTENSIONS


def list_dataset_files(root: Path) -> dict[str, tuple[int, int]]:
    """``{relative POSIX path: (size, mtime_ns)}`` of every image and caption file under ``root``
    (recursive), by the rules of ``walk.py``; paths that are not valid UTF-8 are left out."""
    listing = list_files(Path(root))
    return dict(zip(listing.paths, zip(listing.sizes, listing.mtimes)))


def _listing_table(root: Path) -> tuple[pa.Table, int]:
    """(path, size, mtime_ns) of every listed file, sorted by path; files skipped as not UTF-8."""
    listing = list_files(root)
    table = pa.table({"path": listing.paths, "size": listing.sizes, "mtime_ns": listing.mtimes},
                     schema=pa.schema([MANIFEST_SCHEMA.field(i) for i in range(3)]))
    if not in_order(table.column("path")):
        table = table.take(pc.sort_indices(table.column("path")))  # Arrow sorts by code point, as str does
    return table, len(listing.skipped)


def hash_files(
    root: Path, paths: list[str], workers: int = 4, progress: Progress | None = None
) -> dict[str, str | None]:
    """``{path: sha256}`` of files under ``root``, hashed in ``workers`` threads (hashlib releases the
    GIL on large buffers, so threads overlap reads and hashing; with 1 worker, in this thread). A
    file that disappeared since it was listed (or cannot be read any more) maps to None instead of
    failing the whole scan. ``progress`` is advanced as chunks of files finish."""

    base = str(root)

    def one(rel: str) -> str | None:
        try:
            return sha256_file(os.path.join(base, rel))  # a str: a Path per file cost ~2 us of parsing
        except (FileNotFoundError, IsADirectoryError, PermissionError):
            return None

    def batch(part: list[str]) -> list[str | None]:
        return [one(rel) for rel in part]

    # Chunks of paths, not one future per file: at a few tens of us per small file the future
    # itself cost as much as the hashing.
    workers = max(1, workers)
    chunk = max(1, min(64, len(paths) // (workers * 4)))
    parts = [paths[i : i + chunk] for i in range(0, len(paths), chunk)]
    digests: list[str | None] = []

    def collect(results: Iterator[list[str | None]]) -> None:
        for part in results:
            digests.extend(part)
            if progress is not None:
                progress.advance(len(part))

    if workers == 1:
        collect(map(batch, parts))
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            collect(pool.map(batch, parts))
    return dict(zip(paths, digests))


def hashing_workers(sizes: pa.Array | pa.ChunkedArray, workers: int) -> int:
    """Threads worth hashing files of these ``sizes`` with: ``workers`` for files averaging
    ``SMALL_FILE_BYTES`` or more, else 1.

    Threads pay off only while hashing runs without the GIL, which hashlib allows for buffers over
    2 KiB; for small files the per-file Python work dominates and threads only contend for the GIL.
    Measured on 2 cores: 2 MB files 1.08 -> 0.55 ms each with 2 threads, 6 KB files 9.6 -> 10.8 us,
    100,000 thumbnails of 1.6 KB 0.8 -> 1.4 s with 4 threads.
    """
    mean = pc.mean(sizes).as_py() if len(sizes) else 0
    return max(1, workers) if (mean or 0) >= SMALL_FILE_BYTES else 1


def scan_dataset(
    root: Path, previous: pa.Table | None = None, workers: int = 4, log: Callable[[str], None] | None = None
) -> tuple[pa.Table, ScanStats]:
    """Manifest of ``root``; hashes only files that are new, whose (size, mtime_ns) changed, or that
    were too recent to trust at the previous scan (the racy-mtime rule above).

    ``previous`` is the last manifest of the same root (or None). Rows are sorted by path; the
    schema metadata records when this scan started. Files whose path is not valid UTF-8 are left
    out and counted in ``ScanStats.skipped_names``. ``log`` gets a progress line each tenth of the
    hashing (see ``progress.py``).
    """
    root = Path(root)
    started = time.time_ns()  # before the first stat: every file's stat is at least this recent
    current, skipped = _listing_table(root)
    joined, removed, rechecked = _with_previous_digests(current, previous)
    digests = joined.column("sha256")
    missing = pc.is_null(digests)
    pending = joined.filter(missing)
    to_hash = pending.column("path").to_pylist()
    workers = hashing_workers(pending.column("size"), workers)
    vanished = 0
    if to_hash:
        fresh = hash_files(root, to_hash, workers, Progress(log, "hashing", len(to_hash)) if log else None)
        hashed = pa.array([fresh[p] for p in to_hash], pa.string())  # in the filtered (path) order
        if len(to_hash) == joined.num_rows:
            digests = hashed
        else:
            digests = pc.replace_with_mask(digests.combine_chunks(), missing.combine_chunks(), hashed)
    table = joined.set_column(3, "sha256", digests).cast(MANIFEST_SCHEMA)
    table = table.replace_schema_metadata({SCAN_STARTED_KEY: str(started)})
    if to_hash and None in fresh.values():
        # Listed, then gone before it was read: it is not part of the dataset any more.
        vanished = sum(v is None for v in fresh.values())
        table = table.filter(pc.is_valid(table.column("sha256")))
    stats = ScanStats(
        hashed=len(to_hash) - vanished - rechecked, reused=current.num_rows - len(to_hash),
        total=table.num_rows, removed=removed, skipped_names=skipped, rechecked=rechecked,
    )
    return table, stats


def _trusted_before(previous: pa.Table) -> int | None:
    """mtime_ns below which the previous manifest's stat can be trusted; None when it does not say
    when it was scanned (written before the racy rule: all its rows are trusted, as they were)."""
    started = (previous.schema.metadata or {}).get(SCAN_STARTED_KEY.encode())
    return int(started) - RACY_MARGIN_NS if started else None


def _with_previous_digests(current: pa.Table, previous: pa.Table | None) -> tuple[pa.Table, int, int]:
    """(``current`` plus a ``sha256`` column, null where the file must be hashed; files removed;
    files to hash again only because they were racy at the previous scan).

    A file keeps its previous sha256 iff the previous manifest has its path with the same size and
    mtime_ns, and that mtime was safely older than the previous scan's start. Column-wise: ``index_in`` finds each path's previous row (one hash table over the
    previous paths), then sizes and mtimes are compared row by row; an Acero hash join on three
    keys followed by a re-sort cost about ten times more at 100,000 files. Paths are unique on
    both sides, so the files removed are the previous rows that no current path found.
    """
    if previous is None or previous.num_rows == 0:
        return current.append_column("sha256", pa.nulls(current.num_rows, pa.string())), 0, 0
    old = previous.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA).combine_chunks()
    where = pc.index_in(current.column("path"), value_set=old.column("path"))  # null: a new path
    same = pc.and_(
        pc.equal(current.column("size"), pc.take(old.column("size"), where)),
        pc.equal(current.column("mtime_ns"), pc.take(old.column("mtime_ns"), where)),
    )
    same = pc.fill_null(same, False)
    trusted, rechecked = same, 0
    cutoff = _trusted_before(previous)
    if cutoff is not None:
        trusted = pc.and_(same, pc.less(current.column("mtime_ns"), cutoff))
        rechecked = pc.sum(same).as_py() - pc.sum(trusted).as_py() if len(same) else 0
    digests = pc.if_else(trusted, pc.take(old.column("sha256"), where), pa.scalar(None, pa.string()))
    removed = old.num_rows - (current.num_rows - where.null_count)
    return current.append_column("sha256", digests), removed, rechecked


def manifest_data_version(table: pa.Table) -> str:
    """Content version of a dataset: digest of the (path, sha256) rows sorted by path, 16 hex chars.

    Independent of row order, sizes and mtimes: touching a file without changing it keeps the version.
    """
    return table_digest(table, ["path", "sha256"])


def folder_changes(root: Path, manifest: pa.Table) -> FolderChanges:
    """What changed in ``root`` since ``manifest`` was taken, using ``stat`` only (cheap for sensors).

    Column-wise, like the scan: each listed path's manifest row by ``index_in``, then sizes and mtimes
    compared. Paths that are not valid UTF-8 are ignored, as :func:`scan_dataset` leaves them out:
    such a file is never "new", or every sensor tick would ask for a re-scan that cannot list it.
    """
    current, _ = _listing_table(Path(root))
    old = manifest.select(["path", "size", "mtime_ns"]).combine_chunks()
    where = pc.index_in(current.column("path"), value_set=old.column("path"))  # null: a new path
    same = pc.and_(
        pc.equal(current.column("size"), pc.take(old.column("size"), where)),
        pc.equal(current.column("mtime_ns"), pc.take(old.column("mtime_ns"), where)),
    )
    new = pc.filter(current.column("path"), pc.is_null(where)).to_pylist()
    changed = pc.filter(current.column("path"), pc.invert(pc.fill_null(same, True))).to_pylist()
    gone = pc.invert(pc.is_in(old.column("path"), value_set=current.column("path").combine_chunks()))
    removed = sorted(pc.filter(old.column("path"), gone).to_pylist())
    return FolderChanges(new=new, changed=changed, removed=removed)


def manifest_sha256(manifest: pa.Table, paths: pa.ChunkedArray, fallback: pa.ChunkedArray) -> pa.ChunkedArray:
    """The manifest's sha256 of each of ``paths``, else ``fallback``'s (the manifest wins where it has
    the path). Column-wise, by ``index_in`` on the manifest's paths: a dict of 100,000 manifest rows
    costs more than the few rows a re-run computes, and an Acero join cannot carry a list column."""
    where = pc.index_in(paths, value_set=manifest.column("path").combine_chunks())  # null: not in the manifest
    return pc.coalesce(pc.take(manifest.column("sha256").combine_chunks(), where), fallback)
