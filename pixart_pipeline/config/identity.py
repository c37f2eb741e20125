"""Files a config names outside the images, read as the fingerprints see them.

``parquet_identity`` (a dataset's ``parquet`` block plus its file's size and mtime) and
``caption_filters`` (the ``text_embeds`` entry's filters, the filter file read now) go into the
captions/metadata fingerprints (config/fingerprints.py), so editing either file makes those stages
unsynced although no image changed. The captions stage applies the same filters
(data/caption_filter.py) and reads the same parquet file (data/parquet_source.py).
"""

from __future__ import annotations

import os
from pathlib import Path

from pixart_pipeline.config.caption_filters import load_filters
from pixart_pipeline.config.load import PipelineConfig
from pixart_pipeline.config.dataset_models import ImageDataset


def parquet_file(cfg: PipelineConfig, ds: ImageDataset) -> Path:
    """``ds.parquet.path`` resolved against the folder of ``multidatabackend.json``."""
    path = Path(os.path.expanduser(ds.parquet.path))
    return path if path.is_absolute() else (cfg.backend_path.parent / path).resolve()


def parquet_identity(cfg: PipelineConfig, ds: ImageDataset) -> dict:
    """The parquet block plus the file's (size, mtime_ns): in the captions/metadata fingerprints, so
    editing the table makes those stages unsynced although no image changed."""
    path = parquet_file(cfg, ds)
    try:
        st = path.stat()
        state = [st.st_size, st.st_mtime_ns]
    except OSError:
        state = None
    return {**ds.parquet.model_dump(), "file": str(path), "state": state}


def caption_filters(cfg: PipelineConfig) -> list[str]:
    """The ``text_embeds`` entry's filters, read now (a filter file's edits count at once)."""
    return load_filters(cfg.text_embeds.caption_filter_list, cfg.backend_path.parent)
