"""Training items and batches, read from the caches (no image or text encoder is loaded).

The items parquet has one row per training image: ``vae_store`` (root of its VAE ShardStore),
``vae_key``, ``text_key``, ``target_width``, ``target_height``, ``dataset_id``, ``repeats``, and
optionally ``text_keys``: the keys of all the image's captions when it has several (null otherwise).
Such an image trains on one of them per draw, chosen by :func:`caption_choice` (SimpleTuner picks
one caption at random each time its sampler yields the image); without a draw number (``build``
called directly) and in evaluation, ``text_key`` (the first caption) is used.
A batch is built from the latent posterior (``mean``, ``std``, each ``[4, H/8, W/8]``) and the
T5 embedding (``prompt_embeds [L, D]``) of each item; latents are sampled fresh every step,
``z = (mean + std * eps) * scaling_factor``, as SimpleTuner does from its cached distribution.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq
import torch

from pixart_pipeline.cache import ShardStore, pad_prompt_embeds, sample_latents
from pixart_pipeline.cache.online import open_vae_store
from pixart_pipeline.cache.reader import prefetch
from pixart_pipeline.errors import InputError
from pixart_pipeline.stages import REQUIRED_ITEM_COLUMNS
from pixart_pipeline.training.sampler import BucketBatchSampler


@dataclass(frozen=True)
class Items:
    """The training items, column-wise (index ``i`` is one item)."""

    vae_store: list[str]
    vae_key: list[str]
    text_key: list[str]
    target: list[tuple[int, int]]  # (width, height): the bucket
    dataset_id: list[str]
    repeats: list[int]
    # per item: the keys of all its captions when it has several, else None (``text_key`` only)
    text_keys: list[tuple[str, ...] | None] | None = None

    def __len__(self) -> int:
        return len(self.vae_key)

    def choices(self, i: int) -> tuple[str, ...] | None:
        """Item ``i``'s caption keys when it has several, else None."""
        return self.text_keys[i] if self.text_keys is not None else None


def caption_choice(seed: int, draw: int, slot: int, item: int, count: int) -> int:
    """Which of item ``item``'s ``count`` captions it trains on at position ``slot`` of global batch
    ``draw`` (the sampler's stream, over all processes): uniform, and a pure function of these
    numbers, so a resumed run, a read-ahead thread and any number of processes choose alike. The
    slot tells apart two draws of one item in the same batch (repeats)."""
    digest = hashlib.sha256(f"pixart-caption:{seed}:{draw}:{slot}:{item}".encode()).digest()
    return int.from_bytes(digest[:8], "little") % count


def load_items(path: str | Path) -> Items:
    """Read and check the items parquet; errors name the file, the column and the row."""
    path = Path(path)
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise InputError(f"{path}: cannot read the items table: {exc}") from None
    missing = [c for c in REQUIRED_ITEM_COLUMNS if c not in table.column_names]
    if missing:
        raise InputError(f"{path}: items table lacks column(s) {', '.join(missing)}; needs {', '.join(REQUIRED_ITEM_COLUMNS)}")
    if table.num_rows == 0:
        raise InputError(f"{path}: items table is empty; there is nothing to train on")
    cols = {c: table.column(c).to_pylist() for c in REQUIRED_ITEM_COLUMNS}
    for c in REQUIRED_ITEM_COLUMNS:
        if None in cols[c]:
            raise InputError(f"{path}: column '{c}' is null in row {cols[c].index(None)}")
    for row, (w, h) in enumerate(zip(cols["target_width"], cols["target_height"])):
        if w <= 0 or h <= 0 or w % 8 or h % 8:
            raise InputError(f"{path}: row {row} has target size {w}x{h}; it must be positive multiples of 8")
    for row, r in enumerate(cols["repeats"]):
        if r < 0:
            raise InputError(f"{path}: row {row} has repeats {r}; it must be >= 0")
    text_keys = None
    if "text_keys" in table.column_names:
        text_keys = [None if keys is None else tuple(keys) for keys in table.column("text_keys").to_pylist()]
        for row, keys in enumerate(text_keys):
            if keys is not None and (not keys or any(not isinstance(k, str) or not k for k in keys)):
                raise InputError(f"{path}: row {row} has text_keys {list(keys)}; it must be null or non-empty keys")
    return Items(
        vae_store=[str(s) for s in cols["vae_store"]],
        vae_key=[str(k) for k in cols["vae_key"]],
        text_key=[str(k) for k in cols["text_key"]],
        target=[(int(w), int(h)) for w, h in zip(cols["target_width"], cols["target_height"])],
        dataset_id=[str(d) for d in cols["dataset_id"]],
        repeats=[int(r) for r in cols["repeats"]],
        text_keys=text_keys,
    )


def vae_scaling_factor(base_model: str, revision: str | None) -> float:
    """``scaling_factor`` from the base model's ``vae/config.json`` (0.13025 for the SDXL VAE)."""
    from diffusers import AutoencoderKL

    try:
        config = AutoencoderKL.load_config(base_model, subfolder="vae", revision=revision)
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the VAE config of {base_model!r} (vae/config.json): {exc}") from None
    return float(config.get("scaling_factor", 0.18215))


def _describe_missing(missing: list[str], what: str, where: str) -> str:
    shown = ", ".join(repr(k) for k in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    return f"{len(missing)} {what} key(s) are not in {where}: {shown}{more}; materialise the cache first"


class BatchBuilder:
    """Turns a list of item indices into ``(latents, prompt_embeds, attention_mask)``."""

    def __init__(self, items: Items, text_store: str | Path, empty_text_key: str | None, seed: int = 0) -> None:
        self.items = items
        self.seed = int(seed)  # the training seed: caption choices (caption_choice)
        # open_vae_store: a ShardStore, or the on-the-fly encoder when vae_cache_disable is set
        self.vae_stores = {root: open_vae_store(root) for root in sorted(set(items.vae_store))}
        self.text_store = ShardStore(Path(text_store))
        self.text_store_root = str(text_store)
        self.empty_text_key = empty_text_key
        self._empty: torch.Tensor | None = None

    def check_complete(self, need_empty: bool) -> None:
        """Fail before training (not at step 900) if any item is missing from a cache."""
        for root, store in self.vae_stores.items():
            have = store.keys()
            missing = sorted({k for k, r in zip(self.items.vae_key, self.items.vae_store) if r == root} - have)
            if missing:
                raise InputError(_describe_missing(missing, "VAE item", f"the VAE cache {root}"))
        have = self.text_store.keys()
        wanted = set(self.items.text_key).union(*(self.items.choices(i) or () for i in range(len(self.items))))
        missing = sorted(wanted - have)
        if missing:
            raise InputError(_describe_missing(missing, "text", f"the text cache {self.text_store_root}"))
        if need_empty and self.empty_text_key not in have:
            raise InputError(
                f"the empty prompt's key {self.empty_text_key!r} (caption dropout) is not in the text cache "
                f"{self.text_store_root}; encode \"\" into it"
            )

    def empty_embed(self) -> torch.Tensor:
        if self._empty is None:
            self._empty = self.text_store.get(self.empty_text_key)["prompt_embeds"]
        return self._empty

    def build(
        self,
        indices: list[int],
        generator: torch.Generator,
        scaling_factor: float,
        caption_dropout_probability: float = 0.0,
        draw: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Latents ``[B, 4, h, w]`` (float32), prompt_embeds ``[B, Lmax, D]``, attention_mask ``[B, Lmax]``:
        ``assemble(read(indices, draw), ...)`` on the calling thread."""
        return self.assemble(self.read(indices, draw), generator, scaling_factor, caption_dropout_probability)

    def text_keys_for(self, indices: list[int], draw: int | None) -> list[str]:
        """The caption key each item of global batch ``draw`` trains on: one of its captions by
        :func:`caption_choice`, or its first caption (``text_key``) when it has one or ``draw`` is None."""
        keys = []
        for slot, i in enumerate(indices):
            choices = self.items.choices(i)
            if choices is None or draw is None:
                keys.append(self.items.text_key[i])
            else:
                keys.append(choices[caption_choice(self.seed, draw, slot, i, len(choices))])
        return keys

    def read(self, indices: list[int], draw: int | None = None) -> RawBatch:
        """The cache reads of global batch ``draw`` (its caption choices are a pure function of it; no
        other random draw): safe to run ahead on another thread."""
        # group reads by store so each shard file is opened once
        posteriors: list[dict[str, torch.Tensor] | None] = [None] * len(indices)
        by_store: dict[str, list[int]] = {}
        for pos, i in enumerate(indices):
            by_store.setdefault(self.items.vae_store[i], []).append(pos)
        for root, positions in by_store.items():
            got = self.vae_stores[root].get_many([self.items.vae_key[indices[p]] for p in positions])
            for p, item in zip(positions, got):
                posteriors[p] = item
        shapes = {tuple(item["mean"].shape) for item in posteriors}
        if len(shapes) != 1:
            keys = [self.items.vae_key[i] for i in indices]
            raise InputError(f"one batch mixes latent shapes {sorted(shapes)} (items {keys}); the VAE cache "
                             "does not match the items table's target sizes")
        mean = torch.stack([item["mean"] for item in posteriors]).float()  # [B, 4, h, w]
        std = torch.stack([item["std"] for item in posteriors]).float()
        text_keys = self.text_keys_for(indices, draw)
        texts = [t["prompt_embeds"] for t in self.text_store.get_many(text_keys)]
        return RawBatch(list(indices), mean, std, texts, text_keys, draw)

    def assemble(
        self,
        raw: RawBatch,
        generator: torch.Generator,
        scaling_factor: float,
        caption_dropout_probability: float = 0.0,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The model inputs of a read batch. Random draws, in this order, all from ``generator`` (CPU):
        caption dropout (only when its probability is > 0), then the latent sample."""
        texts = raw.texts
        if caption_dropout_probability > 0:
            drop = torch.rand(len(raw.indices), generator=generator) < caption_dropout_probability  # [B] bool
            texts = [self.empty_embed() if d else t for t, d in zip(texts, drop.tolist())]
        prompt_embeds, attention_mask = pad_prompt_embeds([t.float() for t in texts])
        latents = sample_latents(raw.mean, raw.std, scaling_factor, generator)
        return latents, prompt_embeds, attention_mask


@dataclass(frozen=True)
class RawBatch:
    """One batch as read from the caches: posterior ``mean``/``std`` ``[B, 4, h, w]`` and the ``[L_i, D]``
    prompt embeddings, before any random draw (the caption choice is not one: ``caption_choice`` is
    a pure function of the batch number, so it may run on the read-ahead thread)."""

    indices: list[int]
    mean: torch.Tensor
    std: torch.Tensor
    texts: list[torch.Tensor]
    text_keys: list[str] | None = None  # the caption key of each item (chosen for this draw)
    draw: int | None = None  # the global batch number it was read for


def read_ahead(builder: BatchBuilder, sampler: BucketBatchSampler, world: int, rank: int,
               depth: int) -> Iterator[RawBatch]:
    """This process's raw batches from the sampler's current position on, read ``depth`` batches ahead
    by one background thread (``cache.prefetch``), so step n+1's cache reads overlap step n.

    The thread walks a *copy* of the sampler: the caller keeps advancing the real one as it consumes
    batches, so a checkpoint saves the position of the batches trained on, never of those read ahead.
    Only reads (and the caption choice, a pure function of the batch number) run ahead; every random
    draw stays on the caller's thread (``BatchBuilder.assemble``), so the result is bit-identical to
    reading in place. ``depth`` 0 reads on the calling thread.
    """
    ahead = copy.deepcopy(sampler)

    def requests() -> Iterator[tuple[list[int], int]]:
        while True:  # every rank advances the sampler alike and keeps its own batch of each draw
            draw = ahead.epoch * ahead.batches_per_epoch + ahead.position + rank  # global batch number
            yield [ahead.next_batch() for _ in range(world)][rank], draw

    def read(request: tuple[list[int], int]) -> RawBatch:
        return builder.read(*request)

    if depth == 0:
        return (read(request) for request in requests())
    if builder.empty_text_key is not None and builder.empty_text_key in builder.text_store:
        builder.empty_embed()  # read now: the reader thread and this one then never share a lazy load
    return prefetch(read, requests(), depth)
