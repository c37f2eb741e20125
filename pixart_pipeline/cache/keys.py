"""Item keys: content hashes of exactly what determines an item.

The encoder identity (model, revision, dtype, max_length) is in the store root
(``<cache_dir>/<fingerprint>/``), not in the key, so one key names the same input under every encoder.
"""

from __future__ import annotations

import hashlib
import json


def text_item_key(caption: str) -> str:
    """Key of a caption's T5 embedding: sha256 of the exact caption text (UTF-8)."""
    return hashlib.sha256(b"text\0" + caption.encode("utf-8")).hexdigest()[:40]


def vae_item_key(
    sha256: str,
    intermediary: tuple[int, int],
    crop: tuple[int, int],
    target: tuple[int, int],
) -> str:
    """Key of an image's VAE posterior: the image bytes' sha256 plus its geometry.

    ``intermediary`` (w, h) is the resize before cropping, ``crop`` (left, top) the crop corner and
    ``target`` (w, h) the crop size: the same image under another crop is another item.
    """
    geometry = {
        "sha256": sha256,
        "intermediary": [int(v) for v in intermediary],
        "crop": [int(v) for v in crop],
        "target": [int(v) for v in target],
    }
    blob = json.dumps(geometry, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(b"vae\0" + blob).hexdigest()[:40]
