"""Turn cached items back into model inputs: padded prompt embeddings and sampled latents."""

from __future__ import annotations

import queue
import threading
from typing import Callable, Iterable, Iterator, TypeVar

import torch

T = TypeVar("T")
R = TypeVar("R")


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
    shift_factor: float | None = None,
) -> torch.Tensor:
    """Draw ``z = (mean + std * eps - shift_factor) * scaling_factor`` from the cached posterior
    ([B, 4, h, w]), the normalisation diffusers applies to ``latent_dist.sample()``. PixArt Sigma's
    SDXL VAE has no ``shift_factor`` (None: no shift); VAEs such as SD3's do.

    Sampling each step (not caching one sample) keeps the VAE's posterior noise as a light
    augmentation, like encoding online does (``latent_dist.sample()``).
    """
    device = generator.device if generator is not None else mean.device
    eps = torch.randn(mean.shape, generator=generator, device=device, dtype=mean.dtype).to(mean.device)
    z = mean + std * eps
    if shift_factor:
        z = z - shift_factor
    return z * scaling_factor


def prefetch(load: Callable[[T], R], requests: Iterable[T], depth: int = 2) -> Iterator[R]:
    """Yield ``load(r)`` for each request in order, computed by one background thread up to ``depth``
    results ahead (a bounded queue: memory stays at ``depth`` batches). An exception in ``load`` is
    raised here, at the request that caused it.

    Reads from memory-mapped shards release the GIL while the kernel pages data in, so the next
    batch is read while the current one trains, like a DataLoader with one worker and
    ``prefetch_factor=depth`` but without pickling tensors between processes.
    """
    if depth < 1:
        raise ValueError(f"prefetch depth must be >= 1, got {depth}")
    done = object()
    results: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for request in requests:
                if stop.is_set():
                    return
                results.put((True, load(request)))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            results.put((False, e))
        results.put((True, done))

    thread = threading.Thread(target=work, name="cache-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, value = results.get()
            if not ok:
                raise value
            if value is done:
                return
            yield value
    finally:
        stop.set()
        while thread.is_alive():  # unblock a worker waiting on a full queue
            try:
                results.get_nowait()
            except queue.Empty:
                thread.join(timeout=0.01)
