"""A tiny random Tiny AutoEncoder (diffusers ``AutoencoderTiny``) for SDXL-shaped latents.

The real preview decoder is ``madebyollin/taesdxl`` (4 latent channels, 8x upsampling, 64-channel
blocks). This is the same architecture at 8 channels with one block per stage, random weights, saved
and loaded through ``from_pretrained`` like the real one: tests decode previews with it offline.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pixart_pipeline.models.tiny import _build_atomically

TINY_TAE_NAME = "tiny-random-taesd"


def build_tiny_tae(folder: Path, seed: int = 0) -> Path:
    """Build (once) a tiny random ``AutoencoderTiny`` folder at ``folder``: latents ``[B, 4, h, w]``
    decode to images ``[B, 3, 8h, 8w]``. Deterministic in ``seed``."""
    from diffusers import AutoencoderTiny

    def write(tmp: Path) -> None:
        torch.manual_seed(seed)
        model = AutoencoderTiny(
            in_channels=3, out_channels=3, latent_channels=4,
            encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1),
        )
        model.save_pretrained(tmp, safe_serialization=True)

    return _build_atomically(Path(folder), write)

