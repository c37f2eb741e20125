"""pixart_pipeline: fine-tune PixArt Sigma as a graph of Dagster assets.

Importing the package is light on purpose: it neither imports Dagster nor reads a config, so the
standalone trainer (``python -m pixart_pipeline.training``) runs without the orchestration layer.
"""

__version__ = "0.1.0"
