"""The run spec: everything one training run needs, as a small JSON file.

The Dagster asset (or a person) writes ``run_spec.json`` and launches
``python -m pixart_pipeline.training run_spec.json``; ``train(RunSpec)`` does the same in Python.
Hyperparameter names and their allowed values are those of ``config.TrainingConfig`` (SimpleTuner's
``config.json`` keys), validated with the same strict pydantic rules.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from pixart_pipeline.config.models import TrainingConfig
from pixart_pipeline.fileio import atomic_write_text

# The TrainingConfig fields a run spec may set: those that change the trained weights.
HYPERPARAMETER_KEYS: tuple[str, ...] = (
    "seed",
    "learning_rate",
    "lr_scheduler",
    "lr_warmup_steps",
    "train_batch_size",
    "gradient_accumulation_steps",
    "max_train_steps",
    "num_train_epochs",
    "lr_num_cycles",
    "lr_power",
    "lr_step_rules",
    "mixed_precision",
    "optimizer",
    "fused_optimizer",
    "adam_beta1",
    "adam_beta2",
    "adam_weight_decay",
    "adam_epsilon",
    "max_grad_norm",
    "snr_gamma",
    "noise_offset",
    "caption_dropout_probability",
    "use_ema",
    "ema_decay",
    "use_bitfit",
    "num_processes",
    "small_bucket_rule",
)
# TrainingConfig fields a run spec may also set that never change the weights: where results go.
REPORTING_KEYS: tuple[str, ...] = ("report_to", "tracker_project_name", "tracker_run_name", "push_to_hub",
                                   "hub_model_id")
SPEC_CONFIG_KEYS = HYPERPARAMETER_KEYS + REPORTING_KEYS

DEVICES = ("auto", "cpu", "cuda", "mps")


class RunSpecError(ValueError):
    """A run spec problem, naming the spec file (when known) and the key."""


@dataclass(frozen=True)
class RunSpec:
    """One training run. Paths are strings so the spec is plain JSON; relative paths are taken
    relative to the working directory of the trainer (the asset always writes absolute ones)."""

    run_dir: str
    base_model: str  # a resolved local pipeline folder or a hub id
    items: str  # parquet: vae_store, vae_key, text_key, target_width, target_height, dataset_id, repeats
    text_store: str  # root of the text-embedding ShardStore
    empty_text_key: str | None = None  # key of the "" prompt; required when caption dropout is on
    revision: str | None = None
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    checkpointing_steps: int = 500
    checkpoints_total_limit: int | None = None
    resume_from_checkpoint: str = "latest"  # "latest" | "none" | a checkpoint folder
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "mps"
    log_every_steps: int = 10  # progress lines; metrics.jsonl always gets every step
    # Recompute activations in the backward pass: less memory, same gradients (not a hyperparameter).
    gradient_checkpointing: bool = False
    # Write runs/<id>/ranks/rank-<r>.json (final weights hash, every batch's item indices) per process:
    # an audit of data-parallel training (the tests use it); off by default.
    record_items: bool = False
    # Batches whose cache reads run ahead on a background thread (0: read in the training thread).
    # Never changes what is trained: the sampler position and every random draw stay on the main thread.
    read_ahead_batches: int = 2
    # For the model card only: the base model as configured (a Hub id, a local folder or a tiny name;
    # ``base_model`` may be its resolved local folder) and dataset id -> Hub dataset repo id for the
    # datasets downloaded from the Hub. The Hub validates both card fields, so local names stay in the body.
    base_model_name: str | None = None
    hub_datasets: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -------------------------------------------------------------------------------
    def validate(self, source: str = "run spec") -> None:
        """Raise ``RunSpecError`` naming the key and what is allowed."""
        for name in ("run_dir", "base_model", "items", "text_store"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise RunSpecError(f"{source}: '{name}' must be a non-empty string, got {value!r}")
        for name in ("empty_text_key", "revision", "base_model_name"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise RunSpecError(f"{source}: '{name}' must be a string or null, got {value!r}")
        if not isinstance(self.hub_datasets, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in self.hub_datasets.items()):
            raise RunSpecError(f"{source}: 'hub_datasets' must map dataset ids to Hub repo ids, got {self.hub_datasets!r}")
        if not isinstance(self.hyperparameters, dict):
            raise RunSpecError(f"{source}: 'hyperparameters' must be an object, got {self.hyperparameters!r}")
        if not _is_int(self.checkpointing_steps) or self.checkpointing_steps < 1:
            raise RunSpecError(
                f"{source}: 'checkpointing_steps' must be an integer >= 1, got {self.checkpointing_steps!r}"
            )
        limit = self.checkpoints_total_limit
        if limit is not None and (not _is_int(limit) or limit < 1):
            raise RunSpecError(f"{source}: 'checkpoints_total_limit' must be null or an integer >= 1, got {limit!r}")
        if not isinstance(self.record_items, bool):
            raise RunSpecError(f"{source}: 'record_items' must be true or false, got {self.record_items!r}")
        if not _is_int(self.read_ahead_batches) or self.read_ahead_batches < 0:
            raise RunSpecError(
                f"{source}: 'read_ahead_batches' must be an integer >= 0, got {self.read_ahead_batches!r}"
            )
        if not _is_int(self.log_every_steps) or self.log_every_steps < 1:
            raise RunSpecError(f"{source}: 'log_every_steps' must be an integer >= 1, got {self.log_every_steps!r}")
        resume = self.resume_from_checkpoint
        if not isinstance(resume, str) or not resume.strip():
            raise RunSpecError(
                f"{source}: 'resume_from_checkpoint' must be 'latest', 'none' or a checkpoint folder, got {resume!r}"
            )
        if self.device not in DEVICES:
            raise RunSpecError(f"{source}: 'device' must be one of {', '.join(DEVICES)}, got {self.device!r}")
        hp = self.training_config(source)  # validates every hyperparameter
        if hp.caption_dropout_probability > 0 and not self.empty_text_key:
            raise RunSpecError(
                f"{source}: 'hyperparameters.caption_dropout_probability' is "
                f"{hp.caption_dropout_probability} but 'empty_text_key' is not set; caption dropout "
                "trains on the empty prompt's embedding, so the spec must name its text-store key"
            )

    def training_config(self, source: str = "run spec") -> TrainingConfig:
        """The hyperparameters as a validated ``TrainingConfig`` (unset ones take its defaults)."""
        for key in self.hyperparameters:
            if key not in SPEC_CONFIG_KEYS:
                close = difflib.get_close_matches(key, SPEC_CONFIG_KEYS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise RunSpecError(
                    f"{source}: unknown hyperparameter '{key}'{hint}; allowed: {', '.join(SPEC_CONFIG_KEYS)}"
                )
        try:
            return TrainingConfig.model_validate(dict(self.hyperparameters))
        except ValidationError as exc:
            problems = "; ".join(
                f"'hyperparameters.{'.'.join(str(p) for p in err['loc'])}': {err['msg']} (got {err.get('input')!r})"
                for err in exc.errors()
            )
            raise RunSpecError(f"{source}: {problems}") from None

    # -- JSON -------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: Any, source: str = "run spec") -> "RunSpec":
        if not isinstance(data, dict):
            raise RunSpecError(f"{source}: expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in dataclasses.fields(cls)]
        for key in data:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise RunSpecError(f"{source}: unknown key '{key}'{hint}; allowed: {', '.join(names)}")
        missing = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING and f.name not in data]  # type: ignore[misc]
        if missing:
            raise RunSpecError(f"{source}: missing required key(s): {', '.join(missing)}")
        spec = object.__new__(cls)
        for f in dataclasses.fields(cls):
            if f.name in data:
                value = data[f.name]
            elif f.default is not dataclasses.MISSING:
                value = f.default
            else:
                value = f.default_factory()  # type: ignore[misc]
            object.__setattr__(spec, f.name, value)
        spec.validate(source)
        return spec

    @classmethod
    def from_json(cls, text: str, source: str = "run spec") -> "RunSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RunSpecError(f"{source}: not valid JSON: {exc}") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls, path: str | Path) -> "RunSpec":
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RunSpecError(f"{path}: cannot read the run spec: {exc.strerror or exc}") from None
        return cls.from_json(text, source=str(path))

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, self.to_json() + "\n")
        return path


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
