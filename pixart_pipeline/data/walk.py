"""Listing a dataset folder: every image and caption file under it, with its size and mtime.

Rules: hidden files and folders (name starting with ``.``) are skipped, symlinked folders are not
followed (one inside the root only repeats files already listed, or loops; one outside is not the
dataset's), and a symlinked file is listed only if its target is inside the root (a dataset folder
should never pull in ``/etc/passwd`` or the user's home through a link). A path that is not valid
UTF-8 (``os.scandir`` hands it over with surrogate escapes) cannot be stored in a parquet string
column, so it is set aside in ``Listing.skipped`` instead of failing the listing.

Cost: one ``os.scandir`` per folder, one ``stat`` per listed file. That ``stat`` must stay: only a
file's own size and mtime reveal an in-place edit (its folder's mtime does not change). At 100,000
files these calls are most of a re-scan, so: each folder is listed through a file descriptor
(``DirEntry.stat`` is then ``fstatat`` on the bare name instead of a lookup of the whole path: about
20% less here), plain files go through list comprehensions of a few operations each, and the
UTF-8 check runs once per folder (a failing name is rare).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

IMAGE_EXTENSIONS = frozenset({"png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"})
CAPTION_EXTENSIONS = frozenset({"txt"})
LISTED_SUFFIXES = tuple(sorted("." + e for e in IMAGE_EXTENSIONS | CAPTION_EXTENSIONS))


@dataclass
class Listing:
    """Listed files as three parallel columns (in no set order), and the paths set aside as not UTF-8."""

    paths: list[str] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes: list[int] = field(default_factory=list)  # st_mtime_ns
    skipped: list[str] = field(default_factory=list)


def is_storable_path(path: str) -> bool:
    """True when ``path`` encodes to UTF-8: not so for a name ``os.scandir`` surrogate-escaped."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def list_files(root: Path) -> Listing:
    """Every image and caption file under ``root`` (recursive) by the rules above.

    Paths are relative POSIX paths. A folder that cannot be read (or vanished) is skipped; a file
    removed while its folder is listed is left out.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist or is not a folder")
    real_root = os.path.realpath(root)
    by_fd = os.scandir in os.supports_fd
    out = Listing()
    stack = [(str(root), "")]
    while stack:
        folder, rel_folder = stack.pop()
        try:
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY) if by_fd else None
        except OSError:
            continue  # unreadable folder (or gone): nothing we can list
        try:
            _list_folder(folder, fd, rel_folder, real_root, stack, out)
        finally:
            if fd is not None:
                os.close(fd)
    return out


def _list_folder(folder: str, fd: int | None, rel_folder: str, real_root: str, stack: list, out: Listing) -> None:
    """One folder of :func:`list_files`: its files are appended to ``out``, sub-folders pushed on ``stack``.

    Plain files (the directory entry says "regular file", no syscall) take list comprehensions
    (measured faster than one loop with appends); folders and symlinks, rare in a dataset, are
    handled one by one after them.
    """
    try:
        with os.scandir(folder if fd is None else fd) as it:
            entries = [e for e in it if e.name[0] != "."]
    except OSError:
        return
    plain = [e for e in entries if e.is_file(follow_symlinks=False) and e.name.lower().endswith(LISTED_SUFFIXES)]
    try:
        # No S_ISREG check: the entry is a regular file; one replaced by a folder in the
        # microseconds since cannot be hashed, so the scan drops it then.
        stats = [e.stat() for e in plain]
    except OSError:  # a file removed while we listed: redo this folder one entry at a time
        plain, stats = _stat_each(plain)
    start = len(out.paths)
    out.paths += [rel_folder + e.name for e in plain]
    out.sizes += [st.st_size for st in stats]
    out.mtimes += [st.st_mtime_ns for st in stats]
    for entry in entries:
        if entry.is_file(follow_symlinks=False):
            continue
        name = entry.name
        try:
            if entry.is_dir(follow_symlinks=False):  # a real folder (a linked one is not a dir here)
                stack.append((os.path.join(folder, name), rel_folder + name + "/"))
                continue
            if not entry.is_symlink() or not name.lower().endswith(LISTED_SUFFIXES):
                continue  # a fifo, a socket, ... or an unlisted extension
            if not _inside(os.path.realpath(os.path.join(folder, name)), real_root):
                continue
            st = entry.stat()  # follows the link (its target is inside the root)
        except OSError:
            continue  # broken link
        if stat.S_ISREG(st.st_mode):  # not a link to a folder, a fifo, ...
            out.paths.append(rel_folder + name)
            out.sizes.append(st.st_size)
            out.mtimes.append(st.st_mtime_ns)
    if not is_storable_path("".join(out.paths[start:])):
        _set_aside_unstorable(out, start)


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


def _set_aside_unstorable(out: Listing, start: int) -> None:
    """Move the paths from ``start`` on that are not valid UTF-8 into ``out.skipped``."""
    kept = [i for i in range(start, len(out.paths)) if is_storable_path(out.paths[i])]
    out.skipped += [out.paths[i] for i in range(start, len(out.paths)) if not is_storable_path(out.paths[i])]
    for column in (out.paths, out.sizes, out.mtimes):
        column[start:] = [column[i] for i in kept]
