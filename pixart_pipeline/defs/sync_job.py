"""The `sync` job: the UI's one click for what `pixart-pipeline sync` does.

"Materialize unsynced" in the UI runs what is unsynced *now*; Dagster does not propagate staleness,
so after a new checkpoint the user would have to come back for `evaluation_report`. This job runs
the same loop as the CLI (`planning.sync`): plan, materialize the first unsynced asset in its own
run, re-plan, repeat, so the cascade follows and stops where an upstream re-run changed nothing.

Why a job and not the automation sensor switched on by default: the job does one thing when asked,
in a known order, with no timer; the sensor would also start training on its own the moment a
config edit is reloaded, and its 30 s ticks race with a user's own clicks.
"""

from typing import Callable

import dagster as dg

from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.defs.guard import guarded
from pixart_pipeline.defs.planning import SyncError, sync

SYNC_JOB_NAME = "sync"


def build_sync_job(cfg: PipelineConfig, definitions: Callable[[], dg.Definitions]) -> dg.JobDefinition:
    """A one-op job that runs ``sync`` over ``definitions()`` (built when the run starts, so the
    run worker's freshly loaded config is the one synced)."""

    @dg.op(name="sync_unsynced_assets")
    def sync_unsynced_assets(context: dg.OpExecutionContext) -> None:
        """Materialize every unsynced asset, one run each, re-planning after each."""
        try:
            steps = sync(context.instance, definitions(), cfg, echo=context.log.info)
        except SyncError as e:
            raise dg.Failure(description=str(e), allow_retries=False) from None
        if not steps:
            context.log.info("everything is in sync: nothing to do")

    @dg.job(
        name=SYNC_JOB_NAME,
        description=(
            "What `pixart-pipeline sync` does, from the UI: materializes every unsynced asset in "
            "dependency order, one run each (they appear in Runs), re-checking after each, so a "
            "new checkpoint is followed by its evaluation. Launch it from the Launchpad; no config."
        ),
        tags={"pixart/kind": "sync"},
        # One op that only plans and starts runs: a step subprocess would add start-up time, nothing else.
        # Guarded (defs/guard.py): the run records its worker's pid, so a killed sync run is recovered.
        executor_def=guarded(dg.in_process_executor),
    )
    def sync_job():
        sync_unsynced_assets()

    return sync_job
