"""Encode images with the VAE into a ShardStore: the posterior ``mean`` and ``std``, [4, H/8, W/8].

Each image is prepared exactly as its metadata row says (EXIF transpose, RGB, LANCZOS resize to the
intermediary size, crop to the target box, scale to [-1, 1]). The file is read once and its bytes
are hashed before decoding: an item's key is built from the sha256 the metadata recorded, so bytes
that no longer match (an image edited after ``bucketed_metadata``) are a reported failure, never new
pixels stored under the old key. Storing the posterior instead of one
sample lets training draw a fresh ``z = mean + std * eps`` every step (``reader.sample_latents``).
"""

from __future__ import annotations

import hashlib
import io
import time
from collections import defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image, ImageOps

from pixart_pipeline.cache.store import EncodeStats, ShardStore, ShardWriter
from pixart_pipeline.data.images import to_rgb
from pixart_pipeline.errors import InputError

VAE_DOWNSAMPLE = 8
# Why an item with a NaN/Inf posterior is not stored (cached path) or served (online path).
NONFINITE_REASON = "VAE posterior has NaN/Inf (the SDXL VAE overflows in fp16; use vae_dtype fp32)"


@dataclass(frozen=True)
class VaeItem:
    """One image at one geometry. ``intermediary``/``target`` are (w, h); ``crop`` is (left, top);
    ``sha256`` is the hex digest of the file's bytes that the metadata row (and so ``key``) was built from."""

    key: str
    path: Path
    intermediary: tuple[int, int]
    crop: tuple[int, int]
    target: tuple[int, int]
    sha256: str


class SourceChangedError(InputError):
    """The image file's bytes are not the ones its metadata row (and item key) was computed from."""


def read_source(item: VaeItem) -> bytes:
    """The bytes of ``item``'s image, read once; raises ``SourceChangedError`` when their sha256 is
    not ``item.sha256`` (``OSError`` when the file is gone or unreadable)."""
    data = item.path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != item.sha256:
        raise SourceChangedError(
            f"changed since bucketed_metadata was built (sha256 {digest[:12]}..., metadata has "
            f"{item.sha256[:12]}...); re-materialise it"
        )
    return data


def check_source(item: VaeItem) -> str | None:
    """Why ``item`` cannot be encoded (gone, changed since the metadata, bad header), or None.

    Reads and hashes the whole file and lets PIL verify its structure, without decoding pixels:
    the up-front check of ``vae_cache_disable`` (cache/online.py), so that a bad image is left out of
    training instead of failing a step mid-run.
    """
    try:
        with Image.open(io.BytesIO(read_source(item))) as image:
            image.verify()  # header and, for PNG, chunk CRCs; no pixel decode
    except SourceChangedError as e:
        return str(e)
    except Exception as e:  # noqa: BLE001 - any unreadable file is a reason, not a crash
        return f"{type(e).__name__}: {e}"
    return None


def failure_reason(error: Exception) -> str:
    """The text recorded for an item whose ``load_pixels`` raised ``error`` (its path is recorded beside it)."""
    return str(error) if isinstance(error, SourceChangedError) else f"{type(error).__name__}: {error}"


def load_pixels(item: VaeItem) -> torch.Tensor:
    """Read, check, orient, resize and crop ``item``'s image: float32 [3, H, W] in [-1, 1].

    Raises ``ValueError`` (geometry), ``SourceChangedError`` (bytes differ from the metadata's sha256),
    ``OSError`` or whatever PIL raises for an unreadable file.
    """
    (iw, ih), (left, top), (tw, th) = item.intermediary, item.crop, item.target
    if tw % VAE_DOWNSAMPLE or th % VAE_DOWNSAMPLE:
        raise ValueError(f"target size {tw}x{th} is not a multiple of {VAE_DOWNSAMPLE}")
    if left < 0 or top < 0 or left + tw > iw or top + th > ih:
        raise ValueError(f"crop box ({left}, {top}, {left + tw}, {top + th}) is outside the {iw}x{ih} image")
    # One read: the bytes hashed are the bytes decoded (no window for an edit between the two).
    with Image.open(io.BytesIO(read_source(item))) as image:
        image = ImageOps.exif_transpose(image)  # the displayed orientation, as metadata measured it
        image = to_rgb(image)  # alpha on white, 16-bit scaled: as the metadata's `note` column says
        image = image.resize((iw, ih), resample=Image.LANCZOS)
        image = image.crop((left, top, left + tw, top + th))
        array = np.asarray(image, dtype=np.float32)  # [H, W, 3] in [0, 255]
    pixels = torch.from_numpy(array).permute(2, 0, 1)  # [3, H, W]
    return pixels / 127.5 - 1.0


def encode_posteriors(
    vae: torch.nn.Module, pixels: list[torch.Tensor], device: torch.device | str
) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
    """One VAE pass over ``pixels`` (each [3, H, W], one size): CPU ``mean``, ``std`` in the VAE's
    dtype, [B, 4, H/8, W/8] each, and whether each item's posterior is finite.

    Shared by the cached path (``encode_images``) and online encoding (cache/online.py), so both
    store or serve the same posterior and reject the same NaN/Inf (``NONFINITE_REASON``).
    """
    x = torch.stack(pixels).to(torch.device(device), next(vae.parameters()).dtype)  # [B, 3, H, W]
    x = x.contiguous(memory_format=input_memory_format(vae))  # NHWC when the VAE is (vae_channels_last)
    posterior = vae.encode(x).latent_dist
    mean, std = posterior.mean, posterior.std  # [B, 4, H/8, W/8] each
    finite = torch.isfinite(mean).flatten(1).all(1) & torch.isfinite(std).flatten(1).all(1)  # [B]
    return mean.cpu(), std.cpu(), finite.tolist()


def to_channels_last(vae: torch.nn.Module) -> torch.nn.Module:
    """The VAE with NHWC (``channels_last``) convolution weights; ``encode_posteriors`` then feeds it
    NHWC pixels."""
    return vae.to(memory_format=torch.channels_last)


def input_memory_format(vae: torch.nn.Module) -> torch.memory_format:
    """``channels_last`` when the VAE's convolution weights are (``vae_channels_last``: NHWC lets
    cuDNN use tensor-core convolutions without layout transposes), else the usual NCHW layout."""
    for param in vae.parameters():
        if param.ndim == 4 and param.shape[1] > 1 and param.shape[2] * param.shape[3] > 1:  # a k x k conv
            nhwc = param.is_contiguous(memory_format=torch.channels_last) and not param.is_contiguous()
            return torch.channels_last if nhwc else torch.contiguous_format
    return torch.contiguous_format


def _batches(items: list[VaeItem], batch_size: int) -> list[list[VaeItem]]:
    """Batches of one target size each (the VAE needs equal shapes), in a deterministic order."""
    by_size: dict[tuple[int, int], list[VaeItem]] = defaultdict(list)
    for item in items:
        by_size[tuple(item.target)].append(item)
    batches = []
    for size in sorted(by_size):
        group = sorted(by_size[size], key=lambda it: it.key)
        batches += [group[i : i + batch_size] for i in range(0, len(group), batch_size)]
    return batches


def _prefetched(batches: list[list[VaeItem]], workers: int, depth: int) -> Iterator[tuple[list[VaeItem], list]]:
    """Yield ``(batch, futures of load_pixels)`` while up to ``depth`` later batches load in a thread pool.

    PIL decodes and resizes with the GIL released, so image preparation overlaps the VAE's forward
    pass; the bound keeps at most ``depth`` batches of pixels in memory.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="vae-load") as pool:
        queue: deque = deque()
        for batch in batches:
            queue.append((batch, [pool.submit(load_pixels, item) for item in batch]))
            if len(queue) > depth:
                yield queue.popleft()
        while queue:
            yield queue.popleft()


def encode_images(
    store: ShardStore,
    items: list[VaeItem],
    vae: torch.nn.Module,
    batch_size: int,
    device: torch.device | str,
    *,
    items_per_shard: int = 256,
    load_workers: int = 4,
    prefetch_batches: int = 2,
    log: Callable[[str], None] | None = None,
) -> EncodeStats:
    """Encode every item not yet in ``store``; a bad image goes to ``failed`` and the rest go on.

    Items are deduplicated by key, grouped by target size and batched (one shape per batch); images
    are decoded by ``load_workers`` threads up to ``prefetch_batches`` batches ahead. Shards are
    flushed every ``items_per_shard`` items, so an interrupted run keeps its progress. A posterior
    with NaN/Inf is reported with its image file and not written.
    """
    start = time.perf_counter()
    stats = EncodeStats()
    unique = list({item.key: item for item in items}.values())
    todo = [item for item in unique if item.key not in store]
    stats.reused = len(unique) - len(todo)
    writer = ShardWriter(store, items_per_shard)
    with torch.inference_mode():
        for batch, futures in _prefetched(_batches(todo, batch_size), load_workers, prefetch_batches):
            ready, pixels = [], []
            for item, future in zip(batch, futures):
                try:
                    pixels.append(future.result())
                    ready.append(item)
                except Exception as e:  # noqa: BLE001 - any unreadable or changed image is reported, not fatal
                    stats.failed.append((str(item.path), failure_reason(e)))
            if not ready:
                continue
            mean, std, finite = encode_posteriors(vae, pixels, device)
            for i, item in enumerate(ready):
                if not finite[i]:
                    stats.failed.append((str(item.path), NONFINITE_REASON))
                    continue
                if writer.add(item.key, {"mean": mean[i], "std": std[i]}) and log:
                    log(f"vae: {writer.written}/{len(todo)} encoded, {len(stats.failed)} failed")
    writer.close()
    stats.encoded = writer.written
    stats.seconds = time.perf_counter() - start
    return stats
