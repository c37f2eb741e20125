"""`raw_dataset/<id>`: the dataset's files on local disk and a manifest of every file."""


import dagster as dg

from pixart_pipeline.config import ImageDataset, PipelineConfig
from pixart_pipeline.data.stage import run_raw_dataset
from pixart_pipeline.defs.assets.common import stage_asset, to_materialize_result, user_errors
from pixart_pipeline.stages import RAW_DATASET


def build_raw_dataset_asset(cfg: PipelineConfig, ds: ImageDataset) -> dg.AssetsDefinition:
    @stage_asset(
        RAW_DATASET, cfg, ds,
        kinds={"parquet"},
        description=(
            f"Files of dataset `{ds.id}` ({ds.type}) under `{cfg.dataset_dir(ds)}`, with a manifest "
            "(relative path, size, sha256) of every file. A re-run hashes only new or changed files. "
            "Data version: hash of (path, sha256) of every file."
        ),
    )
    def raw_dataset(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        with user_errors():
            return to_materialize_result(context, run_raw_dataset(cfg, ds, log=context.log.info))

    return raw_dataset
