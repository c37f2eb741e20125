"""Config models, SimpleTuner file loading and per-stage fingerprints (no Dagster here)."""

from pixart_pipeline.config.load import ConfigError, PipelineConfig, default_config_path, load_config
from pixart_pipeline.config.models import TrainingConfig
from pixart_pipeline.config.dataset_models import ImageDataset, TextEmbedsDataset

__all__ = [
    "ConfigError",
    "ImageDataset",
    "PipelineConfig",
    "TextEmbedsDataset",
    "TrainingConfig",
    "default_config_path",
    "load_config",
]
