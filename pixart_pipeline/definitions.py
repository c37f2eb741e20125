"""The Dagster code location: `dagster dev -m pixart_pipeline.definitions`.

Wiring only. The config comes from $PIXART_CONFIG, else config/config.json, else the embedded demo.
"""

from pixart_pipeline.config import load_config
from pixart_pipeline.defs.build import build_definitions

defs = build_definitions(load_config())
