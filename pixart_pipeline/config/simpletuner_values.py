"""Read ``config.json`` values the way SimpleTuner's argparse reads them.

SimpleTuner turns ``config.json`` into command-line arguments: every value becomes text and its
argparse ``type`` parses it, so ``"1e-4"`` is a float, ``"20"`` an integer and ``"true"`` a flag.
Its ``config/config.json.example`` is written that way, so a user who copies it (as the PixArt
quickstart says) brings strings. Here each string is parsed by the type our model gives that key,
with the same strictness as argparse (``int("20.0")`` fails, so ``"20.0"`` is not an integer);
anything else stays as written and the strict model judges it. ``multidatabackend.json`` is
not passed through argparse by SimpleTuner either, so it stays strictly typed.

This module also holds the config.json keys SimpleTuner renamed, the keys that cannot matter
for a full PixArt fine-tune, and the config-level dataset defaults (``resolution`` ...).
"""

from __future__ import annotations

import types
import typing
from typing import Any

# SimpleTuner's argparse boolean words (``_parse_bool_flag``), compared lower-cased and stripped.
BOOL_TRUE = frozenset({"1", "true", "yes", "y", "on"})
BOOL_FALSE = frozenset({"0", "false", "no", "n", "off"})

# SimpleTuner's current key -> the key we model (SimpleTuner still reads the old spelling too).
RENAMED = {
    "checkpoint_step_interval": "checkpointing_steps",
    "validation_step_interval": "validation_steps",
}

# Keys that select the LoRA/LyCORIS adapter: with ``model_type: full`` SimpleTuner never reads them
# (the example config carries them over from its LoRA default), so they warn instead of failing.
ADAPTER_ONLY = ("lora_type", "lycoris_config", "lora_alpha", "lora_dropout", "lora_init_type",
                "init_lokr_norm", "peft_lora_mode", "peft_lora_target_modules")

# Config-level keys SimpleTuner uses as defaults for image datasets that do not set them
# (``backend.get("resolution", args.resolution)`` in its data-backend factory).
DATASET_DEFAULTS = ("resolution", "resolution_type", "minimum_image_size", "maximum_image_size",
                    "target_downsample_size")

# Optimizers we read as another one, with what differs (the warning says it).
OPTIMIZER_ALIASES = {
    "adamw_bf16": ("adamw", ("SimpleTuner's adamw_bf16 keeps the weights in bf16 with stochastic rounding; here "
                             "AdamW keeps fp32 master weights and runs the model in mixed_precision")),
}


def scalar_kind(annotation: Any) -> type | None:
    """``bool``, ``int`` or ``float`` when a field's annotation is that scalar (optionally with
    ``None``), else None (strings, literals, lists and unions of several types stay as written)."""
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or \
        typing.get_origin(annotation) is typing.Union else (annotation,)
    kinds = [a for a in args if a is not type(None)]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (bool, int, float) else None


def parse_like_argparse(key: str, value: Any, kind: type) -> Any:
    """``value`` as SimpleTuner's argparse reads ``key`` of ``kind``; non-strings are returned as
    they are. Raises ValueError naming the key, the value and the type for a string that does not parse."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if kind is bool:
        if text.lower() in BOOL_TRUE:
            return True
        if text.lower() in BOOL_FALSE:
            return False
        raise ValueError(f"{key} = {value!r}: SimpleTuner reads {key} as a boolean "
                         f"({'/'.join(sorted(BOOL_TRUE))} or {'/'.join(sorted(BOOL_FALSE))})")
    try:
        return kind(text)
    except ValueError:
        name = "an integer" if kind is int else "a number"
        raise ValueError(f"{key} = {value!r}: SimpleTuner reads {key} as {name} (argparse type={kind.__name__}), "
                         f"and {value!r} is not {name}") from None


def read_config_values(raw: dict, fields: dict) -> tuple[dict, dict, list[str]]:
    """(``raw`` with strings parsed and SimpleTuner's spellings mapped to ours, the config-level dataset
    defaults that were given, notes). ``fields``: the model's ``model_fields``. Raises ValueError
    naming the key for a value that does not parse or two spellings of one key that disagree."""
    raw, notes = dict(raw), []
    for new, ours in RENAMED.items():
        if new in raw:
            value = raw.pop(new)
            if ours in raw and raw[ours] != value:
                raise ValueError(f"{new} = {value!r} and {ours} = {raw[ours]!r} are the same setting "
                                 "(SimpleTuner renamed it); keep one")
            raw[ours] = value
    defaults = {k: raw.pop(k) for k in DATASET_DEFAULTS if k in raw}
    for key, value in list(raw.items()):
        kind = scalar_kind(fields[key].annotation) if key in fields else None
        if kind is not None:
            raw[key] = parse_like_argparse(key, value, kind)
    # SimpleTuner: num_train_epochs 0 means "not set" (max_train_steps decides).
    if raw.get("num_train_epochs") == 0:
        raw.pop("num_train_epochs")
    if raw.get("model_type", "full") == "full":
        for key in ADAPTER_ONLY:
            if key in raw:
                notes.append(f"key {key!r} = {raw.pop(key)!r} is ignored: it configures a LoRA/LyCORIS adapter "
                             "and model_type is 'full' (SimpleTuner ignores it too)")
    optimizer = raw.get("optimizer")
    allowed = typing.get_args(fields["optimizer"].annotation) if "optimizer" in fields else ()
    # only where the model does not implement the optimizer itself
    if isinstance(optimizer, str) and optimizer in OPTIMIZER_ALIASES and optimizer not in allowed:
        raw["optimizer"], why = OPTIMIZER_ALIASES[optimizer]
        notes.append(f"optimizer {optimizer!r} is trained as {raw['optimizer']!r}: {why}")
    return raw, defaults, notes


def apply_dataset_defaults(entry: dict, defaults: dict) -> tuple[dict, list[str]]:
    """An image entry with config.json's dataset defaults filled in where it does not set them
    (SimpleTuner's rule), and which keys were filled."""
    filled = {k: v for k, v in defaults.items() if k not in entry}
    return entry | filled, sorted(filled)


def is_off_string(value: Any) -> bool:
    """Whether ``value`` is a string SimpleTuner reads as false (``"false"`` is dropped before argparse)."""
    return isinstance(value, str) and value.strip().lower() in BOOL_FALSE | {"", "none"}
