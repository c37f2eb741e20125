"""Image size probing from headers, with EXIF orientation applied, that never raises on a bad file.

``PIL.Image.open`` is lazy: it parses the header (size, mode, EXIF for JPEG/WebP/TIFF) without
decoding pixels. Reading the EXIF orientation of a PNG is not: when the PNG has no ``eXIf`` chunk
before its image data (most PNGs), Pillow's ``PngImageFile.getexif`` loads (decodes) the whole
image to look for one after it. A decoding error there is swallowed (orientation 1), so a truncated
PNG still probes "ok" unless ``verify=True``.

EXIF orientations 5-8 rotate the image by 90 degrees, so the displayed size swaps width and
height; that displayed size is what bucketing must use, because the encoder applies
``exif_transpose`` before resizing (as SimpleTuner's ``TrainingSample.correct_image`` does).
"""

from __future__ import annotations

import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

EXIF_ORIENTATION = 0x0112
# Reason codes (``Probe.status`` when not "ok").
MISSING = "missing"
EMPTY_FILE = "empty_file"
UNREADABLE = "unreadable"
DECOMPRESSION_BOMB = "decompression_bomb"


@dataclass(frozen=True)
class Probe:
    """Displayed (post-EXIF) size of an image, or ``None`` sizes and a reason code."""

    width: int | None
    height: int | None
    status: str  # "ok" or a reason code

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def probe_image(path: Path, verify: bool = False) -> Probe:
    """Read an image's displayed size from its header; never raises for a bad file.

    JPEG, WebP, TIFF, BMP and GIF decode no pixels here; a PNG without an early ``eXIf`` chunk is
    decoded in full by the EXIF lookup (see the module docstring).

    ``verify=True`` also runs PIL's ``Image.verify``, which decodes no pixels. Only Pillow's PNG
    plugin implements it (chunk CRCs, truncation), so it rejects truncated/corrupt PNGs; for every
    other format it is a no-op: a truncated JPEG still probes "ok" and fails only when the VAE
    encoder decodes it.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return Probe(None, None, MISSING)
    except OSError:
        return Probe(None, None, UNREADABLE)
    if size == 0:
        return Probe(None, None, EMPTY_FILE)
    try:
        with warnings.catch_warnings():
            # A DecompressionBombWarning (between 1x and 2x the pixel limit) is not an error here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                orientation = _orientation(image)
            if verify:
                with Image.open(path) as image:
                    image.verify()
    except Image.DecompressionBombError:
        return Probe(None, None, DECOMPRESSION_BOMB)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError):
        return Probe(None, None, UNREADABLE)
    if width <= 0 or height <= 0:
        return Probe(None, None, UNREADABLE)
    if orientation in (5, 6, 7, 8):  # transpose / rotate 270 / transverse / rotate 90
        width, height = height, width
    return Probe(int(width), int(height), "ok")


def _orientation(image: Image.Image) -> int:
    """EXIF orientation tag (1 when absent or unreadable)."""
    try:
        value = image.getexif().get(EXIF_ORIENTATION, 1)
        return int(value)
    except Exception:  # malformed EXIF must not reject an otherwise fine image
        return 1


def probe_many(paths: list[Path], workers: int = 4, verify: bool = False) -> list[Probe]:
    """``probe_image`` over ``paths`` with a bounded thread pool; results in input order."""
    if not paths:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(paths)))) as pool:
        return list(pool.map(lambda p: probe_image(p, verify=verify), paths))
