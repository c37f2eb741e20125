"""SimpleTuner's aspect-bucket geometry for PixArt (alignment 64), as small pure functions.

Rules learned from SimpleTuner (``helpers/multiaspect/image.py`` ``MultiaspectImage``,
``helpers/image_manipulation/training_sample.py`` ``TrainingSample``,
``helpers/image_manipulation/cropping.py``, ``helpers/data_backend/factory.py``,
``helpers/metadata/backends/base.py``):

1. ``pixel_area`` is converted to ``area``: resolution ``R`` px means ``R*R`` pixels of area;
   ``minimum_image_size``, ``maximum_image_size`` and ``target_downsample_size`` are converted
   the same way when they are > 10 (values <= 10 are taken as megapixels already).
2. Edge lengths snap to the alignment with Python's ``round`` (half to even) and never below it:
   ``round_to_multiple(v) = max(round(v / 64) * 64, 64)``.
3. The aspect ratio is ``round(w / h, r)`` with ``r = aspect_bucket_rounding`` (default 2); the bucket
   key is its ``str`` (``"1.0"``, ``"1.5"``).
4. ``area``: square edge ``E = round_to_multiple(int(sqrt(area)))``; target
   ``(round_to_multiple(E*sqrt(ar)), round_to_multiple(E/sqrt(ar)))``; the intermediary keeps the
   aspect ratio with its shorter side equal to the target's (``int`` truncation), grown by the
   missing difference when it would be smaller than the target.
   ``pixel``: the shorter side becomes ``R``, the other ``int(R*ar)`` (or ``int(R/ar)``); target is
   both sides snapped; when the intermediary is smaller than the target both sides grow by the
   larger difference.
5. A target whose aspect key is 1.0 becomes ``(P, P)`` with ``P`` the "pixel resolution"
   (area: ``round_to_multiple(sqrt(area))``, with 0.25/0.5/1/2/4 MP remapped to 512/768/1024/1536/2048
   squared when within 0.05); an intermediary narrower than ``P`` becomes ``(P, P)``.
6. ``crop`` + ``crop_aspect: square``: target ``(P, P)``, bucket ``"1.0"``. ``crop`` +
   ``closest``/``random``: the target is computed (rules 4-5) from an aspect picked from
   ``crop_aspect_buckets`` (see :mod:`pixart_pipeline.data.aspect_choice`) instead of the image's.
7. ``minimum_image_size``: ``pixel`` -> both edges >= it; ``area`` -> ``w*h >= min`` pixels and, for
   square crops, both edges >= ``floor(sqrt(min))``.
8. ``crop`` + ``maximum_image_size`` + ``target_downsample_size``: an image larger than the maximum
   (``pixel``: either edge; ``area``: w*h) is first resized to the intermediary computed for
   ``target_downsample_size``, scaled up to cover the target.
9. Crop box on the intermediary: ``corner`` (0, 0); ``center`` ``int((I - T) / 2)`` per axis;
   ``random`` uniform in ``[0, I - T]`` per axis.

Our deviations (each keeps every crop full-sized and reproducible):

- ``random`` crops and ``crop_aspect: random`` draws are seeded by the image's sha256 (SimpleTuner
  uses the global RNG), so the crop, and therefore the VAE cache, never changes with the training
  seed or the run.
- One target per aspect key, without order: SimpleTuner's ``area`` sizing memoises the first target
  it computes for each rounded aspect (``StateTracker`` aspect-resolution map, kept on disk across
  runs) and gives it to every later image of that key, so when two image ratios round to the same key
  but to different sizes (only near 1:7 at 2 decimals, e.g. 1 MP: 384x2752 and 384x2816 are both
  "0.14") the result depends on which image came first. We give every key the target of the image
  ratio (on the ``10**-r`` grid) closest to the key itself, ties to the smaller ratio
  (:func:`canonical_area_target`): a pure function of the config, the same as SimpleTuner whenever
  its first image of that key had that ratio.
- ``closest``/``random`` crops: SimpleTuner resizes the image to an intermediary of the picked
  aspect (stretching it when that differs from the image's own); we scale the image, aspect kept,
  to the smallest size that covers the target and crop the rest (:func:`cover_exact`).
- SimpleTuner can leave an intermediary smaller than the target (then the crop is undersized and the
  sample fails later). We scale such an intermediary up, keeping its aspect ratio, to cover the target.
- SimpleTuner keeps the ORIGINAL size as intermediary for a near-square (key 1.0) non-square image
  and for square crops under ``area``, which crops at native resolution (a 1024 crop of a 4000 px
  photo). We resize instead: near-square -> shorter side = target edge; square crop -> the
  intermediary computed from the image's own aspect ratio (SimpleTuner's earlier behaviour).
- ``pixel`` square targets are snapped to the alignment (SimpleTuner uses ``int(resolution)``).
- SimpleTuner's downsample trigger ignores the value of
  ``maximum_image_size``; we downsample only images larger than it, as documented.
- Images with ``w / h`` outside ``[1/8, 8]`` are rejected (``extreme_aspect``, see ``MAX_ASPECT``):
  SimpleTuner divides by zero on thin strips and builds huge intermediaries for wide ones.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from pixart_pipeline.config.fingerprints import PIXART_ALIGNMENT
from pixart_pipeline.config.dataset_models import ImageDataset
from pixart_pipeline.data.aspect_choice import chosen_aspect

TOO_SMALL = "too_small"
INVALID_SIZE = "invalid_size"
EXTREME_ASPECT = "extreme_aspect"
# Widest accepted w/h (and 1/MAX_ASPECT the tallest). SimpleTuner has no bound, but its rules break
# down for strips: ``round(w / h, 2)`` is 0.0 for w/h < 0.005 (a division by zero in the size
# functions), and the intermediary grows with the ratio (``pixel``: ``R * ar`` wide, so a 300x1
# strip at 1024 px becomes 307200x1024, about 1 GB of RGB). Within 1:8 the rounded ratio is at least
# 0.12, the intermediary's long side at most 1/0.12 (about 8.3) times the resolution, and the
# target keeps a useful short side (pixel_area 1024: 2880x384). PixArt's own aspect bins stop at 1:4.
MAX_ASPECT = 8
# SimpleTuner remaps these megapixel values to the square areas people mean by them.
_AREA_REMAP = {0.25: 512**2, 0.5: 768**2, 1.0: 1024**2, 2.0: 1536**2, 4.0: 2048**2}

Size = tuple[int, int]  # (width, height)


@dataclass(frozen=True)
class Geometry:
    """How one image becomes a training sample: resize to intermediary, crop target at (left, top)."""

    intermediary_width: int
    intermediary_height: int
    target_width: int
    target_height: int
    crop_left: int
    crop_top: int
    bucket: str

    def values(self) -> tuple[int, int, int, int, int, int, str]:
        """The fields in declaration order (the metadata table's geometry columns; a test checks)."""
        return (self.intermediary_width, self.intermediary_height, self.target_width, self.target_height,
                self.crop_left, self.crop_top, self.bucket)


@dataclass(frozen=True)
class Resolution:
    """A dataset's size settings normalised to SimpleTuner's two kinds: ``pixel`` or ``area``.

    For ``area`` every value is in pixels of area (not megapixels), so ``pixel_area`` stays exact.
    """

    kind: str  # "pixel" | "area"
    value: float  # edge px (pixel) or area px (area)
    minimum: float | None
    maximum: float | None
    downsample: float | None


def round_to_multiple(value: float, multiple: int = PIXART_ALIGNMENT) -> int:
    """Nearest multiple (Python ``round``: halves go to the even multiple), at least ``multiple``."""
    return max(int(round(value / multiple)) * multiple, multiple)


def aspect_ratio(width: int, height: int, rounding: int = 2) -> float:
    """``round(w / h, rounding)``: SimpleTuner's aspect ratio and bucket value."""
    return round(width / height, rounding)


def is_extreme_aspect(width: int, height: int, rounding: int = 2) -> bool:
    """True when ``w / h`` is outside ``[1 / MAX_ASPECT, MAX_ASPECT]`` or its rounded ratio is 0.

    Integer comparisons, so the bounds themselves (8:1, 1:8) are exact and accepted.
    """
    if width > MAX_ASPECT * height or height > MAX_ASPECT * width:
        return True
    return aspect_ratio(width, height, rounding) == 0.0


def bucket_key(width: int, height: int, rounding: int = 2) -> str:
    """Bucket name as SimpleTuner writes it: ``str`` of the rounded aspect (``"1.0"``, ``"0.67"``)."""
    return str(aspect_ratio(width, height, rounding))


def normalise_resolution(ds: ImageDataset) -> Resolution:
    """``pixel``/``area``/``pixel_area`` settings -> :class:`Resolution` (rule 1)."""

    def area_px(v: float | None, edge_if_large: bool) -> float | None:
        if v is None:
            return None
        if edge_if_large and v > 10:
            return float(v) * float(v)  # an edge length in pixels: its square is the area
        return float(v) * 1e6  # megapixels

    if ds.resolution_type == "pixel":
        return Resolution("pixel", float(ds.resolution), _opt(ds.minimum_image_size),
                          _opt(ds.maximum_image_size), _opt(ds.target_downsample_size))
    if ds.resolution_type == "pixel_area":
        return Resolution("area", float(ds.resolution) ** 2, area_px(ds.minimum_image_size, True),
                          area_px(ds.maximum_image_size, True), area_px(ds.target_downsample_size, True))
    return Resolution("area", float(ds.resolution) * 1e6, area_px(ds.minimum_image_size, False),
                      area_px(ds.maximum_image_size, False), area_px(ds.target_downsample_size, False))


def _opt(v: float | None) -> float | None:
    return None if v is None else float(v)


def pixel_resolution(res: Resolution) -> int:
    """Edge of square targets (rule 5)."""
    if res.kind == "pixel":
        return round_to_multiple(res.value)
    megapixels = res.value / 1e6
    area = next((a for mp, a in _AREA_REMAP.items() if abs(megapixels - mp) < 0.05), res.value)
    return round_to_multiple(math.sqrt(area))


def size_by_area(ar: float, area: float, original: Size) -> tuple[Size, Size]:
    """(target, intermediary) for a target area in pixels (SimpleTuner's ``calculate_new_size_by_pixel_area``)."""
    edge = round_to_multiple(int(math.sqrt(area)))
    if ar == 1.0:
        w, h = original
        if w == h:
            return (edge, edge), (edge, edge)
        # Deviation: resize so the shorter side is the edge (SimpleTuner keeps the original size).
        scale = edge / min(w, h)
        return (edge, edge), (max(edge, int(w * scale)), max(edge, int(h * scale)))
    tw = round_to_multiple(edge * math.sqrt(ar))
    th = round_to_multiple(edge / math.sqrt(ar))
    if tw < th:  # portrait: width leads
        iw, ih = tw, int(tw / ar)
    else:  # landscape (or a square target from a non-square ratio): height leads
        iw, ih = int(th * ar), th
    if tw > iw or th > ih:
        if tw > iw:
            dw = tw - iw
            dh = int(dw / ar)
        else:
            dh = th - ih
            dw = int(dh * ar)
        iw, ih = iw + dw, ih + dh
    return (tw, th), (iw, ih)


@functools.lru_cache(maxsize=16)
def _area_targets_by_key(area: float, rounding: int) -> Mapping[float, tuple[float, Size]]:
    """``{key: (ratio, target)}`` over every rounded image ratio in ``[1/8, 8]`` (step ``10**-r``).

    For each key, the target of the ratio closest to the key (ties: the smaller ratio). A pure
    function of ``(area, rounding)``, cached because ``compute_geometry`` asks once per image
    (at ``rounding`` 4 it is 80,000 size computations, about a quarter of a second). Returned
    read-only (``MappingProxyType`` over tuples): the cached object is shared by every caller, so
    a caller that changed it would change the targets of every later image.
    """
    scale = 10**rounding
    best: dict[float, tuple[float, float, Size]] = {}
    for i in range(round(round(1 / MAX_ASPECT, rounding) * scale), MAX_ASPECT * scale + 1):
        ratio = round(i / scale, rounding)
        if ratio == 1.0:  # squares are (P, P) whatever the memo says
            continue
        target, _ = size_by_area(ratio, area, (1, 1))
        key = aspect_ratio(*target, rounding)
        rank = (abs(ratio - key), ratio)
        if key not in best or rank < best[key][:2]:
            best[key] = (*rank, target)
    return MappingProxyType({key: (v[1], v[2]) for key, v in best.items()})


def canonical_area_target(target: Size, area: float, rounding: int = 2) -> Size:
    """The one target every image of ``target``'s aspect key gets under ``area`` sizing.

    Stands in for SimpleTuner's order-dependent memo (see the module docstring): the target of the
    grid ratio closest to the key. A key no grid ratio reaches (a ``crop_aspect_buckets`` value
    between grid points) keeps its own target.
    """
    key = aspect_ratio(*target, rounding)
    if key == 1.0:
        return target
    found = _area_targets_by_key(float(area), rounding).get(key)
    return found[1] if found else target


def size_by_pixel_edge(ar: float, edge: float, original: Size) -> tuple[Size, Size]:
    """(target, intermediary) with the shorter side at ``edge`` px (``calculate_new_size_by_pixel_edge``)."""
    w, h = original
    if w < h:
        iw, ih = int(edge), int(int(edge) / ar)
    else:
        iw, ih = int(int(edge) * ar), int(edge)
    tw, th = round_to_multiple(iw), round_to_multiple(ih)
    if iw < tw or ih < th:
        grow = max(tw - iw, th - ih)
        iw, ih = iw + grow, ih + grow
    return (tw, th), (iw, ih)


def meets_minimum(width: int, height: int, res: Resolution, square_crop: bool) -> bool:
    """SimpleTuner's ``meets_resolution_requirements`` (rule 7)."""
    if res.minimum is None:
        return True
    if res.kind == "pixel":
        return width >= res.minimum and height >= res.minimum
    if square_crop:
        edge = math.floor(math.sqrt(res.minimum))
        if width < edge or height < edge:
            return False
    return width * height >= res.minimum


def is_too_large(width: int, height: int, res: Resolution) -> bool:
    """SimpleTuner's ``is_image_too_large`` against ``maximum_image_size``."""
    if res.maximum is None:
        return False
    if res.kind == "pixel":
        return width > res.maximum or height > res.maximum
    return width * height > res.maximum


def cover(intermediary: Size, target: Size) -> Size:
    """Scale ``intermediary`` up (aspect kept) until it covers ``target`` on both axes."""
    iw, ih = intermediary
    tw, th = target
    if iw >= tw and ih >= th:
        return intermediary
    scale = max(tw / iw, th / ih)
    return max(tw, math.ceil(iw * scale)), max(th, math.ceil(ih * scale))


def cover_exact(original: Size, target: Size) -> Size:
    """``original`` scaled (aspect kept, integer maths) to the smallest size covering ``target``."""
    w, h = original
    tw, th = target
    if tw * h >= th * w:  # the width binds: width = tw, height = ceil(h * tw / w)
        return tw, max(th, -(-h * tw // w))
    return max(tw, -(-w * th // h)), th


def crop_box(intermediary: Size, target: Size, style: str, sha256: str) -> tuple[int, int]:
    """(left, top) of the target-sized crop on the intermediary (rule 9; random seeded by sha256)."""
    max_left = max(0, intermediary[0] - target[0])
    max_top = max(0, intermediary[1] - target[1])
    if style == "corner":
        return 0, 0
    if style in ("center", "centre"):
        return int(max_left / 2), int(max_top / 2)
    if max_left == max_top == 0:
        return 0, 0  # the only draw; skips seeding a generator (most uncropped images)
    # Seeded by the image content, never by the training seed: same bytes -> same crop forever.
    # (A str seed goes through sha512 inside ``random``: stable across processes and platforms.)
    rng = random.Random(f"crop-{sha256}")
    return rng.randint(0, max_left), rng.randint(0, max_top)


def compute_geometry(
    width: int, height: int, ds: ImageDataset, sha256: str, rounding: int = 2
) -> Geometry | str:
    """Geometry of a ``width`` x ``height`` (displayed) image under ``ds``, or a reason code.

    ``rounding`` is ``aspect_bucket_rounding`` (decimals of aspect ratios and bucket keys).

    Reason codes: ``"invalid_size"`` (an edge <= 0), ``"extreme_aspect"`` (``w / h`` outside
    ``[1/8, 8]``, see :data:`MAX_ASPECT`), ``"too_small"`` (below ``minimum_image_size``).
    """
    sized = _sizes(width, height, ds, sha256, rounding)
    return sized if isinstance(sized, str) else _placed(*sized, ds.normalised_crop_style, sha256)


def geometry_function(ds: ImageDataset, rounding: int = 2) -> Callable[[int, int, str], Geometry | str]:
    """``compute_geometry`` for one dataset, remembering the sizes of each (width, height) seen.

    Only ``crop_aspect: random`` makes the target size depend on the image's bytes; otherwise the
    sizes are a function of (width, height) alone, and datasets repeat a handful of sizes (camera
    formats, exports), so at 100,000 images most calls skip the bucket arithmetic. The crop box is
    still computed per image (``crop_style: random`` seeds it by the sha256). The memory lives and
    dies with the returned function (one table build).
    """
    if ds.crop and ds.crop_aspect == "random" and ds.crop_aspect_buckets:
        return lambda width, height, sha256: compute_geometry(width, height, ds, sha256, rounding)
    sizes: dict[Size, tuple[Size, Size, str] | str] = {}  # (width, height) -> (intermediary, target, bucket)
    style = ds.normalised_crop_style

    def geometry(width: int, height: int, sha256: str) -> Geometry | str:
        key = (width, height)
        sized = sizes.get(key)
        if sized is None:
            sized = sizes[key] = _sizes(width, height, ds, sha256, rounding)
        return sized if isinstance(sized, str) else _placed(*sized, style, sha256)

    return geometry


def _sizes(width: int, height: int, ds: ImageDataset, sha256: str, rounding: int) -> tuple[Size, Size, str] | str:
    """(intermediary, target, bucket key) of an image, or a reason code: everything but the crop box.

    ``sha256`` matters only for ``crop_aspect: random`` (the seeded draw of the aspect).
    """
    if width <= 0 or height <= 0:
        return INVALID_SIZE
    if is_extreme_aspect(width, height, rounding):
        return EXTREME_ASPECT
    res = normalise_resolution(ds)
    square_crop = ds.crop and ds.crop_aspect == "square"
    if not meets_minimum(width, height, res, square_crop):
        return TOO_SMALL
    calc = size_by_pixel_edge if res.kind == "pixel" else size_by_area
    original = (width, height)
    ar = aspect_ratio(width, height, rounding)
    p = pixel_resolution(res)
    if square_crop:
        target = (p, p)
        _, intermediary = calc(ar, res.value, original)
    else:
        # the image's own aspect unless crop_aspect closest/random
        chosen = chosen_aspect(ar, ds, sha256, original, lambda a: calc(a, res.value, original)[0])
        target, intermediary = calc(chosen, res.value, original)
        if res.kind == "area":
            target = canonical_area_target(target, res.value, rounding)
        if aspect_ratio(*target, rounding) == 1.0:
            target = (p, p)
            if intermediary[0] < p:
                intermediary = (p, p)
        if chosen != ar:  # the intermediary keeps the image's shape, not the picked aspect's
            intermediary = cover_exact(original, target)
    if ds.crop and res.downsample is not None and is_too_large(width, height, res):
        _, intermediary = calc(ar, res.downsample, original)
    return cover(intermediary, target), target, bucket_key(*target, rounding)


def _placed(intermediary: Size, target: Size, bucket: str, style: str, sha256: str) -> Geometry:
    """The :class:`Geometry` of (intermediary, target) with its crop box (rule 9)."""
    left, top = crop_box(intermediary, target, style, sha256)
    return Geometry(intermediary[0], intermediary[1], target[0], target[1], left, top, bucket)
