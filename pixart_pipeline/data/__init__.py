"""Dataset sources (local, Hub download, synthetic demo), image probing, captions, aspect
bucketing and the metadata table. Plain Python + PIL + pyarrow; no Dagster here."""

from pixart_pipeline.data.buckets import Geometry, compute_geometry
from pixart_pipeline.data.captions import build_captions_table, captions_data_version
from pixart_pipeline.data.hub import HubUnavailableError, download_hub_dataset
from pixart_pipeline.data.images import to_rgb
from pixart_pipeline.data.manifest import FolderChanges, ScanStats, folder_changes, manifest_data_version, scan_dataset
from pixart_pipeline.data.metadata import (
    bucket_histogram,
    build_metadata_table,
    metadata_data_version,
    status_counts,
)
from pixart_pipeline.data.probe import Probe, probe_image, probe_many
from pixart_pipeline.data.synthetic import generate_synthetic_dataset

__all__ = [
    "FolderChanges",
    "Geometry",
    "HubUnavailableError",
    "Probe",
    "ScanStats",
    "bucket_histogram",
    "build_captions_table",
    "build_metadata_table",
    "captions_data_version",
    "compute_geometry",
    "download_hub_dataset",
    "folder_changes",
    "generate_synthetic_dataset",
    "manifest_data_version",
    "metadata_data_version",
    "probe_image",
    "probe_many",
    "scan_dataset",
    "status_counts",
    "to_rgb",
]
