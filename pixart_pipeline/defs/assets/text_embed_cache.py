"""`text_embed_cache`: T5 embeddings of every caption, and of the empty prompt."""


import dagster as dg

from pixart_pipeline.cache.stage import run_text_embed_cache
from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.defs.assets.common import stage_asset, to_materialize_result, user_errors
from pixart_pipeline.defs.resources import DeviceResource
from pixart_pipeline.stages import TEXT_EMBED_CACHE


def build_text_embed_cache_asset(cfg: PipelineConfig) -> dg.AssetsDefinition:
    @stage_asset(
        TEXT_EMBED_CACHE, cfg,
        kinds={"pytorch", "safetensors"},
        description=(
            "T5 embeddings of every caption of every dataset and of the empty prompt (caption dropout), "
            "in a content-addressed shard store: only captions not already stored are encoded. Items keep "
            "only their real tokens; shards failing their checksum are dropped and re-encoded; with "
            "`num_processes` > 1 it encodes with torchrun. Data version: hash of (encoder fingerprint, "
            "sorted item keys)."
        ),
    )
    def text_embed_cache(context: dg.AssetExecutionContext, device: DeviceResource) -> dg.MaterializeResult:
        with user_errors():
            return to_materialize_result(context, run_text_embed_cache(cfg, device.device, log=context.log.info))

    return text_embed_cache
