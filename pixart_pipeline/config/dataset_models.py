"""Typed, strict models of ``multidatabackend.json``'s entries (an image dataset, its aspect buckets
and parquet metadata, the text-embeds dataset). SimpleTuner's dataset keys we do not implement are
in ``dataset_keys.py``; the ``config.json`` models are in ``models.py``."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from pixart_pipeline.config.models import Number, StrictModel


class AspectBucket(StrictModel):
    """One weighted entry of ``crop_aspect_buckets`` (``{"aspect": 1.5, "weight": 0.25}``)."""

    aspect: Number = Field(gt=0)
    weight: Number = Field(ge=0)


class ParquetConfig(StrictModel):
    """The ``parquet`` block of a dataset (SimpleTuner's key names and defaults): a table with one
    row per image, giving captions (``caption_strategy: "parquet"``) and/or sizes
    (``metadata_backend: "parquet"``). ``path`` is relative to ``multidatabackend.json``; a
    ``.jsonl`` file (one JSON object per line) works too."""

    path: str
    filename_column: str = "id"
    caption_column: str = "description"
    fallback_caption_column: str | None = None
    width_column: str | None = None
    height_column: str | None = None
    identifier_includes_extension: bool = False


class ImageDataset(StrictModel):
    """One image dataset of ``multidatabackend.json`` (SimpleTuner's keys, plus a few of ours)."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    type: Literal["local", "synthetic"] = "local"
    dataset_type: Literal["image", "eval"] = "image"  # "eval": evaluation only, never trained on
    disabled: bool = False
    instance_data_dir: str
    # hub download into instance_data_dir (type "local")
    hub_repo_id: str | None = None
    hub_revision: str | None = None
    hub_allow_patterns: list[str] | None = None
    # the synthetic demo source (type "synthetic")
    synthetic_num_images: int = Field(36, ge=1, le=100_000)
    synthetic_seed: int = 0
    # geometry
    crop: bool = False
    crop_aspect: Literal["square", "preserve", "closest", "random"] = "square"
    crop_aspect_buckets: list[Number] | list[AspectBucket] | None = None
    max_upscale_threshold: Number | None = Field(None, ge=0)  # random + plain buckets only
    crop_style: Literal["random", "center", "centre", "corner"] = "random"
    resolution: Number = Field(1024, gt=0)
    resolution_type: Literal["area", "pixel", "pixel_area"] = "pixel_area"
    minimum_image_size: Number | None = Field(None, ge=0)
    maximum_image_size: Number | None = Field(None, gt=0)
    # SimpleTuner drops whole buckets whose aspect key is outside these (0 or null: no bound)
    minimum_aspect_ratio: Number | None = Field(None, ge=0)
    maximum_aspect_ratio: Number | None = Field(None, ge=0)
    target_downsample_size: Number | None = Field(None, gt=0)
    # held out for the eval loss (data/holdout.py): null = a few images (1 per 25 kept, at most 4; none when the
    # config has a dataset_type "eval" dataset); a fraction = that share by image hash; 0 = train on all
    eval_split_fraction: float | None = Field(None, ge=0, lt=1)
    # captions
    caption_strategy: Literal["filename", "textfile", "instanceprompt", "parquet"] = "filename"
    instance_prompt: str | None = None
    parquet: ParquetConfig | None = None
    prepend_instance_prompt: bool = False  # caption = instance_prompt + " " + caption
    only_instance_prompt: bool = False  # every caption = instance_prompt (any strategy)
    disable_multiline_split: bool = False  # textfile: the whole sidecar is one caption, not one per line
    # caches and bookkeeping
    cache_dir_vae: str | None = None
    skip_file_discovery: str = ""
    metadata_backend: Literal["discovery", "parquet"] = "discovery"
    repeats: int = Field(0, ge=0)

    @field_validator("maximum_aspect_ratio")
    @classmethod
    def _bounds_not_crossed(cls, high: Number | None, info: ValidationInfo) -> Number | None:
        low = info.data.get("minimum_aspect_ratio")
        if low and high and low > high:
            raise ValueError(f"below minimum_aspect_ratio {low}: no image could be kept")
        return high

    @model_validator(mode="after")
    def _check_combinations(self) -> "ImageDataset":
        if (self.prepend_instance_prompt or self.only_instance_prompt) and not self.instance_prompt:
            raise ValueError("prepend_instance_prompt / only_instance_prompt need 'instance_prompt'")
        if self.caption_strategy == "instanceprompt" and not self.instance_prompt:
            raise ValueError("caption_strategy 'instanceprompt' needs 'instance_prompt'")
        if (self.caption_strategy == "parquet" or self.metadata_backend == "parquet") and self.parquet is None:
            raise ValueError("caption_strategy/metadata_backend 'parquet' needs a 'parquet' block with 'path'")
        if self.metadata_backend == "parquet" and not (self.parquet.width_column and self.parquet.height_column):
            raise ValueError("metadata_backend 'parquet' needs parquet.width_column and parquet.height_column")
        if self.hub_repo_id and self.type != "local":
            raise ValueError("hub_repo_id works only with type 'local'")
        _check_geometry(self)
        if self.resolution_type == "area" and self.resolution > 16:
            raise ValueError(
                f"resolution {self.resolution} with resolution_type 'area' means "
                f"{self.resolution} megapixels; use 'pixel_area' for edge lengths in pixels"
            )
        return self

    @property
    def normalised_crop_style(self) -> str:
        return "center" if self.crop_style == "centre" else self.crop_style


def _check_geometry(ds: "ImageDataset") -> None:
    """The geometry combinations SimpleTuner refuses (or would divide by zero on), as clear errors."""
    if ds.resolution_type in ("pixel", "pixel_area") and int(ds.resolution) != ds.resolution:
        raise ValueError(f"resolution_type {ds.resolution_type!r} needs a whole number of pixels, got {ds.resolution}")
    if ds.resolution_type == "area" and (ds.minimum_image_size or 0) > 5:
        raise ValueError(f"minimum_image_size {ds.minimum_image_size} with resolution_type 'area' means "
                         "megapixels (SimpleTuner refuses values above 5); use 'pixel_area' for pixels")
    buckets = ds.crop_aspect_buckets
    if ds.crop and ds.crop_aspect in ("closest", "random") and not buckets:
        raise ValueError(f"crop_aspect {ds.crop_aspect!r} needs crop_aspect_buckets, e.g. [0.75, 1.0, 1.5]")
    if buckets and isinstance(buckets[0], AspectBucket):
        total = sum(b.weight for b in buckets)
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"crop_aspect_buckets weights must add up to 1, they add up to {total}")
    if buckets and any(not 1 / 8 <= (b.aspect if isinstance(b, AspectBucket) else b) <= 8 for b in buckets):
        raise ValueError("crop_aspect_buckets aspects must be within [0.125, 8] (width / height)")


class TextEmbedsDataset(StrictModel):
    """The ``text_embeds`` entry of ``multidatabackend.json``: where T5 embeddings are cached."""

    id: str
    type: Literal["local"] = "local"
    dataset_type: Literal["text_embeds"]
    default: bool = False
    disabled: bool = False
    cache_dir: str = "cache/text"
    write_batch_size: int = Field(128, ge=1)
    # strings / regular expressions removed from every caption (data/caption_filter.py)
    caption_filter_list: list[str] | str | None = None
