"""`pixart-pipeline estimate`: GPU memory and FLOPs of each GPU stage for the active config.

For each GPU stage (``text_embed_cache``, ``vae_cache``, ``trained_checkpoint``,
``evaluation_report``) the bytes of weights, gradients, optimizer state, EMA and activations, the
peak (what ``torch.cuda.max_memory_allocated`` would report), the FLOPs per sample, whether it fits a
GPU of ``gpu_memory_gb``, and what to change when it does not.

Where the numbers come from: parameter counts and dtypes are exact; activations are measured on fake
tensors (``models/measure.py``: no memory, no GPU) at the stage's worst case, i.e. its largest bucket,
its batch size and ``tokenizer_max_length`` text tokens; FLOPs are counted on ``meta`` tensors. The
peak of training is assembled from these parts by ``training_peak`` (documented there).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.config.models import TINY_MODEL_NAME
from pixart_pipeline.data.buckets import normalise_resolution, pixel_resolution
from pixart_pipeline.models import measure, presets
from pixart_pipeline.models.loading import resolve_pretrained

GIB = 1024**3
BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
TORCH_DTYPE = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# What the fit check leaves free beyond the peak: the CUDA context and the caching allocator's
# fragmentation, which max_memory_allocated does not count.
HEADROOM_FRACTION, HEADROOM_BYTES = 0.10, 1 * GIB
# Batch sizes the evaluation stage uses (evaluation/sampling.py generate_images, EvalSpec.eval_batch_size).
SAMPLING_BATCH, EVAL_LOSS_BATCH = 4, 8


@dataclass(frozen=True)
class Architecture:
    """The three components' configs (``config.json`` dicts) and where they came from."""

    transformer: dict
    vae: dict
    text_encoder: dict
    source: str


@dataclass
class StageEstimate:
    """One GPU stage. Bytes unless named otherwise; ``fits`` against the given GPU with headroom."""

    stage: str
    shape: str  # the worst case measured, e.g. "batch 4 at 1024x1024, 300 text tokens"
    weights: int
    gradients: int = 0
    optimizer_state: int = 0
    ema: int = 0
    activations: int = 0
    activations_checkpointed: int | None = None  # training only: with gradient checkpointing
    peak: int = 0
    flops_per_sample: int = 0
    fits: bool | None = None
    suggestions: list[str] = field(default_factory=list)


def architecture_for(cfg: PipelineConfig) -> Architecture:
    """The active model's component configs: read from the local folder (or the tiny model, built
    once), or, for a hub id, the published PixArt-Sigma-XL-2 presets (nothing is downloaded)."""
    name = cfg.training.pretrained_model_name_or_path
    local = cfg.local_or_hub(name)
    if name == TINY_MODEL_NAME or Path(local).is_dir():
        folder = Path(resolve_pretrained(local, cfg.training.revision, cfg.model_cache_dir))
        parts = [json.loads((folder / sub / "config.json").read_text()) for sub in ("transformer", "vae", "text_encoder")]
        return Architecture(*parts, source=str(folder))
    return Architecture(presets.PIXART_SIGMA_XL_2_1024, presets.SDXL_VAE, presets.T5_V1_1_XXL,
                        source=f"published PixArt-Sigma-XL-2 configs (hub id {name!r}, not downloaded)")


def largest_bucket(cfg: PipelineConfig) -> tuple[int, int]:
    """(width, height) of the most pixels any training bucket can have: the square of the largest
    dataset resolution (``pixel_area`` buckets keep about that area at every aspect)."""
    edges = [pixel_resolution(normalise_resolution(ds)) for ds in cfg.datasets if ds.dataset_type == "image"]
    edge = max(edges or [1024])
    return edge, edge


def parameter_counts(arch: Architecture) -> dict[str, int]:
    """Parameters of each component (built on meta)."""
    transformer = presets.build_transformer(arch.transformer)
    vae = presets.build_vae(arch.vae)
    text = presets.build_text_encoder(arch.text_encoder)
    trainable_bias = sum(p.numel() for n, p in transformer.named_parameters() if n.endswith("bias"))
    return {"transformer": presets.count_parameters(transformer), "transformer_bias": trainable_bias,
            "vae": presets.count_parameters(vae), "text_encoder": presets.count_parameters(text)}


def optimizer_state_bytes(trainable: int, optimizer: str, state_bytes: int = 4) -> int:
    """AdamW keeps two moments per trained parameter (``exp_avg``, ``exp_avg_sq``) in the parameters'
    dtype. Adafactor keeps factored second moments: below 1% of the parameters for PixArt's matrices,
    counted here as 1% (an upper bound). ``adamw_bf16``: two bf16 moments and a bf16 Kahan buffer
    (6 bytes). ``bnb-adamw8bit``: two 8-bit moments and a float32 absmax per 256 values (the few
    tensors under 4096 values that keep 32-bit moments are not counted: biases, < 0.1%)."""
    if optimizer == "adafactor":
        return trainable * state_bytes // 100
    if optimizer == "adamw_bf16":
        return 6 * trainable
    if optimizer == "bnb-adamw8bit":
        return 2 * trainable + 8 * -(-trainable // 256)
    return 2 * trainable * state_bytes


def training_peak(weights: int, optimizer_state: int, ema: int, memory: measure.TrainMemory,
                  accumulation_steps: int, step_transient: int = 0) -> int:
    """Peak of a training step: weights, optimizer state and EMA are resident; then the larger of
    the backward (activations freed as gradients appear; with gradient accumulation the gradients of
    earlier micro-batches stay resident too) and the optimizer step (all gradients plus the step's
    temporaries: none for fused AdamW, one parameter-sized buffer for the ``foreach`` kernel)."""
    backward = memory.backward_peak if accumulation_steps == 1 else (
        memory.activations + memory.gradients + memory.backward_extra)
    return weights + optimizer_state + ema + max(backward, memory.gradients + step_transient)


def fits(peak: int, gpu_bytes: int | None) -> bool | None:
    """Whether ``peak`` plus headroom fits a GPU of ``gpu_bytes`` (None: no GPU size given)."""
    if gpu_bytes is None:
        return None
    return peak * (1 + HEADROOM_FRACTION) + HEADROOM_BYTES <= gpu_bytes


def text_cache_estimate(cfg: PipelineConfig, arch: Architecture, params: dict, gpu: int | None) -> StageEstimate:
    """T5 encodes ``write_batch_size`` captions at once, padded to the longest (worst: the limit)."""
    t, batch = cfg.training, cfg.text_embeds.write_batch_size
    tokens, dtype = t.tokenizer_max_length, t.text_encoder_dtype
    acts = measure.text_encoder_peak(arch.text_encoder, TORCH_DTYPE[dtype], batch, tokens)
    weights = params["text_encoder"] * BYTES[dtype]
    est = StageEstimate("text_embed_cache", f"batch {batch} x {tokens} tokens, {dtype}", weights,
                        activations=acts, peak=weights + acts,
                        flops_per_sample=measure.text_encoder_flops(arch.text_encoder, 1, tokens))
    est.fits = fits(est.peak, gpu)
    if est.fits is False:
        per_caption = acts / batch
        room = (gpu - HEADROOM_BYTES) / (1 + HEADROOM_FRACTION) - weights
        if room > per_caption:
            est.suggestions.append(f"set the text_embeds dataset's write_batch_size to {int(room // per_caption)}")
        if dtype == "fp32":
            est.suggestions.append("set text_encoder_dtype to 'bf16' (halves the T5 weights)")
    return est


def vae_cache_estimate(cfg: PipelineConfig, arch: Architecture, params: dict, bucket: tuple[int, int],
                       gpu: int | None) -> StageEstimate:
    """The whole VAE is loaded; ``vae_batch_size`` images of the largest bucket are encoded at once."""
    t, (width, height) = cfg.training, bucket
    dtype, batch = t.resolved_vae_dtype, t.vae_batch_size
    acts = measure.vae_encode_peak(arch.vae, TORCH_DTYPE[dtype], batch, height, width)
    weights = params["vae"] * BYTES[dtype]
    est = StageEstimate("vae_cache", f"batch {batch} at {width}x{height}, {dtype}", weights, activations=acts,
                        peak=weights + acts, flops_per_sample=measure.vae_encode_flops(arch.vae, 1, height, width))
    est.fits = fits(est.peak, gpu)
    if est.fits is False:
        per_image = acts / batch
        room = (gpu - HEADROOM_BYTES) / (1 + HEADROOM_FRACTION) - weights
        if room > per_image:
            est.suggestions.append(f"set vae_batch_size to {int(room // per_image)}")
        if dtype == "fp32":
            est.suggestions.append("set vae_dtype to 'bf16' (not 'fp16': the SDXL VAE overflows in fp16)")
    return est


def training_estimate(cfg: PipelineConfig, arch: Architecture, params: dict, bucket: tuple[int, int],
                      gpu: int | None) -> StageEstimate:
    """The trainer: float32 master weights (bf16 with ``adamw_bf16``), gradients and the optimizer's
    state, the EMA (on the GPU unless ``ema_device`` is ``cpu``), autocast in ``mixed_precision``,
    ``train_batch_size`` samples of the largest bucket."""
    t, (width, height) = cfg.training, bucket
    tokens, batch = t.tokenizer_max_length, t.train_batch_size
    autocast = None if t.mixed_precision == "no" else TORCH_DTYPE[t.mixed_precision]
    dtype = torch.bfloat16 if t.optimizer == "adamw_bf16" else torch.float32
    plain = measure.transformer_train_memory(arch.transformer, batch, height, width, tokens, autocast, False, dtype)
    ckpt = measure.transformer_train_memory(arch.transformer, batch, height, width, tokens, autocast, True, dtype)
    trainable = params["transformer_bias"] if t.use_bitfit else params["transformer"]
    weights = params["transformer"] * (2 if dtype == torch.bfloat16 else 4)
    optim = optimizer_state_bytes(trainable, t.optimizer)
    ema = trainable * 4 if t.use_ema and t.ema_device != "cpu" else 0  # a CPU EMA takes host memory only
    memory = ckpt if t.gradient_checkpointing else plain
    flops = measure.transformer_flops(arch.transformer, 1, height, width, tokens, train=True)
    if t.gradient_checkpointing:  # the backward re-runs each block's forward
        flops += measure.transformer_flops(arch.transformer, 1, height, width, tokens, train=False)
    est = StageEstimate("trained_checkpoint", f"batch {batch} at {width}x{height}, {tokens} text tokens, "
                        f"mixed_precision {t.mixed_precision}, optimizer {t.optimizer}"
                        + (", EMA on the CPU" if t.use_ema and t.ema_device == "cpu" else ""), weights, gradients=memory.gradients,
                        optimizer_state=optim, ema=ema, activations=plain.activations,
                        activations_checkpointed=ckpt.activations,
                        peak=training_peak(weights, optim, ema, memory, t.gradient_accumulation_steps),
                        flops_per_sample=flops)
    est.fits = fits(est.peak, gpu)
    if est.fits is False:
        est.suggestions = training_suggestions(est, plain, ckpt, cfg, gpu)
    return est


def training_suggestions(est: StageEstimate, plain: measure.TrainMemory, ckpt: measure.TrainMemory,
                         cfg: PipelineConfig, gpu: int) -> list[str]:
    """Each change on its own, with the peak it would give (activations scale with the batch)."""
    t, out = cfg.training, []
    gas = t.gradient_accumulation_steps

    def peak(memory, weights=est.weights, optim=est.optimizer_state, ema=est.ema) -> str:
        value = training_peak(weights, optim, ema, memory, gas)
        return f"peak {value / GIB:.1f} GiB" + ("" if fits(value, gpu) else ", still too large")

    memory = ckpt if t.gradient_checkpointing else plain
    if not t.gradient_checkpointing:
        out.append(f"set gradient_checkpointing: true ({peak(ckpt)}; about 1/3 more compute)")
    for batch in range(t.train_batch_size - 1, 0, -1):
        smaller = replace(memory, activations=memory.activations * batch // t.train_batch_size)
        if fits(training_peak(est.weights, est.optimizer_state, est.ema, smaller, gas), gpu):
            out.append(f"set train_batch_size to {batch} and raise gradient_accumulation_steps to keep the "
                       f"effective batch ({peak(smaller)})")
            break
    if t.optimizer == "adamw":  # the optimizer's state from the parameters actually trained
        trainable = est.optimizer_state // 8
        out.append(f"set optimizer to 'adafactor' ({peak(memory, optim=est.optimizer_state // 200)})")
        half = replace(memory, gradients=memory.gradients // 2)
        out.append(f"set optimizer to 'adamw_bf16' with mixed_precision 'bf16': bf16 weights, gradients and "
                   f"moments, Kahan-summed updates; needs the [lowmem] extra "
                   f"({peak(half, weights=est.weights // 2, optim=optimizer_state_bytes(trainable, 'adamw_bf16'))})")
        out.append(f"set optimizer to 'bnb-adamw8bit': 8-bit moments; needs the [lowmem] extra "
                   f"({peak(memory, optim=optimizer_state_bytes(trainable, 'bnb-adamw8bit'))})")
    if est.ema:
        out.append(f"keep the EMA on the CPU: ema_device 'cpu' ({peak(memory, ema=0)})")
    return out


def evaluation_estimate(cfg: PipelineConfig, arch: Architecture, params: dict, bucket: tuple[int, int],
                        gpu: int | None) -> StageEstimate:
    """The whole pipeline (T5, transformer, VAE) in bf16 on a GPU samples every validation size
    (classifier-free guidance doubles the transformer batch), then the eval loss runs the
    transformer on batches of the largest bucket. CLIP and the base transformer come after the
    pipeline is freed, and are smaller."""
    t, dtype = cfg.training, torch.bfloat16
    weights = (params["text_encoder"] + params["transformer"] + params["vae"]) * 2
    tokens, (bw, bh) = t.tokenizer_max_length, bucket
    acts = [measure.text_encoder_peak(arch.text_encoder, dtype, 2 * SAMPLING_BATCH, tokens),
            measure.transformer_inference_peak(arch.transformer, dtype, EVAL_LOSS_BATCH, bh, bw, tokens)]
    flops = 0
    for width, height in t.validation_sizes:
        acts.append(measure.transformer_inference_peak(arch.transformer, dtype, 2 * SAMPLING_BATCH, height,
                                                       width, tokens))
        acts.append(measure.vae_decode_peak(arch.vae, dtype, SAMPLING_BATCH, height, width))
        step = measure.transformer_flops(arch.transformer, 2, height, width, tokens, train=False)
        flops = max(flops, step * t.validation_num_inference_steps)
    sizes = ",".join(f"{w}x{h}" for w, h in t.validation_sizes)
    est = StageEstimate("evaluation_report", f"sampling {SAMPLING_BATCH} prompts at {sizes} (x2 for guidance), "
                        f"eval loss batch {EVAL_LOSS_BATCH} at {bw}x{bh}, bf16", weights,
                        activations=max(acts), peak=weights + max(acts), flops_per_sample=flops)
    est.fits = fits(est.peak, gpu)
    if est.fits is False:
        est.suggestions.append("evaluate on a larger GPU or lower validation_resolution; the T5 alone needs "
                               f"{params['text_encoder'] * 2 / GIB:.1f} GiB in bf16")
    return est


def estimate(cfg: PipelineConfig, gpu_memory_gb: float | None = None) -> dict:
    """Every GPU stage's estimate for ``cfg`` as a JSON-able dict (keys documented in the README)."""
    gpu = None if gpu_memory_gb is None else int(gpu_memory_gb * GIB)
    arch = architecture_for(cfg)
    params = parameter_counts(arch)
    bucket = largest_bucket(cfg)
    stages = [text_cache_estimate(cfg, arch, params, gpu), vae_cache_estimate(cfg, arch, params, bucket, gpu),
              training_estimate(cfg, arch, params, bucket, gpu), evaluation_estimate(cfg, arch, params, bucket, gpu)]
    return {"architecture": arch.source, "parameters": params, "largest_bucket": list(bucket),
            "gpu_memory_gb": gpu_memory_gb, "stages": [asdict(s) for s in stages]}


def render(result: dict) -> str:
    """The human table of ``estimate``'s result (GiB, TFLOP)."""
    lines = [f"architecture: {result['architecture']}",
             "parameters: " + ", ".join(f"{k} {v:,}" for k, v in result["parameters"].items())]
    if result["gpu_memory_gb"] is not None:
        lines.append(f"GPU: {result['gpu_memory_gb']} GB (fits = peak + 10% + 1 GiB headroom)")
    head = ("stage", "weights", "grads", "optim", "EMA", "activ.", "activ.ckpt", "peak", "TFLOP/sample", "fits")
    lines += ["", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    gib = lambda v: "-" if v is None else f"{v / GIB:.2f}"  # noqa: E731
    for s in result["stages"]:
        row = (s["stage"], gib(s["weights"]), gib(s["gradients"]), gib(s["optimizer_state"]), gib(s["ema"]),
               gib(s["activations"]), gib(s["activations_checkpointed"]), gib(s["peak"]),
               f"{s['flops_per_sample'] / 1e12:.3g}", {True: "yes", False: "NO", None: "-"}[s["fits"]])
        lines.append("| " + " | ".join(row) + " |")
    for s in result["stages"]:
        lines.append(f"\n{s['stage']}: {s['shape']}")
        lines += [f"  - to fit: {tip}" for tip in s["suggestions"]]
    return "\n".join(lines)
