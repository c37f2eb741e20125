"""Shared pieces of every asset: keys and decorator from the stage contract, automation,
StageResult -> MaterializeResult, upstream metadata."""


from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from pixart_pipeline.config import ConfigError, ImageDataset, PipelineConfig
from pixart_pipeline.data.hub import HubUnavailableError
from pixart_pipeline.defs.executor_choice import executor_kind
from pixart_pipeline.models import ModelUnavailableError
from pixart_pipeline.stage_result import InsufficientDataError, MissingInputError, StageResult, thumbnails_markdown
from pixart_pipeline.stages import Stage, input_keys

# Metadata key under which each materialization records its fingerprint fields, so that
# `pixart-pipeline plan` can say which config key changed since the last run.
CONFIG_METADATA_KEY = "pixart/config"


def asset_key(stage: Stage, dataset_id: str | None = None) -> dg.AssetKey:
    """The Dagster key of ``stage``'s asset (of dataset ``dataset_id`` for a per-dataset stage)."""
    return dg.AssetKey(list(stage.key(dataset_id)))


def stage_asset(stage: Stage, cfg: PipelineConfig, ds: ImageDataset | None = None, *, kinds: set[str],
                description: str):
    """``@dg.asset`` for one stage, everything but the description read from the stage contract:
    key, inputs, group, the `gpu` pool, code version, automation. The fingerprint fields are
    computed once, here, so the code version and the recorded ``pixart/config`` always agree."""
    fields = stage.fingerprint_fields(cfg, ds)
    return dg.asset(
        key=asset_key(stage, ds.id if ds else None),
        deps=[dg.AssetKey(list(k)) for k in input_keys(stage, cfg, ds)],
        group_name=stage.group,
        pool="gpu" if stage.gpu else None,
        code_version=stage.version_of(fields),
        automation_condition=automation(),
        kinds=kinds,
        description=description,
        metadata={CONFIG_METADATA_KEY: fields},  # definition metadata: what the code version hashes
        op_tags=step_op_tags(stage, cfg),
    )


def step_op_tags(stage: Stage, cfg: PipelineConfig) -> dict[str, str] | None:
    """Under ``PIXART_EXECUTOR=k8s``, the stage's ``dagster-k8s/config`` tag (its pod's GPUs, node
    pool, memory); none locally. Tags are not part of the code version: no fingerprint moves."""
    if executor_kind() != "k8s":
        return None
    from pixart_pipeline.defs.k8s.settings import load_settings
    from pixart_pipeline.defs.k8s.steps import step_tags

    return step_tags(stage, cfg, load_settings())


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


def to_materialize_result(context: dg.AssetExecutionContext, result: StageResult) -> dg.MaterializeResult:
    """Translate a core StageResult into Dagster metadata (paths, floats, tables), plus the stage's
    fingerprint fields (``plan`` diffs them)."""
    return dg.MaterializeResult(metadata=_metadata(result) | config_metadata(context),
                                data_version=dg.DataVersion(result.data_version))


def config_metadata(context: dg.AssetExecutionContext) -> dict[str, dg.MetadataValue]:
    """The fingerprint fields that the asset's code version hashes (its definition metadata), to be
    recorded with the materialization."""
    fields = context.assets_def.metadata_by_key[context.asset_key][CONFIG_METADATA_KEY]
    return {CONFIG_METADATA_KEY: dg.MetadataValue.json(getattr(fields, "value", fields))}


def _metadata(result: StageResult) -> dict[str, dg.MetadataValue]:
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
    return metadata


def upstream_metadata(instance: dg.DagsterInstance, key: dg.AssetKey, name: str) -> str:
    """A metadata value of ``key``'s latest materialization (e.g. the checkpoint's ``run_dir``): how a
    downstream stage finds its upstream artefacts, never by re-deriving them (DESIGN.md 3.1)."""
    event = instance.get_latest_materialization_event(key)
    if event is None or event.asset_materialization is None:
        raise dg.Failure(f"{key.to_user_string()} has not been materialized yet: materialize it first",
                         allow_retries=False)
    entry = event.asset_materialization.metadata.get(name)
    if entry is None:
        raise dg.Failure(f"the latest materialization of {key.to_user_string()} has no '{name}' metadata "
                         "(it predates this version): materialize it again", allow_retries=False)
    return str(entry.value)
