"""Geometry keys change the bucketed_metadata fingerprint; the small-bucket rule only the checkpoint's."""

from pathlib import Path

import pytest

from pixart_pipeline.stages import BUCKETED_METADATA, CAPTIONS, TRAINED_CHECKPOINT
from pixart_pipeline.config.load import PipelineConfig
from pixart_pipeline.config.dataset_models import ImageDataset, TextEmbedsDataset
from pixart_pipeline.config.models import TrainingConfig


def config(training=None, **dataset):
    dataset.setdefault("crop", True)
    ds = ImageDataset(id="d", instance_data_dir=".", **dataset)
    return PipelineConfig(
        config_path=Path("config.json"), backend_path=Path("multidatabackend.json"),
        training=TrainingConfig(**(training or {})), datasets=(ds,),
        text_embeds=TextEmbedsDataset(id="t", dataset_type="text_embeds"),
    )


def versions(cfg):
    ds = cfg.datasets[0]
    return {
        "metadata": BUCKETED_METADATA.code_version(cfg, ds),
        "captions": CAPTIONS.code_version(cfg, ds),
        "checkpoint": TRAINED_CHECKPOINT.code_version(cfg),
    }


BASE = versions(config(crop_aspect="closest", crop_aspect_buckets=[0.75, 1.0]))


@pytest.mark.parametrize("changed", [
    config(crop_aspect="closest", crop_aspect_buckets=[0.75, 1.0, 1.5]),
    config(crop_aspect="random", crop_aspect_buckets=[0.75, 1.0]),
    config(crop_aspect="random", crop_aspect_buckets=[{"aspect": 0.75, "weight": 0.5}, {"aspect": 1.0, "weight": 0.5}]),
    config({"aspect_bucket_rounding": 3}, crop_aspect="closest", crop_aspect_buckets=[0.75, 1.0]),
    config(crop_aspect="random", crop_aspect_buckets=[0.75, 1.0], max_upscale_threshold=0.2),
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


def test_upscale_threshold_changes_random_plain_buckets():
    plain = dict(crop_aspect="random", crop_aspect_buckets=[0.75, 1.0])
    assert versions(config(**plain, max_upscale_threshold=0.2))["metadata"] != versions(config(**plain))["metadata"]
    assert (versions(config(**plain, max_upscale_threshold=0.2))["metadata"]
            != versions(config(**plain, max_upscale_threshold=0.5))["metadata"])


# Pairs that give every image the same geometry (aspect_choice.chosen_aspect reads
# crop_aspect_buckets only under crop + closest/random, and max_upscale_threshold only under
# crop + random with plain-number buckets), so they must not rebucket.
WEIGHTED = [{"aspect": 0.75, "weight": 0.5}, {"aspect": 1.0, "weight": 0.5}]


@pytest.mark.parametrize("a, b", [
    # crop off: neither key is read
    (dict(crop=False, crop_aspect="closest", crop_aspect_buckets=[0.75, 1.0]),
     dict(crop=False, crop_aspect="closest", crop_aspect_buckets=[0.5, 1.0, 2.0])),
    (dict(crop=False, crop_aspect="random", crop_aspect_buckets=[0.75, 1.0]),
     dict(crop=False, crop_aspect="random", crop_aspect_buckets=[0.75, 1.0], max_upscale_threshold=0.2)),
    (dict(crop=False, crop_aspect="square"), dict(crop=False, crop_aspect="preserve")),
    # crop_aspect square / preserve: the image's own aspect (or a square), never the list
    (dict(crop_aspect="square"), dict(crop_aspect="square", crop_aspect_buckets=[0.75, 1.0])),
    (dict(crop_aspect="preserve", crop_aspect_buckets=[0.75, 1.0]),
     dict(crop_aspect="preserve", crop_aspect_buckets=[1.5], max_upscale_threshold=0.3)),
    # closest: the threshold is not read
    (dict(crop_aspect="closest", crop_aspect_buckets=[0.75, 1.0]),
     dict(crop_aspect="closest", crop_aspect_buckets=[0.75, 1.0], max_upscale_threshold=0.2)),
    # random with weighted buckets: a weighted draw, the threshold is not read
    (dict(crop_aspect="random", crop_aspect_buckets=WEIGHTED),
     dict(crop_aspect="random", crop_aspect_buckets=WEIGHTED, max_upscale_threshold=0.2)),
])
def test_keys_that_cannot_apply_leave_the_metadata_fingerprint(a, b):
    assert versions(config(**a))["metadata"] == versions(config(**b))["metadata"]


def test_crop_aspect_matters_with_crop():
    assert versions(config(crop_aspect="square"))["metadata"] != versions(config(crop_aspect="preserve"))["metadata"]
