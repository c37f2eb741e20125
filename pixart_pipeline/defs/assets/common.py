"""Shared pieces of every asset: keys, automation, and StageResult -> MaterializeResult."""


import base64
import io
from pathlib import Path

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
from PIL import Image

from pixart_pipeline.config import ConfigError
from pixart_pipeline.data.hub import HubUnavailableError
from pixart_pipeline.models import ModelUnavailableError

from pixart_pipeline.config.fingerprints import code_version
from pixart_pipeline.stage_result import InsufficientDataError, MissingInputError, StageResult

# Metadata key under which each materialization records its fingerprint fields, so that
# `pixart-pipeline plan` can say which config key changed since the last run.
CONFIG_METADATA_KEY = "pixart/config"


def raw_key(dataset_id: str) -> dg.AssetKey:
    return dg.AssetKey(["raw_dataset", dataset_id])


def captions_key(dataset_id: str) -> dg.AssetKey:
    return dg.AssetKey(["captions", dataset_id])


def metadata_key(dataset_id: str) -> dg.AssetKey:
    return dg.AssetKey(["bucketed_metadata", dataset_id])


def vae_key(dataset_id: str) -> dg.AssetKey:
    return dg.AssetKey(["vae_cache", dataset_id])


TEXT_EMBED_KEY = dg.AssetKey("text_embed_cache")
CHECKPOINT_KEY = dg.AssetKey("trained_checkpoint")
REPORT_KEY = dg.AssetKey("evaluation_report")


def automation() -> dg.AutomationCondition:
    """Run when missing, when the stage's config changed, or when an input's *data version* changed.

    Stricter than ``AutomationCondition.eager()``, which fires on any new upstream materialization:
    an upstream re-run that produced identical content (same data version) stops the cascade here.
    """
    ac = dg.AutomationCondition
    trigger = ac.newly_missing() | ac.code_version_changed() | ac.any_deps_match(ac.data_version_changed())
    return (
        trigger.since_last_handled().with_label("missing, config changed, or input data changed")
        & ~ac.any_deps_missing()
        & ~ac.any_deps_match(ac.any_checks_match(ac.check_failed(), blocking_only=True))
        & ~ac.any_deps_in_progress()
        & ~ac.in_progress()
    )


@contextmanager
def user_errors() -> Iterator[None]:
    """Errors a user can fix (config, missing model, missing input) fail the step with their message.

    ``dg.Failure`` shows the description in the UI and the CLI instead of a stack trace.
    """
    try:
        yield
    except (ModelUnavailableError, HubUnavailableError, ConfigError, MissingInputError, InsufficientDataError) as e:
        raise dg.Failure(description=str(e), allow_retries=False) from None


def stage_code_version(stage: str, fields: dict) -> str:
    return code_version(stage, fields)


def to_materialize_result(result: StageResult) -> dg.MaterializeResult:
    """Translate a core StageResult into Dagster metadata (paths, floats, tables, config)."""
    metadata: dict[str, dg.MetadataValue] = {"path": dg.MetadataValue.path(str(result.path))}
    for name, value in result.metadata.items():
        if isinstance(value, bool) or value is None:
            metadata[name] = dg.MetadataValue.text(str(value))
        elif isinstance(value, int):
            metadata[name] = dg.MetadataValue.int(value)
        elif isinstance(value, float):
            metadata[name] = dg.MetadataValue.float(value)
        elif isinstance(value, (dict, list)):
            metadata[name] = dg.MetadataValue.json(value)
        else:
            metadata[name] = dg.MetadataValue.text(str(value))
    for name, table in result.markdown.items():
        metadata[name] = dg.MetadataValue.md(table)
    if result.images:
        metadata["images"] = dg.MetadataValue.md(thumbnails_markdown(result.images))
    metadata[CONFIG_METADATA_KEY] = dg.MetadataValue.json(result.config)
    return dg.MaterializeResult(metadata=metadata, data_version=dg.DataVersion(result.data_version))


def thumbnails_markdown(paths: list[Path], size: int = 480, limit: int = 12) -> str:
    """Inline PNG thumbnails (data URLs) so the UI shows sample images beside the numbers."""
    parts = []
    for path in paths[:limit]:
        with Image.open(path) as image:
            image.thumbnail((size, size))
            buf = io.BytesIO()
            image.convert("RGB").save(buf, format="PNG")
        data = base64.b64encode(buf.getvalue()).decode()
        parts.append(f"![{path.name}](data:image/png;base64,{data})")
    return " ".join(parts)
