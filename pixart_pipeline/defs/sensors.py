"""Sensors: react to new files in a dataset folder, and (optionally) automate everything."""


import dagster as dg

from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.data.stage import dataset_folder_changes, folder_changes_key
from pixart_pipeline.defs.assets.common import asset_key
from pixart_pipeline.stages import RAW_DATASET


def build_dataset_folder_sensor(cfg: PipelineConfig) -> dg.SensorDefinition:
    @dg.sensor(
        name="dataset_folder_sensor",
        asset_selection=dg.AssetSelection.assets(*[asset_key(RAW_DATASET, ds.id) for ds in cfg.datasets]),
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.STOPPED,
        description=(
            "Every minute, compares each dataset folder with its last manifest (file sizes and mtimes "
            "only, no hashing) and re-materializes `raw_dataset/<id>` when files were added, changed or "
            "removed. With the automation sensor on, the rest of the lane follows."
        ),
    )
    def dataset_folder_sensor(context: dg.SensorEvaluationContext) -> list[dg.RunRequest] | dg.SkipReason:
        requests = []
        for ds in cfg.datasets:
            changes = dataset_folder_changes(cfg, ds)
            if changes:
                context.log.info(f"{ds.id}: {changes}")
                key = folder_changes_key(cfg, ds, changes)
                requests.append(dg.RunRequest(run_key=f"{ds.id}-{key}", asset_selection=[asset_key(RAW_DATASET, ds.id)]))
        return requests or dg.SkipReason("no dataset folder changed since its manifest")

    return dataset_folder_sensor


automation_sensor = dg.AutomationConditionSensorDefinition(
    "pixart_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.STOPPED,
    description=(
        "Materializes assets whose config changed, that are missing, or whose inputs' data versions "
        "changed (see each asset's automation condition). Stopped by default."
    ),
)
