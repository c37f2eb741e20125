"""Load SimpleTuner-style ``config.json`` + ``multidatabackend.json`` into typed models.

Relative paths in either file are resolved against the folder of the file that holds them, so the
same config means the same thing from the CLI, the Dagster UI and a test, whatever the working dir.
"""

from __future__ import annotations

import difflib
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from pixart_pipeline.config import dataset_keys, holdout, simpletuner_keys, simpletuner_values
from pixart_pipeline.config.caption_filters import load_filters, not_regular_expressions
from pixart_pipeline.config.models import (
    IGNORED,
    UNSUPPORTED,
    ImageDataset,
    TextEmbedsDataset,
    TrainingConfig,
)
from pixart_pipeline.config.webhooks import webhook_targets  # issue 15
from pixart_pipeline.errors import InputError

CONFIG_ENV = "PIXART_CONFIG"


class ConfigError(InputError):
    """A config problem, always naming the file and the key."""


@dataclass(frozen=True)
class PipelineConfig:
    """Everything the pipeline reads from the user's two files, with paths resolved."""

    config_path: Path
    backend_path: Path
    training: TrainingConfig
    datasets: tuple[ImageDataset, ...]
    text_embeds: TextEmbedsDataset
    warnings: tuple[str, ...] = field(default=())

    @property
    def output_dir(self) -> Path:
        return _resolve(self.config_path.parent, self.training.output_dir)

    def dataset_dir(self, dataset: ImageDataset) -> Path:
        return resolve_existing(self.backend_path.parent, dataset.instance_data_dir)[0]

    def vae_cache_dir(self, dataset: ImageDataset) -> Path:
        folder = dataset.cache_dir_vae or f"cache/vae/{dataset.id}"
        return _resolve(self.backend_path.parent, folder)

    @property
    def text_cache_dir(self) -> Path:
        return _resolve(self.backend_path.parent, self.text_embeds.cache_dir)

    @property
    def model_cache_dir(self) -> Path:
        """Where locally built tiny models live (shared by every run of this config)."""
        return self.output_dir / "models"

    def local_or_hub(self, name_or_path: str) -> str:
        """A model or checkpoint reference: a folder relative to config.json if one exists there
        (the same rule as every other path), else the value unchanged (a hub id, or absolute)."""
        candidate = _resolve(self.config_path.parent, name_or_path)
        return str(candidate) if candidate.is_dir() else name_or_path

    def dataset(self, dataset_id: str) -> ImageDataset:
        for ds in self.datasets:
            if ds.id == dataset_id:
                return ds
        raise KeyError(dataset_id)


def _resolve(base: Path, value: str) -> Path:
    path = Path(os.path.expanduser(value))
    return path if path.is_absolute() else (base / path).resolve()


def resolve_existing(base: Path, value: str) -> tuple[Path, bool]:
    """(path, whether SimpleTuner's spelling was used) for a relative path that must exist.

    Ours: beside the file that names it (``base``). SimpleTuner resolves against the folder it runs
    from, which holds ``config/``: so when ``base`` is a folder named ``config`` and the path exists
    only from the folder above it (``"config/multidatabackend.json"``, ``"datasets/..."``), that one
    is taken. Anything else, existing or not, is ours."""
    ours = _resolve(base, value)
    if ours.exists() or base.name != "config" or Path(os.path.expanduser(value)).is_absolute():
        return ours, False
    theirs = _resolve(base.parent, value)
    return (theirs, True) if theirs.exists() else (ours, False)


def default_config_path(root: Path | None = None) -> Path:
    """``$PIXART_CONFIG``, else ``config/config.json`` if present, else the embedded demo."""
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV]).expanduser().resolve()
    root = root or Path.cwd()
    user = root / "config" / "config.json"
    if user.exists():
        return user.resolve()
    demo = root / "config" / "demo" / "config.json"
    if demo.exists():
        return demo.resolve()
    # Installed without a checkout: fall back to the demo shipped beside the package source.
    return (Path(__file__).resolve().parents[2] / "config" / "demo" / "config.json").resolve()


def load_config(path: str | os.PathLike | None = None) -> PipelineConfig:
    """Read and validate both files. Raises ``ConfigError`` naming the file, key and value."""
    config_path = Path(path).resolve() if path else default_config_path()
    raw = _read_json(config_path, expect=dict)
    stripped = [_strip_dashes(k) for k in raw]
    twice = sorted({k for k in stripped if stripped.count(k) > 1})
    if twice:
        raise ConfigError(f"{config_path}: key(s) given both with and without '--': {twice}; keep one")
    raw = {_strip_dashes(k): v for k, v in raw.items()}
    notes = _check_known_keys(raw, config_path)
    try:  # SimpleTuner's argparse reading of strings, its renamed keys, its dataset defaults
        raw, dataset_defaults, read_notes = simpletuner_values.read_config_values(raw, TrainingConfig.model_fields)
    except ValueError as e:
        raise ConfigError(f"{config_path}: {e}") from None
    notes += [f"{config_path}: {n}" for n in read_notes]
    training = _validate(TrainingConfig, raw, config_path, "")
    try:  # issue 15: a webhook_config file or JSON string is read now, so a mistake fails the load
        webhook_targets(training.webhook_config, config_path.parent)
    except ValueError as exc:
        raise ConfigError(f"{config_path}: {exc}") from None

    backend_name = training.data_backend_config or "multidatabackend.json"
    backend_path, theirs = resolve_existing(config_path.parent, backend_name)
    if theirs:
        notes.append(f"{config_path}: data_backend_config {backend_name!r} is not beside config.json; using "
                     f"{backend_path} (SimpleTuner's spelling, relative to the folder that holds config/)")
    entries = _read_json(backend_path, expect=list)
    datasets: list[ImageDataset] = []
    text_embeds: list[TextEmbedsDataset] = []
    wanted_text: dict[str, Any] = {}  # where -> the text_embeds id an image entry names
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise ConfigError(f"{backend_path}: entry [{i}] must be an object, got {entry!r}")
    trained = {f"[{i}]": e for i, e in enumerate(entries) if e.get("dataset_type", "image") == "image"
               and not (e.get("disabled") is True or e.get("disable") is True)}
    if problem := dataset_keys.probability_problem(trained):
        raise ConfigError(f"{backend_path}: {problem}")
    for i, entry in enumerate(entries):
        where = f"[{i}]"
        model = TextEmbedsDataset if entry.get("dataset_type", "image") == "text_embeds" else ImageDataset
        try:
            entry, warned = dataset_keys.check_entry(entry, where, set(model.model_fields))
        except ValueError as e:
            raise ConfigError(f"{backend_path}: {e}") from None
        notes += [f"{backend_path}: {w}" for w in warned]
        kind = entry.get("dataset_type", "image")
        if kind in ("image", "eval") and dataset_defaults:
            entry, filled = simpletuner_values.apply_dataset_defaults(entry, dataset_defaults)
            if filled:
                notes.append(f"{backend_path}: {where} takes {', '.join(filled)} from config.json "
                             "(SimpleTuner's dataset defaults)")
        if kind == "text_embeds":
            text_embeds.append(_validate(TextEmbedsDataset, entry, backend_path, where))
        elif kind in ("image", "eval"):
            if "text_embeds" in entry:  # SimpleTuner: which text_embeds entry caches this dataset's captions
                if entry.get("disabled") is not True:
                    wanted_text[where] = entry["text_embeds"]
                entry = {k: v for k, v in entry.items() if k != "text_embeds"}
            datasets.append(_validate(ImageDataset, entry, backend_path, where))
        else:
            raise ConfigError(
                f"{backend_path}: {where}.dataset_type = {kind!r} is not supported; "
                f"allowed: 'image' (default), 'eval', 'text_embeds'"
                f"{_did_you_mean(str(kind), ['image', 'eval', 'text_embeds'])}"
            )
    for ds in datasets:
        if ds.skip_file_discovery.strip():
            notes.append(
                f"{backend_path}: dataset {ds.id!r} skip_file_discovery={ds.skip_file_discovery!r} is ignored: "
                "discovery is always incremental here (only new or changed files are hashed and probed)"
            )
    datasets = [d for d in datasets if not d.disabled]
    # The auto eval hold-out takes nothing when an eval dataset is configured (config/holdout.py).
    has_eval = any(d.dataset_type == "eval" for d in datasets)
    datasets = [d.model_copy(update={"eval_split_fraction": holdout.resolve_auto(d.eval_split_fraction, has_eval)})
                for d in datasets]
    for ds in datasets:
        where_data, theirs = resolve_existing(backend_path.parent, ds.instance_data_dir)
        if theirs:
            notes.append(f"{backend_path}: dataset {ds.id!r} instance_data_dir {ds.instance_data_dir!r} is not beside "
                         f"this file; using {where_data} (SimpleTuner's spelling, relative to the folder that holds config/)")
    text_embeds = [t for t in text_embeds if not t.disabled]
    ids = [d.id for d in datasets]
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise ConfigError(f"{backend_path}: dataset ids must be unique; repeated: {dupes}")
    if not datasets:
        raise ConfigError(f"{backend_path}: no enabled image dataset (need at least one)")
    if len(text_embeds) > 1:
        defaults = [t for t in text_embeds if t.default]
        if len(defaults) != 1:
            raise ConfigError(
                f"{backend_path}: {len(text_embeds)} text_embeds entries; mark exactly one 'default': true"
            )
        text_embeds = defaults
    text = text_embeds[0] if text_embeds else TextEmbedsDataset(id="text-embeds", dataset_type="text_embeds")
    try:
        filters = load_filters(text.caption_filter_list, backend_path.parent)
    except ValueError as e:
        raise ConfigError(f"{backend_path}: text_embeds {text.id!r}: {e}") from None
    notes += [f"{backend_path}: caption_filter_list: {item!r} is not a regular expression; only its plain-text "
              "occurrences are removed" for item in not_regular_expressions(filters)]
    for where, wanted in wanted_text.items():
        if wanted is not None and wanted != text.id:
            raise ConfigError(
                f"{backend_path}: {where}.text_embeds = {wanted!r} is not supported: every dataset's captions share "
                f"one text-embed cache, the text_embeds entry {text.id!r}; remove the key or name that entry"
            )
    for note in notes:
        warnings.warn(note, stacklevel=2)
    return PipelineConfig(
        config_path=config_path,
        backend_path=backend_path,
        training=training,
        datasets=tuple(datasets),
        text_embeds=text,
        warnings=tuple(notes),
    )


def _strip_dashes(key: str) -> str:
    return key[2:] if key.startswith("--") else key


def _read_json(path: Path, expect: type) -> Any:
    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if not isinstance(data, expect):
        raise ConfigError(f"{path}: expected a JSON {expect.__name__}, got {type(data).__name__}")
    return data


def _check_known_keys(raw: dict, path: Path) -> list[str]:
    """Refuse SimpleTuner options we do not implement; warn about harmless ones (and drop them)."""
    notes = []
    for key in list(raw):
        off = simpletuner_values.is_off_string(raw[key])  # SimpleTuner drops "false" before argparse
        if key in UNSUPPORTED and not off and not dataset_keys.is_off(raw[key], UNSUPPORTED[key][1]):
            raise ConfigError(f"{path}: key {key!r} = {raw[key]!r} is not supported: {UNSUPPORTED[key][0]}")
        if key in UNSUPPORTED:
            raw.pop(key)
        elif key in IGNORED:
            if not off:
                notes.append(f"{path}: key {key!r} is ignored: {IGNORED[key]}")
            raw.pop(key)
        elif key in simpletuner_keys.SIMPLETUNER_OPTIONS and key not in TrainingConfig.model_fields:
            # SimpleTuner's other options: never an "unknown key" (config/simpletuner_keys.py)
            why = simpletuner_keys.reason(key)
            if not simpletuner_keys.is_unset(raw[key]):
                raise ConfigError(f"{path}: key {key!r} = {raw[key]!r} is not supported: {why}")
            notes.append(f"{path}: key {key!r} = {raw[key]!r} is ignored (it sets nothing; {why})")
            raw.pop(key)
    return notes


def _validate(model: type[BaseModel], data: dict, path: Path, where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, model, data, path, where)) from None


def _format_errors(e: ValidationError, model: type[BaseModel], data: dict, path: Path, where: str) -> str:
    lines = [f"{path}: invalid configuration"]
    fields = list(model.model_fields)
    for err in e.errors():
        loc = [str(p) for p in err["loc"]]
        key = ".".join(loc) if loc else "(entry)"
        label = f"{where}.{key}" if where else key
        if err["type"] == "extra_forbidden":
            lines.append(f"  - {label}: unknown key{_did_you_mean(loc[-1], fields)}")
            continue
        if err["type"] == "missing":
            lines.append(f"  - {label}: required key is missing")
            continue
        value = data.get(loc[0], None) if loc else data
        allowed = _allowed(model, loc[0]) if loc else ""
        msg = err["msg"]
        hint = _did_you_mean(str(value), allowed.split("|")) if allowed and isinstance(value, str) else ""
        lines.append(
            f"  - {label} = {value!r}: {msg}" + (f" (allowed: {allowed})" if allowed else "") + hint
        )
    return "\n".join(lines)


def _allowed(model: type[BaseModel], name: str) -> str:
    info = model.model_fields.get(name)
    if info is None:
        return ""
    args = getattr(info.annotation, "__args__", ())
    if args and all(isinstance(a, str) for a in args):
        return "|".join(args)
    return ""


def _did_you_mean(word: str, options: list[str]) -> str:
    match = difflib.get_close_matches(word, [o for o in options if o], n=1, cutoff=0.6)
    return f" (did you mean {match[0]!r}?)" if match else ""
