"""SimpleTuner ``multidatabackend.json`` keys we do not implement, and what happens to each.

A user brings their SimpleTuner file, so every key it documents must either work, or be refused
with the reason, or (when it cannot change any result here) be accepted with a warning; never an
"unknown key" and never silence. A refused key is accepted when it holds SimpleTuner's value for
"feature off" (``"start_epoch": 1``, ``"grounding": {"enabled": false}``): example files spell out
their defaults. Two keys depend on the rest of the file: ``probability`` (see
:func:`probability_problem`) and ``vae_cache_clear_each_epoch`` (see :func:`check_entry`).
"""

from __future__ import annotations

from typing import Any

# key -> (why it is refused, SimpleTuner's values meaning "off", which are accepted)
UNSUPPORTED: dict[str, tuple[str, tuple]] = {
    "is_regularisation_data": ("regularisation datasets are not implemented", (False, None)),
    "is_regularization_data": ("regularisation datasets are not implemented", (False, None)),
    "conditioning_data": ("conditioning datasets (ControlNet) are not supported", (None, "", [])),
    "aws_bucket_name": ("only local folders and Hub downloads are supported", (None, "")),
    "csv_file": ("only local folders and Hub downloads are supported", (None, "")),
    "huggingface": ("use type 'local' with hub_repo_id to download a Hub dataset", (None, False, {})),
    "caption_filter_list": ("caption filters are not implemented; edit the captions, or use the "
                            "instance_prompt options", (None, "", [])),
    "max_num_samples": ("training on a sample of a dataset is not implemented", (None,)),
    "caption_shuffle": ("caption shuffling is not implemented", (None, {})),
    "video": ("video datasets are not supported", (None, {})),
    "image_embeds": ("image-embedding datasets are not supported", (None, "")),
    "conditioning_image_embeds": ("image-embedding datasets are not supported", (None, "")),
    "grounding": ("spatial grounding (bounding boxes) is not supported", (None, {})),
    "start_epoch": ("scheduling a dataset to start later is not implemented", (None, 0, 1)),
    "start_step": ("scheduling a dataset to start later is not implemented", (None, 0, 1)),
    "end_epoch": ("scheduling a dataset to stop early is not implemented", (None,)),
    "end_step": ("scheduling a dataset to stop early is not implemented", (None,)),
    "disable_after_epoch_step": ("scheduling a dataset to stop early is not implemented", (None, 0)),
    "timestep_sampling_offset": ("per-dataset timestep offsets are not implemented", (None, 0)),
    "slider_strength": ("slider LoRA training is not implemented (full fine-tuning only)", (None, 0)),
}

# key -> why it cannot change a result here; accepted with a warning (when not off), then dropped.
IGNORED: dict[str, str] = {
    "preserve_data_backend_cache": "the metadata is always kept and updated incrementally",
    "metadata_update_interval": "the metadata is brought up to date each time bucketed_metadata runs",
    "skip_file_discovery": "discovery is always incremental here (only new or changed files are hashed and probed)",
    "hash_filenames": "cache items are keyed by content and geometry, not by file name",
    "cache_file_suffix": "cache items are keyed by content and geometry, not by file name",
    "write_batch_size": "cache shards are written in batches of their own size",
    "vae_cache_ondemand": "the vae_cache asset encodes every latent before training; they are the same latents",
    "delete_problematic_images": "your files are never deleted: a bad image stays in the table with a reason code "
                                 "and is not trained on",
    "delete_unwanted_images": "your files are never deleted: an image that is too small stays in the table with "
                              "a reason code and is not trained on",
    "delete_nsfw_images": "your files are never deleted (and no NSFW classifier runs here)",
}


def is_off(value: Any, off: tuple = (None, False, "", 0)) -> bool:
    """Whether ``value`` is one of ``off`` (compared with ``==``, so ``0`` and ``False`` are alike), or
    a dict whose ``enable``/``enabled`` is false (``{"enabled": false}``)."""
    if isinstance(value, dict) and value.get("enable", value.get("enabled")) is False:
        return True
    return value in off


def check_entry(entry: dict, where: str, fields: set[str] | frozenset[str] = frozenset()) -> tuple[dict, list[str]]:
    """(``entry`` without the keys handled here, with SimpleTuner's ``disable`` spelled ``disabled``,
    warnings). Raises ValueError naming ``where.key`` and the reason for a refused key.

    ``fields``: the keys the entry's own model takes (a ``text_embeds`` entry has ``write_batch_size``),
    which stay as they are."""
    warnings = []
    if "disable" in entry:  # SimpleTuner accepts both spellings
        if "disabled" in entry and entry["disabled"] != entry["disable"]:
            raise ValueError(f"{where} gives both disable = {entry['disable']!r} and disabled = {entry['disabled']!r}")
        entry = {**{k: v for k, v in entry.items() if k != "disable"}, "disabled": entry["disable"]}
    ignored = set(IGNORED) - set(fields)
    for key, value in entry.items():
        if key in UNSUPPORTED and not is_off(value, UNSUPPORTED[key][1]):
            raise ValueError(f"{where}.{key} = {value!r} is not supported yet: {UNSUPPORTED[key][0]}")
        if key in ignored and not is_off(value):
            warnings.append(f"{where}.{key} is ignored: {IGNORED[key]}")
    if entry.get("vae_cache_clear_each_epoch") and entry.get("dataset_type", "image") in ("image", "eval"):
        random_crops = entry.get("crop") and (entry.get("crop_style", "random") == "random"
                                              or entry.get("crop_aspect") == "random")
        if random_crops:
            raise ValueError(
                f"{where}.vae_cache_clear_each_epoch = true is not supported with random crops: each image's crop "
                "is drawn once (seeded by its content) and its latents cached once, where SimpleTuner draws new "
                "crops every epoch. Remove the key to train on one crop per image, or use crop_style 'center'")
        warnings.append(f"{where}.vae_cache_clear_each_epoch is ignored: without random crops every epoch would "
                        "encode the same latents")
    dropped = (set(UNSUPPORTED) | ignored | {"vae_cache_clear_each_epoch", "probability"}) - set(fields)
    return {k: v for k, v in entry.items() if k not in dropped}, warnings


def probability_problem(entries: list[dict]) -> str | None:
    """Why the image datasets' ``probability`` values cannot be honoured, or None.

    SimpleTuner's default sampling (``data_backend_sampling: auto-weighting``) weights each dataset by
    ``probability x its share of all images``; with equal probabilities (1, the default, when unset)
    that is sampling in proportion to size, which is what we do. Unequal ones are not implemented.
    """
    given = [e.get("probability", 1) for e in entries]
    if any(isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0 for v in given):
        return f"probability values must be positive numbers, got {[repr(v) for v in given]}"
    values = {float(v) for v in given}
    if len(values) > 1:
        return (f"datasets give different probability values {sorted(values)}: every dataset is sampled in "
                "proportion to its size (SimpleTuner's default with equal probabilities); use repeats to weight one")
    return None
