"""`bucketed_metadata/<id>`: one row per image with size, caption, status, bucket, crop and split."""


import dagster as dg

from pixart_pipeline.config import ImageDataset, PipelineConfig
from pixart_pipeline.data.stage import run_bucketed_metadata
from pixart_pipeline.defs.assets.common import stage_asset, to_materialize_result, user_errors
from pixart_pipeline.stages import BUCKETED_METADATA


def build_bucketed_metadata_asset(cfg: PipelineConfig, ds: ImageDataset) -> dg.AssetsDefinition:
    @stage_asset(
        BUCKETED_METADATA, cfg, ds,
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
            return to_materialize_result(context, run_bucketed_metadata(cfg, ds, log=context.log.info))

    return bucketed_metadata
