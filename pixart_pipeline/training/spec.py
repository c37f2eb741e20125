"""The run spec: everything one training run needs, as a small JSON file.

The Dagster asset (or a person) writes ``run_spec.json`` and launches
``python -m pixart_pipeline.training run_spec.json``; ``train(RunSpec)`` does the same in Python.
The spec embeds the config's own models, ``Hyperparameters`` (what changes the weights) and
``TrainerSettings`` (checkpointing, resuming, reporting, device), so the keys, their allowed values
and their defaults are stated once, in ``config/models.py``, and validated by the same strict
pydantic rules on both sides of the process boundary.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pixart_pipeline.config.models import Hyperparameters, TrainerSettings
from pixart_pipeline.errors import InputError
from pixart_pipeline.fileio import atomic_write_text

Spec = TypeVar("Spec", bound="SpecModel")


class RunSpecError(InputError):
    """A spec problem, naming the spec file (when known) and the key."""


class SpecModel(BaseModel):
    """A strict, frozen pydantic model read from and written to one JSON file. Read through
    ``load``/``from_json``/``from_dict``, its errors are ``RunSpecError`` naming the file and the
    dotted key (with a did-you-mean for an unknown one)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    @classmethod
    def from_dict(cls: type[Spec], data: Any, source: str = "spec") -> Spec:
        if not isinstance(data, dict):
            raise RunSpecError(f"{source}: expected a JSON object, got {type(data).__name__}")
        try:
            # JSON mode: lists read as tuples, as in the file; strict otherwise ("1" is not 1)
            return cls.model_validate_json(json.dumps(data))
        except ValidationError as exc:
            raise RunSpecError(describe(exc, cls, source)) from None

    @classmethod
    def from_json(cls: type[Spec], text: str, source: str = "spec") -> Spec:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise RunSpecError(f"{source}: not valid JSON: {exc}") from None
        return cls.from_dict(data, source)

    @classmethod
    def load(cls: type[Spec], path: str | Path) -> Spec:
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise RunSpecError(f"{path}: cannot read the spec: {exc.strerror or exc}") from None
        return cls.from_json(text, source=str(path))

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        atomic_write_text(path, self.to_json() + "\n")
        return path


def describe(exc: ValidationError, model: type[BaseModel], source: str) -> str:
    """``source: 'key.sub': what is wrong (got value)`` for every error, an unknown key with the
    closest allowed name of the model it was found in."""
    problems, missing = [], []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        where = ".".join(loc)
        if err["type"] == "missing":
            missing.append(where)
        elif err["type"] == "extra_forbidden":
            allowed = list(_model_at(model, loc[:-1]).model_fields)
            close = difflib.get_close_matches(loc[-1], allowed, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"unknown key '{where}'{hint}; allowed: {', '.join(allowed)}")
        else:
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"'{where}': {message} (got {err.get('input')!r})" if where else message)
    if missing:
        problems.insert(0, f"missing required key(s): {', '.join(missing)}")
    return f"{source}: " + "; ".join(problems)


def _model_at(model: type[BaseModel], loc: list[str]) -> type[BaseModel]:
    """The (nested) model that the location ``loc`` points into."""
    for name in loc:
        annotation = model.model_fields[name].annotation if name in model.model_fields else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            break
        model = annotation
    return model


class RunSpec(SpecModel):
    """One training run. Paths are strings so the spec is plain JSON; relative paths are taken
    relative to the working directory of the trainer (the asset always writes absolute ones)."""

    run_dir: str = Field(min_length=1)
    base_model: str = Field(min_length=1)  # a resolved local pipeline folder or a hub id
    items: str = Field(min_length=1)  # the items parquet (stages.ITEMS_SCHEMA)
    text_store: str = Field(min_length=1)  # root of the text-embedding ShardStore
    empty_text_key: str | None = None  # key of the "" prompt; required when caption dropout is on
    revision: str | None = None
    hyperparameters: Hyperparameters = Hyperparameters()
    settings: TrainerSettings = TrainerSettings()
    log_every_steps: int = Field(10, ge=1)  # progress lines; metrics.jsonl always gets every step
    # Write runs/<id>/ranks/rank-<r>.json (final weights hash, every batch's item indices) per process:
    # an audit of data-parallel training (the tests use it); off by default.
    record_items: bool = False
    # Batches whose cache reads run ahead on a background thread (0: read in the training thread).
    # Never changes what is trained: the sampler position and every random draw stay on the main thread.
    read_ahead_batches: int = Field(2, ge=0)
    # For the model card only: the base model as configured (a Hub id, a local folder or a tiny name;
    # ``base_model`` may be its resolved local folder) and dataset id -> Hub dataset repo id for the
    # datasets downloaded from the Hub. The Hub validates both card fields, so local names stay in the body.
    base_model_name: str | None = None
    hub_datasets: dict[str, str] = {}
    # In-training validation (issue 14; training/watch.py): prompts, eval items, CLIP model. Never
    # changes the weights. A dict here (validated as ``watch_spec.WatchSpec``) keeps this module free
    # of the evaluation settings' import.
    watch: dict[str, Any] | None = None

    def replace(self, **changes: Any) -> "RunSpec":
        """A validated copy with ``changes``: a hyperparameter or trainer-setting name goes into its
        model (``spec.replace(learning_rate=1e-4, checkpointing_steps=10, run_dir="...")``)."""
        data = self.to_dict()
        for key, value in changes.items():
            part = ("hyperparameters" if key in Hyperparameters.model_fields
                    else "settings" if key in TrainerSettings.model_fields else None)
            if part:
                data[part][key] = value
            else:
                data[key] = value
        return type(self).from_dict(data, "spec.replace")

    @classmethod
    def build(cls, **values: Any) -> "RunSpec":
        """A spec from flat keyword values, hyperparameters and trainer settings included by name
        (the way tests and notebooks write them)."""
        fields = {k: v for k, v in values.items() if k in cls.model_fields}
        return cls.from_dict({"hyperparameters": {}, "settings": {}, **fields}, "RunSpec.build").replace(
            **{k: v for k, v in values.items() if k not in cls.model_fields})

    @model_validator(mode="after")
    def _dropout_needs_empty_prompt(self) -> "RunSpec":
        p = self.hyperparameters.caption_dropout_probability
        if p > 0 and not self.empty_text_key:
            raise ValueError(
                f"'hyperparameters.caption_dropout_probability' is {p} but 'empty_text_key' is not set; "
                "caption dropout trains on the empty prompt's embedding, so the spec must name its text-store key"
            )
        return self
