"""Which aspect ratio a crop gets under ``crop_aspect`` ``closest`` / ``random`` (``crop_aspect_buckets``).

SimpleTuner's rules (``TrainingSample._select_random_aspect`` in
``helpers/image_manipulation/training_sample.py``), which we follow:

- ``closest``: the bucket whose aspect is nearest to the image's rounded aspect ratio; on a tie the
  one listed first (Python's ``min`` keeps the first minimum).
- ``random`` with weighted buckets (``[{"aspect": 1.5, "weight": 0.25}, ...]``): a weighted draw.
- ``random`` with plain numbers (``[0.75, 1.0, 1.5]``): a uniform draw. (SimpleTuner's optional
  ``max_upscale_threshold`` filter is off by default; we do not implement it.)

Our difference: SimpleTuner draws from the global ``random`` module, so the choice depends on the
process and on the order images are prepared (it then stores the choice in its metadata so later
epochs agree). We seed the draw by the image's sha256, so the choice is fixed by the image's bytes:
the same in every run, process and training seed, and a re-run recomputes it identically.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from pixart_pipeline.config.models import AspectBucket, ImageDataset

Bucket = float | int | AspectBucket


def bucket_aspect(bucket: Bucket) -> float:
    """The aspect ratio (width / height) of one ``crop_aspect_buckets`` entry, as a float."""
    return float(bucket.aspect if isinstance(bucket, AspectBucket) else bucket)


def closest_aspect(image_aspect: float, buckets: Sequence[Bucket]) -> float:
    """The listed aspect nearest to ``image_aspect``; ties go to the one listed first."""
    return bucket_aspect(min(buckets, key=lambda b: abs(bucket_aspect(b) - image_aspect)))


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


def chosen_aspect(image_aspect: float, ds: ImageDataset, sha256: str) -> float:
    """The aspect the target is computed from: the image's own unless ``crop`` with closest/random."""
    if not ds.crop or ds.crop_aspect not in ("closest", "random") or not ds.crop_aspect_buckets:
        return image_aspect
    if ds.crop_aspect == "closest":
        return closest_aspect(image_aspect, ds.crop_aspect_buckets)
    return random_aspect(ds.crop_aspect_buckets, sha256)
