"""The probe cache: what probing found for each image content, kept beside the manifest.

Keyed by the file's sha256 from the manifest (so a renamed or copied image is not probed again),
and versioned by ``PROBE_VERSION`` in the file name (a change to what probing reports starts a
fresh cache instead of reusing stale answers). ``missing`` is never cached: it describes the
folder at one moment, not the content. Saving keeps only the entries of the current manifest, so
the cache never outgrows the dataset.

A re-run after adding or editing a few files therefore probes only those files: the manifest
re-hashes only files whose (size, mtime_ns) changed, and every other sha256 hits this cache.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from pixart_pipeline.data.probe import MISSING, Probe, probe_many
from pixart_pipeline.fileio import atomic_write_parquet, read_parquet

# Bump when probe_image's answers change (new reason code, new note, different size rule).
PROBE_VERSION = "2"
CACHE_SCHEMA = pa.schema(
    [("sha256", pa.string()), ("width", pa.int64()), ("height", pa.int64()), ("status", pa.string()),
     ("note", pa.string())]
)


def probe_cache_path(folder: Path) -> Path:
    return Path(folder) / f"probe_cache.v{PROBE_VERSION}.parquet"


def load_probe_cache(path: Path) -> dict[str, Probe]:
    """``{sha256: Probe}``; empty when the file is absent or unreadable (a cache is never required)."""
    try:
        table = read_parquet(path)
        cols = [table.column(c).to_pylist() for c in CACHE_SCHEMA.names]
    except (OSError, KeyError, pa.ArrowException):
        return {}
    return {sha: Probe(w, h, s, n or "") for sha, w, h, s, n in zip(*cols)}


def save_probe_cache(path: Path, cache: dict[str, Probe], keep: set[str]) -> None:
    """Write the entries of ``cache`` whose sha256 is in ``keep``, sorted by sha256."""
    shas = sorted(s for s in cache if s in keep)
    rows = {
        "sha256": shas,
        "width": [cache[s].width for s in shas],
        "height": [cache[s].height for s in shas],
        "status": [cache[s].status for s in shas],
        "note": [cache[s].note for s in shas],
    }
    atomic_write_parquet(path, pa.table(rows, schema=CACHE_SCHEMA))


def probe_with_cache(
    root: Path, paths: list[str], shas: list[str], cache: dict[str, Probe], workers: int | None = None
) -> tuple[dict[str, Probe], int]:
    """(``{path: Probe}``, number of files probed); new cacheable answers are added to ``cache``."""
    out: dict[str, Probe] = {}
    todo: list[tuple[str, str]] = []
    for path, sha in zip(paths, shas):
        hit = cache.get(sha)
        if hit is not None:
            out[path] = hit
        else:
            todo.append((path, sha))
    probes = probe_many([Path(root) / p for p, _ in todo], workers=workers)
    for (path, sha), probe in zip(todo, probes):
        out[path] = probe
        if probe.status != MISSING:
            cache[sha] = probe
    return out, len(todo)
