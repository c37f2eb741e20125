"""The bucketed metadata table: one row per image with size, caption, status, geometry and split.

Checks run in this order and the first failure is the row's ``status`` (a reason code):
probe (``missing``/``empty_file``/``unreadable``/``truncated``/``decompression_bomb``), or with
``metadata_backend: "parquet"`` the parquet's sizes (``not_in_parquet``/``parquet_size_invalid``)
-> caption (``no_caption_file``/``empty_caption``/...) -> geometry
(``extreme_aspect``/``too_small``/``invalid_size``) -> the bucket's aspect bounds
(``below_min_aspect_ratio``/``above_max_aspect_ratio``). Rejected rows stay in the table with null
geometry, so the UI can show why each image was dropped. ``note`` says what the VAE stage will do
that is not obvious (first frame of an animation, alpha composited on white, EXIF rotation).

The train/eval split is a pure function of the image's sha256 (eval iff
``int(sha256[:8], 16) / 2**32 < eval_split_fraction``): adding images never moves an existing image
between splits, and renaming a file keeps its split. With ``eval_split_fraction`` unset the auto
hold-out (``config/holdout.py``, ``auto_holdout``) takes the few kept images with the smallest
sha256 instead. Every image of a ``dataset_type: "eval"``
dataset is in the eval split (evaluation only; never trained on).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pixart_pipeline.config.holdout import auto_count
from pixart_pipeline.config.models import ImageDataset
from pixart_pipeline.data.buckets import geometry_function
from pixart_pipeline.data.digest import in_order, table_digest
from pixart_pipeline.data.manifest import manifest_sha256
from pixart_pipeline.data.parquet_source import NOT_IN_PARQUET
from pixart_pipeline.data.probe import Probe, probe_many
from pixart_pipeline.stages import METADATA_SCHEMA

# Reason codes of metadata_backend "parquet" (sizes read from the parquet, images never opened);
# an image without a row is NOT_IN_PARQUET, as its caption status is (parquet_source.py).
PARQUET_SIZE_INVALID = "parquet_size_invalid"
# Reason codes of minimum_aspect_ratio / maximum_aspect_ratio (SimpleTuner's bucket filters).
BELOW_MIN_ASPECT_RATIO = "below_min_aspect_ratio"
ABOVE_MAX_ASPECT_RATIO = "above_max_aspect_ratio"

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


def aspect_bounds_status(bucket: str, ds: ImageDataset) -> str | None:
    """The reason code when the bucket's aspect key is outside ``minimum_aspect_ratio`` /
    ``maximum_aspect_ratio``, else None.

    SimpleTuner compares the bucket key (the target's rounded aspect, ``float(bucket)``), not the
    image's own ratio, and drops whole buckets (``_enforce_min_aspect_ratio`` /
    ``_enforce_max_aspect_ratio`` in its metadata backend); 0 or null is no bound.
    """
    aspect = float(bucket)
    if ds.minimum_aspect_ratio and aspect < ds.minimum_aspect_ratio:
        return BELOW_MIN_ASPECT_RATIO
    if ds.maximum_aspect_ratio and aspect > ds.maximum_aspect_ratio:
        return ABOVE_MAX_ASPECT_RATIO
    return None


def sizes_from_parquet(paths: list[str], sizes: dict[str, tuple]) -> dict[str, Probe]:
    """Probes for ``metadata_backend: "parquet"``: ``sizes`` maps a path to (width, height) as the
    parquet gives them (see ``parquet_source.parquet_sizes``); no image is opened."""
    out = {}
    for path in paths:
        if path not in sizes:
            out[path] = Probe(None, None, NOT_IN_PARQUET)
            continue
        w, h = sizes[path]
        ok = isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0
        out[path] = Probe(w, h, "ok") if ok else Probe(None, None, PARQUET_SIZE_INVALID)
    return out


def build_metadata_table(
    manifest: pa.Table | None,
    captions: pa.Table,
    root: Path,
    ds: ImageDataset,
    workers: int | None = None,
    probes: Mapping[str, Probe] | None = None,
    rounding: int = 2,
    reuse: pa.Table | None = None,
) -> pa.Table:
    """One row per image of ``captions`` (which lists the manifest's image files), plus the rows of
    ``reuse`` (earlier rows still valid, see ``incremental.py``), sorted by path.

    ``manifest`` supplies the sha256 of every file (the captions table carries it too; the
    manifest wins if they ever disagree); None when ``captions`` carries the manifest's sha256
    already (as ``incremental.current_rows`` gives it). ``probes`` (``{path: Probe}`` for every captions row) come
    from the caller's probe cache or the parquet; without them images are probed here
    (``probe_many`` with ``workers``).
    """
    root = Path(root)
    cap = captions if in_order(captions.column("path")) else captions.sort_by("path")
    sha_column = cap.column("sha256")
    if manifest is not None:
        sha_column = manifest_sha256(manifest, cap.column("path"), sha_column)
    paths = cap.column("path").to_pylist()
    texts = cap.column("caption").to_pylist()
    caption_status = cap.column("caption_status").to_pylist()
    shas = sha_column.to_pylist()
    lists = cap.column("captions").to_pylist() if "captions" in cap.column_names else [None] * cap.num_rows
    if probes is None:
        probes = dict(zip(paths, probe_many([root / p for p in paths], workers=workers)))
    is_eval = ds.dataset_type == "eval"
    auto = ds.eval_split_fraction is None and not is_eval  # config/holdout.py: chosen below, over all rows
    geometry_of = geometry_function(ds, rounding)
    bounded = bool(ds.minimum_aspect_ratio or ds.maximum_aspect_ratio)
    no_geometry = (None,) * len(GEOMETRY_COLUMNS)
    out = []  # one tuple per row, in METADATA_SCHEMA's column order
    for path, sha, text, cstatus, more in zip(paths, shas, texts, caption_status, lists):
        probe = probes[path]
        geometry = no_geometry
        if not probe.ok:
            status = probe.status
        elif cstatus != "ok":
            status = cstatus
        else:
            result = geometry_of(probe.width, probe.height, sha)
            if isinstance(result, str):
                status = result
            elif bounded and (outside := aspect_bounds_status(result.bucket, ds)):
                status = outside
            else:
                status = "ok"
                geometry = result.values()
        split = "eval" if is_eval else "train" if auto else split_for(sha, ds.eval_split_fraction)
        # Only a kept training image's list is drawn from (evaluation uses the first caption), so
        # only such a list is stored, and only its edits change the data version. Under the auto
        # hold-out every kept image keeps its list: the split is chosen after the table is whole.
        if status != "ok" or (split != "train" and not auto):
            more = None
        out.append((path, sha, probe.width, probe.height, text, status, *geometry, split, probe.note or None, more))
    columns = list(zip(*out)) if out else [()] * len(METADATA_SCHEMA)
    rows = dict(zip(METADATA_SCHEMA.names, columns))
    table = pa.table(rows, schema=METADATA_SCHEMA)
    if reuse is not None and reuse.num_rows:
        table = pa.concat_tables([reuse.select(METADATA_SCHEMA.names).cast(METADATA_SCHEMA), table])
        # New files often sort after every earlier one (a new folder, numbered names): then the
        # concatenation is in order already and the 15-column sort is skipped.
        if not in_order(table.column("path")):
            table = table.sort_by("path")
    return auto_holdout(table) if auto else table


def auto_holdout(table: pa.Table) -> pa.Table:
    """``table`` with its ``split`` set by the auto hold-out (``config/holdout.py``): the kept images
    whose sha256 are the ``auto_count(kept)`` smallest are ``eval``, every other row ``train``.
    A pure function of the table's contents, so reused rows and new rows agree."""
    ok = pc.equal(table.column("status"), "ok")
    shas = sorted(set(pc.filter(table.column("sha256"), ok).to_pylist()))
    chosen = set(shas[:auto_count(len(shas))])
    split = ["eval" if sha in chosen else "train"
             for sha in pc.if_else(ok, table.column("sha256"), pa.scalar(None, pa.string())).to_pylist()]
    return table.set_column(table.schema.get_field_index("split"), "split", pa.array(split, pa.string()))


def metadata_data_version(table: pa.Table) -> str:
    """Digest (16 hex chars) of every row's semantic columns, sorted by path: row order does not matter.

    ``captions`` counts only when some image has several: single-caption datasets keep the version
    they had before the column existed, and any edit of a caption list (even one that only moves
    existing captions between images) changes it, so ``trained_checkpoint`` is unsynced by it.
    """
    names = [n for n in METADATA_SCHEMA.names if n in table.column_names
             and not (n == "captions" and table.column(n).null_count == table.num_rows)]
    return table_digest(table, names)


def bucket_histogram(table: pa.Table) -> dict[str, int]:
    """``{bucket: number of kept images}``, buckets in increasing aspect ratio."""
    kept = pc.filter(table.column("bucket"), pc.equal(table.column("status"), "ok"))  # one column, not the table
    counts = value_counts(kept)
    return {k: counts[k] for k in sorted(counts, key=float)}


def status_counts(table: pa.Table) -> dict[str, int]:
    """``{status: rows}`` ("ok" and every reason code), sorted by status name."""
    return dict(sorted(value_counts(table.column("status")).items()))


def value_counts(column: pa.ChunkedArray | pa.Array) -> dict[str, int]:
    """``{str(value): count}`` computed by pyarrow (nulls counted as ``"None"``)."""
    out: dict[str, int] = {}
    for item in pc.value_counts(column).to_pylist():
        key = str(item["values"])
        out[key] = out.get(key, 0) + item["counts"]
    return out
