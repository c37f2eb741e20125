"""A retraining schedule: nightly, bring everything unsynced back in sync (stopped by default)."""


import dagster as dg

from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.defs.planning import plan_asset_graph


def build_retraining_schedule(cfg: PipelineConfig) -> dg.ScheduleDefinition:
    @dg.schedule(
        name="retraining_schedule",
        cron_schedule="0 3 * * *",
        target=dg.AssetSelection.all(),
        default_status=dg.DefaultScheduleStatus.STOPPED,
        description=(
            "At 03:00, requests one run of every asset `pixart-pipeline plan` reports as missing or "
            "unsynced (including dataset folders that changed on disk). Nothing to do -> skipped."
        ),
    )
    def retraining_schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest | dg.SkipReason:
        # The tick's own code location: its asset graph is the one this schedule belongs to (the
        # Definitions are not rebuilt on every tick).
        plan = plan_asset_graph(context.instance, context.repository_def.asset_graph, cfg)
        selection = [entry.key for entry in plan if entry.actionable or entry.state == "downstream"]
        if not selection:
            return dg.SkipReason("everything is in sync")
        return dg.RunRequest(asset_selection=selection)

    return retraining_schedule
