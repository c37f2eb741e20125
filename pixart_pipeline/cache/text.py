"""Encode captions with T5 into the text ShardStore, keeping only the real tokens.

PixArt's pipeline pads every prompt to ``max_sequence_length`` (300) and passes the attention mask to
T5 and to the transformer's cross-attention, so the padded positions never matter. We therefore store
``prompt_embeds [L, D]`` for the L real tokens (L = attention-mask length, ``</s>`` included) and pad
per batch at training time (``reader.pad_prompt_embeds``): the same maths, far less disk and compute.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

import torch

from pixart_pipeline.cache.keys import text_item_key
from pixart_pipeline.cache.store import EncodeStats, ShardStore, ShardWriter

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _token_counts(tokenizer, captions: list[str], max_length: int) -> list[int]:
    """Tokens per caption after truncation to ``max_length`` (``</s>`` included)."""
    ids = tokenizer(captions, truncation=True, max_length=max_length, add_special_tokens=True).input_ids
    return [len(x) for x in ids]


def encode_captions(
    store: ShardStore,
    captions: list[str],
    tokenizer: PreTrainedTokenizerBase,
    text_encoder: torch.nn.Module,
    max_length: int,
    batch_size: int,
    device: torch.device | str,
    *,
    items_per_shard: int = 512,
    encoder: str = "",
    sources: dict[str, str] | None = None,
    log: Callable[[str], None] | None = None,
) -> EncodeStats:
    """Encode every caption not yet in ``store``; returns what was encoded, reused and failed.

    Captions are deduplicated, those already stored are skipped, and the rest are sorted by token
    count (longest first) so each batch pads little. Shards are flushed every ``items_per_shard``
    items, so an interrupted run keeps its progress. A batch whose output holds NaN/Inf is reported
    in ``failed`` (``source: caption``, reason) and not written. ``encoder`` is the encoder id that goes
    into every key (``keys.text_item_key``); ``sources`` maps a caption to the file it came from, for
    error messages. Always adding ``""`` (caption dropout) is the caller's job.
    """
    start = time.perf_counter()
    stats = EncodeStats()
    unique = list(dict.fromkeys(captions))
    todo = [c for c in unique if text_item_key(c, encoder) not in store]
    stats.reused = len(unique) - len(todo)
    if not todo:
        stats.seconds = time.perf_counter() - start
        return stats

    counts = _token_counts(tokenizer, todo, max_length)
    order = sorted(range(len(todo)), key=lambda i: (-counts[i], todo[i]))
    todo = [todo[i] for i in order]
    device = torch.device(device)
    writer = ShardWriter(store, items_per_shard)
    with torch.inference_mode():
        for first in range(0, len(todo), batch_size):
            batch = todo[first : first + batch_size]
            tokens = tokenizer(
                batch,
                padding="longest",
                truncation=True,
                max_length=max_length,
                add_special_tokens=True,
                return_tensors="pt",
            )
            input_ids = tokens.input_ids.to(device)  # [B, Lb]
            attention_mask = tokens.attention_mask.to(device)  # [B, Lb]
            hidden = text_encoder(input_ids, attention_mask=attention_mask)[0]  # [B, Lb, D]
            lengths = attention_mask.sum(dim=1).tolist()
            for i, caption in enumerate(batch):
                embeds = hidden[i, : int(lengths[i])]  # [L, D]: the real tokens only
                if not torch.isfinite(embeds).all():
                    where = (sources or {}).get(caption, "caption")
                    stats.failed.append(
                        (f"{where}: {caption[:80]!r}",
                         "text encoder output has NaN/Inf (try text_encoder_dtype 'fp32' or 'bf16')")
                    )
                    continue
                if writer.add(text_item_key(caption, encoder), {"prompt_embeds": embeds.to("cpu").clone()}) and log:
                    log(f"text embeds: {writer.written}/{len(todo)} encoded")
    writer.close()
    stats.encoded = writer.written
    stats.seconds = time.perf_counter() - start
    return stats
