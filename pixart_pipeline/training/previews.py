"""Validation previews: intermediate latents decoded with a Tiny AutoEncoder, posted to webhooks.

SimpleTuner's ``validation_preview`` / ``validation_preview_steps`` / ``webhook_config``. While a
validation image is sampled, every ``validation_preview_steps``-th denoising step (1-based: with 20
steps and 5, steps 5, 10, 15 and 20, as the quickstart documents) the current latents ``[B, 4, h, w]``
are decoded by ``AutoencoderTiny`` (``madebyollin/taesdxl`` reads PixArt's SDXL latents as they are:
its scaling factor is 1) and each image is posted as one JSON message to every ``raw`` webhook, in
SimpleTuner's ``validation.image`` format::

    {"type": "validation.image", "title": "Validation (step 5/20): <shortname>", "message": <same>,
     "body": <prompt>, "data": {"step": 5, "timestep": 751.0, "resolution": [w, h],
     "validation_type": "final", "prompt": <prompt>, "step_label": "5/20"},
     "severity": "info", "timestamp": <ISO 8601, UTC>, "job_id": $SIMPLETUNER_JOB_ID (when set),
     "images": [<base64 PNG>]}

(SimpleTuner's code also sends the first step whatever the interval; its documentation does not, and
we follow the documentation.) A webhook that fails or times out is reported once per target as a
warning and never stops the sampling, as in SimpleTuner.

``PreviewSender.callback`` is a per-denoising-step callback in the stock ``PixArtSigmaPipeline``'s
``callback(step, timestep, latents)`` form (it has no ``callback_on_step_end``); ``on_step`` is the
same thing for any other loop. Sampling code passes one ``PreviewImage`` per batch row.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import ssl
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable, Sequence

import torch
from PIL import Image

from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.config.webhooks import WebhookTarget, webhook_targets
from pixart_pipeline.models import resolve_pretrained
from pixart_pipeline.training.validation import png_bytes

logger = logging.getLogger(__name__)

LOG_LEVELS = {"critical": 0, "error": 1, "warning": 2, "info": 3, "debug": 4}  # SimpleTuner's order
TIMEOUT_S = 5.0


@dataclass(frozen=True)
class PreviewImage:
    """What one batch row of a sampling call shows: its prompt, size and name."""

    prompt: str
    width: int
    height: int
    shortname: str  # e.g. "p00_s01" (prompt 0, size 1)


def is_preview_step(step: int, every: int) -> bool:
    """Whether 0-based denoising ``step`` sends a preview: the 1-based step is a multiple of ``every``."""
    return (step + 1) % every == 0


def preview_message(image: PreviewImage, step: int, timestep: float | None, total_steps: int,
                    validation_type: str, png: bytes, job_id: str | None = None) -> dict:
    """The JSON body of one preview (SimpleTuner's ``validation.image`` message, ``step`` 0-based)."""
    label = f"{step + 1}/{total_steps}"
    title = f"Validation (step {label}): {image.shortname}"
    message = {
        "type": "validation.image", "title": title, "message": title, "body": image.prompt,
        "data": {"step": step + 1, "timestep": None if timestep is None else float(timestep),
                 "resolution": [image.width, image.height], "validation_type": validation_type,
                 "prompt": image.prompt, "step_label": label},
        "severity": "info", "timestamp": datetime.now(tz=timezone.utc).isoformat(),
        "images": [base64.b64encode(png).decode("ascii")],
    }
    if job_id:
        message["job_id"] = job_id
    return message


def decode_previews(decoder: torch.nn.Module, latents: torch.Tensor) -> list[Image.Image]:
    """Latents ``[B, 4, h, w]`` -> B RGB images ``8h x 8w`` with the Tiny AutoEncoder."""
    with torch.no_grad():
        x = latents.to(device=decoder.device, dtype=decoder.dtype) / decoder.config.scaling_factor
        pixels = decoder.decode(x).sample  # [B, 3, 8h, 8w] in [-1, 1]
    pixels = (pixels.float() / 2 + 0.5).clamp(0, 1).mul(255).round().to(torch.uint8)
    return [Image.fromarray(p.permute(1, 2, 0).cpu().numpy()) for p in pixels]


def preview_inputs(cfg: PipelineConfig) -> dict:
    """What a spec needs to preview when ``validation_preview`` is on: ``webhooks`` (the targets of
    ``webhook_config``, its file read now) and ``preview_decoder`` (resolved: a tiny name is built
    locally); ``{}`` when off."""
    t = cfg.training
    if not t.validation_preview:
        return {}
    decoder = resolve_pretrained(cfg.local_or_hub(t.validation_preview_decoder), None, cfg.model_cache_dir)
    return {"webhooks": webhook_targets(t.webhook_config, cfg.config_path.parent), "preview_decoder": decoder}


def load_preview_decoder(path: str, device: torch.device, dtype: torch.dtype = torch.float32):
    """The ``AutoencoderTiny`` at ``path`` (a folder, or a hub id such as ``madebyollin/taesdxl``), eval, no grad."""
    from diffusers import AutoencoderTiny

    from pixart_pipeline.models.loading import _explain_failures

    with _explain_failures(path, "preview decoder (Tiny AutoEncoder)", None, None):
        model = AutoencoderTiny.from_pretrained(path, torch_dtype=dtype, use_safetensors=True)
    return model.to(device).eval().requires_grad_(False)


class PreviewSender:
    """Decode and post previews for one sampling session (an evaluation, or one in-training validation).

    Args:
        targets: the webhook targets; only ``raw`` ones whose ``log_level`` admits "info" get previews.
        decoder: an ``AutoencoderTiny`` (``models.tiny_tae.load_preview_decoder``).
        every: ``validation_preview_steps``.
        total_steps: ``validation_num_inference_steps`` (the "5/20" labels).
        validation_type: SimpleTuner's: ``"final"`` (after training, our evaluation stage) or
            ``"intermediary"`` (during training).
    """

    def __init__(self, targets: Sequence[WebhookTarget], decoder: torch.nn.Module, every: int, total_steps: int,
                 validation_type: str = "final", job_id: str | None = None):
        self.targets = [t for t in targets if t.webhook_type == "raw" and LOG_LEVELS[t.log_level] >= LOG_LEVELS["info"]]
        self.decoder, self.every, self.total_steps = decoder, every, total_steps
        self.validation_type = validation_type
        self.job_id = job_id if job_id is not None else os.environ.get("SIMPLETUNER_JOB_ID")
        self.sent = 0  # messages delivered (all targets)
        self._failed: set[str] = set()

    def on_step(self, step: int, timestep, latents: torch.Tensor, images: Sequence[PreviewImage]) -> None:
        """Denoising ``step`` (0-based) just produced ``latents`` ``[B, 4, h, w]`` for ``images`` (B rows)."""
        if not self.targets or not is_preview_step(step, self.every):
            return
        t = float(timestep.item() if torch.is_tensor(timestep) else timestep) if timestep is not None else None
        for image, decoded in zip(images, decode_previews(self.decoder, latents)):
            message = preview_message(image, step, t, self.total_steps, self.validation_type, png_bytes(decoded), self.job_id)
            for target in self.targets:
                self._post(target, message)

    def callback(self, images: Sequence[PreviewImage]) -> Callable:
        """``callback(step, timestep, latents)`` for ``PixArtSigmaPipeline(..., callback=, callback_steps=1)``."""
        return lambda step, timestep, latents: self.on_step(step, timestep, latents, images)

    def _post(self, target: WebhookTarget, message: dict) -> None:
        headers = {"Content-Type": "application/json"}
        if target.auth_token:
            headers["X-API-Key"] = target.auth_token
        request = urllib.request.Request(target.url, data=json.dumps(message).encode(), headers=headers, method="POST")
        context = ssl._create_unverified_context() if target.ssl_no_verify else None
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=context) as response:
                response.read()
            self.sent += 1
        except (OSError, ValueError) as exc:  # refused, timed out, HTTP error status, bad URL
            if target.url not in self._failed:
                self._failed.add(target.url)
                logger.warning("validation preview not delivered to %s (%s: %s); sampling goes on",
                               target.url, type(exc).__name__, exc)
