"""Which aspect ratio a crop gets under ``crop_aspect`` ``closest`` / ``random`` (``crop_aspect_buckets``).

SimpleTuner's rules (``TrainingSample._select_random_aspect`` in
``helpers/image_manipulation/training_sample.py``), which we follow:

- ``closest``: the bucket whose aspect is nearest to the image's rounded aspect ratio; on a tie the
  one listed first (Python's ``min`` keeps the first minimum).
- ``random`` with weighted buckets (``[{"aspect": 1.5, "weight": 0.25}, ...]``): a weighted draw.
- ``random`` with plain numbers (``[0.75, 1.0, 1.5]``): a uniform draw among the buckets whose
  target is at most ``1 + max_upscale_threshold`` times the image on both sides (all of them when
  the threshold is unset); ``1.0`` when none is left (``_trim_aspect_bucket_list``).

Our difference: SimpleTuner draws from the global ``random`` module, so the choice depends on the
process and on the order images are prepared (it then stores the choice in its metadata so later
epochs agree). We seed the draw by the image's sha256, so the choice is fixed by the image's bytes:
the same in every run, process and training seed, and a re-run recomputes it identically.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from pixart_pipeline.config.dataset_models import AspectBucket, ImageDataset

Bucket = float | int | AspectBucket


def bucket_aspect(bucket: Bucket) -> float:
    """The aspect ratio (width / height) of one ``crop_aspect_buckets`` entry, as a float."""
    return float(bucket.aspect if isinstance(bucket, AspectBucket) else bucket)


def closest_aspect(image_aspect: float, buckets: Sequence[Bucket]) -> float:
    """The listed aspect nearest to ``image_aspect``; ties go to the one listed first."""
    return bucket_aspect(min(buckets, key=lambda b: abs(bucket_aspect(b) - image_aspect)))


def upscale_allowed(
    buckets: Sequence[Bucket], threshold: float, original: tuple[int, int],
    target_for: Callable[[float], tuple[int, int]],
) -> list[float]:
    """The aspects whose target (``target_for(aspect)``) needs at most ``1 + threshold`` upscaling."""
    w, h = original
    limit = 1 + threshold
    return [a for a in map(bucket_aspect, buckets) if (t := target_for(a))[0] <= w * limit and t[1] <= h * limit]


def random_aspect(buckets: Sequence[Bucket], sha256: str) -> float:
    """A draw from ``buckets`` (weighted when they carry weights), seeded by the image's sha256.

    A ``str`` seed goes through sha512 inside :class:`random.Random`, so the draw is the same on
    every platform and process (unlike ``hash()``-based seeds).
    """
    rng = random.Random(f"aspect-{sha256}")
    aspects = [bucket_aspect(b) for b in buckets]
    if isinstance(buckets[0], AspectBucket):
        weights = [float(b.weight) for b in buckets]  # type: ignore[union-attr]
        return rng.choices(aspects, weights)[0]
    return rng.choice(aspects)


def chosen_aspect(
    image_aspect: float, ds: ImageDataset, sha256: str,
    original: tuple[int, int] = (1, 1), target_for: Callable[[float], tuple[int, int]] | None = None,
) -> float:
    """The aspect the target is computed from: the image's own unless ``crop`` with closest/random.

    ``original`` and ``target_for`` (aspect -> target size) serve ``max_upscale_threshold``.
    """
    if not ds.crop or ds.crop_aspect not in ("closest", "random") or not ds.crop_aspect_buckets:
        return image_aspect
    if ds.crop_aspect == "closest":
        return closest_aspect(image_aspect, ds.crop_aspect_buckets)
    buckets = ds.crop_aspect_buckets
    if ds.max_upscale_threshold is not None and target_for is not None and not isinstance(buckets[0], AspectBucket):
        buckets = upscale_allowed(buckets, float(ds.max_upscale_threshold), original, target_for)
        if not buckets:
            return 1.0  # SimpleTuner: "do not fit into the configured aspect buckets. Using square crop."
    return random_aspect(buckets, sha256)
