"""Content-addressed caches of T5 prompt embeddings and VAE posteriors (DESIGN.md section 6)."""

from pixart_pipeline.cache.keys import text_item_key, vae_item_key
from pixart_pipeline.cache.reader import pad_prompt_embeds, sample_latents
from pixart_pipeline.cache.store import EncodeStats, ShardStore
from pixart_pipeline.cache.text import encode_captions
from pixart_pipeline.cache.vae import VaeItem, encode_images, load_pixels

__all__ = [
    "EncodeStats",
    "ShardStore",
    "VaeItem",
    "encode_captions",
    "encode_images",
    "load_pixels",
    "pad_prompt_embeds",
    "sample_latents",
    "text_item_key",
    "vae_item_key",
]
