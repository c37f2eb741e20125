"""Stable eval loss: the training objective on the held-out split, with every random choice fixed.

A training-loss curve is noisy because each step draws new timesteps, new noise and new latent samples
(z = mean + std * eps). To compare two sets of weights we remove all three sources of noise:

* timesteps: ``n`` evenly spaced points of the DDPM schedule (bin midpoints), the same for every item;
* noise: drawn per item from a generator seeded by (seed, item key), so it does not depend on batching,
  item order or the device -- and base and trained see exactly the same noise;
* latents: the VAE posterior MEAN times ``scaling_factor`` (no sampling).

What is left differs between base and trained only by the transformer weights. The loss itself is the
trainer's ``pixart_epsilon_loss`` (epsilon MSE on the first 4 channels of PixArt's learned-sigma
output), without min-SNR weighting so numbers are comparable across configs.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import pyarrow.parquet as pq
import torch

from pixart_pipeline.cache import ShardStore, pad_prompt_embeds
from pixart_pipeline.cache.online import OnlineVaeStore, open_vae_store
from pixart_pipeline.training.loss import pixart_epsilon_loss

if TYPE_CHECKING:
    from diffusers import DDPMScheduler

@dataclass(frozen=True)
class EvalItem:
    """One eval-split image: where its cached latents and prompt embedding live."""

    vae_store: str
    vae_key: str
    text_key: str
    target_width: int
    target_height: int
    dataset_id: str


# The items-table columns (``stages.ITEMS_SCHEMA``) an eval item reads; the eval loss ignores repeats.
EVAL_COLUMNS = tuple(f.name for f in fields(EvalItem))


@dataclass
class EvalLossResult:
    """Mean loss per timestep ([T]) over ``num_items`` items; items that could not be used, with why."""

    timesteps: list[int]
    per_timestep: list[float]
    num_items: int
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def mean(self) -> float:
        return float(sum(self.per_timestep) / len(self.per_timestep)) if self.num_items else math.nan


def read_eval_items(path: str | Path) -> list[EvalItem]:
    """Read the eval items parquet (the trainer's item columns; extra columns such as repeats are ignored)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"eval items file {path} does not exist")
    table = pq.read_table(path)
    missing = [c for c in EVAL_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"eval items file {path} lacks column(s) {missing}; needs {list(EVAL_COLUMNS)}")
    rows = table.select(list(EVAL_COLUMNS)).to_pylist()
    items = []
    for i, row in enumerate(rows):
        if any(row[c] is None for c in EVAL_COLUMNS):
            raise ValueError(f"eval items file {path}, row {i}: null in {row}")
        items.append(
            EvalItem(
                vae_store=str(row["vae_store"]),
                vae_key=str(row["vae_key"]),
                text_key=str(row["text_key"]),
                target_width=int(row["target_width"]),
                target_height=int(row["target_height"]),
                dataset_id=str(row["dataset_id"]),
            )
        )
    return items


def eval_timestep_schedule(num_train_timesteps: int, n: int) -> list[int]:
    """``n`` evenly spaced timesteps: midpoints of ``n`` equal bins of [0, T). n=8, T=1000 -> 62..937.

    Midpoints avoid t=0 (almost no noise: loss ~ 0 for any weights) and keep the spread symmetric.
    """
    if not 1 <= n <= num_train_timesteps:
        raise ValueError(f"eval_timesteps={n} must be between 1 and {num_train_timesteps}")
    return [int((i + 0.5) * num_train_timesteps / n) for i in range(n)]


def item_noise(seed: int, item: EvalItem, num_timesteps: int, shape: Sequence[int]) -> torch.Tensor:
    """Fixed noise for one item: [num_timesteps, *shape] float32 from a CPU generator seeded by
    (seed, vae_key, text_key) -- independent of batching, ordering and device."""
    digest = hashlib.sha256(f"{seed}:{item.vae_key}:{item.text_key}".encode()).digest()
    generator = torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") >> 1)
    return torch.randn((num_timesteps, *shape), generator=generator, dtype=torch.float32)


def _load_batch(items, means: dict[tuple[str, str], torch.Tensor], text_store):
    """A batch's posterior means ([B, C, h, w], read once by ``_usable``) and prompt embeds (padded, with mask)."""
    embeds = [text_store.get(it.text_key)["prompt_embeds"].float() for it in items]
    prompt_embeds, attention_mask = pad_prompt_embeds(embeds)
    return torch.stack([means[(it.vae_store, it.vae_key)] for it in items]), prompt_embeds, attention_mask


def _usable(item, vae_stores, text_store, channels: int) -> tuple[torch.Tensor | None, str | None]:
    """``(posterior mean [C, h, w], None)`` if the item can be evaluated, else ``(None, the reason)``.

    The mean is read here once and kept: with ``vae_cache_disable`` every read is a VAE encode.
    """
    store = vae_stores[item.vae_store]
    if item.vae_key not in store:
        return None, f"no VAE cache entry in {item.vae_store}"
    if item.text_key not in text_store:
        return None, "no text embedding in the text store"
    try:
        mean = store.get(item.vae_key)["mean"].float()
    except ValueError as exc:  # an online encode of an unreadable image: skip that item, not the run
        return None, str(exc)
    expected = (channels, item.target_height // 8, item.target_width // 8)
    if tuple(mean.shape) != expected:
        return None, (f"cached mean has shape {tuple(mean.shape)}, expected {expected} for "
                      f"{item.target_width}x{item.target_height}")
    return mean, None


@dataclass(frozen=True)
class EvalLatents:
    """The evaluable items, their posterior means by ``(vae_store, vae_key)``, and the skipped ones."""

    usable: list[EvalItem]
    means: dict[tuple[str, str], torch.Tensor]  # [C, h, w] float32 each
    skipped: list[tuple[str, str]]


def read_eval_latents(
    items: Sequence[EvalItem],
    text_store: ShardStore | str | Path,
    channels: int,
    vae_stores: Mapping[str, ShardStore | OnlineVaeStore] | None = None,
) -> EvalLatents:
    """Read each item's posterior mean once (with ``vae_cache_disable``: encode it once) and check it.

    Items missing from a cache, with the wrong latent shape, or whose online encode fails are skipped
    with the reason. A missing store root is a wiring mistake, not one bad item: a ``ValueError``.
    """
    if isinstance(text_store, (str, Path)):
        text_store = ShardStore(Path(text_store))
    vae_stores = dict(vae_stores or {})
    for root in sorted({it.vae_store for it in items} - set(vae_stores)):
        vae_stores[root] = open_vae_store(root)
    for store, what in [(text_store, "text_store")] + [(s, "vae_store") for s in vae_stores.values()]:
        if items and not store.root.is_dir():
            raise ValueError(f"eval loss: {what} {store.root} does not exist (is the cache materialised?)")
    usable, skipped, means = [], [], {}
    for it in items:
        mean, reason = _usable(it, vae_stores, text_store, channels)
        if reason is None:
            usable.append(it)
            means[(it.vae_store, it.vae_key)] = mean
        else:
            skipped.append((f"{it.dataset_id}/{it.vae_key}", reason))
    return EvalLatents(usable, means, skipped)


@torch.no_grad()
def eval_loss_per_timestep(
    transformer: torch.nn.Module,
    items: Sequence[EvalItem],
    text_store: ShardStore | str | Path,
    noise_scheduler: DDPMScheduler,
    timesteps: int | Sequence[int],
    seed: int,
    device: torch.device | str,
    *,
    scaling_factor: float,
    batch_size: int = 8,
    vae_stores: Mapping[str, ShardStore | OnlineVaeStore] | None = None,
    latents: EvalLatents | None = None,
) -> EvalLossResult:
    """Mean ``pixart_epsilon_loss`` per timestep over ``items`` (see the module docstring).

    ``timesteps``: a count (evenly spaced over the scheduler's training timesteps) or explicit values.
    Items missing from a cache or with the wrong latent shape are skipped and listed, not fatal.
    ``vae_stores``: opened stores by ``vae_store`` root (others are opened here); each item's latents
    are read from them exactly once. ``latents``: a ``read_eval_latents`` result to reuse (base and
    trained weights are scored on the same latents, read -- or, online, encoded -- once).
    """
    if isinstance(text_store, (str, Path)):
        text_store = ShardStore(Path(text_store))
    if isinstance(timesteps, int):
        timesteps = eval_timestep_schedule(noise_scheduler.config.num_train_timesteps, timesteps)
    timesteps = [int(t) for t in timesteps]
    device = torch.device(device)
    dtype = next(transformer.parameters()).dtype
    channels = int(transformer.config.in_channels)
    was_training = transformer.training
    transformer.eval()

    if latents is None:
        latents = read_eval_latents(items, text_store, channels, vae_stores)
    usable, means, skipped = list(latents.usable), latents.means, list(latents.skipped)

    # Batches hold one latent size each; sorted so batching is the same on every call.
    usable.sort(key=lambda it: (it.target_height, it.target_width, it.vae_key, it.text_key))
    sums = torch.zeros(len(timesteps), dtype=torch.float64)
    start = 0
    while start < len(usable):
        size = (usable[start].target_height, usable[start].target_width)
        end = start
        while end < len(usable) and end - start < batch_size and (
            usable[end].target_height, usable[end].target_width
        ) == size:
            end += 1
        batch = usable[start:end]
        start = end
        batch_means, prompt_embeds, attention_mask = _load_batch(batch, means, text_store)
        latents = (batch_means * scaling_factor).to(device, dtype)  # [B, C, h, w]
        # noise: [B, T, C, h, w], fixed per item
        noise = torch.stack([item_noise(seed, it, len(timesteps), batch_means.shape[1:]) for it in batch])
        prompt_embeds = prompt_embeds.to(device, dtype)  # [B, L, D]
        attention_mask = attention_mask.to(device)  # [B, L]
        for j, t in enumerate(timesteps):
            t_batch = torch.full((len(batch),), t, dtype=torch.long, device=device)
            loss = pixart_epsilon_loss(
                transformer,
                latents,
                noise[:, j].to(device, dtype),
                t_batch,
                prompt_embeds,
                attention_mask,
                noise_scheduler,
                snr_gamma=None,
            )  # [B]
            sums[j] += loss.double().sum().cpu()

    if was_training:
        transformer.train()
    n = len(usable)
    per_timestep = [float(s / n) for s in sums] if n else [math.nan] * len(timesteps)
    return EvalLossResult(timesteps, per_timestep, n, skipped)


def stable_eval_loss(
    transformer: torch.nn.Module,
    items: Sequence[EvalItem],
    text_store: ShardStore | str | Path,
    noise_scheduler: DDPMScheduler,
    timesteps: int | Sequence[int],
    seed: int,
    device: torch.device | str,
    *,
    scaling_factor: float,
    batch_size: int = 8,
) -> float:
    """Mean eval loss over items x timesteps (NaN when no item is usable). Deterministic."""
    return eval_loss_per_timestep(
        transformer, items, text_store, noise_scheduler, timesteps, seed, device,
        scaling_factor=scaling_factor, batch_size=batch_size,
    ).mean
