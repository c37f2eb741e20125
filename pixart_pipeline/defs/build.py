"""Wire a config into Definitions: assets, checks, sensors, schedule, resources, executor."""


import dagster as dg

from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.defs.assets import build_assets
from pixart_pipeline.defs.checks import build_checks
from pixart_pipeline.defs.executor_choice import build_executor, check_executor_fits, executor_kind
from pixart_pipeline.defs.executor import executor
from pixart_pipeline.defs.recovery_sensor import crash_recovery_sensor
from pixart_pipeline.defs.resources import build_resources
from pixart_pipeline.defs.schedules import build_retraining_schedule
from pixart_pipeline.defs.sensors import automation_sensor, build_dataset_folder_sensor
from pixart_pipeline.defs.sync_job import build_sync_job


def build_definitions(cfg: PipelineConfig) -> dg.Definitions:
    kind = executor_kind()  # $PIXART_EXECUTOR: local (default) or k8s
    check_executor_fits(cfg, kind)
    return dg.Definitions(
        assets=build_assets(cfg),
        asset_checks=build_checks(cfg),
        sensors=[build_dataset_folder_sensor(cfg), automation_sensor, crash_recovery_sensor],
        schedules=[build_retraining_schedule(cfg)],
        # The UI's one click for `pixart-pipeline sync` (the cascade included); built lazily in the run.
        jobs=[build_sync_job(cfg, lambda: build_definitions(cfg))],
        resources=build_resources(cfg.training.device),
        executor=build_executor(kind, local=executor),
    )
