"""The three data stages as plain functions: raw files -> captions -> bucketed metadata.

Each reads its inputs from disk, writes one parquet atomically and returns a ``StageResult``. The
Dagster assets are thin wrappers around these; the CLI and tests can call them directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pixart_pipeline.config import ImageDataset, PipelineConfig, holdout
from pixart_pipeline.config.fingerprints import stable_hash
from pixart_pipeline.config.identity import caption_filters, parquet_file
from pixart_pipeline.data.captions import build_captions_table, captions_data_version, multi_caption_rows
from pixart_pipeline.data.hub import download_hub_dataset
from pixart_pipeline.data.manifest import FolderChanges, folder_changes, manifest_data_version, scan_dataset
from pixart_pipeline.data.metadata import (
    bucket_histogram,
    build_metadata_table,
    metadata_data_version,
    sizes_from_parquet,
    status_counts,
    value_counts,
)
from pixart_pipeline.data.parquet_source import parquet_sizes
from pixart_pipeline.data.incremental import (
    FINGERPRINT_KEY,
    MANIFEST_VERSION_KEY,
    built_from,
    captions_fingerprint,
    current_rows,
    inputs_fingerprint,
    previous_if_current,
    split_reusable,
)
from pixart_pipeline.data.probe_cache import (
    load_probe_table,
    probe_cache_path,
    probe_with_cache,
    save_probe_table,
    updated_table,
)
from pixart_pipeline.data.synthetic import generate_synthetic_dataset
from pixart_pipeline.fileio import atomic_write_parquet, read_parquet
from pixart_pipeline.stage_result import MissingInputError, StageResult, markdown_table, thumbnails_markdown
from pixart_pipeline.stages import captions_path, manifest_path, metadata_dir, metadata_path

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def _read_input(path: Path, stage: str) -> pa.Table:
    if not path.exists():
        raise MissingInputError(f"{path} does not exist: materialize {stage} first")
    return read_parquet(path)


def _read_input_schema(path: Path, stage: str) -> pa.Schema:
    """The schema (with its key-value metadata) of an input parquet, without reading its rows."""
    if not path.exists():
        raise MissingInputError(f"{path} does not exist: materialize {stage} first")
    return pq.read_schema(path)


def run_raw_dataset(cfg: PipelineConfig, ds: ImageDataset, log: Log = _quiet) -> StageResult:
    """Fetch (hub) or generate (synthetic) the files if needed, then write the manifest."""
    start = time.perf_counter()
    root = cfg.dataset_dir(ds)
    extra: dict = {}
    if ds.type == "synthetic":
        written = generate_synthetic_dataset(root, ds.synthetic_num_images, ds.synthetic_seed)
        log(f"synthetic dataset at {root}: {len(written)} file(s) written")
    elif ds.hub_repo_id:
        commit = download_hub_dataset(ds.hub_repo_id, ds.hub_revision, ds.hub_allow_patterns, root)
        extra["hub_commit"] = commit
        log(f"downloaded {ds.hub_repo_id}@{commit} into {root}")
    if not root.is_dir():
        raise MissingInputError(f"dataset {ds.id!r}: instance_data_dir {root} is not a folder")
    path = manifest_path(cfg, ds)
    previous = read_parquet(path) if path.exists() else None
    table, stats = scan_dataset(root, previous, log=log)
    data_version = manifest_data_version(table)
    # Parquet key-value metadata: the data version (later stages check they were built from this
    # manifest) and the resolved Hub commit, so every later stage can say which revision it used.
    meta = {MANIFEST_VERSION_KEY: data_version}
    if "hub_commit" in extra:
        meta |= {"hub_repo_id": ds.hub_repo_id, "hub_commit": extra["hub_commit"]}
    table = table.replace_schema_metadata((table.schema.metadata or {}) | meta)  # keeps the scan's start
    atomic_write_parquet(path, table)
    log(f"manifest of {stats.total} file(s): {stats.hashed} hashed, {stats.reused} reused")
    if stats.skipped_names:
        log(f"skipped {stats.skipped_names} file(s) whose names are not valid UTF-8 (parquet cannot store them)")
    return StageResult(
        path=path,
        data_version=data_version,
        metadata={
            "files": stats.total,
            "hashed": stats.hashed,
            "reused_hashes": stats.reused,
            "rechecked_recent": stats.rechecked,  # stat unchanged, but too recent last time to trust
            "removed": stats.removed,
            "skipped_non_utf8_names": stats.skipped_names,
            "dataset_dir": str(root),
            "seconds": round(time.perf_counter() - start, 3),
            **extra,
        },
    )


def hub_commit_of(manifest: pa.Table | pa.Schema) -> dict[str, str]:
    """``{"hub_commit": sha}`` when the manifest (a table or its schema) came from a Hub download, else ``{}``."""
    meta = (manifest.schema if isinstance(manifest, pa.Table) else manifest).metadata or {}
    return {"hub_commit": meta[b"hub_commit"].decode()} if b"hub_commit" in meta else {}


def dataset_folder_changes(cfg: PipelineConfig, ds: ImageDataset) -> FolderChanges | None:
    """What changed in the folder since the last manifest (stat only); falsy when nothing did.

    A folder that disappeared counts as every file removed. None before the first manifest.
    """
    path = manifest_path(cfg, ds)
    if not path.exists():
        return None
    manifest = read_parquet(path)
    root = cfg.dataset_dir(ds)
    if not root.is_dir():
        return FolderChanges(removed=sorted(manifest.column("path").to_pylist()))
    return folder_changes(root, manifest)


def folder_changes_key(cfg: PipelineConfig, ds: ImageDataset, changes: FolderChanges) -> str:
    """A key that differs for every distinct state of the changed files (paths, sizes, mtimes).

    A sensor uses it as its run key: Dagster never reuses a run key, so keying on the paths alone
    would ignore a second edit of the same file.
    """
    root = cfg.dataset_dir(ds)
    state = []
    for rel in sorted(changes.new + changes.changed):
        try:
            st = (root / rel).stat()
            state.append([rel, st.st_size, st.st_mtime_ns])
        except FileNotFoundError:
            state.append([rel, None, None])
    return stable_hash([ds.id, state, sorted(changes.removed)])


def run_captions(cfg: PipelineConfig, ds: ImageDataset, log: Log = _quiet) -> StageResult:
    start = time.perf_counter()
    manifest = _read_input(manifest_path(cfg, ds), f"raw_dataset/{ds.id}")
    parquet = parquet_file(cfg, ds) if ds.caption_strategy == "parquet" else None
    fingerprint = captions_fingerprint(cfg, ds)
    # Only textfile reuses earlier rows (it reads sidecars); the other strategies are column-wise
    # and cheaper to recompute than the previous table is to read.
    previous = None
    if ds.caption_strategy == "textfile":
        previous = previous_if_current(captions_path(cfg, ds), fingerprint, read_parquet)
    table = build_captions_table(manifest, cfg.dataset_dir(ds), ds, parquet, previous=previous,
                                 filters=caption_filters(cfg))
    built_from = (manifest.schema.metadata or {}).get(MANIFEST_VERSION_KEY.encode(), b"")
    table = table.replace_schema_metadata({FINGERPRINT_KEY: fingerprint, MANIFEST_VERSION_KEY: built_from})
    path = captions_path(cfg, ds)
    atomic_write_parquet(path, table)
    statuses = dict(sorted(value_counts(table.column("caption_status")).items()))
    log(f"captions: {statuses}")
    ok_captions = pc.filter(table.column("caption"), pc.equal(table.column("caption_status"), "ok"))
    distinct = pc.count_distinct(ok_captions).as_py()
    multi = multi_caption_rows(table)  # images with several captions (textfile lines, parquet lists)
    if multi:
        distinct = len(set(ok_captions.to_pylist()).union(*(captions for _, captions in multi)))
    return StageResult(
        path=path,
        data_version=captions_data_version(table),
        metadata={
            "images": table.num_rows,
            "captioned": len(ok_captions),
            "distinct_captions": distinct,
            "multi_caption_images": len(multi),
            "seconds": round(time.perf_counter() - start, 3),
        },
        markdown={"caption_status": markdown_table(("status", "images"), statuses)},
    )


def run_bucketed_metadata(
    cfg: PipelineConfig, ds: ImageDataset, log: Log = _quiet, workers: int | None = None
) -> StageResult:
    """Probe (or read sizes from the parquet), caption-join and bucket every image.

    ``workers`` bounds the probe pool (default: the CPU count, at most 8).
    """
    start = time.perf_counter()
    # The manifest's schema (its data version, its Hub commit) is enough when the captions table
    # was built from this very manifest: its sha256 column is the manifest's. The 100,000-row
    # table itself is read only when the two disagree.
    manifest = _read_input_schema(manifest_path(cfg, ds), f"raw_dataset/{ds.id}")
    captions = _read_input(captions_path(cfg, ds), f"captions/{ds.id}")
    if not built_from(manifest, captions):
        manifest = read_parquet(manifest_path(cfg, ds))
    rows = current_rows(manifest, captions)
    root = cfg.dataset_dir(ds)
    # Rows whose (path, sha256, caption) and inputs fingerprint are unchanged are kept as they were.
    fingerprint = inputs_fingerprint(cfg, ds)
    previous = previous_if_current(metadata_path(cfg, ds), fingerprint, read_parquet)
    reuse, todo = split_reusable(previous, rows)
    paths = todo.column("path").to_pylist()
    probed = 0
    if ds.metadata_backend == "parquet":
        probes = sizes_from_parquet(paths, parquet_sizes(parquet_file(cfg, ds), ds.parquet, paths))
    else:
        # Only images whose content (sha256) was never probed are opened; see probe_cache.py.
        cache_file = probe_cache_path(metadata_dir(cfg, ds))
        cache = load_probe_table(cache_file)
        probes = probe_with_cache(root, paths, todo.column("sha256").to_pylist(), cache, workers, log=log)
        probed = probes.probed
    # Rows are computed in path order as probes arrive (the pool keeps probing meanwhile).
    table = build_metadata_table(
        None, todo, root, ds, probes=probes, rounding=cfg.training.aspect_bucket_rounding or 2, reuse=reuse
    )
    if ds.metadata_backend != "parquet":
        cache, changed = updated_table(cache, probes.finish(), rows.column("sha256"))
        if changed:
            save_probe_table(cache_file, cache)
    table = table.replace_schema_metadata({FINGERPRINT_KEY: fingerprint})
    path = metadata_path(cfg, ds)
    atomic_write_parquet(path, table)
    statuses = status_counts(table)
    buckets = bucket_histogram(table)
    splits = value_counts(pc.filter(table.column("split"), pc.equal(table.column("status"), "ok")))
    log(f"{table.num_rows} rows: {statuses}; buckets {buckets}")
    return StageResult(
        path=path,
        data_version=metadata_data_version(table),
        metadata={
            "rows": table.num_rows,
            "kept": statuses.get("ok", 0),
            "probed": probed,
            "reused_rows": 0 if reuse is None else reuse.num_rows,
            **hub_commit_of(manifest),
            "rejected": table.num_rows - statuses.get("ok", 0),
            "train": splits.get("train", 0),
            "eval": splits.get("eval", 0),
            "eval_holdout": holdout.describe(ds.eval_split_fraction, ds.dataset_type),  # the rule behind "eval"
            "buckets": len(buckets),
            "seconds": round(time.perf_counter() - start, 3),
        },
        markdown={
            "bucket_histogram": markdown_table(("bucket (aspect)", "images"), buckets),
            "status_counts": markdown_table(("status", "images"), statuses),
            **bucket_samples_markdown(table, root, buckets),
        },
    )


def bucket_samples_markdown(table: pa.Table, root: Path, buckets: dict[str, int], per_bucket: int = 2,
                            limit: int = 8, size: int = 160) -> dict[str, str]:
    """``{"bucket_samples": thumbnails}``: the first ``per_bucket`` kept images (path order) of each
    bucket, so the UI shows what each aspect bucket holds. Small thumbnails (``size`` px), since
    they are stored inline in the event log; empty when no sample file can be read here."""
    ok = pc.filter(table.select(["path", "bucket"]), pc.equal(table.column("status"), "ok"))
    paths = []
    for bucket in buckets:
        in_bucket = pc.filter(ok.column("path"), pc.equal(ok.column("bucket"), bucket))
        paths += [root / p for p in in_bucket.slice(0, per_bucket).to_pylist() if (root / p).is_file()]
    try:
        return {"bucket_samples": thumbnails_markdown(paths[:limit], size=size)} if paths else {}
    except OSError:  # a file changed under us since it was probed: the numbers above still hold
        return {}


@dataclass
class BatchReadiness:
    """Whether a dataset can fill optimizer steps; what SimpleTuner checks as "dataset too small".

    A bucket is *small* when its draws per epoch (images x (1 + repeats)) are fewer than one
    optimizer step (``needed``): every batch comes from one bucket, and SimpleTuner trims each bucket
    to whole steps, so it drops such a bucket. ``rule`` is ``small_bucket_rule``: ``drop`` (the same)
    or ``repeat`` (the sampler cycles the bucket's items up to one step; ours, not SimpleTuner's).
    """

    usable: int
    needed: int
    small_buckets: dict[str, int]
    rule: str = "drop"
    batch_size: int = 1

    @property
    def enough(self) -> bool:
        return self.usable >= self.needed

    @property
    def message(self) -> str:
        if self.enough:
            return f"{self.usable} usable training images; one optimizer step needs {self.needed}."
        return (
            f"Only {self.usable} usable training images, but one optimizer step needs {self.needed} "
            "(train_batch_size x gradient_accumulation_steps x num_processes). Add images, lower "
            "train_batch_size or gradient_accumulation_steps, or loosen minimum_image_size."
        )

    @property
    def bucket_message(self) -> str:
        if not self.small_buckets:
            return f"Every bucket holds at least one optimizer step ({self.needed} draws per epoch)."
        listed = ", ".join(f"{b}: {n}" for b, n in self.small_buckets.items())
        fate = (
            "the sampler never draws from them (SimpleTuner drops them too), so their images are not trained on"
            if self.rule == "drop"
            else "small_bucket_rule 'repeat' cycles their images up to one step each epoch, so those images "
            "are seen more often than the others"
        )
        fixes = (
            "lower train_batch_size or gradient_accumulation_steps, add images of those shapes or repeats, "
            "or use crop_aspect 'square' (one bucket) or 'closest' with fewer crop_aspect_buckets"
        )
        if self.rule == "drop":
            fixes += ", or set small_bucket_rule 'repeat' to train on them by repetition"
        return (
            f"{len(self.small_buckets)} bucket(s) have fewer draws per epoch than one optimizer step needs "
            f"({self.needed} = train_batch_size x gradient_accumulation_steps x num_processes): {listed}. "
            f"With small_bucket_rule '{self.rule}' {fate}. To change it: {fixes}."
        )


def readiness(draws_per_bucket: dict[str, int], cfg: PipelineConfig) -> BatchReadiness:
    """Decide from per-bucket draws per epoch (images x (1 + repeats)), as the sampler counts them."""
    t = cfg.training
    # every rank of every machine draws its own batch from the bucket (num_machines: multi-node)
    needed = t.train_batch_size * t.gradient_accumulation_steps * t.num_processes * t.num_machines
    small = {b: n for b, n in draws_per_bucket.items() if n < needed}
    if t.small_bucket_rule == "repeat":  # small buckets are padded to one step
        usable = sum(max(n, needed) for n in draws_per_bucket.values())
    else:
        usable = sum(n for b, n in draws_per_bucket.items() if b not in small)
    return BatchReadiness(usable=usable, needed=needed, small_buckets=small, rule=t.small_bucket_rule,
                          batch_size=t.train_batch_size)


def batch_readiness(cfg: PipelineConfig, ds: ImageDataset) -> BatchReadiness:
    """One dataset on its own (the asset check); the trainer checks all datasets pooled.

    Buckets are named by aspect key and target size, e.g. ``"1.43 (640x448)"``.
    """
    table = _read_input(metadata_path(cfg, ds), f"bucketed_metadata/{ds.id}")
    ok = pc.and_(pc.equal(table.column("status"), "ok"), pc.equal(table.column("split"), "train"))
    kept = table.filter(ok)
    names = [f"{b} ({w}x{h})" for b, w, h in zip(*(kept.column(c).to_pylist()
                                                   for c in ("bucket", "target_width", "target_height")))]
    counts = sorted(value_counts(pa.array(names, pa.string())).items())
    return readiness({b: n * (1 + ds.repeats) for b, n in counts}, cfg)


def held_out_count(cfg: PipelineConfig, ds: ImageDataset) -> tuple[int, int] | None:
    """(kept images in the eval split, kept images) of the dataset's current metadata table, or None
    when it was not built yet or was built for other settings (``validate`` and ``plan`` print it)."""
    path = metadata_path(cfg, ds)
    if not path.exists():
        return None
    stored = (pq.read_schema(path).metadata or {}).get(FINGERPRINT_KEY)
    if stored is None or stored.decode() != inputs_fingerprint(cfg, ds):
        return None
    table = pq.read_table(path, columns=["status", "split"])
    ok = pc.equal(table.column("status"), "ok")
    split = pc.filter(table.column("split"), ok)
    return pc.sum(pc.equal(split, "eval").cast(pa.int64())).as_py() or 0, len(split)
