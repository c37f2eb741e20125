"""Image helpers shared by probing (metadata stage) and pixel loading (VAE stage).

``to_rgb`` is THE conversion every image goes through before the VAE sees it, so the metadata
stage can promise in its ``note`` column exactly what the VAE stage will do:

- ``RGBA``/``LA``/``PA`` and palette or RGB images with a ``transparency`` entry are composited on a
  WHITE background (SimpleTuner converts with ``.convert("RGB")``, which drops alpha and keeps
  whatever colour the transparent pixels happen to hold -- often black or garbage. White is what an
  image viewer shows and what most transparent product shots/logos are drawn against).
- 16-bit greyscale (``I;16*``, and ``I`` with values above 255) is scaled to 8 bits (divide by 257)
  instead of Pillow's ``convert`` which clips every value above 255 to white.
- ``CMYK``, ``YCbCr``, ``LAB``, ``L``, ``1``, ``P`` without transparency: Pillow's ``convert("RGB")``
  (no ICC colour management; a CMYK JPEG with an ICC profile gets Pillow's naive conversion).

The structural end-of-file checks (``looks_truncated``) are cheap (a seek and a few bytes, or a
walk over PNG chunk headers) so they can run on every image; a file that fails one is decoded in
full to decide (see ``probe.py``): a JPEG with data appended after its end marker (phone "motion
photos") decodes fine and is kept.
"""

from __future__ import annotations

import struct
from typing import BinaryIO

import numpy as np
from PIL import Image

WHITE = (255, 255, 255)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def has_alpha(image: Image.Image) -> bool:
    """True when ``image`` carries transparency that ``to_rgb`` composites on white."""
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
        image.mode in ("P", "RGB", "L") and "transparency" in image.info
    )


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, converted as the module docstring says. Returns a new image.

    Callers apply ``ImageOps.exif_transpose`` first (orientation is independent of colour).
    """
    if has_alpha(image):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, WHITE + (255,))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        array = np.asarray(image, dtype=np.float64)  # [H, W]
        if image.mode.startswith("I;16") or array.max(initial=0) > 255:
            array = array / 257.0  # 0..65535 -> 0..255
        grey = np.clip(np.rint(array), 0, 255).astype(np.uint8)
        return Image.fromarray(grey, mode="L").convert("RGB")
    if image.mode == "RGB":
        return image.copy()
    return image.convert("RGB")


def conversion_note(image: Image.Image) -> str:
    """What ``to_rgb`` will do to ``image`` ("" for plain 8-bit RGB), for the metadata ``note``."""
    if has_alpha(image):
        return f"mode {image.mode}: alpha composited on white"
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        return f"mode {image.mode}: scaled to 8-bit RGB"
    if image.mode != "RGB":
        return f"mode {image.mode}: converted to RGB"
    return ""


def frames_note(image: Image.Image) -> str:
    """``"animated GIF: first frame used"`` / ``"multi-page TIFF: first page used"`` or "".

    ``is_animated`` only looks for a second frame; ``n_frames`` would seek through every frame.
    """
    if not getattr(image, "is_animated", False):
        return ""
    what = "page" if image.format in ("TIFF", "MPO") else "frame"
    kind = "multi-page" if what == "page" else "animated"
    return f"{kind} {image.format}: first {what} used"


def _tail(f: BinaryIO, n: int) -> bytes:
    f.seek(0, 2)
    size = f.tell()
    f.seek(max(0, size - n))
    return f.read(n)


def jpeg_looks_truncated(f: BinaryIO) -> bool:
    """No JPEG end-of-image marker (FF D9) in the last 64 bytes once trailing NULs are dropped."""
    return b"\xff\xd9" not in _tail(f, 4096).rstrip(b"\x00")[-64:]


def gif_looks_truncated(f: BinaryIO) -> bool:
    """A GIF ends with the trailer byte 0x3B (NUL padding tolerated)."""
    return not _tail(f, 64).rstrip(b"\x00").endswith(b";")


def webp_looks_truncated(f: BinaryIO) -> bool:
    """The RIFF header's size (bytes 4-8, plus the 8-byte header) is larger than the file."""
    f.seek(0)
    head = f.read(8)
    if len(head) < 8:
        return True
    (riff_size,) = struct.unpack("<I", head[4:8])
    f.seek(0, 2)
    return f.tell() < riff_size + 8


def png_walk(f: BinaryIO) -> tuple[bool, bytes | None]:
    """Walk the PNG chunk headers (seeking over chunk data): (reached IEND, eXIf payload or None).

    Reads 8 bytes per chunk plus the eXIf payload; never reads or inflates image data. The eXIf
    chunk may come after the image data, where Pillow only finds it after decoding every pixel.
    """
    f.seek(0, 2)
    size = f.tell()
    f.seek(len(PNG_SIGNATURE))
    exif = None
    while True:
        header = f.read(8)
        if len(header) < 8:
            return False, exif
        length, kind = struct.unpack(">I4s", header)
        if kind == b"IEND":
            return True, exif
        if kind == b"eXIf" and exif is None and length < (1 << 20):
            exif = f.read(length)
            f.seek(4, 1)  # CRC
        else:
            f.seek(length + 4, 1)
        if f.tell() > size:
            return False, exif


def looks_truncated(image_format: str | None, f: BinaryIO) -> bool:
    """Cheap end-of-file check for JPEG, PNG, GIF and WebP; False for other formats."""
    if image_format in ("JPEG", "MPO"):
        return jpeg_looks_truncated(f)
    if image_format == "PNG":
        return not png_walk(f)[0]
    if image_format == "GIF":
        return gif_looks_truncated(f)
    if image_format == "WEBP":
        return webp_looks_truncated(f)
    return False


def exif_orientation_from_bytes(data: bytes | None) -> int:
    """Orientation tag (0x0112) of a raw EXIF block, 1 when absent or malformed."""
    if not data:
        return 1
    try:
        exif = Image.Exif()
        exif.load(data)
        return int(exif.get(0x0112, 1))
    except Exception:  # a malformed EXIF block must not reject an otherwise fine image
        return 1
