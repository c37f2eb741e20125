"""The stage contract (DESIGN.md section 3.1): every stage's identity, stated once.

Each ``Stage`` says what the asset is called, which stages it reads, the revision of the code that
writes it, which config fields change its output, its UI group and pool, and the schema of the table
it writes or reads. Where its artefacts live is in the path functions below. The Dagster assets,
``plan``/``sync``, the cache store roots, the trainer and evaluation all read this module; none of
them restates a key, a revision or a list of fingerprint fields.

One mechanism says "the stage's code changed": ``Stage.revision``. Dagster's staleness compares it
(inside ``code_version``), the data stages' row reuse compares it (``data/incremental.py``), and the
store roots and run folders are named by it. ``Stage.code`` lists the modules whose source decides
the output; ``tests/test_stage_revisions.py`` fails when one of them changes while the revision does
not, so a developer decides each time whether the change alters what is written (bump) or not
(record the new sources).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa

from pixart_pipeline.config import ImageDataset, PipelineConfig
from pixart_pipeline.config import fingerprints as fp
from pixart_pipeline.config.fingerprints import stable_hash

# -- table schemas --------------------------------------------------------------------------------

# ``bucketed_metadata/<id>``: one row per file of the dataset (DESIGN.md section 4).
METADATA_SCHEMA = pa.schema(
    [
        ("path", pa.string()),  # POSIX, relative to the dataset root
        ("sha256", pa.string()),
        ("width", pa.int64()),  # as displayed, after EXIF orientation
        ("height", pa.int64()),
        ("caption", pa.string()),
        ("status", pa.string()),  # "ok" or a reason code
        ("intermediary_width", pa.int64()),
        ("intermediary_height", pa.int64()),
        ("target_width", pa.int64()),
        ("target_height", pa.int64()),
        ("crop_left", pa.int64()),
        ("crop_top", pa.int64()),
        ("bucket", pa.string()),  # aspect key as SimpleTuner writes it, e.g. "1.29"
        ("split", pa.string()),  # "train" | "eval"
        ("note", pa.string()),
        # Every caption of a kept training image that has several (textfile lines, parquet list
        # entries; the trainer draws one per step), else null: ``caption`` is the first.
        ("captions", pa.list_(pa.string())),
    ]
)

# The items table: one row per cached item of a split, where its latents and caption embedding
# live. Written by the trained_checkpoint stage (``runs/<id>/items.parquet``, the train split) and
# the evaluation stage (``reports/<id>/eval_items.parquet``), read by the trainer and the eval loss.
ITEMS_SCHEMA = pa.schema(
    [
        ("vae_store", pa.string()),  # root of the VAE ShardStore holding the item
        ("vae_key", pa.string()),
        ("text_key", pa.string()),  # the first caption's key (evaluation uses it)
        ("target_width", pa.int64()),  # the bucket, in pixels
        ("target_height", pa.int64()),
        ("dataset_id", pa.string()),
        ("repeats", pa.int64()),
        # keys of every caption when the image has several (null otherwise): one is drawn per batch
        ("text_keys", pa.list_(pa.string())),
        ("path", pa.string()),  # the image, relative to its dataset root (for people, not hashed)
    ]
)
# The columns an items table must have to be trained on or evaluated (``text_keys`` and ``path``
# are optional: tables written before they existed still load).
REQUIRED_ITEM_COLUMNS = ITEMS_SCHEMA.names[:7]


# -- the contract ---------------------------------------------------------------------------------

Fields = Callable[..., dict]  # (cfg) or (cfg, ds) -> the fields that change the stage's output


@dataclass(eq=False)
class Stage:
    """One stage of the graph. A ``per_dataset`` stage has one asset per dataset (``name/<id>``).

    The entries below are constants; the class is not frozen only so that a test can patch a
    revision (``monkeypatch.setattr(TEXT_EMBED_CACHE, "revision", ...)``) to stand for a code change.
    """

    name: str
    revision: str  # bump when the stage's code changes what it writes (the note says why)
    fields: Fields
    per_dataset: bool
    group: str  # the UI group
    inputs: tuple[str, ...] = ()  # upstream stages: same dataset's lane, or every dataset's
    gpu: bool = False  # runs in the `gpu` concurrency pool
    code: tuple[str, ...] = ()  # modules (package-relative paths) whose source decides the output
    schema: pa.Schema | None = None

    def key(self, dataset_id: str | None = None) -> tuple[str, ...]:
        """The asset key's path: ``("vae_cache", "<id>")`` or ``("text_embed_cache",)``."""
        if self.per_dataset != (dataset_id is not None):
            raise ValueError(f"stage {self.name}: dataset id {dataset_id!r} given to a "
                             f"{'per-dataset' if self.per_dataset else 'shared'} stage")
        return (self.name, dataset_id) if dataset_id is not None else (self.name,)

    def fingerprint_fields(self, cfg: PipelineConfig, ds: ImageDataset | None = None) -> dict:
        """The config fields that change this stage's output (what ``plan`` diffs)."""
        return self.fields(cfg, ds) if self.per_dataset else self.fields(cfg)

    def code_version(self, cfg: PipelineConfig, ds: ImageDataset | None = None) -> str:
        """``<revision>-<fingerprint>``: what Dagster compares to decide the stage is unsynced."""
        return self.version_of(self.fingerprint_fields(cfg, ds))

    def version_of(self, fields: dict) -> str:
        """The code version of already computed fingerprint ``fields``."""
        return f"{self.revision}-{stable_hash(fields, 12)}"


RAW_DATASET = Stage(
    "raw_dataset", "r1", fp.raw_dataset_fields, per_dataset=True, group="data",
    code=("data/manifest.py", "data/walk.py", "data/hub.py", "data/synthetic.py"),
)
CAPTIONS = Stage(
    "captions", "r2",  # r2: every textfile line / parquet list entry kept (the captions column)
    fp.captions_fields, per_dataset=True, group="data", inputs=("raw_dataset",),
    code=("data/captions.py", "data/caption_filter.py", "data/parquet_source.py", "config/caption_filters.py"),
)
BUCKETED_METADATA = Stage(
    # r2: one target per aspect key (area), crop_aspect closest/random; r3: note column, truncated code
    "bucketed_metadata", "r3", fp.bucketed_metadata_fields, per_dataset=True, group="data",
    inputs=("raw_dataset", "captions"), schema=METADATA_SCHEMA,
    code=("data/metadata.py", "data/buckets.py", "data/aspect_choice.py", "data/probe.py", "data/images.py",
          "data/incremental.py", "data/parquet_source.py"),
)
VAE_CACHE = Stage(
    "vae_cache", "r2",  # r2: RGBA composited on white, 16-bit scaled (data.images.to_rgb)
    fp.vae_fields, per_dataset=True, group="caches", inputs=("bucketed_metadata",), gpu=True,
    code=("cache/vae.py", "cache/keys.py", "data/images.py"),
)
TEXT_EMBED_CACHE = Stage(
    "text_embed_cache", "r1", fp.text_encoder_fields, per_dataset=False, group="caches",
    inputs=("captions",), gpu=True, code=("cache/text.py", "cache/keys.py"),
)
TRAINED_CHECKPOINT = Stage(
    "trained_checkpoint", "r2",  # r2: noise keyed by global batch index (1 and N processes agree)
    fp.trained_checkpoint_fields, per_dataset=False, group="training",
    # the trainer reads the metadata tables too (buckets, splits, which caption goes with which image)
    inputs=("text_embed_cache", "vae_cache", "bucketed_metadata"), gpu=True, schema=ITEMS_SCHEMA,
    code=("training/loop.py", "training/loss.py", "training/sampler.py", "training/batches.py",
          "training/optim.py", "training/ema.py", "training/export.py", "training/optimizers.py",
          "training/speed.py"),
)
EVALUATION_REPORT = Stage(
    "evaluation_report", "r1", fp.evaluation_fields, per_dataset=False, group="evaluation",
    # the eval loss reads the held-out split from the caches, which the checkpoint never sees: new
    # eval images make the report unsynced even when the trained weights are unchanged
    inputs=("trained_checkpoint", "text_embed_cache", "vae_cache", "bucketed_metadata"), gpu=True,
    schema=ITEMS_SCHEMA,
    code=("evaluation/run.py", "evaluation/sampling.py", "evaluation/clip_score.py", "evaluation/eval_loss.py",
          "training/validation.py"),  # validation_guidance_rescale's sampler
)

# In dependency order: every stage comes after the stages it reads.
STAGES: tuple[Stage, ...] = (
    RAW_DATASET, CAPTIONS, BUCKETED_METADATA, VAE_CACHE, TEXT_EMBED_CACHE, TRAINED_CHECKPOINT, EVALUATION_REPORT,
)
BY_NAME = {stage.name: stage for stage in STAGES}


def stage_assets(cfg: PipelineConfig) -> list[tuple[Stage, ImageDataset | None]]:
    """Every asset of the graph for ``cfg`` as (stage, dataset or None), in dependency order."""
    out: list[tuple[Stage, ImageDataset | None]] = []
    for stage in STAGES:
        out += [(stage, ds) for ds in cfg.datasets] if stage.per_dataset else [(stage, None)]
    return out


def input_keys(stage: Stage, cfg: PipelineConfig, ds: ImageDataset | None = None) -> list[tuple[str, ...]]:
    """The asset keys an asset reads: a per-dataset input of a per-dataset stage is the same
    dataset's; of a shared stage, every dataset's."""
    keys: list[tuple[str, ...]] = []
    for name in stage.inputs:
        upstream = BY_NAME[name]
        if not upstream.per_dataset:
            keys.append(upstream.key())
        elif ds is not None:
            keys.append(upstream.key(ds.id))
        else:
            keys += [upstream.key(d.id) for d in cfg.datasets]
    return keys


def fields_by_key(cfg: PipelineConfig) -> dict[tuple[str, ...], dict]:
    """Every asset's fingerprint fields for ``cfg``, by asset key path."""
    return {stage.key(ds.id if ds else None): stage.fingerprint_fields(cfg, ds) for stage, ds in stage_assets(cfg)}


# -- where the artefacts live ---------------------------------------------------------------------

def metadata_dir(cfg: PipelineConfig, ds: ImageDataset) -> Path:
    return cfg.output_dir / "metadata" / ds.id


def manifest_path(cfg: PipelineConfig, ds: ImageDataset) -> Path:
    """``raw_dataset/<id>``'s manifest."""
    return metadata_dir(cfg, ds) / "manifest.parquet"


def captions_path(cfg: PipelineConfig, ds: ImageDataset) -> Path:
    """``captions/<id>``'s table."""
    return metadata_dir(cfg, ds) / "captions.parquet"


def metadata_path(cfg: PipelineConfig, ds: ImageDataset) -> Path:
    """``bucketed_metadata/<id>``'s table (``METADATA_SCHEMA``)."""
    return metadata_dir(cfg, ds) / "metadata.parquet"


def text_store_root(cfg: PipelineConfig) -> Path:
    """``<cache_dir>/<hash of (revision, encoder fields)>``: a code change that alters what is
    encoded (a bumped revision) gets a new store instead of reusing stale items."""
    return cfg.text_cache_dir / stable_hash([TEXT_EMBED_CACHE.revision, TEXT_EMBED_CACHE.fields(cfg)])


def vae_encoder_fields(cfg: PipelineConfig) -> dict:
    """``vae_fields`` without ``cache_disabled``: online and cached encoding share keys and store root."""
    return {k: v for k, v in VAE_CACHE.fields(cfg).items() if k != "cache_disabled"}


def vae_store_root(cfg: PipelineConfig, ds: ImageDataset) -> Path:
    """``<cache_dir_vae>/<hash of (revision, VAE fields)>`` (see ``text_store_root``)."""
    return cfg.vae_cache_dir(ds) / stable_hash([VAE_CACHE.revision, vae_encoder_fields(cfg)])


def run_dir(cfg: PipelineConfig, items_hash: str, text_store: Path) -> Path:
    """``runs/<hash of (revision, trained_checkpoint fields, training items, text store)>``: the same
    inputs name the same folder, so a re-materialization resumes or reuses the run there."""
    run_id = stable_hash({"revision": TRAINED_CHECKPOINT.revision, "fields": TRAINED_CHECKPOINT.fields(cfg),
                          "items": items_hash, "text": str(text_store)}, 12)
    return cfg.output_dir / "runs" / run_id


def report_dir(cfg: PipelineConfig, run: Path, eval_item_keys: list[str]) -> Path:
    """``reports/<hash of (run, evaluation fields, eval items, revision)>``."""
    key = {"run": run.name, "eval": EVALUATION_REPORT.fields(cfg), "items": eval_item_keys,
           "revision": EVALUATION_REPORT.revision}
    return cfg.output_dir / "reports" / stable_hash(key, 12)
