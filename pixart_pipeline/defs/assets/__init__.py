"""One asset (factory) per file; `build_assets` wires them for a config."""


import dagster as dg

from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.defs.assets.bucketed_metadata import build_bucketed_metadata_asset
from pixart_pipeline.defs.assets.captions import build_captions_asset
from pixart_pipeline.defs.assets.evaluation_report import build_evaluation_report_asset
from pixart_pipeline.defs.assets.raw_dataset import build_raw_dataset_asset
from pixart_pipeline.defs.assets.text_embed_cache import build_text_embed_cache_asset
from pixart_pipeline.defs.assets.trained_checkpoint import build_trained_checkpoint_asset
from pixart_pipeline.defs.assets.vae_cache import build_vae_cache_asset


def build_assets(cfg: PipelineConfig) -> list[dg.AssetsDefinition]:
    """Every asset of the graph for this config: one lane per dataset, then the shared stages."""
    assets: list[dg.AssetsDefinition] = []
    for ds in cfg.datasets:
        assets += [
            build_raw_dataset_asset(cfg, ds),
            build_captions_asset(cfg, ds),
            build_bucketed_metadata_asset(cfg, ds),
            build_vae_cache_asset(cfg, ds),
        ]
    assets += [
        build_text_embed_cache_asset(cfg),
        build_trained_checkpoint_asset(cfg),
        build_evaluation_report_asset(cfg),
    ]
    return assets
