"""The synthetic demo dataset: coloured shapes on coloured backgrounds, drawn with PIL.

Captions live in the file names so that SimpleTuner's ``filename`` caption strategy reads them:
SimpleTuner takes the file's stem and turns underscores into spaces
(``PromptHandler.prepare_instance_prompt_from_filename``), nothing else. So
``a_red_circle_on_a_blue_background.png`` -> ``"a red circle on a blue background"``.
That rule strips no suffix, so instead of numbering files we give every image a different
(shape, colour, background) triple: each caption is unique and each file name is unique. Past the
number of triples (4 shapes x 8 colours x 7 backgrounds = 224) images go into sub-folders
``extra_1/``, ``extra_2/``, ... (same names, same captions, different pixels).

Sizes cycle through several aspect ratios so that aspect bucketing has work to do; PNG and JPEG are
mixed. Two deliberately bad files are added on top of ``num_images``: ``broken_image.png`` (garbage
bytes, unreadable) and a 40x40 image (rejected by a ``minimum_image_size`` of 64).

Every file's bytes depend only on (seed, index), drawn from its own seeded RNG, so regenerating
gives identical bytes and only missing files are written. A hidden marker ``.synthetic.json``
records (num_images, seed) and the files the generator wrote; when the parameters change, every
planned file is regenerated (the same name can mean different pixels under another seed), and the
generator's files that are no longer planned (a smaller ``num_images``) are deleted, with their
emptied ``extra_N/`` folders. Files someone else put in the folder are never touched.
"""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

from PIL import Image, ImageDraw

from pixart_pipeline.fileio import atomic_write_bytes, atomic_write_json

MARKER = ".synthetic.json"

SHAPES = ("circle", "square", "triangle", "diamond")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 60, 210),
    "yellow": (240, 220, 40),
    "purple": (140, 50, 180),
    "pink": (240, 120, 180),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
}
# (width, height): at resolution 128 pixel_area with crop_aspect preserve these land in the
# buckets 1.0 (128x128, 192x128, 128x192, 200x200, 256x256), 1.5 (256x160) and 0.67 (160x256).
SIZES = ((128, 128), (192, 128), (128, 192), (256, 160), (160, 256), (200, 200), (256, 256))
BROKEN_NAME = "broken_image.png"
TINY_NAME = "a_tiny_red_circle_on_a_white_background.png"
TINY_SIZE = (40, 40)


def caption_triples(seed: int) -> list[tuple[str, str, str]]:
    """All (shape, colour, background) triples with colour != background, in a seeded order."""
    triples = [(s, c, b) for s in SHAPES for c in COLOURS for b in COLOURS if c != b]
    random.Random(f"triples-{seed}").shuffle(triples)
    return triples


def _file_name(shape: str, colour: str, background: str, ext: str) -> str:
    return f"a_{colour}_{shape}_on_a_{background}_background.{ext}"


def _draw(size: tuple[int, int], shape: str, colour: str, background: str, rng: random.Random) -> Image.Image:
    """One shape of ``colour`` on a ``background`` canvas; position and size jitter from ``rng``."""
    w, h = size
    image = Image.new("RGB", size, COLOURS[background])
    draw = ImageDraw.Draw(image)
    m = min(w, h)
    r = int(m * rng.uniform(0.2, 0.3))
    # Centre near the middle (within m/6 of it) so that aspect-bucket crops rarely cut the shape
    # out of the picture its caption describes.
    cx = rng.randint(max(r, w // 2 - m // 6), min(w - r, w // 2 + m // 6))
    cy = rng.randint(max(r, h // 2 - m // 6), min(h - r, h // 2 + m // 6))
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=fill)
    else:  # diamond
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    return image


def _encode(image: Image.Image, ext: str) -> bytes:
    buf = io.BytesIO()
    if ext == "jpg":
        image.save(buf, format="JPEG", quality=90)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def planned_files(num_images: int, seed: int) -> list[tuple[str, int]]:
    """Relative paths of the dataset's files (with their index), without touching the disk."""
    triples = caption_triples(seed)
    files = []
    for i in range(num_images):
        shape, colour, background = triples[i % len(triples)]
        ext = "jpg" if i % 3 == 2 else "png"
        folder = "" if i < len(triples) else f"extra_{i // len(triples)}/"
        files.append((folder + _file_name(shape, colour, background, ext), i))
    files.append((BROKEN_NAME, -1))
    files.append((TINY_NAME, -2))
    return files


def _file_bytes(rel: str, index: int, seed: int, triples: list[tuple[str, str, str]]) -> bytes:
    """The bytes of one planned file; each file has its own RNG so files are independent."""
    rng = random.Random(f"synthetic-{seed}-{index}")
    if index == -1:
        # Not an image at all: PIL cannot identify it.
        return bytes(rng.getrandbits(8) for _ in range(256))
    if index == -2:
        return _encode(_draw(TINY_SIZE, "circle", "red", "white", rng), "png")
    shape, colour, background = triples[index % len(triples)]
    image = _draw(SIZES[index % len(SIZES)], shape, colour, background, rng)
    return _encode(image, rel.rsplit(".", 1)[1])


def generate_synthetic_dataset(folder: Path, num_images: int, seed: int) -> list[Path]:
    """Write the demo dataset into ``folder`` (only missing files) and return every file's path.

    ``num_images`` good images plus ``broken_image.png`` and one 40x40 image. Deterministic: the
    same (num_images, seed) gives the same names and bytes every time.
    """
    if num_images < 1:
        raise ValueError(f"synthetic dataset: num_images must be >= 1, got {num_images}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    params = {"num_images": num_images, "seed": seed}
    try:
        marker = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        marker = {}
    same = isinstance(marker, dict) and {k: marker.get(k) for k in params} == params
    triples = caption_triples(seed)
    plan = planned_files(num_images, seed)
    paths = []
    for rel, index in plan:
        path = folder / rel
        if not path.exists():
            atomic_write_bytes(path, _file_bytes(rel, index, seed, triples))
        elif not same:
            data = _file_bytes(rel, index, seed, triples)
            if path.read_bytes() != data:
                atomic_write_bytes(path, data)
        paths.append(path)
    planned = [rel for rel, _ in plan]
    written_before = marker.get("files", []) if isinstance(marker, dict) else []
    root = os.path.realpath(folder)
    for rel in sorted(set(written_before) - set(planned)):
        target = folder / rel
        parent = os.path.realpath(target.parent)
        if parent != root and not parent.startswith(root + os.sep):
            continue  # the list comes from a file in the folder: never follow it outside
        if target.is_file() and not target.is_symlink():
            target.unlink()
    for extra in folder.glob("extra_*"):
        if extra.is_dir() and not any(extra.iterdir()):
            extra.rmdir()
    if not same or written_before != planned:
        atomic_write_json(folder / MARKER, params | {"files": planned})
    return paths
