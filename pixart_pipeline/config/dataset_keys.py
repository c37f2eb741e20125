"""SimpleTuner ``multidatabackend.json`` keys we do not implement, and what happens to each.

A user brings their SimpleTuner file, so a key SimpleTuner documents for image datasets should
either work, or be refused with the reason, or (when it cannot change any result here) be accepted
with a warning, rather than be an "unknown key" or be silently dropped. A refused key is accepted when it
holds SimpleTuner's value for "feature off" (``"start_epoch": 1``, ``"grounding": {"enabled":
false}``): example files spell out their defaults. A disabled entry is never trained on, so its
refused keys only warn. Two keys depend on the rest of the file: ``probability`` (see
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
    "caption_filter_list": ("it filters every caption, so it belongs on the text_embeds entry (as in SimpleTuner)",
                            (None, "", [])),
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
    "conditioning": ("generated conditioning datasets are not supported", (None, [])),
    "disable_vae_cache": ("SimpleTuner removed this spelling; use vae_cache_disable", ()),
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
    "scan_for_errors": "every new image is probed anyway; a bad one becomes a row with a reason code",
    "disable_validation": "validation images come from the validation prompts, not from datasets",
    "compress_cache": "cache shards are written as they are",
    "shorten_filenames": "cache items are keyed by content and geometry, not by file name",
    "cache_dir_conditioning_image_embeds": "conditioning image embeds are not used (no conditioning datasets)",
    "conditioning_image_embed_batch_size": "conditioning image embeds are not used (no conditioning datasets)",
}


def is_off(value: Any, off: tuple = (None, False, "", 0)) -> bool:
    """Whether ``value`` is one of ``off``, or a dict whose ``enable``/``enabled`` is false.

    A bool matches only a bool (``True`` is not the ``1`` of ``"start_epoch": 1``); ints and floats
    compare by value."""
    if isinstance(value, dict) and value.get("enable", value.get("enabled")) is False:
        return True
    return any(value == o and isinstance(value, bool) == isinstance(o, bool) for o in off)


def check_entry(entry: dict, where: str, fields: set[str] | frozenset[str] = frozenset()) -> tuple[dict, list[str]]:
    """(``entry`` without the keys handled here, with SimpleTuner's ``disable`` spelled ``disabled``,
    warnings). Raises ValueError naming ``where.key``, its value and the reason for a refused key.

    ``fields``: the keys the entry's own model takes (a ``text_embeds`` entry has ``write_batch_size``),
    which stay as they are."""
    warnings = []
    if "disable" in entry:  # SimpleTuner accepts both spellings
        if "disabled" in entry and entry["disabled"] != entry["disable"]:
            raise ValueError(f"{where} gives both disable = {entry['disable']!r} and disabled = {entry['disabled']!r}")
        entry = {**{k: v for k, v in entry.items() if k != "disable"}, "disabled": entry["disable"]}
    disabled = entry.get("disabled") is True
    ignored = set(IGNORED) - set(fields)
    for key, value in entry.items():
        if key in UNSUPPORTED and key not in fields and not is_off(value, UNSUPPORTED[key][1]):
            if not disabled:
                raise ValueError(f"{where}.{key} = {value!r} is not supported yet: {UNSUPPORTED[key][0]}")
            warnings.append(f"{where}.{key} is ignored: the dataset is disabled ({UNSUPPORTED[key][0]})")
        if key in ignored and not is_off(value):
            warnings.append(f"{where}.{key} is ignored: {IGNORED[key]}")
    clear = entry.get("vae_cache_clear_each_epoch")
    if not is_off(clear) and entry.get("dataset_type", "image") in ("image", "eval") and not disabled:
        random_parts = [f"{k} 'random'" for k, default in (("crop_style", "random"), ("crop_aspect", None))
                        if entry.get("crop") and entry.get(k, default) == "random"]
        if random_parts:
            raise ValueError(
                f"{where}.vae_cache_clear_each_epoch = {clear!r} is not supported with {' and '.join(random_parts)}: "
                "each image's crop is drawn once (seeded by its content) and its latents cached once, where "
                "SimpleTuner draws new crops every epoch. Remove the key to train on one crop per image")
        warnings.append(f"{where}.vae_cache_clear_each_epoch is ignored: without random crops every epoch would "
                        "encode the same latents")
    dropped = (set(UNSUPPORTED) | ignored | {"vae_cache_clear_each_epoch", "probability"}) - set(fields)
    return {k: v for k, v in entry.items() if k not in dropped}, warnings


def probability(value: Any, where: str) -> float:
    """A dataset's sampling weight as SimpleTuner reads it: ``float(p) if p else 1.0`` (unset, null,
    0 and "" all mean 1); ValueError naming ``where`` for anything else that is not a positive number."""
    if isinstance(value, bool) or value is not None and not isinstance(value, (int, float, str)):
        raise ValueError(f"{where}.probability = {value!r} must be a number")
    try:
        weight = float(value) if value else 1.0
    except ValueError:
        raise ValueError(f"{where}.probability = {value!r} must be a number") from None
    if weight < 0:
        raise ValueError(f"{where}.probability = {value!r} must not be negative")
    return weight


def probability_problem(entries: dict[str, dict]) -> str | None:
    """Why the training datasets' ``probability`` values (``{where: entry}``) cannot be honoured, or None.

    SimpleTuner's default sampling (``data_backend_sampling: auto-weighting``) weights each dataset by
    ``probability x its share of all images``; with equal probabilities that is sampling in
    proportion to size, which is what we do. Unequal ones are not implemented.
    """
    try:
        weights = {where: probability(e.get("probability"), where) for where, e in entries.items()}
    except ValueError as e:
        return str(e)
    if len(set(weights.values())) > 1:
        given = ", ".join(f"{where}.probability = {w:g}" for where, w in weights.items())
        return (f"datasets give different probability values ({given}; unset means 1): every dataset is "
                "sampled in proportion to its size (SimpleTuner's default with equal probabilities); use repeats "
                "to weight one")
    return None
