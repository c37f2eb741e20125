"""Config models, SimpleTuner file loading and per-stage fingerprints (no Dagster here)."""

from pixart_pipeline.config.load import ConfigError, PipelineConfig, default_config_path, load_config
from pixart_pipeline.config.models import ImageDataset, TextEmbedsDataset, TrainingConfig

__all__ = [
    "ConfigError",
    "ImageDataset",
    "PipelineConfig",
    "TextEmbedsDataset",
    "TrainingConfig",
    "default_config_path",
    "load_config",
]
