"""Turn cached items back into model inputs: padded prompt embeddings and sampled latents."""

from __future__ import annotations

import torch


def pad_prompt_embeds(embeds: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ``[L_i, D]`` embeddings to the longest: ``(prompt_embeds [B, Lmax, D], attention_mask [B, Lmax])``.

    The mask (long, 1 = real token) makes the transformer's cross-attention ignore the zero padding,
    so this equals padding every prompt to ``max_length`` as PixArt's pipeline does, at less cost.
    """
    if not embeds:
        raise ValueError("pad_prompt_embeds needs at least one embedding")
    dims = {e.shape[-1] for e in embeds}
    if len(dims) != 1 or any(e.dim() != 2 for e in embeds):
        raise ValueError(f"expected [L, D] embeddings with one D, got shapes {[tuple(e.shape) for e in embeds]}")
    longest = max(e.shape[0] for e in embeds)
    first = embeds[0]
    prompt_embeds = first.new_zeros((len(embeds), longest, first.shape[-1]))  # [B, Lmax, D]
    attention_mask = torch.zeros((len(embeds), longest), dtype=torch.long, device=first.device)  # [B, Lmax]
    for i, e in enumerate(embeds):
        prompt_embeds[i, : e.shape[0]] = e.to(prompt_embeds.device, prompt_embeds.dtype)
        attention_mask[i, : e.shape[0]] = 1
    return prompt_embeds, attention_mask


def sample_latents(
    mean: torch.Tensor,
    std: torch.Tensor,
    scaling_factor: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``z = (mean + std * eps) * scaling_factor`` from the cached posterior ([B, 4, h, w]).

    Sampling each step (not caching one sample) keeps the VAE's posterior noise as a light
    augmentation, like encoding online does (``latent_dist.sample()``).
    """
    device = generator.device if generator is not None else mean.device
    eps = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype).to(mean.device)
    return (mean + std * eps) * scaling_factor
