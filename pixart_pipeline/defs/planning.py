"""What is unsynced and why, and how to bring it back in sync, using Dagster's own staleness.

Dagster says an asset is stale when its code version (stage revision + config fingerprint) changed
or when an input's data version changed. Two things it cannot see are added here: a dataset folder
that changed on disk since its manifest was written, and *which* config key changed (each
materialization records its fingerprint fields, so the planner can diff them). Dagster 1.13 does not
propagate staleness to descendants, so those are listed as "re-checked after upstream": whether they
re-run depends on whether upstream content really changes.
"""


import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

import dagster as dg

from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.data.stage import dataset_folder_changes
from pixart_pipeline.defs import liveness, recovery
from pixart_pipeline.defs.assets.common import CONFIG_METADATA_KEY, asset_key
from pixart_pipeline.defs.staleness import AssetGraph, StaleCauseCategory, StaleStatus, stale_status_resolver
from pixart_pipeline.stages import RAW_DATASET, fields_by_key


@dataclass
class PlanEntry:
    key: dg.AssetKey
    state: str  # "missing" | "unsynced" | "downstream"
    reasons: list[str] = field(default_factory=list)

    @property
    def actionable(self) -> bool:
        return self.state in ("missing", "unsynced")


def stage_fields(cfg: PipelineConfig) -> dict[dg.AssetKey, dict]:
    """The fingerprint fields of every asset for this config (what its code version hashes)."""
    return {dg.AssetKey(list(key)): fields for key, fields in fields_by_key(cfg).items()}


def compute_plan(instance: dg.DagsterInstance, defs: dg.Definitions, cfg: PipelineConfig) -> list[PlanEntry]:
    """Every asset that is missing or unsynced, in dependency order, each with its reasons."""
    return plan_asset_graph(instance, defs.resolve_asset_graph(), cfg)


def plan_asset_graph(instance: dg.DagsterInstance, graph: AssetGraph, cfg: PipelineConfig) -> list[PlanEntry]:
    """``compute_plan`` for an asset graph already at hand (a schedule tick's ``repository_def.asset_graph``)."""
    resolver = stale_status_resolver(instance, graph)
    current = stage_fields(cfg)
    raw_datasets = {asset_key(RAW_DATASET, ds.id): ds for ds in cfg.datasets}
    plan: dict[dg.AssetKey, PlanEntry] = {}
    for key in graph.toposorted_asset_keys:
        if not graph.get(key).is_materializable:
            continue
        status = resolver.get_status(key)
        reasons: list[str] = []
        if status == StaleStatus.MISSING:
            reasons.append("never materialized")
        elif status == StaleStatus.STALE:
            for cause in resolver.get_stale_causes(key):
                if cause.category == StaleCauseCategory.CODE:
                    reasons += _config_diff(instance, key, current.get(key, {}))
                elif cause.category == StaleCauseCategory.DATA and cause.dependency_asset_key is not None:
                    dep = cause.dependency_asset_key.to_user_string()
                    reasons.append(f"input {dep} has new data")
                else:
                    reasons.append(cause.reason)
        if key in raw_datasets and status != StaleStatus.MISSING:
            changes = dataset_folder_changes(cfg, raw_datasets[key])
            if changes:
                reasons.append(f"dataset folder changed: {changes}")
        if reasons:
            state = "missing" if status == StaleStatus.MISSING else "unsynced"
            plan[key] = PlanEntry(key, state, sorted(set(reasons), key=reasons.index))
        else:
            upstream = sorted(p.to_user_string() for p in graph.get(key).parent_keys if p in plan)
            if upstream:
                plan[key] = PlanEntry(key, "downstream", [f"re-checked after {', '.join(upstream)}"])
    return list(plan.values())


def _config_diff(instance: dg.DagsterInstance, key: dg.AssetKey, now: dict) -> list[str]:
    """Which config fields differ from those recorded with the latest materialization."""
    event = instance.get_latest_materialization_event(key)
    recorded = None
    if event is not None and event.asset_materialization is not None:
        entry = event.asset_materialization.metadata.get(CONFIG_METADATA_KEY)
        recorded = entry.value if entry is not None else None
    if not isinstance(recorded, dict):
        return ["stage code version changed"]
    before, after = _flatten(recorded), _flatten(now)
    changed = [
        f"config {name}: {before.get(name, '(unset)')!r} -> {after.get(name, '(unset)')!r}"
        for name in sorted(set(before) | set(after))
        if _norm(before.get(name)) != _norm(after.get(name))
    ]
    return changed or ["stage code revision changed"]


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flatten(v, name + ".")
        else:
            out[name] = v
    return out


def _norm(value):
    # JSON metadata turns tuples into lists; compare on the JSON shape.
    if isinstance(value, tuple):
        return [_norm(v) for v in value]
    if isinstance(value, list):
        return [_norm(v) for v in value]
    return value


class SyncError(RuntimeError):
    pass


@dataclass
class SyncStep:
    key: dg.AssetKey
    seconds: float
    run_id: str


def sync(
    instance: dg.DagsterInstance,
    defs: dg.Definitions,
    cfg: PipelineConfig,
    echo: Callable[[str], None] = print,
    log_level: str = "INFO",
) -> list[SyncStep]:
    """Materialise exactly what is unsynced, one stage at a time, re-planning after each.

    Re-planning after each stage is what stops a cascade: an upstream re-run that produced
    identical content leaves its children synced, so they are not run.
    """
    job = defs.resolve_implicit_global_asset_job_def()
    done: list[SyncStep] = []
    while True:
        todo = [e for e in compute_plan(instance, defs, cfg) if e.actionable]
        if not todo:
            return done
        entry = todo[0]
        if any(step.key == entry.key for step in done):
            raise SyncError(
                f"{entry.key.to_user_string()} is still unsynced after materializing it: {entry.reasons}"
            )
        name = entry.key.to_user_string()
        echo(f"-> {name}: {'; '.join(entry.reasons)}")
        start = time.perf_counter()
        # Crash safety (defs/recovery.py): dead runs give their slots back, this run claims its pool
        # slot before it exists (so a live holder fails this sync now, not after an endless wait),
        # and records this process so a later command can tell whether it is still alive.
        run_id = str(uuid.uuid4())
        node = defs.resolve_asset_graph().get(entry.key)
        try:
            recovery.claim_slots(instance, run_id, node.assets_def.node_def.name, sorted(node.pools or ()), echo)
        except recovery.PoolBusy as busy:
            raise SyncError(f"cannot materialize {name} now: {busy}") from None
        try:
            with liveness.marked(run_id):
                result = job.execute_in_process(
                    instance=instance,
                    asset_selection=[entry.key],
                    raise_on_error=False,
                    run_config={"loggers": {"console": {"config": {"log_level": log_level}}}},
                    run_id=run_id,
                    tags=recovery.owner_tags(),
                )
        finally:
            instance.event_log_storage.free_concurrency_slots_for_run(run_id)
        seconds = time.perf_counter() - start
        # A failed blocking check also fails the run; its description (what to change) comes first.
        for evaluation in result.get_asset_check_evaluations():
            if not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR:
                raise SyncError(f"check {evaluation.check_name} on {name} failed: {evaluation.description}")
        if not result.success:
            raise SyncError(
                f"materializing {name} failed (run {result.run_id[:8]}):\n{_failure_messages(instance, result)}"
            )
        echo(f"   done in {seconds:.1f}s (run {result.run_id[:8]})")
        done.append(SyncStep(entry.key, seconds, result.run_id))


def _failure_messages(instance: dg.DagsterInstance, result) -> str:
    """The root error of each failed step (e.g. "model X cannot be downloaded: ..."), not the stack.

    A subprocess (the trainer under Pipes) fails as "process failed with code 2"; its own reason is
    the last ERROR it logged, so that is shown too.
    """
    lines, failed_steps = [], set()
    for event in result.all_events:
        if not event.is_step_failure:
            continue
        failed_steps.add(event.step_key)
        error = event.step_failure_data.error
        # Skip Dagster's wrappers; stop at the first error our code (or a library) raised.
        while error is not None and (error.cls_name or "").startswith("Dagster") and error.cause is not None:
            error = error.cause
        message = error.message.strip() if error is not None else "unknown error"
        message = message.removeprefix("dagster._core.definitions.events.Failure: ")
        lines.append(f"  {event.step_key}: {message}")
    logged = [
        entry.user_message
        for entry in instance.all_logs(result.run_id)
        if entry.dagster_event is None and entry.level >= logging.ERROR and entry.user_message
        and entry.step_key in failed_steps
    ]
    if logged:
        lines.append(f"  last error logged: {logged[-1]}")
    return "\n".join(lines) or "  (no step failure recorded; see the run's logs)"
