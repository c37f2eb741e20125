"""Item keys: content hashes of exactly what determines an item (issue 4, DESIGN.md section 6).

- text: the caption, and the encoder (T5 identity + revision, ``tokenizer_max_length``, dtype);
- VAE: the image bytes (their sha256), the geometry (intermediary size, crop box, target size), and
  the encoder (VAE identity + revision, dtype).

The encoder is passed as ``encoder``: a short hash of the stage's fingerprint fields
(``cache.stage.text_encoder_id`` / ``vae_encoder_id``). Store roots are named by the same
fingerprint, so an encoder change also gives a new store; the old items stay on disk, unreferenced,
until ``pixart-pipeline cache prune``.
"""

from __future__ import annotations

import hashlib
import json


def _digest(kind: bytes, payload: dict) -> str:
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return hashlib.sha256(kind + b"\0" + blob).hexdigest()[:40]


def text_item_key(caption: str, encoder: str = "") -> str:
    """Key of a caption's T5 embedding: sha256 of the exact caption text and the encoder id."""
    return _digest(b"text", {"caption": caption, "encoder": encoder})


def vae_item_key(
    sha256: str,
    intermediary: tuple[int, int],
    crop: tuple[int, int],
    target: tuple[int, int],
    encoder: str = "",
) -> str:
    """Key of an image's VAE posterior: the image bytes' sha256, its geometry and the encoder id.

    ``intermediary`` (w, h) is the resize before cropping, ``crop`` (left, top) the crop corner and
    ``target`` (w, h) the crop size: the same image under another crop is another item, and the
    same pixels under another file name are the same item.
    """
    return _digest(
        b"vae",
        {
            "sha256": sha256,
            "intermediary": [int(v) for v in intermediary],
            "crop": [int(v) for v in crop],
            "target": [int(v) for v in target],
            "encoder": encoder,
        },
    )
