"""Wire a config into Definitions: assets, checks, sensors, schedule, resources, executor."""


import dagster as dg

from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.defs.assets import build_assets
from pixart_pipeline.defs.checks import build_checks
from pixart_pipeline.defs.executor import executor
from pixart_pipeline.defs.recovery_sensor import crash_recovery_sensor
from pixart_pipeline.defs.resources import build_resources
from pixart_pipeline.defs.schedules import build_retraining_schedule
from pixart_pipeline.defs.sensors import automation_sensor, build_dataset_folder_sensor


def build_definitions(cfg: PipelineConfig) -> dg.Definitions:
    return dg.Definitions(
        assets=build_assets(cfg),
        asset_checks=build_checks(cfg),
        sensors=[build_dataset_folder_sensor(cfg), automation_sensor, crash_recovery_sensor],
        schedules=[build_retraining_schedule(cfg)],
        resources=build_resources(cfg.training.device),
        executor=executor,
    )
