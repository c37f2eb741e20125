"""The bucketed metadata table: one row per image with size, caption, status, geometry and split.

Checks run in this order and the first failure is the row's ``status`` (a reason code):
probe (``missing``/``empty_file``/``unreadable``/``decompression_bomb``) -> caption
(``no_caption_file``/``empty_caption``/...) -> geometry (``extreme_aspect``/``too_small``/``invalid_size``).
Rejected rows stay in the table with null geometry, so the UI can show why each image was dropped.

The train/eval split is a pure function of the image's sha256 (eval iff
``int(sha256[:8], 16) / 2**32 < eval_split_fraction``): adding images never moves an existing image
between splits, and renaming a file keeps its split.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pyarrow as pa

from pixart_pipeline.config.models import ImageDataset
from pixart_pipeline.data.buckets import Geometry, compute_geometry
from pixart_pipeline.data.probe import probe_many

METADATA_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("sha256", pa.string()),
        ("width", pa.int64()),
        ("height", pa.int64()),
        ("caption", pa.string()),
        ("status", pa.string()),
        ("intermediary_width", pa.int64()),
        ("intermediary_height", pa.int64()),
        ("target_width", pa.int64()),
        ("target_height", pa.int64()),
        ("crop_left", pa.int64()),
        ("crop_top", pa.int64()),
        ("bucket", pa.string()),
        ("split", pa.string()),
    ]
)
GEOMETRY_COLUMNS = (
    "intermediary_width",
    "intermediary_height",
    "target_width",
    "target_height",
    "crop_left",
    "crop_top",
    "bucket",
)


def split_for(sha256: str, eval_fraction: float) -> str:
    """``"eval"`` iff the first 32 bits of the sha256, as a fraction of 2**32, are below ``eval_fraction``."""
    return "eval" if int(sha256[:8], 16) / 2**32 < eval_fraction else "train"


def build_metadata_table(
    manifest: pa.Table, captions: pa.Table, root: Path, ds: ImageDataset, workers: int = 2
) -> pa.Table:
    """One row per image of ``captions`` (which lists the manifest's image files), sorted by path.

    ``manifest`` supplies the sha256 of every file (the captions table carries it too; the
    manifest wins if they ever disagree). Images are probed from headers (plus PIL's structural
    ``verify``) in a thread pool of ``workers``.
    """
    root = Path(root)
    digests = dict(zip(manifest.column("path").to_pylist(), manifest.column("sha256").to_pylist()))
    cap = captions.sort_by("path")
    paths = cap.column("path").to_pylist()
    texts = cap.column("caption").to_pylist()
    caption_status = cap.column("caption_status").to_pylist()
    shas = [digests.get(p, s) for p, s in zip(paths, cap.column("sha256").to_pylist())]
    probes = probe_many([root / p for p in paths], workers=workers, verify=True)

    rows: dict[str, list] = {name: [] for name in METADATA_SCHEMA.names}
    for path, sha, text, cstatus, probe in zip(paths, shas, texts, caption_status, probes):
        geometry: Geometry | None = None
        if not probe.ok:
            status = probe.status
        elif cstatus != "ok":
            status = cstatus
        else:
            result = compute_geometry(probe.width, probe.height, ds, sha)
            status = result if isinstance(result, str) else "ok"
            geometry = result if isinstance(result, Geometry) else None
        rows["path"].append(path)
        rows["sha256"].append(sha)
        rows["width"].append(probe.width)
        rows["height"].append(probe.height)
        rows["caption"].append(text)
        rows["status"].append(status)
        for name in GEOMETRY_COLUMNS:
            rows[name].append(getattr(geometry, name) if geometry else None)
        rows["split"].append(split_for(sha, ds.eval_split_fraction))
    return pa.table(rows, schema=METADATA_SCHEMA)


def metadata_data_version(table: pa.Table) -> str:
    """sha256 (16 hex chars) of every row's semantic columns, sorted by path: row order does not matter."""
    names = [n for n in METADATA_SCHEMA.names if n in table.column_names]
    columns = [table.column(n).to_pylist() for n in names]
    h = hashlib.sha256()
    h.update(json.dumps(names).encode())
    for row in sorted(zip(*columns), key=lambda r: r[0]):
        h.update(json.dumps(row, separators=(",", ":")).encode() + b"\n")
    return h.hexdigest()[:16]


def bucket_histogram(table: pa.Table) -> dict[str, int]:
    """``{bucket: number of kept images}``, buckets in increasing aspect ratio."""
    counts = Counter(
        b for b, s in zip(table.column("bucket").to_pylist(), table.column("status").to_pylist()) if s == "ok"
    )
    return {k: counts[k] for k in sorted(counts, key=float)}


def status_counts(table: pa.Table) -> dict[str, int]:
    """``{status: rows}`` ("ok" and every reason code), sorted by status name."""
    counts = Counter(table.column("status").to_pylist())
    return dict(sorted(counts.items()))
