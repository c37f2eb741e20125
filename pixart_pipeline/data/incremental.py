"""Re-using the previous bucketed metadata: a re-run computes rows only for images that changed.

A metadata row is a pure function of (path, image sha256, caption, caption status, the image's
caption list when it has several) and of the stage's inputs fingerprint: the ``bucketed_metadata``
config fields, the stage revision and the probe version (a code change that alters rows bumps the
revision: ``stages.py``). The fingerprint
is stored in the parquet's key-value metadata.

When it matches, a previous row is kept iff the same (path, sha256, caption, caption list) is still
there, its caption is not null (a null caption hides which caption status it had) and its status is not
``missing`` (a fact about the folder at one moment). Everything is column-wise (pyarrow hash
``index_in`` on the path, then the other keys compared row by row), so 100,000 unchanged rows
cost a few milliseconds.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pixart_pipeline.config import ImageDataset, PipelineConfig
from pixart_pipeline.config.fingerprints import stable_hash
from pixart_pipeline.data import probe, probe_cache
from pixart_pipeline.data.digest import in_order
from pixart_pipeline.data.manifest import manifest_sha256
from pixart_pipeline.stages import BUCKETED_METADATA, CAPTIONS

FINGERPRINT_KEY = b"inputs_fingerprint"
# In the manifest: its own data version; in the captions table: the version it was built from.
MANIFEST_VERSION_KEY = "manifest_version"


def inputs_fingerprint(cfg: PipelineConfig, ds: ImageDataset) -> str:
    """Everything besides the row's own inputs that a metadata row depends on: the stage's revision
    (its one "code changed" mark, see ``stages.py``), its config fields and the probe version."""
    return stable_hash([BUCKETED_METADATA.revision, BUCKETED_METADATA.fingerprint_fields(cfg, ds),
                        probe_cache.PROBE_VERSION])


def captions_fingerprint(cfg: PipelineConfig, ds: ImageDataset) -> str:
    """What a captions row depends on besides its image and sidecar: the captions stage's revision
    and config fields (a textfile re-run keeps rows only under the same ones)."""
    return stable_hash([CAPTIONS.revision, CAPTIONS.fingerprint_fields(cfg, ds)])


def built_from(manifest: pa.Table | pa.Schema, captions: pa.Table) -> bool:
    """True when ``captions`` records that it was built from ``manifest`` (a table or its schema)."""
    schema = manifest.schema if isinstance(manifest, pa.Table) else manifest
    version = (schema.metadata or {}).get(MANIFEST_VERSION_KEY.encode())
    return bool(version) and (captions.schema.metadata or {}).get(MANIFEST_VERSION_KEY.encode()) == version


def current_rows(manifest: pa.Table | pa.Schema, captions: pa.Table) -> pa.Table:
    """(path, sha256, caption, caption_status[, captions]) of every captions row, sorted by path,
    with the manifest's sha256 where it has the path (the manifest wins if the two ever disagree).

    When the captions table records that it was built from this very manifest (see
    :func:`built_from`; then the manifest's schema is enough), its sha256 column is the
    manifest's already and the lookup is skipped.
    """
    columns = ["path", "sha256", "caption", "caption_status"]
    columns += ["captions"] if "captions" in captions.column_names else []
    table = captions.select(columns)
    if not built_from(manifest, captions):
        if not isinstance(manifest, pa.Table):
            raise ValueError("the captions table was not built from this manifest: pass the manifest table")
        table = table.set_column(1, "sha256", manifest_sha256(manifest, table.column("path"), table.column("sha256")))
    return table if in_order(table.column("path")) else table.sort_by("path")


def split_reusable(previous: pa.Table | None, current: pa.Table) -> tuple[pa.Table | None, pa.Table]:
    """(rows of ``previous`` to keep as they are, rows of ``current`` to compute)."""
    if previous is None or previous.num_rows == 0:
        return None, current
    usable = pc.and_(pc.is_valid(previous.column("caption")), pc.not_equal(previous.column("status"), probe.MISSING))
    # Copy the 15-column table only when something must go (usually nothing does).
    usable = pc.fill_null(usable, False)
    prev = previous if pc.all(usable).as_py() else previous.filter(usable)
    prev = prev.combine_chunks()
    # Paths are unique on both sides, so "(path, sha256, caption) still there" is: the path's
    # previous row (``index_in``, one hash table over the previous paths) has the same sha256 and
    # caption. Two Acero hash joins on the three string keys cost ten times more at 100,000 rows.
    where = pc.index_in(current.column("path"), value_set=prev.column("path"))  # null: a new path
    same = pc.and_(
        pc.equal(current.column("sha256"), pc.take(prev.column("sha256"), where)),
        pc.equal(current.column("caption"), pc.take(prev.column("caption"), where)),  # null caption: no match
    )
    same = _same_caption_lists(pc.fill_null(same, False), current, prev, where)
    keep = pc.filter(where, same)  # previous row numbers, in ``current``'s (path) order
    # Every previous row kept, and the previous table in path order: ``keep`` is 0..n-1, no copy.
    identity = len(keep) == prev.num_rows and in_order(prev.column("path"))
    kept = prev if identity else prev.take(keep)
    todo = current.filter(pc.invert(same))
    return kept, todo


def _same_caption_lists(same: pa.Array, current: pa.Table, prev: pa.Table, where: pa.Array) -> pa.Array:
    """``same`` and-ed with "the image's caption list is unchanged" (both null for one caption).

    A metadata row stores the list only for a kept training image (``metadata.py``), so the
    current list is compared as that row would store it: null where the previous row, whose
    (sha256, caption) match, is not an ``ok`` training row. Only datasets with several captions per
    image pay for this (a Python comparison of the lists; Arrow has no equality kernel for them)."""
    now = current.column("captions") if "captions" in current.column_names else None
    before = prev.column("captions") if "captions" in prev.column_names else None
    if now is None or now.null_count == len(now):
        if before is None or before.null_count == len(before):
            return same
    n = current.num_rows
    stored = pc.and_(pc.equal(pc.take(prev.column("status"), where), "ok"),
                     pc.equal(pc.take(prev.column("split"), where), "train")).to_pylist()
    now_lists = now.to_pylist() if now is not None else [None] * n
    before_lists = pc.take(before, where).to_pylist() if before is not None else [None] * n
    return pa.array([s and (a if kept else None) == b
                     for s, kept, a, b in zip(same.to_pylist(), stored, now_lists, before_lists)], pa.bool_())


def previous_if_current(path: Path, fingerprint: str, read: Callable[[Path], pa.Table]) -> pa.Table | None:
    """The previous metadata table at ``path`` if it was built with the same inputs fingerprint.

    ``read`` loads a table (``fileio.read_parquet`` in the stages); passed in so this module
    does not depend on the file layer."""
    if not path.exists():
        return None
    try:
        table = read(path)
    except (OSError, pa.ArrowException):
        return None
    meta = table.schema.metadata or {}
    return table if meta.get(FINGERPRINT_KEY) == fingerprint.encode() else None
