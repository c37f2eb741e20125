"""run_evaluation: validation images, CLIP score, stable eval loss (base vs trained), report.

Order is chosen to keep one large model in memory at a time: the trained pipeline (sampling + trained
eval loss with its transformer), then CLIP, then the base transformer.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pixart_pipeline.evaluation.clip_score import clip_model_name, clip_score
from pixart_pipeline.evaluation.eval_loss import (
    EvalLossResult,
    eval_loss_per_timestep,
    read_eval_items,
    read_eval_latents,
)
from pixart_pipeline.evaluation.report import write_report
from pixart_pipeline.evaluation.sampling import (
    generate_images,
    load_pipeline,
)
from pixart_pipeline.evaluation.spec import EvalSpec
from pixart_pipeline.models import (
    TORCH_DTYPES,
    load_clip,
    load_noise_scheduler,
    load_transformer,
    resolve_device,
)
from pixart_pipeline.models.attention import (
    apply_attention_mechanism,
    require_attention_mechanism,
)
from pixart_pipeline.training.previews import PreviewSender, load_preview_decoder
from pixart_pipeline.training.validation import save_samples

IMAGES_DIR = "images"


@dataclass(frozen=True)
class EvalResult:
    """What one evaluation produced. ``metrics`` values are floats (NaN when not computed)."""

    metrics: dict[str, float]
    image_paths: list[Path]
    report_path: Path
    json_path: Path
    # Hash of the results (every metric except timing, and every image's bytes): the asset's DataVersion.
    data_version: str = ""


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _loss_summary(base: EvalLossResult | None, trained: EvalLossResult | None) -> dict:
    if base is None or trained is None:
        return {"num_items": 0, "base": math.nan, "trained": math.nan, "delta": math.nan,
                "relative_change": math.nan, "per_timestep": [], "skipped": []}
    delta = trained.mean - base.mean
    relative = delta / base.mean if base.num_items and base.mean != 0 else math.nan
    return {
        "num_items": trained.num_items,
        "base": base.mean,
        "trained": trained.mean,
        "delta": delta,
        "relative_change": relative,
        "per_timestep": [
            {"timestep": t, "base": b, "trained": tr}
            for t, b, tr in zip(trained.timesteps, base.per_timestep, trained.per_timestep)
        ],
        "skipped": [list(s) for s in trained.skipped],
    }


def _remove_stale_images(folder: Path, keep: set[str]) -> None:
    """A previous run with more prompts/sizes may have left images this report does not show."""
    if folder.is_dir():
        for path in folder.glob("p*_s*_*.png"):
            if path.name not in keep:
                path.unlink(missing_ok=True)


def preview_sender(spec: EvalSpec, device: torch.device) -> PreviewSender | None:
    """Issue 15: the previews of this evaluation (``validation_type`` "final": after training), or None."""
    if not spec.settings.validation_preview:
        return None
    decoder = load_preview_decoder(spec.preview_decoder, device, TORCH_DTYPES[spec.dtype])
    return PreviewSender(spec.webhooks, decoder, spec.settings.validation_preview_steps,
                         spec.num_inference_steps, validation_type="final")


def rescale_sampler(spec: EvalSpec, device: torch.device):
    """``validation_guidance_rescale`` > 0: the trainer's ``ValidationSampler`` on the exported pipeline's
    VAE, T5 and scheduler (its prompts encoded, and T5 freed, before the pipeline loads)."""
    from pixart_pipeline.training.validation import ValidationSampler

    return ValidationSampler(spec.pipeline_dir, None, spec.prompts, spec.negative_prompt,
                             spec.max_sequence_length, device)


def run_evaluation(spec: EvalSpec) -> EvalResult:
    """Evaluate the trained pipeline in ``spec.pipeline_dir`` against the base model; write the report.

    Writes ``out_dir/images/*.png``, ``out_dir/report.json`` and ``out_dir/report.html`` (all atomic).
    """
    started = time.perf_counter()
    device = resolve_device(spec.device)
    require_attention_mechanism(spec.settings.attention_mechanism, device)  # issue 15: before any work
    out_dir = Path(spec.out_dir)
    dtype = TORCH_DTYPES[spec.dtype]
    items = read_eval_items(spec.eval_items) if spec.eval_items else []

    # 1. trained pipeline: images + trained eval loss (its transformer is the trained one)
    rescale = spec.settings.validation_guidance_rescale
    # diffusers' PixArt pipeline has no guidance rescale: the trainer's sampler (same seeds) applies it
    sampler = rescale_sampler(spec, device) if rescale > 0 else None
    pipe = load_pipeline(spec.pipeline_dir, device, spec.dtype)
    # issue 15: the sampling attention kernel (the eval losses below keep the model's own, like the base's)
    default_processors = pipe.transformer.attn_processors
    apply_attention_mechanism(pipe.transformer, spec.settings.attention_mechanism, device)
    if sampler is not None:  # previews stream from diffusers' pipeline only (not with a guidance rescale)
        images = sampler.sample(pipe.transformer, spec.sizes, guidance=spec.guidance, guidance_rescale=rescale,
                                steps=spec.num_inference_steps, seed=spec.seed)
        del sampler
    else:
        images = generate_images(
            pipe, spec.prompts, spec.sizes,
            guidance=spec.guidance, num_inference_steps=spec.num_inference_steps, seed=spec.seed,
            negative_prompt=spec.negative_prompt, max_sequence_length=spec.max_sequence_length,
            preview=preview_sender(spec, device),
        )
    pipe.transformer.set_attn_processor(default_processors)
    image_dir = out_dir / IMAGES_DIR
    image_paths = save_samples(images, image_dir)
    _remove_stale_images(image_dir, {p.name for p in image_paths})
    sampling_seconds = time.perf_counter() - started

    trained_loss = base_loss = None
    if items:
        noise_scheduler = load_noise_scheduler(spec.base_model, spec.revision)
        scaling_factor = float(pipe.vae.config.scaling_factor)
        # read (online: encode) each item's latents once, for the trained and the base loss
        latents = read_eval_latents(items, spec.text_store, int(pipe.transformer.config.in_channels))
        loss_args = dict(
            items=items, text_store=spec.text_store, noise_scheduler=noise_scheduler,
            timesteps=spec.eval_timesteps, seed=spec.seed, device=device,
            scaling_factor=scaling_factor, batch_size=spec.eval_batch_size, latents=latents,
        )
        trained_loss = eval_loss_per_timestep(pipe.transformer, **loss_args)
    del pipe
    _free(device)

    # 2. CLIP score of each image against its prompt
    scores: list[float | None] = [None] * len(images)
    clip_name = None
    if spec.evaluation_type == "clip":
        model, processor = load_clip(spec.clip_model)
        model = model.to(device).eval()
        clip_name = clip_model_name(model) or spec.clip_model
        scores = clip_score([im.image for im in images], [im.prompt for im in images], model,
                            processor).tolist()
        del model, processor
        _free(device)

    # 3. base transformer: base eval loss on exactly the same items, timesteps and noise
    if items:
        base = load_transformer(spec.base_model, spec.revision, dtype=dtype).to(device)
        base_loss = eval_loss_per_timestep(base, **loss_args)
        del base
        _free(device)

    loss = _loss_summary(base_loss, trained_loss)
    valid_scores = [s for s in scores if s is not None]
    metrics = {
        "clip_score": float(sum(valid_scores) / len(valid_scores)) if valid_scores else math.nan,
        "eval_loss_base": float(loss["base"]),
        "eval_loss_trained": float(loss["trained"]),
        "eval_loss_delta": float(loss["delta"]),
        "eval_loss_relative_change": float(loss["relative_change"]),
        "num_images": float(len(images)),
        "num_eval_items": float(loss["num_items"]),
        "seconds": 0.0,  # filled in below
    }
    png_by_file = {}
    image_rows = []
    for im, path, score in zip(images, image_paths, scores):
        data = path.read_bytes()
        rel = f"{IMAGES_DIR}/{path.name}"
        png_by_file[rel] = data
        image_rows.append({
            "file": rel, "prompt": im.prompt, "prompt_index": im.prompt_index,
            "size_index": im.size_index, "width": im.width, "height": im.height, "seed": im.seed,
            "clip_score": score, "sha256": hashlib.sha256(data).hexdigest(),
        })

    # The data version ignores timing: same weights + same settings -> same version.
    data_version = hashlib.sha256(
        json.dumps({"metrics": metrics, "images": [r["sha256"] for r in image_rows],
                    "per_timestep": loss["per_timestep"]}, sort_keys=True, default=str).encode()
    ).hexdigest()[:32]
    metrics["seconds"] = time.perf_counter() - started
    report = {
        "metrics": metrics,
        "clip_model": clip_name,
        "evaluation_type": spec.evaluation_type,
        "eval_loss": loss,
        "prompts": list(spec.prompts),
        "sizes": [list(s) for s in spec.sizes],
        "images": image_rows,
        "timings": {"sampling_seconds": sampling_seconds, "total_seconds": metrics["seconds"]},
        "data_version": data_version,
        "settings": {
            "pipeline_dir": spec.pipeline_dir, "base_model": spec.base_model,
            "revision": spec.revision, "guidance": spec.guidance,
            "num_inference_steps": spec.num_inference_steps, "seed": spec.seed,
            "negative_prompt": spec.negative_prompt, "eval_timesteps": spec.eval_timesteps,
            "max_sequence_length": spec.max_sequence_length, "dtype": spec.dtype,
            "device": str(device),
        },
    }
    report_path, json_path = write_report(out_dir, report, png_by_file)
    return EvalResult(metrics, image_paths, report_path, json_path, data_version)
