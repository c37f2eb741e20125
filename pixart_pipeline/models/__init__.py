"""Model loading (real hub models or local folders) and tiny random models for tests and the demo."""

from pixart_pipeline.models.devices import TORCH_DTYPES, process_device, resolve_device
from pixart_pipeline.models.loading import (
    TINY_CLIP_NAME,
    TINY_MODEL_NAME,
    ModelUnavailableError,
    load_clip,
    load_noise_scheduler,
    load_text_encoder,
    load_tokenizer,
    load_transformer,
    load_vae,
    resolve_pretrained,
)
from pixart_pipeline.models.tiny import build_tiny_clip, build_tiny_pixart

__all__ = [
    "TINY_CLIP_NAME",
    "TINY_MODEL_NAME",
    "TORCH_DTYPES",
    "ModelUnavailableError",
    "build_tiny_clip",
    "build_tiny_pixart",
    "load_clip",
    "load_noise_scheduler",
    "load_text_encoder",
    "load_tokenizer",
    "load_transformer",
    "load_vae",
    "process_device",
    "resolve_device",
    "resolve_pretrained",
]
