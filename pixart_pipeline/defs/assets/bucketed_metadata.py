"""`bucketed_metadata/<id>`: one row per image with size, caption, status, bucket, crop and split."""


import dagster as dg

from pixart_pipeline.config import ImageDataset, PipelineConfig
from pixart_pipeline.config.fingerprints import bucketed_metadata_fields
from pixart_pipeline.data.stage import run_bucketed_metadata
from pixart_pipeline.defs.assets.common import (
    user_errors,
    automation,
    captions_key,
    metadata_key,
    raw_key,
    stage_code_version,
    to_materialize_result,
)


def build_bucketed_metadata_asset(cfg: PipelineConfig, ds: ImageDataset) -> dg.AssetsDefinition:
    @dg.asset(
        key=metadata_key(ds.id),
        deps=[raw_key(ds.id), captions_key(ds.id)],
        group_name="data",
        code_version=stage_code_version("bucketed_metadata", bucketed_metadata_fields(cfg, ds)),
        automation_condition=automation(),
        kinds={"parquet"},
        description=(
            f"Probed, filtered and bucketed metadata of dataset `{ds.id}` "
            f"(resolution {ds.resolution} {ds.resolution_type}, crop={ds.crop}, crop_aspect={ds.crop_aspect}). "
            "Every file keeps a row; rejected files carry a reason code. Crop boxes are seeded by the "
            "image's hash, never by the training seed. Data version: hash of the table's semantic columns."
        ),
    )
    def bucketed_metadata(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        with user_errors():
            return to_materialize_result(run_bucketed_metadata(cfg, ds, log=context.log.info))

    return bucketed_metadata
