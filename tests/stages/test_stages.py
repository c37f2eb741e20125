"""The core stage functions chained without Dagster, as the CLI or a notebook would call them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.compute as pc
import pytest

from pixart_pipeline.cache.stage import run_text_embed_cache, run_vae_cache
from pixart_pipeline.config import load_config
from pixart_pipeline.data.stage import batch_readiness, run_bucketed_metadata, run_captions, run_raw_dataset
from pixart_pipeline.stages import metadata_path
from pixart_pipeline.fileio import read_parquet
from pixart_pipeline.training.stage import prepare_training_run
from demo_copy import copy_demo, edit_json, run_stages_before_training



@pytest.fixture(scope="module")
def cached(tmp_path_factory) -> Path:
    """The demo (16 images) through every stage before training."""
    path = copy_demo(tmp_path_factory.mktemp("stages"), dataset={"synthetic_num_images": 16})
    cfg = load_config(path)
    run_stages_before_training(cfg)
    return path


def test_training_items_are_the_cached_train_split(cached):
    cfg = load_config(cached)
    prepared = prepare_training_run(cfg, "cpu")
    items = read_parquet(prepared.run_dir / "items.parquet")
    table = read_parquet(metadata_path(cfg, cfg.datasets[0]))
    train = table.filter(pc.and_(pc.equal(table["status"], "ok"), pc.equal(table["split"], "train")))
    assert sorted(items["path"].to_pylist()) == sorted(train["path"].to_pylist())
    spec = json.loads(prepared.spec_path.read_text())
    assert spec["items"] == str(prepared.run_dir / "items.parquet")
    assert spec["hyperparameters"]["learning_rate"] == cfg.training.learning_rate


def test_run_folder_is_named_by_everything_that_determines_the_weights(cached):
    """Same inputs -> same folder (so an interrupted run resumes); a new lr -> a new folder;
    a new checkpoint interval changes nothing about the weights -> same folder."""
    first = prepare_training_run(load_config(cached), "cpu").run_dir
    assert prepare_training_run(load_config(cached), "cpu").run_dir == first
    original = json.loads(cached.read_text())
    try:
        edit_json(cached, dict(checkpointing_steps=7))
        assert prepare_training_run(load_config(cached), "cpu").run_dir == first
        edit_json(cached, dict(learning_rate=0.0005))
        assert prepare_training_run(load_config(cached), "cpu").run_dir != first
    finally:
        cached.write_text(json.dumps(original))


def test_batch_readiness_says_what_to_change(cached):
    original = json.loads(cached.read_text())
    try:
        edit_json(cached, dict(train_batch_size=64, gradient_accumulation_steps=2))
        cfg = load_config(cached)
        report = batch_readiness(cfg, cfg.datasets[0])
        assert not report.enough and report.needed == 128
        assert "lower train_batch_size" in report.message
        assert report.small_buckets  # every bucket is smaller than 64
    finally:
        cached.write_text(json.dumps(original))


def test_a_stage_revision_bump_never_reuses_stale_runs_or_caches(cached, monkeypatch):
    """Bumping a stage's revision (its code changed its output) must give a new run folder and new
    stores; otherwise the unsynced asset would re-run, find the old artefact and report it as new."""
    from pixart_pipeline.stages import TEXT_EMBED_CACHE, TRAINED_CHECKPOINT, VAE_CACHE, text_store_root, vae_store_root

    cfg = load_config(cached)
    before = (prepare_training_run(cfg, "cpu").run_dir, text_store_root(cfg), vae_store_root(cfg, cfg.datasets[0]))
    with monkeypatch.context() as patch:
        patch.setattr(TEXT_EMBED_CACHE, "revision", "r-next")
        patch.setattr(VAE_CACHE, "revision", "r-next")
        assert text_store_root(cfg) != before[1] and vae_store_root(cfg, cfg.datasets[0]) != before[2]
    assert (text_store_root(cfg), vae_store_root(cfg, cfg.datasets[0])) == before[1:]
    monkeypatch.setattr(TRAINED_CHECKPOINT, "revision", "r-next")
    assert prepare_training_run(cfg, "cpu").run_dir != before[0]


def test_training_refuses_to_start_when_pooled_draws_cannot_fill_a_step(cached):
    from pixart_pipeline.stage_result import InsufficientDataError

    original = json.loads(cached.read_text())
    try:
        edit_json(cached, dict(train_batch_size=4, gradient_accumulation_steps=50))
        with pytest.raises(InsufficientDataError, match="not training: Only .* needs 200"):
            prepare_training_run(load_config(cached), "cpu")
    finally:
        cached.write_text(json.dumps(original))


def test_folder_change_key_changes_on_every_edit_of_the_same_file(cached):
    from pixart_pipeline.data.stage import dataset_folder_changes, folder_changes_key

    cfg = load_config(cached)
    ds = cfg.datasets[0]
    extra = cfg.dataset_dir(ds) / "notes.txt"
    try:
        extra.write_text("one")
        first = folder_changes_key(cfg, ds, dataset_folder_changes(cfg, ds))
        extra.write_text("one more")  # the same path, changed again
        second = folder_changes_key(cfg, ds, dataset_folder_changes(cfg, ds))
        assert first != second
    finally:
        extra.unlink()


def test_a_deleted_dataset_folder_is_a_change_not_in_sync(tmp_path):
    from pixart_pipeline.data.stage import dataset_folder_changes

    path = copy_demo(tmp_path, dataset={"synthetic_num_images": 16})
    cfg = load_config(path)
    ds = cfg.datasets[0]
    run_raw_dataset(cfg, ds)
    shutil.rmtree(cfg.dataset_dir(ds))
    changes = dataset_folder_changes(cfg, ds)
    assert changes and len(changes.removed) == 18  # 16 images + the corrupt and the too-small file


def test_two_datasets_share_one_text_cache_and_pool_into_one_training_run(tmp_path):
    path = copy_demo(tmp_path, dataset={"synthetic_num_images": 16})
    backend = path.parent / "multidatabackend.json"
    entries = json.loads(backend.read_text())
    second = entries[0] | {"id": "shapes-b", "synthetic_seed": 7, "instance_data_dir": "../../output/demo/datasets/b",
                           "cache_dir_vae": "../../output/demo/cache/vae/b", "repeats": 1}
    backend.write_text(json.dumps([entries[0], second, entries[1]]))
    cfg = load_config(path)
    for ds in cfg.datasets:
        run_raw_dataset(cfg, ds)
        run_captions(cfg, ds)
        run_bucketed_metadata(cfg, ds)
        run_vae_cache(cfg, ds, "cpu")
    text = run_text_embed_cache(cfg, "cpu")
    from pixart_pipeline.cache.stage import all_captions

    # Both datasets draw from the same shape/colour vocabulary: shared captions are encoded once.
    assert text.metadata["items"] == len(all_captions(cfg))
    items = read_parquet(prepare_training_run(cfg, "cpu").run_dir / "items.parquet")
    assert set(items["dataset_id"].to_pylist()) == {"shapes", "shapes-b"}
    assert set(zip(items["dataset_id"].to_pylist(), items["repeats"].to_pylist())) == {("shapes", 0), ("shapes-b", 1)}
