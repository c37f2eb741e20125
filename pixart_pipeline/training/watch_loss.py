"""The stable eval loss of the weights being trained: one point of the eval-loss curve.

The same recipe as the evaluation stage's eval loss (``evaluation/eval_loss.py``, which the trainer
cannot import: evaluation sits above training), so the curve's last point is the number the
evaluation report gives for the trained weights (a test checks it):

* latents: each eval item's VAE posterior mean x ``scaling_factor`` (read once, kept in memory);
* timesteps: ``n`` midpoints of equal bins of the DDPM schedule;
* noise: ``[n, C, h, w]`` per item from a CPU generator seeded by ``(seed, vae_key, text_key)``;
* loss: the trainer's ``pixart_epsilon_loss`` without min-SNR weighting, averaged over items, then timesteps.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch

from pixart_pipeline.cache import ShardStore, pad_prompt_embeds
from pixart_pipeline.cache.online import open_vae_store
from pixart_pipeline.training.loss import pixart_epsilon_loss


@dataclass(frozen=True)
class EvalSet:
    """The eval items that could be read: posterior means ``[C, h, w]``, prompt embeds ``[L, D]``,
    the noise keys; and the items skipped, with why."""

    means: list[torch.Tensor]
    embeds: list[torch.Tensor]
    keys: list[tuple[str, str]]  # (vae_key, text_key): what the item's fixed noise is seeded by
    skipped: list[str]


def midpoint_timesteps(num_train_timesteps: int, n: int) -> list[int]:
    """``n`` evenly spaced timesteps, the midpoints of ``n`` equal bins of ``[0, T)``."""
    return [int((i + 0.5) * num_train_timesteps / n) for i in range(n)]


def fixed_noise(seed: int, vae_key: str, text_key: str, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """``[n, *shape]`` float32 standard normal, a pure function of (seed, vae_key, text_key)."""
    digest = hashlib.sha256(f"{seed}:{vae_key}:{text_key}".encode()).digest()
    generator = torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randn((n, *shape), generator=generator, dtype=torch.float32)


def read_eval_set(items_path: str | Path, text_store: str | Path, channels: int) -> EvalSet:
    """Read every eval item of the items parquet once; items missing from a cache or of the wrong
    latent shape are skipped with the reason (the evaluation stage does the same)."""
    table = pq.read_table(items_path, columns=["vae_store", "vae_key", "text_key", "target_width", "target_height"])
    texts = ShardStore(Path(text_store))
    stores: dict[str, object] = {}
    means, embeds, keys, skipped = [], [], [], []
    rows = sorted(table.to_pylist(), key=lambda r: (r["target_height"], r["target_width"], r["vae_key"], r["text_key"]))
    for row in rows:
        store = stores.setdefault(row["vae_store"], open_vae_store(row["vae_store"]))
        expected = (channels, row["target_height"] // 8, row["target_width"] // 8)
        if row["vae_key"] not in store or row["text_key"] not in texts:
            skipped.append(f"{row['vae_key']}: not in the caches")
            continue
        mean = store.get(row["vae_key"])["mean"].float()
        if tuple(mean.shape) != expected:
            skipped.append(f"{row['vae_key']}: latents {tuple(mean.shape)}, expected {expected}")
            continue
        means.append(mean)
        embeds.append(texts.get(row["text_key"])["prompt_embeds"].float())
        keys.append((row["vae_key"], row["text_key"]))
    return EvalSet(means, embeds, keys, skipped)


@torch.no_grad()
def eval_loss(transformer: torch.nn.Module, data: EvalSet, noise_scheduler, timesteps: int, seed: int,
              scaling_factor: float, batch_size: int, device: torch.device) -> float | None:
    """Mean eval loss of ``transformer`` over ``data`` x ``timesteps`` midpoints; None without items.
    The transformer is left in the mode it was in."""
    if not data.means:
        return None
    steps = midpoint_timesteps(noise_scheduler.config.num_train_timesteps, timesteps)
    dtype = next(transformer.parameters()).dtype
    was_training = transformer.training
    transformer.eval()
    sums = torch.zeros(len(steps), dtype=torch.float64)
    start = 0
    while start < len(data.means):  # batches of one latent size (items are sorted by size)
        end = start + 1
        while end < len(data.means) and end - start < batch_size and data.means[end].shape == data.means[start].shape:
            end += 1
        latents = (torch.stack(data.means[start:end]) * scaling_factor).to(device, dtype)  # [B, C, h, w]
        prompt_embeds, mask = pad_prompt_embeds(data.embeds[start:end])  # [B, L, D], [B, L]
        noise = torch.stack([fixed_noise(seed, v, t, len(steps), tuple(latents.shape[1:]))
                             for v, t in data.keys[start:end]])  # [B, T, C, h, w]
        for j, t in enumerate(steps):
            t_batch = torch.full((end - start,), t, dtype=torch.long, device=device)
            loss = pixart_epsilon_loss(transformer, latents, noise[:, j].to(device, dtype), t_batch,
                                       prompt_embeds.to(device, dtype), mask.to(device), noise_scheduler)  # [B]
            sums[j] += loss.double().sum().cpu()
        start = end
    if was_training:
        transformer.train()
    return float((sums / len(data.means)).mean())
