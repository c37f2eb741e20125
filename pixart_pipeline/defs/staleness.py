"""Dagster's staleness resolver: the one place this project reaches into Dagster internals.

`pixart-pipeline plan` must say *why* an asset is unsynced (which input, which config key), exactly
as the UI's "Unsynced" does. Dagster 1.13 computes that in ``CachingStaleStatusResolver``, which has
no public constructor or wrapper (the UI and ``dagster asset`` use it internally; the public
``AssetSelection`` / ``AutomationCondition`` APIs can select stale assets but not report causes).
If a Dagster release moves these names, only this module changes.
"""

import dagster as dg
from dagster._core.asset_graph_view.asset_graph_view import AssetGraphView, TemporalContext
from dagster._core.definitions.assets.graph.asset_graph import AssetGraph  # what resolve_asset_graph() returns
from dagster._core.definitions.data_version import (
    CachingStaleStatusResolver,
    StaleCauseCategory,
    StaleStatus,
)
from dagster._time import get_current_datetime

__all__ = ["AssetGraph", "StaleCauseCategory", "StaleStatus", "stale_status_resolver"]


def stale_status_resolver(instance: dg.DagsterInstance, graph: AssetGraph) -> CachingStaleStatusResolver:
    """A resolver of ``graph``'s stale statuses and causes against ``instance``, as of now."""
    view = AssetGraphView(
        temporal_context=TemporalContext(effective_dt=get_current_datetime(), last_event_id=None),
        instance=instance,
        asset_graph=graph,
    )
    return CachingStaleStatusResolver(instance=instance, asset_graph=graph, loading_context=view)
