"""The manifest of a dataset folder: every image file and every ``.txt`` caption sidecar.

Columns: ``path`` (POSIX, relative to the root), ``size``, ``mtime_ns``, ``sha256``. Caption
sidecars are listed too, so editing a caption changes the dataset's data version.
A re-scan re-hashes only files whose (size, mtime_ns) changed since the previous manifest, so
scanning 10,000 unchanged images costs 10,000 ``stat`` calls and no reads.

Hidden files and folders (name starting with ``.``) are skipped, symlinked folders are not
followed, and a symlinked file is listed only if its target is inside the root (a dataset folder
should never pull in ``/etc/passwd`` or the user's home through a link). A file whose path is not
valid UTF-8 (``os.scandir`` hands it over with surrogate escapes) cannot be stored in a parquet
string column, so it is skipped and counted (``ScanStats.skipped_names``) instead of failing the scan.
"""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc

from pixart_pipeline.data.digest import table_digest
from pixart_pipeline.data.progress import Progress
from pixart_pipeline.fileio import sha256_file  # noqa: F401  (re-exported: callers hash the files the manifest lists)

IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"})
CAPTION_EXTENSIONS = frozenset({"txt"})
_LISTED_SUFFIXES = tuple(sorted("." + e for e in IMAGE_EXTENSIONS | CAPTION_EXTENSIONS))
MANIFEST_SCHEMA = pa.schema(
    [("path", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("sha256", pa.string())]
)


@dataclass(frozen=True)
class ScanStats:
    """What a scan did: files hashed, hashes reused from the previous manifest, files now, files gone,
    and image/caption files skipped because their path is not valid UTF-8."""

    hashed: int
    reused: int
    total: int
    removed: int
    skipped_names: int = 0


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


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def is_storable_path(path: str) -> bool:
    """True when ``path`` encodes to UTF-8: not so for a name ``os.scandir`` surrogate-escaped."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def list_dataset_files(root: Path) -> dict[str, os.stat_result]:
    """``{relative POSIX path: stat}`` of every image and caption file under ``root`` (recursive).

    Skips hidden names, symlinked files whose target lies outside ``root``, every symlinked
    folder (one inside the root only repeats files already listed, or loops; one outside is not
    the dataset's) and paths that are not valid UTF-8 (see :func:`walk_dataset_files`).
    """
    return walk_dataset_files(root)[0]


def walk_dataset_files(root: Path) -> tuple[dict[str, os.stat_result], list[str]]:
    """(:func:`list_dataset_files`' result, image/caption paths skipped as not valid UTF-8).

    A skipped path keeps its surrogate escapes; print it with ``ascii()``. A folder whose name is not
    valid UTF-8 is still walked, and each image/caption file below it counts as one skipped path.
    """
    skipped: list[str] = []
    found: dict[str, os.stat_result] = {}
    for rels, stats in _walk(Path(root), skipped):
        found.update(zip(rels, stats))
    return found, sorted(skipped)


def _walk(root: Path, skipped: list[str]) -> Iterator[tuple[list[str], list[os.stat_result]]]:
    """Per folder under ``root`` (in no set order): the relative POSIX paths of its listed files and
    their ``stat``; paths that are not valid UTF-8 are appended to ``skipped`` instead.

    One ``os.scandir`` per folder; the name and entry-type checks need no syscall, then one ``stat``
    per listed file. That ``stat`` must stay: only a file's own mtime/size reveals an in-place edit
    (the folder's mtime does not change). At 100,000 files these calls are most of a re-scan, so:
    the folder is listed through a file descriptor (``DirEntry.stat`` is then ``fstatat`` on the
    bare name instead of a lookup of the whole path: about 20% less here), the per-entry Python
    work is a few operations, and the UTF-8 check runs once per folder (a failing name is rare).
    """
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist or is not a folder")
    real_root = os.path.realpath(root)
    by_fd = os.scandir in os.supports_fd
    stack = [(str(root), "")]
    while stack:
        folder, rel_folder = stack.pop()
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY) if by_fd else None
        except OSError:
            continue  # unreadable folder (or gone): nothing we can list
        try:
            listed = _list_folder(folder, fd, rel_folder, real_root, stack, skipped)
        finally:
            if fd is not None:
                os.close(fd)
        if listed is not None:
            yield listed


def _list_folder(
    folder: str, fd: int | None, rel_folder: str, real_root: str, stack: list, skipped: list[str]
) -> tuple[list[str], list[os.stat_result]] | None:
    """One folder of :func:`_walk`: its files' (paths, stats); sub-folders are pushed on ``stack``.

    Plain files (the directory entry says "regular file", no syscall) take a list-comprehension
    fast path; folders and symlinks, rare in a dataset, go through the careful loop below.
    """
    try:
        entries = list(os.scandir(folder if fd is None else fd))
    except OSError:
        return None
    storable = is_storable_path(rel_folder + "".join([e.name for e in entries]))
    visible = [e for e in entries if e.name[0] != "."]
    plain = [e for e in visible if e.is_file(follow_symlinks=False) and e.name.lower().endswith(_LISTED_SUFFIXES)]
    try:
        # No S_ISREG check here: the entry is a regular file, and one replaced by a folder in the
        # microseconds since cannot be hashed, so the scan drops it then (``hash_files``).
        stats = [e.stat() for e in plain]
    except OSError:  # a file removed while we listed: redo this folder one entry at a time
        plain, stats = _stat_each(plain)
    names = [e.name for e in plain]
    for entry in visible:
        if entry.is_file(follow_symlinks=False):
            continue
        name = entry.name
        try:
            if entry.is_dir(follow_symlinks=False):  # a real folder (a linked one is not a dir here)
                stack.append((os.path.join(folder, name), rel_folder + name + "/"))
                continue
            if not entry.is_symlink() or not name.lower().endswith(_LISTED_SUFFIXES):
                continue  # a fifo, a socket, ... or an unlisted extension
            if not _inside(os.path.realpath(os.path.join(folder, name)), real_root):
                continue
            st = entry.stat()  # follows the link (its target is inside the root)
        except OSError:
            continue  # broken link
        if stat.S_ISREG(st.st_mode):  # not a link to a folder, a fifo, ...
            names.append(name)
            stats.append(st)
    if storable:
        return [rel_folder + name for name in names], stats
    rels: list[str] = []
    kept: list[os.stat_result] = []
    for name, st in zip(names, stats):
        rel = rel_folder + name
        if is_storable_path(rel):
            rels.append(rel)
            kept.append(st)
        else:
            skipped.append(rel)
    return rels, kept


def _stat_each(entries: list[os.DirEntry]) -> tuple[list[os.DirEntry], list[os.stat_result]]:
    """(entries that could be stat-ed, their stats): the slow path when one vanished mid-listing."""
    kept, stats = [], []
    for e in entries:
        try:
            stats.append(e.stat())
        except OSError:
            continue
        kept.append(e)
    return kept, stats


def hash_files(
    root: Path, paths: list[str], workers: int = 4, progress: Progress | None = None
) -> dict[str, str | None]:
    """``{path: sha256}`` of files under ``root``, hashed in a thread pool (hashlib releases the GIL
    on large buffers, so threads overlap reads and hashing). A file that disappeared since it was
    listed (or cannot be read any more) maps to None instead of failing the whole scan.
    ``progress`` is advanced as chunks of files finish."""

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
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(batch, parts):
            digests += part
            if progress is not None:
                progress.advance(len(part))
    return dict(zip(paths, digests))


def scan_dataset(
    root: Path, previous: pa.Table | None = None, workers: int = 4, log: Callable[[str], None] | None = None
) -> tuple[pa.Table, ScanStats]:
    """Manifest of ``root``; hashes only files that are new or whose (size, mtime_ns) changed.

    ``previous`` is the last manifest of the same root (or None). Rows are sorted by path. Files
    whose path is not valid UTF-8 are left out and counted in ``ScanStats.skipped_names``.
    ``log`` gets a progress line each tenth of the hashing (see ``progress.py``).
    """
    root = Path(root)
    skipped: list[str] = []
    paths: list[str] = []
    sizes: list[int] = []
    mtimes: list[int] = []
    for rels, stats in _walk(root, skipped):
        paths += rels
        sizes += [st.st_size for st in stats]
        mtimes += [st.st_mtime_ns for st in stats]
    current = pa.table({"path": paths, "size": sizes, "mtime_ns": mtimes},
                       schema=pa.schema([MANIFEST_SCHEMA.field(i) for i in range(3)]))
    current = current.take(pc.sort_indices(current.column("path")))  # Arrow sorts by code point, as str does
    joined, removed = _with_previous_digests(current, previous)
    digests = joined.column("sha256")
    missing = pc.is_null(digests)
    to_hash = joined.filter(missing).column("path").to_pylist()
    vanished = 0
    if to_hash:
        fresh = hash_files(root, to_hash, workers, Progress(log, "hashing", len(to_hash)) if log else None)
        hashed = pa.array([fresh[p] for p in to_hash], pa.string())  # in the filtered (path) order
        if len(to_hash) == joined.num_rows:
            digests = hashed
        else:
            digests = pc.replace_with_mask(digests.combine_chunks(), missing.combine_chunks(), hashed)
    table = joined.set_column(3, "sha256", digests).cast(MANIFEST_SCHEMA)
    if to_hash and None in fresh.values():
        # Listed, then gone before it was read: it is not part of the dataset any more.
        vanished = sum(v is None for v in fresh.values())
        table = table.filter(pc.is_valid(table.column("sha256")))
    stats = ScanStats(
        hashed=len(to_hash) - vanished, reused=len(paths) - len(to_hash), total=table.num_rows,
        removed=removed, skipped_names=len(skipped),
    )
    return table, stats


def _with_previous_digests(current: pa.Table, previous: pa.Table | None) -> tuple[pa.Table, int]:
    """(``current`` plus a ``sha256`` column, null where the file must be hashed; files removed).

    A file keeps its previous sha256 iff the previous manifest has its path with the same size and
    mtime_ns. Column-wise: ``index_in`` finds each path's previous row (one hash table over the
    previous paths), then sizes and mtimes are compared row by row; an Acero hash join on three
    keys followed by a re-sort cost about ten times more at 100,000 files. Paths are unique on
    both sides, so the files removed are the previous rows that no current path found.
    """
    if previous is None or previous.num_rows == 0:
        return current.append_column("sha256", pa.nulls(current.num_rows, pa.string())), 0
    old = previous.select(MANIFEST_SCHEMA.names).cast(MANIFEST_SCHEMA).combine_chunks()
    where = pc.index_in(current.column("path"), value_set=old.column("path"))  # null: a new path
    same = pc.and_(
        pc.equal(current.column("size"), pc.take(old.column("size"), where)),
        pc.equal(current.column("mtime_ns"), pc.take(old.column("mtime_ns"), where)),
    )
    digests = pc.if_else(pc.fill_null(same, False), pc.take(old.column("sha256"), where),
                         pa.scalar(None, pa.string()))
    removed = old.num_rows - (current.num_rows - where.null_count)
    return current.append_column("sha256", digests), removed


def manifest_data_version(table: pa.Table) -> str:
    """Content version of a dataset: digest of the (path, sha256) rows sorted by path, 16 hex chars.

    Independent of row order, sizes and mtimes: touching a file without changing it keeps the version.
    """
    return table_digest(table, ["path", "sha256"])


def folder_changes(root: Path, manifest: pa.Table) -> FolderChanges:
    """What changed in ``root`` since ``manifest`` was taken, using ``stat`` only (cheap for sensors).

    Paths that are not valid UTF-8 are ignored, as :func:`scan_dataset` leaves them out: such a file
    is never "new", or every sensor tick would ask for a re-scan that cannot list it.
    """
    files = list_dataset_files(Path(root))
    recorded = {
        p: (s, m)
        for p, s, m in zip(*(manifest.column(c).to_pylist() for c in ("path", "size", "mtime_ns")))
    }
    new = sorted(p for p in files if p not in recorded)
    changed = sorted(
        p for p, st in files.items() if p in recorded and recorded[p] != (st.st_size, st.st_mtime_ns)
    )
    removed = sorted(p for p in recorded if p not in files)
    return FolderChanges(new=new, changed=changed, removed=removed)
