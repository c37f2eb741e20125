"""Geometry keys change the bucketed_metadata fingerprint; the small-bucket rule only the checkpoint's."""

from pathlib import Path

import pytest

from pixart_pipeline.config import fingerprints as fp
from pixart_pipeline.config.load import PipelineConfig
from pixart_pipeline.config.models import (
    ImageDataset,
    TextEmbedsDataset,
    TrainingConfig,
)


def config(training=None, **dataset):
    ds = ImageDataset(id="d", instance_data_dir=".", crop=True, **dataset)
    return PipelineConfig(
        config_path=Path("config.json"), backend_path=Path("multidatabackend.json"),
        training=TrainingConfig(**(training or {})), datasets=(ds,),
        text_embeds=TextEmbedsDataset(id="t", dataset_type="text_embeds"),
    )


def versions(cfg):
    ds = cfg.datasets[0]
    return {
        "metadata": fp.code_version("bucketed_metadata", fp.bucketed_metadata_fields(cfg, ds)),
        "captions": fp.code_version("captions", fp.captions_fields(cfg, ds)),
        "checkpoint": fp.code_version("trained_checkpoint", fp.trained_checkpoint_fields(cfg)),
    }


BASE = versions(config(crop_aspect="closest", crop_aspect_buckets=[0.75, 1.0]))


@pytest.mark.parametrize("changed", [
    config(crop_aspect="closest", crop_aspect_buckets=[0.75, 1.0, 1.5]),
    config(crop_aspect="random", crop_aspect_buckets=[0.75, 1.0]),
    config(crop_aspect="random", crop_aspect_buckets=[{"aspect": 0.75, "weight": 0.5}, {"aspect": 1.0, "weight": 0.5}]),
    config({"aspect_bucket_rounding": 3}, crop_aspect="closest", crop_aspect_buckets=[0.75, 1.0]),
    config(crop_aspect="closest", crop_aspect_buckets=[0.75, 1.0], max_upscale_threshold=0.2),
])
def test_geometry_keys_change_the_metadata_fingerprint_only(changed):
    new = versions(changed)
    assert new["metadata"] != BASE["metadata"]
    assert new["captions"] == BASE["captions"]


def test_rounding_default_and_two_are_the_same_geometry():
    explicit = versions(config({"aspect_bucket_rounding": 2}, crop_aspect="closest", crop_aspect_buckets=[0.75, 1.0]))
    assert explicit["metadata"] == BASE["metadata"]


def test_small_bucket_rule_changes_the_checkpoint_not_the_metadata():
    new = versions(config({"small_bucket_rule": "repeat"}, crop_aspect="closest", crop_aspect_buckets=[0.75, 1.0]))
    assert new["checkpoint"] != BASE["checkpoint"]
    assert new["metadata"] == BASE["metadata"]


def test_training_seed_never_changes_the_geometry():
    new = versions(config({"seed": 7}, crop_aspect="random", crop_aspect_buckets=[0.75, 1.0]))
    assert new["metadata"] == versions(config(crop_aspect="random", crop_aspect_buckets=[0.75, 1.0]))["metadata"]
