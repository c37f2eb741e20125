"""Validation sampling: one image per (prompt, size) from the exported pipeline, with fixed seeds.

Each (prompt index, size index) gets its own seed (base + 1000 * prompt index + size index), so an
image's starting noise depends only on its position and the base seed: appending a prompt or a size
leaves the other images' noise alone, and the noise is the same on every device (drawn on a CPU
generator, as diffusers' ``randn_tensor`` allows, then moved).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import torch

from pixart_pipeline.models import TORCH_DTYPES
from pixart_pipeline.training.previews import PreviewImage, PreviewSender

# seeds are base + PROMPT_STRIDE * prompt index + size index, the trainer's validation rule
from pixart_pipeline.training.validation import PROMPT_STRIDE, Sample

if TYPE_CHECKING:
    from diffusers import PixArtSigmaPipeline



def image_seed(base_seed: int, prompt_index: int, size_index: int) -> int:
    """The fixed seed of image (prompt_index, size_index)."""
    if size_index >= PROMPT_STRIDE:
        raise ValueError(f"at most {PROMPT_STRIDE} validation sizes are supported")
    return int(base_seed) + PROMPT_STRIDE * prompt_index + size_index


def load_pipeline(pipeline_dir: str | Path, device: torch.device, dtype: str = "fp32") -> PixArtSigmaPipeline:
    """Load the exported pipeline with stock ``PixArtSigmaPipeline.from_pretrained``."""
    from diffusers import PixArtSigmaPipeline

    folder = Path(pipeline_dir)
    if not (folder / "model_index.json").is_file():
        raise ValueError(
            f"{folder} is not a diffusers pipeline folder (no model_index.json); expected the "
            "trained_checkpoint's exported 'pipeline/' folder"
        )
    pipe = PixArtSigmaPipeline.from_pretrained(str(folder), dtype=TORCH_DTYPES[dtype], use_safetensors=True)
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate_images(
    pipe: PixArtSigmaPipeline,
    prompts: Sequence[str],
    sizes: Sequence[tuple[int, int]],
    *,
    guidance: float,
    num_inference_steps: int,
    seed: int,
    negative_prompt: str = "",
    max_sequence_length: int = 300,
    batch_size: int = 4,
    preview: PreviewSender | None = None,
) -> list[Sample]:
    """Generate every prompt x size; returns images ordered by (prompt index, size index).

    Prompts of one size are batched (up to ``batch_size``) with one generator per image, so each
    image still gets its own fixed seed. Resolution binning is off: the size asked for is the size
    made (PixArt's aspect-ratio bins would silently change it). Captions are not "cleaned" (that
    needs bs4/ftfy and changes the prompt the user wrote).

    ``preview`` (issue 15, ``validation_preview``) gets the latents of every denoising step through the
    pipeline's per-step callback and posts the steps it is asked for to the webhooks.
    """
    results: dict[tuple[int, int], Sample] = {}
    for si, (width, height) in enumerate(sizes):
        for start in range(0, len(prompts), batch_size):
            indices = list(range(start, min(start + batch_size, len(prompts))))
            seeds = [image_seed(seed, pi, si) for pi in indices]
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
            streaming = {}  # issue 15: the stock pipeline's per-step callback (it has no callback_on_step_end)
            if preview is not None:
                rows = [PreviewImage(prompts[pi], width, height, f"p{pi:02d}_s{si:02d}") for pi in indices]
                streaming = {"callback": preview.callback(rows), "callback_steps": 1}
            output = pipe(
                prompt=[prompts[pi] for pi in indices],
                negative_prompt=negative_prompt,
                num_inference_steps=num_inference_steps,
                guidance_scale=guidance,
                width=width,
                height=height,
                generator=generators,
                use_resolution_binning=False,
                clean_caption=False,
                max_sequence_length=max_sequence_length,
                output_type="pil",
                **streaming,
            )
            for pi, s, image in zip(indices, seeds, output.images):
                results[(pi, si)] = Sample(pi, si, prompts[pi], width, height, s, image)
    return [results[key] for key in sorted(results)]
