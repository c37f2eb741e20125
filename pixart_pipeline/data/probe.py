"""Image probing: displayed (post-EXIF) size, a reason code, and a note; never raises on a bad file.

Cost per image: ``PIL.Image.open`` parses the header only (size, mode, JPEG/WebP/TIFF EXIF), plus
a cheap end-of-file check (``images.looks_truncated``: the JPEG end marker in the last bytes, the
PNG chunk chain up to ``IEND`` walked by seeking, the GIF trailer, the WebP RIFF size). Only a file
that fails that check is decoded in full, to decide between ``truncated`` and "data after the end"
(kept). A PNG's EXIF orientation comes from its ``eXIf`` chunk found by the same chunk walk, never
by decoding pixels (Pillow's ``PngImageFile.getexif`` decodes the whole image to look for it).

EXIF orientations 5-8 rotate by 90 degrees, so the displayed size swaps width and height; that is
what bucketing must use, because the VAE stage applies ``exif_transpose`` before resizing (as
SimpleTuner's ``TrainingSample.correct_image`` does).

Decompression bombs: ``Image.open`` raises ``DecompressionBombError`` for images over twice
``Image.MAX_IMAGE_PIXELS`` (89.5 MP by default) before any pixel is decoded, so a 100,000 x 100,000
PNG costs a header read, not 30 GB of memory. Between 1x and 2x the limit Pillow only warns, and
the image is kept (the VAE stage opens it with the same Pillow and the same limit).

``probe_many`` runs probes in a bounded pool: threads for small lists, worker processes for large
ones (header parsing is pure Python and holds the GIL). Submission is bounded too: paths go to the
pool in chunks, at most ``IN_FLIGHT_PER_WORKER`` chunks per worker submitted and not yet consumed,
and a new chunk is submitted only when the caller takes a finished one. ``Executor.map`` would
submit every chunk up front (a work item, a future and an argument tuple per path, held to the
end) and, with a caller slower than the pool, keep every finished result until the caller gets to
it. So the pool's own memory is bounded by the window, whatever the number of files; what grows
with the dataset is only what the caller keeps (the table).
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import struct
import sys
import warnings
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from PIL import Image, UnidentifiedImageError

from pixart_pipeline.data.images import (
    conversion_note,
    exif_orientation_from_bytes,
    frames_note,
    looks_truncated,
    png_walk,
)

EXIF_ORIENTATION = 0x0112
# Reason codes (``Probe.status`` when not "ok").
MISSING = "missing"
EMPTY_FILE = "empty_file"
UNREADABLE = "unreadable"
TRUNCATED = "truncated"
DECOMPRESSION_BOMB = "decompression_bomb"
# Lists at least this long are probed in worker processes; shorter ones in threads. Measured on 2
# cores (thumbnails): threads 0.19 / 0.35 / 0.69 s for 2,000 / 5,000 / 10,000 images, processes
# 0.28 / 0.41 / 0.41 s (a pool costs 0.2-0.3 s to start, over 1 s inside a Dagster step, whose
# workers re-import the dagster command's module).
PROCESS_POOL_MIN = 5000
# Chunks submitted to the pool and not yet taken by the caller, per worker: one running and one
# queued keeps every worker busy (a chunk is 64-512 paths, milliseconds of work).
IN_FLIGHT_PER_WORKER = 2
T = TypeVar("T")
R = TypeVar("R")
# What Pillow's plugins raise on malformed headers (struct.error: a short read while unpacking).
_PIL_ERRORS = (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError,
               struct.error, ZeroDivisionError, KeyError)


@dataclass(frozen=True, slots=True)  # one per image: slots take about a third less memory than a __dict__
class Probe:
    """Displayed (post-EXIF) size of an image, or ``None`` sizes and a reason code; ``note`` says
    what the VAE stage will do that is not obvious (first frame only, alpha on white, ...)."""

    width: int | None
    height: int | None
    status: str  # "ok" or a reason code
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _decodes(path: Path) -> bool:
    """Full decode of the first frame, as the VAE stage will do it."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                image.load()
        return True
    except Exception:  # any decoding failure means the VAE stage would fail too
        return False


def probe_image(path: Path) -> Probe:
    """Read an image's displayed size from its header; never raises for a bad file."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return Probe(None, None, MISSING)
    except OSError:
        return Probe(None, None, UNREADABLE)
    if size == 0:
        return Probe(None, None, EMPTY_FILE)
    try:
        with warnings.catch_warnings():
            # A DecompressionBombWarning (between 1x and 2x the pixel limit) is not an error here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open(path, "rb") as f, Image.open(f) as image:
                width, height = image.size
                fmt = image.format
                notes = [n for n in (frames_note(image), conversion_note(image)) if n]
                if fmt == "PNG":  # one walk over the chunk headers gives both answers
                    complete, exif = png_walk(f)
                    orientation = exif_orientation_from_bytes(exif)
                    suspicious = not complete
                else:
                    orientation = _orientation(image)
                    suspicious = looks_truncated(fmt, f)
    except FileNotFoundError:
        return Probe(None, None, MISSING)  # removed between stat and open
    except Image.DecompressionBombError:
        return Probe(None, None, DECOMPRESSION_BOMB)
    except _PIL_ERRORS:
        return Probe(None, None, UNREADABLE)
    if width <= 0 or height <= 0:
        return Probe(None, None, UNREADABLE)
    if suspicious:
        if not _decodes(path):
            return Probe(None, None, TRUNCATED)
        notes.append("data after the end marker ignored")
    if orientation in (5, 6, 7, 8):  # transpose / rotate 270 / transverse / rotate 90
        width, height = height, width
    if orientation != 1 and 1 <= orientation <= 8:
        notes.append(f"EXIF orientation {orientation}")
    return Probe(int(width), int(height), "ok", "; ".join(notes))


def _orientation(image: Image.Image) -> int:
    """EXIF orientation tag (1 when absent or unreadable); header-only for JPEG/WebP/TIFF."""
    try:
        return int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # malformed EXIF must not reject an otherwise fine image
        return 1


def _probe_tuple(path: str) -> tuple:
    p = probe_image(Path(path))
    return (p.width, p.height, p.status, p.note)


def _probe_tuples(paths: list[str]) -> list[tuple]:
    return [_probe_tuple(p) for p in paths]


def bounded_map(pool: Executor, fn: Callable[[T], R], items: Iterable[T], window: int) -> Iterator[R]:
    """``fn`` over ``items`` in ``pool``, yielded in input order, with at most ``window`` tasks
    submitted and not yet yielded (``Executor.map`` submits all of them at once).

    The next task is submitted before a result is yielded, so the pool stays busy while the caller
    works on that result.
    """
    if window < 1:
        raise ValueError(f"window must be at least 1, got {window}")
    todo = iter(items)
    pending: deque = deque(pool.submit(fn, item) for item in itertools.islice(todo, window))
    while pending:
        result = pending.popleft().result()
        for item in itertools.islice(todo, 1):
            pending.append(pool.submit(fn, item))
        yield result


def spawn_can_start() -> bool:
    """Whether ``spawn`` can start worker processes from this process.

    A spawned worker re-imports the parent's ``__main__`` from its file. A program read from stdin
    (``python - < script.py``) has ``__main__.__file__ == "<stdin>"``, which does not exist: every
    worker dies at start and the pool raises ``BrokenProcessPool``. ``python -m ...``, ``python -c``,
    notebooks and real script files are fine.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None:
        return True  # imported by module name (python -m), or no main at all
    main_file = getattr(main, "__file__", None)
    return main_file is None or os.path.isfile(main_file)


def probe_many(
    paths: list[Path] | list[str], workers: int | None = None, processes: bool | None = None
) -> list[Probe]:
    """``probe_image`` over ``paths`` in a bounded pool; results in input order (see ``iter_probes``)."""
    return list(iter_probes(paths, workers, processes))


def iter_probes(
    paths: list[Path] | list[str],
    workers: int | None = None,
    processes: bool | None = None,
    chunk: int | None = None,
    window: int | None = None,
) -> Iterator[Probe]:
    """``probe_image`` over ``paths`` in a bounded pool, yielded in input order as they finish, so a
    caller can work on early results while the pool probes later ones.

    ``workers`` defaults to the CPU count (at most 8). ``processes`` defaults to True for lists of
    ``PROCESS_POOL_MIN`` paths or more. Worker processes are started with ``spawn`` (safe beside
    threads, e.g. in a Dagster run worker); where spawn cannot start them, threads are used
    (:func:`spawn_can_start`). Paths go to the pool in chunks of ``chunk`` (default:
    up to 512 for processes, 64 for threads; one task per path would cost as much as the probe),
    at most ``window`` chunks (default ``IN_FLIGHT_PER_WORKER * workers``) in flight at a time.
    """
    if not paths:
        return
    workers = max(1, min(workers or min(os.cpu_count() or 1, 8), len(paths)))
    if processes is None:
        processes = len(paths) >= PROCESS_POOL_MIN and workers > 1
    processes = processes and spawn_can_start()
    if chunk is None:
        cap, per_worker = (512, 8) if processes else (64, 4)
        chunk = max(1, min(cap, len(paths) // (workers * per_worker)))
    window = window or IN_FLIGHT_PER_WORKER * workers
    # Chunks are sliced as they are submitted (plain strings: cheap to send to a worker process).
    chunks = ([p if isinstance(p, str) else str(p) for p in paths[i : i + chunk]]
              for i in range(0, len(paths), chunk))
    if processes:
        pool: Executor = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    else:
        pool = ThreadPoolExecutor(max_workers=workers)
    with pool:
        for batch in bounded_map(pool, _probe_tuples, chunks, window):
            for t in batch:
                yield Probe(*t)
