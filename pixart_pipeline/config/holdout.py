"""How many images of a dataset are held out of training for the eval loss (issue 14, point 4).

SimpleTuner trains on every image and computes its eval loss on ``dataset_type: "eval"`` datasets.
We also hold out images of a training dataset, so a config without an eval dataset still gets an
eval loss, but only a few, and say so:

- ``eval_split_fraction`` unset (null): the *auto* hold-out, one image per
  ``AUTO_IMAGES_PER_HELD_OUT`` kept images, at most ``AUTO_MAX_HELD_OUT`` (none below 25 images),
  and none at all when the config has a ``dataset_type: "eval"`` dataset (SimpleTuner's layout);
- a fraction: that share of the images, by image hash (stable as the dataset grows);
- ``0``: nothing held out, exactly as SimpleTuner.
"""

from __future__ import annotations

AUTO_MAX_HELD_OUT = 4
AUTO_IMAGES_PER_HELD_OUT = 25


def auto_count(kept: int) -> int:
    """The auto hold-out of a dataset with ``kept`` usable images: ``min(4, kept // 25)``."""
    return min(AUTO_MAX_HELD_OUT, kept // AUTO_IMAGES_PER_HELD_OUT)


def resolve_auto(fraction: float | None, has_eval_dataset: bool) -> float | None:
    """The value a training dataset's metadata is built with: with an eval dataset in the config,
    the auto hold-out (None) becomes 0 (train on everything); anything else is kept."""
    return 0.0 if fraction is None and has_eval_dataset else fraction


def describe(fraction: float | None, dataset_type: str = "image") -> str:
    """One line saying what a dataset holds out (validate, plan, the metadata materialization)."""
    if dataset_type == "eval":
        return "every image (dataset_type eval: evaluation only)"
    if fraction is None:
        return (f"auto: 1 image per {AUTO_IMAGES_PER_HELD_OUT} kept, at most {AUTO_MAX_HELD_OUT} "
                f"(none below {AUTO_IMAGES_PER_HELD_OUT}); eval_split_fraction: 0 trains on all")
    if fraction == 0:
        return "none (eval_split_fraction 0: trains on every image, as SimpleTuner)"
    return f"{fraction:.0%} of the images by hash (eval_split_fraction {fraction:g})"
