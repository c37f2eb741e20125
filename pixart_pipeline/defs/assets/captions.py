"""`captions/<id>`: each image's captions (one, or several textfile lines / parquet list entries), by the
dataset's `caption_strategy`."""


import dagster as dg

from pixart_pipeline.config import ImageDataset, PipelineConfig
from pixart_pipeline.data.stage import run_captions
from pixart_pipeline.defs.assets.common import stage_asset, to_materialize_result, user_errors
from pixart_pipeline.stages import CAPTIONS


def build_captions_asset(cfg: PipelineConfig, ds: ImageDataset) -> dg.AssetsDefinition:
    @stage_asset(
        CAPTIONS, cfg, ds,
        kinds={"parquet"},
        description=(
            f"Captions of dataset `{ds.id}` (strategy `{ds.caption_strategy}`): one row per image, with a "
            "reason code where no caption could be made; every line of a textfile caption (every entry of "
            "a parquet list) is kept, and training draws one per step. Its own asset so that a geometry "
            "change (resolution, crop) never makes the text-embed cache unsynced. Data version: hash of "
            "(path, caption, status) and of every caption of the images that have several."
        ),
    )
    def captions(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        with user_errors():
            return to_materialize_result(context, run_captions(cfg, ds, log=context.log.info))

    return captions
