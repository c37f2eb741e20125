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

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"})
CAPTION_EXTENSIONS = frozenset({"txt"})
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
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist or is not a folder")
    real_root = os.path.realpath(root)
    found: dict[str, os.stat_result] = {}
    skipped: list[str] = []
    stack = [(str(root), "")]
    while stack:
        folder, rel_folder = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError:
            continue  # unreadable folder: nothing we can list
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = f"{rel_folder}{entry.name}"
            try:
                if entry.is_symlink():
                    if entry.is_dir(follow_symlinks=True):
                        continue
                    if not _inside(os.path.realpath(entry.path), real_root):
                        continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, rel + "/"))
                elif entry.is_file(follow_symlinks=True):
                    ext = extension(entry.name)
                    if ext not in IMAGE_EXTENSIONS and ext not in CAPTION_EXTENSIONS:
                        continue
                    if is_storable_path(rel):
                        found[rel] = entry.stat(follow_symlinks=True)
                    else:
                        skipped.append(rel)
            except OSError:
                continue  # broken link or a file removed while we scanned
    return found, sorted(skipped)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def scan_dataset(
    root: Path, previous: pa.Table | None = None, workers: int = 4
) -> tuple[pa.Table, ScanStats]:
    """Manifest of ``root``; hashes only files that are new or whose (size, mtime_ns) changed.

    ``previous`` is the last manifest of the same root (or None). Rows are sorted by path. Files
    whose path is not valid UTF-8 are left out and counted in ``ScanStats.skipped_names``.
    """
    root = Path(root)
    files, skipped = walk_dataset_files(root)
    known: dict[str, tuple[int, int, str]] = {}
    if previous is not None and previous.num_rows:
        for p, s, m, h in zip(*(previous.column(c).to_pylist() for c in ("path", "size", "mtime_ns", "sha256"))):
            known[p] = (s, m, h)
    paths = sorted(files)
    digests: dict[str, str] = {}
    to_hash = []
    for p in paths:
        st = files[p]
        old = known.get(p)
        if old is not None and old[0] == st.st_size and old[1] == st.st_mtime_ns:
            digests[p] = old[2]
        else:
            to_hash.append(p)
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # hashlib releases the GIL on large buffers, so threads overlap reads and hashing.
        for p, digest in zip(to_hash, pool.map(lambda q: sha256_file(root / q), to_hash)):
            digests[p] = digest
    table = pa.table(
        {
            "path": paths,
            "size": [files[p].st_size for p in paths],
            "mtime_ns": [files[p].st_mtime_ns for p in paths],
            "sha256": [digests[p] for p in paths],
        },
        schema=MANIFEST_SCHEMA,
    )
    removed = len(set(known) - set(files))
    stats = ScanStats(
        hashed=len(to_hash), reused=len(paths) - len(to_hash), total=len(paths), removed=removed,
        skipped_names=len(skipped),
    )
    return table, stats


def manifest_data_version(table: pa.Table) -> str:
    """Content version of a dataset: sha256 of the sorted (path, sha256) pairs, 16 hex chars.

    Independent of row order, sizes and mtimes: touching a file without changing it keeps the version.
    """
    pairs = sorted(zip(table.column("path").to_pylist(), table.column("sha256").to_pylist()))
    h = hashlib.sha256()
    for path, digest in pairs:
        h.update(f"{path}\0{digest}\n".encode())
    return h.hexdigest()[:16]


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
