"""`vae_cache/<id>`: VAE posterior (mean, std) of every kept image at its target geometry."""


import dagster as dg

from pixart_pipeline.cache.stage import run_vae_cache
from pixart_pipeline.config import ImageDataset, PipelineConfig
from pixart_pipeline.config.fingerprints import vae_fields
from pixart_pipeline.defs.assets.common import (
    user_errors,
    automation,
    metadata_key,
    stage_code_version,
    to_materialize_result,
    vae_key,
)
from pixart_pipeline.defs.resources import DeviceResource


def build_vae_cache_asset(cfg: PipelineConfig, ds: ImageDataset) -> dg.AssetsDefinition:
    @dg.asset(
        key=vae_key(ds.id),
        deps=[metadata_key(ds.id)],
        group_name="caches",
        pool="gpu",
        code_version=stage_code_version("vae_cache", vae_fields(cfg)),
        automation_condition=automation(),
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
            return to_materialize_result(run_vae_cache(cfg, ds, device.device, log=context.log.info))

    return vae_cache
