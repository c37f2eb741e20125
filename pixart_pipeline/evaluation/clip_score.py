"""CLIP score of generated images against their prompts.

Definition (Hessel et al. 2021, "CLIPScore", arXiv:2104.08718, with w = 100 as torchmetrics uses it):

    CLIPScore(I, C) = max(100 * cos(E_I, E_C), 0)

where E_I is CLIP's projected image embedding and E_C its projected text embedding. We clamp per image
(the definition) and average afterwards; torchmetrics' functional form clamps the batch mean, which is
the same number whenever no single image scores below zero.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from PIL import Image


def clip_score_from_embeddings(image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
    """Per-pair CLIP score from paired embeddings.

    image_embeds: [N, D], text_embeds: [N, D] (row i of each belongs together). Returns [N] in [0, 100].
    """
    if image_embeds.shape != text_embeds.shape or image_embeds.ndim != 2:
        raise ValueError(
            f"clip score needs two [N, D] tensors of the same shape, got "
            f"{tuple(image_embeds.shape)} and {tuple(text_embeds.shape)}"
        )
    image_embeds = image_embeds.float()
    text_embeds = text_embeds.float()
    cos = torch.nn.functional.cosine_similarity(image_embeds, text_embeds, dim=-1, eps=1e-8)
    return (100.0 * cos).clamp(min=0.0)


def clip_model_name(model: Any) -> str:
    """The name a report shows for the CLIP model (hub id or folder it was loaded from)."""
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    return str(name) or type(model).__name__


def _features(output: Any) -> torch.Tensor:
    """transformers 5 returns BaseModelOutputWithPooling (projected ``pooler_output``); 4.x a tensor."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if pooled is None:
        raise TypeError(f"unexpected CLIP feature output {type(output).__name__}")
    return pooled


def _split_processor(processor: Any) -> tuple[Any, Any]:
    """Accept a CLIPProcessor (has .tokenizer and .image_processor) or a (tokenizer, image_processor) pair."""
    if isinstance(processor, (tuple, list)) and len(processor) == 2:
        return processor[0], processor[1]
    tokenizer = getattr(processor, "tokenizer", None)
    image_processor = getattr(processor, "image_processor", None)
    if tokenizer is None or image_processor is None:
        raise TypeError(
            "clip_score needs a CLIPProcessor (with .tokenizer and .image_processor) or a "
            f"(tokenizer, image_processor) pair, got {type(processor).__name__}"
        )
    return tokenizer, image_processor


@torch.no_grad()
def clip_score(
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    model: Any,
    processor: Any,
    batch_size: int = 16,
) -> torch.Tensor:
    """CLIP score of each image against its own prompt -> [N] float32 on the CPU.

    images[i] is scored against prompts[i]. Prompts longer than CLIP's text window (77 tokens for the
    OpenAI models) are truncated, as torchmetrics does.
    """
    if len(images) != len(prompts):
        raise ValueError(f"clip_score: {len(images)} images but {len(prompts)} prompts")
    if not images:
        return torch.zeros(0)
    tokenizer, image_processor = _split_processor(processor)
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    max_length = int(model.config.text_config.max_position_embeddings)
    scores = []
    for start in range(0, len(images), batch_size):
        batch_images = [im.convert("RGB") for im in images[start : start + batch_size]]
        batch_prompts = list(prompts[start : start + batch_size])
        text = tokenizer(
            batch_prompts, padding=True, truncation=True, max_length=max_length, return_tensors="pt"
        )
        pixels = image_processor(images=batch_images, return_tensors="pt")["pixel_values"]
        text_embeds = _features(
            model.get_text_features(
                input_ids=text["input_ids"].to(device),
                attention_mask=text["attention_mask"].to(device),
            )
        )
        image_embeds = _features(model.get_image_features(pixel_values=pixels.to(device, dtype)))
        scores.append(clip_score_from_embeddings(image_embeds, text_embeds).cpu())
    return torch.cat(scores)
