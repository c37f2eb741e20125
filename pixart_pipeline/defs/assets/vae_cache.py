"""`vae_cache/<id>`: VAE posterior (mean, std) of every kept image at its target geometry."""


import dagster as dg

from pixart_pipeline.cache.stage import run_vae_cache
from pixart_pipeline.config import ImageDataset, PipelineConfig
from pixart_pipeline.defs.assets.common import stage_asset, to_materialize_result, user_errors
from pixart_pipeline.defs.resources import DeviceResource
from pixart_pipeline.stages import VAE_CACHE


def build_vae_cache_asset(cfg: PipelineConfig, ds: ImageDataset) -> dg.AssetsDefinition:
    @stage_asset(
        VAE_CACHE, cfg, ds,
        kinds={"pytorch", "safetensors"},
        description=(
            f"VAE latent distribution (mean, std) of every kept image of `{ds.id}` (train and eval split) "
            "at its bucketed target size and crop. Keyed by image hash + geometry, so adding images "
            "encodes only those; shards failing their checksum are dropped and re-encoded. With "
            "`num_processes` > 1 it encodes with torchrun, one slice per rank. With `vae_cache_disable` it "
            "stores nothing and records `disabled` (the trainer encodes on the fly). "
            "Data version: hash of (VAE fingerprint, sorted item keys)."
        ),
    )
    def vae_cache(context: dg.AssetExecutionContext, device: DeviceResource) -> dg.MaterializeResult:
        with user_errors():
            return to_materialize_result(context, run_vae_cache(cfg, ds, device.device, log=context.log.info))

    return vae_cache
