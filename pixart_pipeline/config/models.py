"""Typed, strict models of SimpleTuner's `config.json` and `multidatabackend.json`.

Only the options that matter for a PixArt Sigma full fine-tune are modelled. Every model forbids
unknown keys and uses strict types (``"False"`` is not a bool), so a typo is an error, never silence.
Keys that SimpleTuner has but we do not implement yet are listed in ``UNSUPPORTED`` (an error that says
so) or ``IGNORED`` (a warning: they cannot change any result).
"""

from __future__ import annotations

from typing import Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from pixart_pipeline.config.webhooks import WebhookTarget  # issue 15

TINY_MODEL_NAME = "tiny-random"
TINY_CLIP_NAME = "tiny-random-clip"
# Bump when the tiny-model builder's output changes: it is part of the tiny models' identity (so of
# every cache fingerprint) and of their folder name, so an old build is never taken for the new one.
TINY_MODEL_REVISION = "3"
DEFAULT_BASE_MODEL = "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"
DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14-336"

LR_SCHEDULERS = (
    "constant",
    "constant_with_warmup",
    "linear",
    "cosine",
    "cosine_with_restarts",
    "polynomial",
    "piecewise_constant",
)

# SimpleTuner values that mean "off" for the config.json keys below (``"attention_mechanism":
# "diffusers"`` is the default); checked with ``dataset_keys.is_off``.
_OFF = (False, 0, None, "", "none", "diffusers")

# SimpleTuner keys we know but do not implement: key -> (why, the values meaning "off", which are
# accepted and dropped). Any other value is an error. Same shape as ``dataset_keys.UNSUPPORTED``.
UNSUPPORTED: dict[str, tuple[str, tuple]] = {
    "lora_rank": ("only model_type 'full' is supported", _OFF),
    # issue 15: ReflexFlow is for flow-matching rollouts; PixArt Sigma predicts epsilon
    "scheduled_sampling_reflexflow": ("ReflexFlow applies to flow-matching models only; PixArt Sigma predicts epsilon", _OFF),
    # -- SimpleTuner parity (issue 14): keys of its example config and EVAL_LOSS.md we do not implement
    "validation_torch_compile": ("compiling the validation pipeline is not implemented", _OFF),
    "eval_epoch_interval": ("the eval loss is scheduled by steps only; use eval_steps_interval", _OFF),
}

# SimpleTuner's multidatabackend.json keys we do not implement: see dataset_keys.py.

# SimpleTuner keys that cannot change any artefact; accepted with a warning.
IGNORED: dict[str, str] = {
    "logging_dir": "metrics go to metrics.jsonl in the run folder",
    "disable_benchmark": "evaluation always runs as its own asset",
    # -- issue 15: ReflexFlow weights only flow-matching rollouts (SimpleTuner reads them for those
    #    alone); PixArt Sigma predicts epsilon, so they cannot change a result
    "scheduled_sampling_reflexflow_alpha": "ReflexFlow applies to flow-matching models only; PixArt Sigma predicts epsilon",
    "scheduled_sampling_reflexflow_beta1": "ReflexFlow applies to flow-matching models only; PixArt Sigma predicts epsilon",
    "scheduled_sampling_reflexflow_beta2": "ReflexFlow applies to flow-matching models only; PixArt Sigma predicts epsilon",
    # -- SimpleTuner parity (issue 14)
    "push_checkpoints_to_hub": "only the final model is pushed (push_to_hub); checkpoints stay in output_dir",
    "eval_dataset_pooling": "the eval loss is always one value over every eval image together (pooled)",
}


class StrictModel(BaseModel):
    """Unknown keys are errors and values are not coerced (``"False"`` is not ``False``)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


Number = Union[int, float]


class Hyperparameters(StrictModel):
    """The ``config.json`` keys that change the trained weights: the one list of hyperparameters.

    The trained_checkpoint fingerprint (``config/fingerprints.py``), the run spec, the tracker and
    the model card all read ``Hyperparameters.model_fields``; a new hyperparameter is added here only.
    """

    seed: int = 42
    learning_rate: float = Field(1e-6, gt=0)
    lr_scheduler: Literal[LR_SCHEDULERS] = "constant"  # type: ignore[valid-type]
    lr_warmup_steps: int = Field(0, ge=0)
    train_batch_size: int = Field(1, ge=1)
    gradient_accumulation_steps: int = Field(1, ge=1)
    max_train_steps: int = Field(1000, ge=1)
    num_train_epochs: int | None = Field(None, ge=1)  # with max_train_steps: whichever ends first
    lr_num_cycles: int = Field(1, ge=1)  # cosine_with_restarts
    lr_power: float = Field(1.0, gt=0)  # polynomial
    lr_step_rules: str | None = None  # piecewise_constant, diffusers' "1:10,0.1:20,0.01"
    mixed_precision: Literal["bf16", "fp16", "no"] = "bf16"
    # adamw_bf16: bf16 weights + Kahan-summed AdamW; bnb-adamw8bit: 8-bit moments (training/optimizers.py)
    optimizer: Literal["adamw", "adafactor", "adamw_bf16", "bnb-adamw8bit"] = "adamw"
    fused_optimizer: Literal["auto", "on", "off"] = "auto"  # AdamW's fused kernel
    adam_beta1: float = Field(0.9, ge=0, lt=1)
    adam_beta2: float = Field(0.999, ge=0, lt=1)
    adam_weight_decay: float = Field(1e-2, ge=0)
    adam_epsilon: float = Field(1e-8, gt=0)
    max_grad_norm: float = Field(2.0, ge=0)
    snr_gamma: float | None = Field(None, gt=0)
    noise_offset: float = Field(0.0, ge=0)
    caption_dropout_probability: float = Field(0.0, ge=0, le=1)
    use_ema: bool = False
    ema_decay: float = Field(0.999, gt=0, lt=1)
    use_bitfit: bool = False
    # multiplies the global batch, so it changes the result (DESIGN.md lists it as excluded; see README)
    num_processes: int = Field(1, ge=1)
    # ours, not SimpleTuner's: what the sampler does with a bucket too small for one optimizer step
    small_bucket_rule: Literal["drop", "repeat"] = "drop"
    # -- issue 15: SimpleTuner's experimental Scheduled Sampling (rollout) and Diff2Flow
    #    (training/scheduled_sampling.py, training/diff2flow.py). Off at these defaults, where
    #    config/fingerprints.inapplicable_keys keeps them out of the fingerprint.
    scheduled_sampling_max_step_offset: int = Field(0, ge=0, le=999)  # 0: no rollout
    scheduled_sampling_strategy: Literal["uniform", "biased_early", "biased_late"] = "uniform"
    scheduled_sampling_probability: float = Field(0.0, ge=0, le=1)  # without a ramp
    scheduled_sampling_prob_start: float = Field(0.0, ge=0, le=1)  # with scheduled_sampling_ramp_steps
    scheduled_sampling_prob_end: float = Field(0.5, ge=0, le=1)
    scheduled_sampling_ramp_steps: int = Field(0, ge=0)
    scheduled_sampling_start_step: int = Field(0, ge=0)
    scheduled_sampling_ramp_shape: Literal["linear", "cosine"] = "linear"
    scheduled_sampling_sampler: Literal["unipc", "euler", "dpm"] = "unipc"
    scheduled_sampling_order: int = Field(2, ge=1, le=3)  # unipc / dpm solver order
    diff2flow_enabled: bool = False
    diff2flow_loss: bool = False  # needs diff2flow_enabled
    # -- memory savers and speed switches (README "Real model"; training/speed.py). Out of the
    # fingerprint at their defaults (config/fingerprints.py OMITTED_AT_DEFAULT), so old runs stay synced.
    ema_device: Literal["accelerator", "cpu"] = "accelerator"  # SimpleTuner's default is cpu; ours keeps the old placement
    disable_tf32: bool = False  # SimpleTuner's: TF32 matmuls/convolutions on CUDA unless set
    dynamo_backend: Literal["no", "inductor", "aot_eager", "eager"] = "no"  # torch.compile backend
    dynamo_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] | None = None
    dynamo_fullgraph: bool = False
    dynamo_dynamic: bool | None = None
    dynamo_use_regional_compilation: bool = True  # compile each transformer block, not the whole model

    @model_validator(mode="after")
    def _check_trainer_options(self) -> "Hyperparameters":
        if self.lr_scheduler == "piecewise_constant" and not self.lr_step_rules:
            raise ValueError("lr_scheduler 'piecewise_constant' needs lr_step_rules, e.g. \"1:100,0.1:200,0.01\" "
                             "(multiplier:until_step pairs, then the final multiplier)")
        if self.lr_step_rules is not None:
            _check_step_rules(self.lr_step_rules)
        if self.optimizer == "adafactor" and self.fused_optimizer == "on":
            raise ValueError("fused_optimizer 'on' needs optimizer 'adamw' (Adafactor has no fused kernel)")
        # -- issue 15: Diff2Flow combinations (SimpleTuner ignores these silently; we say so)
        if self.diff2flow_loss and not self.diff2flow_enabled:
            raise ValueError("diff2flow_loss needs diff2flow_enabled: true (the bridge it converts predictions with)")
        if self.diff2flow_loss and self.snr_gamma is not None:
            raise ValueError("snr_gamma has no effect with diff2flow_loss (SimpleTuner's flow loss is unweighted); "
                             "unset one of them")
        if self.optimizer in ("adamw_bf16", "bnb-adamw8bit") and self.fused_optimizer == "on":
            raise ValueError(f"fused_optimizer 'on' needs optimizer 'adamw' ({self.optimizer} has its own kernel)")
        if self.optimizer == "adamw_bf16" and self.mixed_precision != "bf16":
            raise ValueError(f"optimizer 'adamw_bf16' keeps the weights in bf16 and needs mixed_precision 'bf16' "
                             f"(not {self.mixed_precision!r})")
        return self

    def hyperparameters(self) -> "Hyperparameters":
        """Just the hyperparameters (a ``TrainingConfig`` is one too, with every other key)."""
        return Hyperparameters.model_validate({k: getattr(self, k) for k in Hyperparameters.model_fields})


class TrainerSettings(StrictModel):
    """The ``config.json`` keys of a training run that never change the weights: checkpointing,
    resuming, memory, where it runs and where its results are reported. In no fingerprint (but for
    ``num_machines`` > 1, below)."""

    # -- multi-node (issue 12): SimpleTuner's num_machines; each machine runs num_processes ranks, so
    # the world size is num_machines x num_processes. Above 1 it multiplies the global batch and is in
    # the trained_checkpoint fingerprint; at 1 it is left out (fingerprints stay as they were). Needs
    # PIXART_EXECUTOR=k8s (an indexed Job of trainer pods); the local executor refuses it.
    num_machines: int = Field(1, ge=1)

    checkpointing_steps: int = Field(500, ge=1)
    checkpoints_total_limit: int | None = Field(None, ge=1)
    resume_from_checkpoint: str = "latest"  # "latest" | "none" | a checkpoint folder
    # recompute activations in the backward pass: less memory, same gradients
    gradient_checkpointing: bool = False
    report_to: Literal["none", "wandb", "tensorboard", "all"] = "none"  # all: wandb + tensorboard
    tracker_project_name: str = "pixart-pipeline"
    tracker_run_name: str | None = None
    push_to_hub: bool = False
    hub_model_id: str | None = None
    device: Literal["auto", "cuda", "mps", "cpu"] = "auto"
    # -- watching training (issue 14; training/validation.py): SimpleTuner's in-training validation
    # images and eval-loss curve. They only read the weights, so they are in no fingerprint.
    validation_steps: int | None = Field(None, ge=0)  # render the validation prompts every N steps; 0/None: off
    eval_steps_interval: int | None = Field(None, ge=0)  # stable eval loss (+ CLIP) every N steps; 0/None: off
    num_eval_images: int = Field(4, ge=1)  # eval images per batch of the in-training eval loss
    eval_loss_disable: bool = False  # keep validation images / CLIP, skip the eval loss
    validation_on_startup: bool = False  # also validate the base weights (step 0) when a run starts fresh

    @model_validator(mode="after")
    def _check_hub(self) -> "TrainerSettings":
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("push_to_hub is true but hub_model_id is not set (e.g. \"your-name/pixart-finetune\")")
        return self

    @field_validator("resume_from_checkpoint")
    @classmethod
    def _check_resume(cls, value: str) -> str:
        if value not in ("latest", "none") and not value.strip():
            raise ValueError("use 'latest', 'none', or a checkpoint folder")
        return value

    def trainer_settings(self) -> "TrainerSettings":
        """Just the trainer settings (a ``TrainingConfig`` is one too, with every other key)."""
        return TrainerSettings.model_validate({k: getattr(self, k) for k in TrainerSettings.model_fields})


class EvaluationSettings(StrictModel):
    """The ``config.json`` keys of the evaluation: what the validation images show, how they are
    sampled and scored. The evaluation_report fingerprint and the eval spec read these."""

    validation_prompt: str | None = None
    validation_prompts: list[str] = []
    validation_resolution: str | int = "1024x1024"
    validation_guidance: float = Field(3.5, ge=0)
    validation_guidance_rescale: float = Field(0.0, ge=0, le=1)  # issue 14: diffusers' guidance_rescale
    validation_num_inference_steps: int = Field(20, ge=1)
    validation_seed: int = 42
    validation_negative_prompt: str = "blurry, cropped, ugly"
    evaluation_type: Literal["clip", "none"] = "clip"
    pretrained_evaluation_model_name_or_path: str = DEFAULT_CLIP_MODEL
    eval_timesteps: int = Field(8, ge=1, le=1000)
    # -- issue 15: the attention kernel for sampling (models/attention.py; in the evaluation
    #    fingerprint when not the default) and previews streamed to webhooks while sampling
    #    (training/previews.py; in no fingerprint: they change no artefact)
    attention_mechanism: Literal["diffusers", "sageattention"] = "diffusers"
    validation_preview: bool = False
    validation_preview_steps: int = Field(1, ge=1)
    # a target, a list of them, a JSON string of either, or a JSON file (relative to config.json)
    webhook_config: WebhookTarget | list[WebhookTarget] | str | None = None
    # ours: the Tiny AutoEncoder that decodes previews (SDXL latents; "tiny-random-taesd" for tests)
    validation_preview_decoder: str = "madebyollin/taesdxl"

    @model_validator(mode="after")
    def _previews_need_a_webhook(self) -> "EvaluationSettings":
        if self.validation_preview and not self.webhook_config:
            raise ValueError("validation_preview needs webhook_config: previews are only sent to webhooks "
                             '(e.g. {"webhook_type": "raw", "callback_url": "http://127.0.0.1:8000/hook"})')
        return self

    @field_validator("validation_resolution")
    @classmethod
    def _check_resolution(cls, value: str | int) -> str | int:
        parse_resolutions(value)  # raises ValueError with the offending part
        return value

    def evaluation_settings(self) -> "EvaluationSettings":
        """Just the evaluation settings (a ``TrainingConfig`` is one too, with every other key)."""
        return EvaluationSettings.model_validate({k: getattr(self, k) for k in EvaluationSettings.model_fields})

    @property
    def all_validation_prompts(self) -> list[str]:
        prompts = ([self.validation_prompt] if self.validation_prompt else []) + list(
            self.validation_prompts
        )
        return prompts or ["a photo"]

    @property
    def validation_sizes(self) -> list[tuple[int, int]]:
        """``"1024x1024,1280x768"`` -> ``[(1024, 1024), (1280, 768)]`` as (width, height)."""
        return parse_resolutions(self.validation_resolution)


class TrainingConfig(Hyperparameters, TrainerSettings, EvaluationSettings):
    """``config.json``: the model, the optimisation (``Hyperparameters``), the run (``TrainerSettings``),
    the evaluation (``EvaluationSettings``) and the caches."""

    # -- model
    model_family: Literal["pixart_sigma"] = "pixart_sigma"
    model_type: Literal["full"] = "full"
    pretrained_model_name_or_path: str = DEFAULT_BASE_MODEL
    revision: str | None = None
    output_dir: str = "output/models"
    data_backend_config: str | None = None
    # -- buckets: decimals of the aspect ratios (SimpleTuner's; None = 2), in the metadata fingerprint
    aspect_bucket_rounding: int | None = Field(None, ge=1, le=4)
    # -- caches
    tokenizer_max_length: int = Field(300, ge=1)
    text_encoder_dtype: Literal["fp32", "bf16", "fp16"] = "bf16"
    vae_dtype: Literal["default", "fp32", "bf16", "fp16"] = "default"
    vae_batch_size: int = Field(4, ge=1)
    vae_cache_disable: bool = False  # encode latents on the fly in the trainer (cache/online.py)
    # NHWC VAE encoding for the cache (faster cuDNN convolutions; other kernels, so in the vae_cache
    # fingerprint when set)
    vae_channels_last: bool = False

    @property
    def resolved_vae_dtype(self) -> str:
        """SimpleTuner's ``default`` VAE dtype is fp32 (the SDXL VAE overflows in fp16)."""
        return "fp32" if self.vae_dtype == "default" else self.vae_dtype


def _check_step_rules(rules: str) -> None:
    """diffusers' piecewise-constant rules: ``"m1:s1,m2:s2,...,m_last"`` (multipliers, increasing steps)."""
    parts = [p.strip() for p in rules.split(",")]
    try:
        pairs = [tuple(p.split(":")) for p in parts[:-1]]
        steps = [int(s) for _, s in pairs]
        [float(m) for m, _ in pairs] + [float(parts[-1])]
    except ValueError:
        raise ValueError(f"lr_step_rules {rules!r} is not 'multiplier:step,...,multiplier' "
                         "(e.g. \"1:100,0.1:200,0.01\")") from None
    if steps != sorted(steps):
        raise ValueError(f"lr_step_rules {rules!r}: the steps must increase")


# An image size PixArt can generate: the VAE downsamples by 8 and the transformer patchifies latents by 2.
PIXART_SIZE_MULTIPLE = 16


def is_pixart_size(width: int, height: int) -> bool:
    """Whether ``width`` x ``height`` are both positive multiples of ``PIXART_SIZE_MULTIPLE`` (16)."""
    m = PIXART_SIZE_MULTIPLE
    return width >= m and height >= m and not width % m and not height % m


def parse_resolutions(value: str | int) -> list[tuple[int, int]]:
    """Parse SimpleTuner's ``validation_resolution``: ``1024``, ``"1024"`` or ``"WxH,WxH"``."""
    if isinstance(value, int):
        value = str(value)
    sizes = []
    for part in value.split(","):
        part = part.strip().lower()
        try:
            w, h = (part.split("x") + [part])[:2] if "x" in part else (part, part)
            width, height = int(w), int(h)
        except ValueError:
            raise ValueError(f"{part!r} is not WIDTHxHEIGHT (e.g. 1024x1024,1280x768)") from None
        if not is_pixart_size(width, height):
            raise ValueError(f"{part!r}: width and height must be multiples of 16 (VAE 8 x patch 2)")
        sizes.append((width, height))
    return sizes


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
