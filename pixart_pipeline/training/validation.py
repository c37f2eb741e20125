"""Validation images of the weights being trained: every prompt x size, with fixed seeds.

The base pipeline's VAE, text encoder and scheduler are loaded once (``ValidationSampler``); the
prompts are encoded once and the text encoder dropped (T5-XXL is the largest part of PixArt).
Each call then runs the denoising loop with the live transformer:

    eps_u, eps_c = transformer([x, x], [negative, prompt], t)          # learned sigma dropped
    eps = eps_u + guidance * (eps_c - eps_u)                           # guidance > 1 only
    eps = rescale * eps * std(eps_c) / std(eps) + (1 - rescale) * eps  # validation_guidance_rescale
    x = scheduler.step(eps, t, x)

``on_step(step, timestep, latents, rows)`` (``OnStep``) is called after every denoising step with the
latents ``[B, 4, h, w]`` of the batch being sampled and what each row is: the validation previews' hook.
Seeds follow the evaluation stage's rule (``base + 1000 * prompt index + size index``), so the last
in-training images and the evaluation's images start from the same noise.
"""

from __future__ import annotations

import gc
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image

from pixart_pipeline.fileio import atomic_write_bytes

# Called after each denoising step: (step index from 0, timestep, latents [B, 4, h, w] of the current
# batch, one (prompt index, size index, prompt, width, height) per batch row).
OnStep = Callable[[int, torch.Tensor, torch.Tensor, list[tuple[int, int, str, int, int]]], None]
PROMPT_STRIDE = 1000


@dataclass(frozen=True)
class Sample:
    """One validation image and where it sits in the prompt x size grid."""

    prompt_index: int
    size_index: int
    prompt: str
    width: int
    height: int
    seed: int
    image: Image.Image

    @property
    def file_name(self) -> str:
        return f"p{self.prompt_index:02d}_s{self.size_index:02d}_{self.width}x{self.height}.png"


def png_bytes(image: Image.Image) -> bytes:
    """Encode a PIL image as PNG (no metadata chunks, so equal pixels give equal bytes)."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def save_samples(samples: Sequence[Sample], folder: Path) -> list[Path]:
    """Each sample as ``folder/<file_name>`` (atomic writes); returns the paths in order."""
    paths = []
    for sample in samples:
        path = folder / sample.file_name
        atomic_write_bytes(path, png_bytes(sample.image))
        paths.append(path)
    return paths


def rescale_guidance(eps: torch.Tensor, eps_cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Guidance rescale (Lin et al. 2023, arXiv:2305.08891, section 3.4): match the per-sample std of
    the guided prediction ``eps`` [B, C, h, w] to the conditional one, blended by ``rescale``."""
    if rescale <= 0:
        return eps
    dims = list(range(1, eps.ndim))
    rescaled = eps * (eps_cond.std(dim=dims, keepdim=True) / eps.std(dim=dims, keepdim=True))
    return rescale * rescaled + (1 - rescale) * eps


class ValidationSampler:
    """Samples the validation grid with whatever transformer it is handed (the one being trained)."""

    def __init__(self, base_model: str, revision: str | None, prompts: Sequence[str], negative_prompt: str,
                 max_sequence_length: int, device: torch.device) -> None:
        from diffusers import PixArtSigmaPipeline

        # transformer=None: the trained one is passed to each call; only VAE, T5 and scheduler load.
        # bf16 on a GPU: T5-XXL alone is ~19 GB in fp32, next to the model being trained.
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        pipe = PixArtSigmaPipeline.from_pretrained(base_model, revision=revision, transformer=None,
                                                   dtype=dtype, use_safetensors=True)
        pipe.text_encoder.to(device)
        self.device = device
        self.prompts = list(prompts)
        with torch.no_grad():
            embeds, mask, negative, negative_mask = pipe.encode_prompt(
                self.prompts, do_classifier_free_guidance=True, negative_prompt=negative_prompt,
                device=device, clean_caption=False, max_sequence_length=max_sequence_length)
        # [P, L, D], [P, L]: per prompt; the text encoder is not needed again
        self.embeds, self.mask = embeds.cpu(), mask.cpu()
        self.negative, self.negative_mask = negative.cpu(), negative_mask.cpu()
        self.vae = pipe.vae.to(device).eval()
        self.scheduler = pipe.scheduler
        del pipe
        gc.collect()

    @torch.no_grad()
    def sample(self, transformer: torch.nn.Module, sizes: Sequence[tuple[int, int]], *, guidance: float,
               guidance_rescale: float, steps: int, seed: int, on_step: OnStep | None = None,
               batch_size: int = 4) -> list[Sample]:
        """Every prompt x size (width, height), ordered by (prompt index, size index)."""
        was_training = transformer.training
        transformer.eval()
        out = []
        for si, (width, height) in enumerate(sizes):
            for start in range(0, len(self.prompts), batch_size):
                indices = list(range(start, min(start + batch_size, len(self.prompts))))
                seeds = [seed + PROMPT_STRIDE * pi + si for pi in indices]
                rows = [(pi, si, self.prompts[pi], width, height) for pi in indices]
                images = self._batch(transformer, indices, seeds, width, height, guidance, guidance_rescale,
                                     steps, on_step, rows)
                out += [Sample(pi, si, self.prompts[pi], width, height, s, im)
                        for pi, s, im in zip(indices, seeds, images)]
        if was_training:
            transformer.train()
        return sorted(out, key=lambda s: (s.prompt_index, s.size_index))

    def _batch(self, transformer, indices, seeds, width, height, guidance, rescale, steps, on_step, rows):
        """One batch of prompts at one size -> PIL images."""
        device, dtype = self.device, next(transformer.parameters()).dtype
        channels = int(transformer.config.in_channels)
        # [B, C, h, w] starting noise, one CPU generator per image (device independent)
        noise = [torch.randn((1, channels, height // 8, width // 8), generator=torch.Generator("cpu").manual_seed(s))
                 for s in seeds]
        self.scheduler.set_timesteps(steps, device=device)
        latents = (torch.cat(noise) * self.scheduler.init_noise_sigma).to(device, dtype)
        cfg = guidance > 1.0
        embeds = self.embeds[indices].to(device, dtype)
        mask = self.mask[indices].to(device)
        if cfg:  # [2B, L, D]: negative first, as diffusers' pipeline orders them
            embeds = torch.cat([self.negative[indices].to(device, dtype), embeds])
            mask = torch.cat([self.negative_mask[indices].to(device), mask])
        for i, t in enumerate(self.scheduler.timesteps):
            model_input = torch.cat([latents] * 2) if cfg else latents
            model_input = self.scheduler.scale_model_input(model_input, t)
            prediction = transformer(model_input, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                                     timestep=t.expand(model_input.shape[0]),
                                     added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                                     return_dict=False)[0]
            if transformer.config.out_channels // 2 == channels:  # learned sigma: keep epsilon
                prediction = prediction.chunk(2, dim=1)[0]
            if cfg:
                uncond, cond = prediction.chunk(2)
                prediction = rescale_guidance(uncond + guidance * (cond - uncond), cond, rescale)
            latents = self.scheduler.step(prediction, t, latents, return_dict=False)[0]
            if on_step is not None:
                on_step(i, t, latents, rows)
        vae_dtype = next(self.vae.parameters()).dtype
        decoded = self.vae.decode(latents.to(vae_dtype) / self.vae.config.scaling_factor, return_dict=False)[0]
        pixels = ((decoded.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)  # [B, 3, H, W]
        return [Image.fromarray(p.permute(1, 2, 0).cpu().numpy()) for p in pixels]


@torch.no_grad()
def clip_scores(images: Sequence[Image.Image], prompts: Sequence[str], model, processor) -> list[float]:
    """CLIP score of each image against its prompt: ``max(100 * cos(E_I, E_T), 0)`` (the evaluation
    stage's definition), prompts truncated to CLIP's text window."""
    device = next(model.parameters()).device
    text = processor.tokenizer(list(prompts), padding=True, truncation=True,
                               max_length=int(model.config.text_config.max_position_embeddings), return_tensors="pt")
    pixels = processor.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")["pixel_values"]
    text_out = model.get_text_features(input_ids=text["input_ids"].to(device),
                                       attention_mask=text["attention_mask"].to(device))
    image_out = model.get_image_features(pixel_values=pixels.to(device))
    text_embeds = getattr(text_out, "pooler_output", text_out)  # transformers 5 wraps the projection
    image_embeds = getattr(image_out, "pooler_output", image_out)
    cos = torch.nn.functional.cosine_similarity(image_embeds.float(), text_embeds.float(), dim=-1)
    return (100 * cos).clamp(min=0).cpu().tolist()
