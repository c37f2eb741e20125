"""Per-stage fingerprint fields: exactly the config fields that change a stage's output.

``stages.py`` pairs each function here with its stage and revision (``code_version`` is
``<revision>-<hash of these fields>``); change a field and only the stages whose fields hold it
become unsynced.
Fields deliberately left out (logging, checkpoint interval, device, batch sizes of the encoders) are
those that cannot change the artefact.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pixart_pipeline.config.identity import caption_filters, parquet_identity
from pixart_pipeline.config.load import PipelineConfig
from pixart_pipeline.config.models import (
    TINY_CLIP_NAME,
    TINY_MODEL_NAME,
    TINY_MODEL_REVISION,
    Hyperparameters,
    ImageDataset,
)

# PixArt's VAE downsamples by 8 and its transformer patchifies by 2, so SimpleTuner aligns to 64.
PIXART_ALIGNMENT = 64


def stable_hash(obj: Any, length: int = 16) -> str:
    """sha256 of canonical JSON (sorted keys, no whitespace), truncated to ``length`` hex chars."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def model_identity(
    cfg: PipelineConfig, name_or_path: str, revision: str | None, subfolders: tuple[str, ...] = ()
) -> dict:
    """What names a model's weights: hub id + revision, tiny name + builder revision, or a local
    folder + the (name, size, mtime) of every file in the ``subfolders`` a stage reads.

    A local folder is not named by its path alone: replacing its weights in place must make the
    stages that read them unsynced (DESIGN.md principle 3). Only the stage's own parts count, so a
    new transformer in the same folder leaves the T5 and VAE caches synced.
    """
    if name_or_path in (TINY_MODEL_NAME, TINY_CLIP_NAME):
        return {"model": name_or_path, "revision": f"builder-r{TINY_MODEL_REVISION}"}
    local = cfg.local_or_hub(name_or_path)
    if local != name_or_path or Path(local).is_dir():
        root = Path(local)
        parts = [root / s for s in subfolders] or [root]
        paths = [p for part in parts for p in ([part] if part.is_file() else part.rglob("*")) if p.is_file()]
        files = sorted((str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns) for f in paths)
        return {"model": str(root), "files": stable_hash(files)}
    return {"model": name_or_path, "revision": revision or "main"}


def raw_dataset_fields(cfg: PipelineConfig, ds: ImageDataset) -> dict:
    fields = {"type": ds.type, "dir": str(cfg.dataset_dir(ds))}
    if ds.hub_repo_id:
        fields |= {"hub_repo_id": ds.hub_repo_id, "hub_revision": ds.hub_revision, "patterns": ds.hub_allow_patterns}
    if ds.type == "synthetic":
        fields |= {"n": ds.synthetic_num_images, "seed": ds.synthetic_seed}
    return fields


def captions_fields(cfg: PipelineConfig, ds: ImageDataset) -> dict:
    fields = {"caption_strategy": ds.caption_strategy, "instance_prompt": ds.instance_prompt,
              "prepend_instance_prompt": ds.prepend_instance_prompt, "only_instance_prompt": ds.only_instance_prompt}
    if ds.caption_strategy == "textfile" and ds.disable_multiline_split:  # only when set: old fingerprints stay
        fields["disable_multiline_split"] = True
    if filters := caption_filters(cfg):  # the filters themselves: editing the filter file counts
        fields["caption_filter_list"] = filters
    if ds.caption_strategy == "parquet":
        fields["parquet"] = parquet_identity(cfg, ds)
    return fields


def bucketed_metadata_fields(cfg: PipelineConfig, ds: ImageDataset) -> dict:
    # Not the training seed: crop boxes are seeded by each image's hash.
    return _aspect_choice_fields(ds) | {
        "crop": ds.crop,
        "aspect_bucket_rounding": cfg.training.aspect_bucket_rounding or 2,
        "crop_style": ds.normalised_crop_style,
        "resolution": ds.resolution,
        "resolution_type": ds.resolution_type,
        "minimum_image_size": ds.minimum_image_size,
        "maximum_image_size": ds.maximum_image_size,
        "target_downsample_size": ds.target_downsample_size,
        "alignment": PIXART_ALIGNMENT,
        "eval_split_fraction": ds.eval_split_fraction,
        "metadata_backend": ds.metadata_backend,
        "dataset_type": ds.dataset_type,  # "eval" puts every image in the eval split
    } | _aspect_bounds(ds) | _parquet_sizes_identity(cfg, ds)


def _aspect_bounds(ds: ImageDataset) -> dict:
    """``minimum_aspect_ratio`` / ``maximum_aspect_ratio`` when set (0 and null mean no bound, and
    leave the fingerprint as it was before the keys existed)."""
    bounds = {"minimum_aspect_ratio": ds.minimum_aspect_ratio, "maximum_aspect_ratio": ds.maximum_aspect_ratio}
    return {k: v for k, v in bounds.items() if v}


def _aspect_choice_fields(ds: ImageDataset) -> dict:
    """The crop-aspect keys that can change a target (``data.buckets.compute_geometry`` and
    ``data.aspect_choice.chosen_aspect``): ``crop_aspect`` only with ``crop``; the bucket list only
    under ``closest``/``random``; ``max_upscale_threshold`` only under ``random`` with plain-number
    buckets (weighted buckets are a weighted draw). Keys that cannot apply stay out, so setting
    them does not rebucket."""
    if not ds.crop:
        return {}
    fields: dict = {"crop_aspect": ds.crop_aspect}
    buckets = ds.crop_aspect_buckets or []
    if ds.crop_aspect in ("closest", "random") and buckets:
        fields["crop_aspect_buckets"] = [b if isinstance(b, (int, float)) else b.model_dump() for b in buckets]
        if ds.crop_aspect == "random" and isinstance(buckets[0], (int, float)):
            fields["max_upscale_threshold"] = ds.max_upscale_threshold
    return fields


def _parquet_sizes_identity(cfg: PipelineConfig, ds: ImageDataset) -> dict:
    if ds.metadata_backend != "parquet":
        return {}
    return {"parquet": parquet_identity(cfg, ds)}


def text_encoder_fields(cfg: PipelineConfig) -> dict:
    t = cfg.training
    return {
        "encoder": model_identity(cfg, t.pretrained_model_name_or_path, t.revision, ("text_encoder", "tokenizer")),
        "max_length": t.tokenizer_max_length,
        "dtype": t.text_encoder_dtype,
    }


def vae_fields(cfg: PipelineConfig, ds: ImageDataset | None = None) -> dict:
    """The VAE's identity and dtype: the same for every dataset (``ds`` is accepted for the
    per-dataset ``vae_cache`` stage and not read)."""
    t = cfg.training
    fields = {
        "vae": model_identity(cfg, t.pretrained_model_name_or_path, t.revision, ("vae",)),
        "dtype": t.resolved_vae_dtype,
    }
    if t.vae_cache_disable:  # the vae_cache artefact becomes "disabled"; item keys ignore this field
        fields["cache_disabled"] = True
    if t.vae_channels_last:  # other convolution kernels: latents equal to float rounding, not bits
        fields["channels_last"] = True
    return fields


def inapplicable_keys(hp: Hyperparameters) -> set[str]:
    """The hyperparameters this config never reads (diffusers' ``get_scheduler`` passes
    ``num_cycles`` only to cosine_with_restarts, ``power`` only to polynomial, ``step_rules`` only to
    piecewise_constant, and constant/piecewise_constant take no warm-up; Adafactor uses none of the
    Adam betas/epsilon nor the fused kernel; ``ema_decay`` needs ``use_ema``). Such a key cannot
    change the weights, so it stays out of the fingerprint and editing it does not retrain. The keys
    of ``OMITTED_AT_DEFAULT`` are left out at their defaults too (they are read, but configs from
    before they existed must keep their fingerprints)."""
    unused = {"lr_num_cycles", "lr_power", "lr_step_rules"} - {
        {"cosine_with_restarts": "lr_num_cycles", "polynomial": "lr_power",
         "piecewise_constant": "lr_step_rules"}.get(hp.lr_scheduler, "")}
    if hp.lr_scheduler in ("constant", "piecewise_constant"):
        unused.add("lr_warmup_steps")
    if hp.optimizer == "adafactor":
        unused |= {"adam_beta1", "adam_beta2", "adam_epsilon", "fused_optimizer"}
    elif hp.optimizer != "adamw":  # adamw_bf16 / bnb-adamw8bit: Adam's settings, their own kernels
        unused.add("fused_optimizer")
    if not hp.use_ema:
        unused |= {"ema_decay", "ema_device"}
    if hp.dynamo_backend == "no":
        unused |= {"dynamo_mode", "dynamo_fullgraph", "dynamo_dynamic", "dynamo_use_regional_compilation"}
    # the memory/speed keys of issue 13 count only when set away from their defaults, so configs
    # written before they existed keep their fingerprints (where set they can change the numbers:
    # TF32 and compiled kernels round differently, a CPU EMA is averaged by another kernel)
    unused |= {k for k in OMITTED_AT_DEFAULT if getattr(hp, k) == Hyperparameters.model_fields[k].default}
    unused |= _rollout_and_flow_unused(hp)  # issue 15
    return unused


def _rollout_and_flow_unused(hp: Hyperparameters) -> set[str]:
    """Scheduled Sampling keys without a rollout (``max_step_offset`` 0), the ramp's keys without a
    ramp (``scheduled_sampling_probability`` with one), the solver order under Euler; both Diff2Flow
    keys without ``diff2flow_loss`` (the bridge alone changes nothing). At their defaults none is in
    the fingerprint, so configs written before these keys existed keep theirs."""
    ramp = {"scheduled_sampling_prob_start", "scheduled_sampling_prob_end", "scheduled_sampling_start_step",
            "scheduled_sampling_ramp_shape"}
    unused: set[str] = set()
    if hp.scheduled_sampling_max_step_offset == 0:
        unused |= {k for k in Hyperparameters.model_fields if k.startswith("scheduled_sampling_")}
    elif hp.scheduled_sampling_ramp_steps == 0:
        unused |= ramp
    else:
        unused.add("scheduled_sampling_probability")
    if hp.scheduled_sampling_sampler == "euler":
        unused.add("scheduled_sampling_order")
    if not hp.diff2flow_loss:
        unused |= {"diff2flow_enabled", "diff2flow_loss"}
    return unused


OMITTED_AT_DEFAULT = ("ema_device", "disable_tf32", "dynamo_backend", "dynamo_mode", "dynamo_fullgraph",
                      "dynamo_dynamic", "dynamo_use_regional_compilation")


def trained_checkpoint_fields(cfg: PipelineConfig) -> dict:
    t = cfg.training
    skip = inapplicable_keys(t) | {"small_bucket_rule"}  # the sampler's rule has its own entry below
    fields = {
        "transformer": model_identity(
            cfg, t.pretrained_model_name_or_path, t.revision, ("transformer", "scheduler", "vae/config.json")
        ),
        "hyperparameters": {k: getattr(t, k) for k in Hyperparameters.model_fields if k not in skip},
        "repeats": {ds.id: ds.repeats for ds in cfg.datasets},
        # which items the sampler draws: buckets too small for one optimizer step dropped or repeated
        "small_bucket_rule": t.small_bucket_rule,
    }
    if t.num_machines > 1:  # world size = machines x processes: a bigger global batch (1: left out)
        fields["num_machines"] = t.num_machines
    if t.resume_from_checkpoint not in ("latest", "none"):
        # Starting from another run's checkpoint changes the weights ("latest" resumes this run's own).
        fields["resume_from_checkpoint"] = t.resume_from_checkpoint
    return fields


def evaluation_fields(cfg: PipelineConfig) -> dict:
    t = cfg.training
    # guidance rescale only when on: configs without it keep their fingerprint
    rescale = {"guidance_rescale": t.validation_guidance_rescale} if t.validation_guidance_rescale else {}
    return rescale | {
        "prompts": t.all_validation_prompts,
        "sizes": t.validation_sizes,
        "guidance": t.validation_guidance,
        "steps": t.validation_num_inference_steps,
        "seed": t.validation_seed,
        "negative_prompt": t.validation_negative_prompt,
        "evaluation_type": t.evaluation_type,
        "clip_model": model_identity(cfg, t.pretrained_evaluation_model_name_or_path, None),
        "eval_timesteps": t.eval_timesteps,
    } | ({"attention_mechanism": t.attention_mechanism} if t.attention_mechanism != "diffusers" else {})  # issue 15
