"""The VAE stages encode only the bytes whose sha256 the metadata recorded (an image edited after
``bucketed_metadata`` is a reported failure, never new pixels under the old key), and with
``vae_cache_disable`` the stage checks every image up front so one bad file cannot stop training."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from demo_copy import copy_demo
from pixart_pipeline.cache.online import OnlineVaeStore
from pixart_pipeline.cache.stage import run_text_embed_cache, run_vae_cache, vae_items
from pixart_pipeline.stages import vae_store_root
from pixart_pipeline.cache.store import ShardStore
from pixart_pipeline.config import load_config
from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset
from pixart_pipeline.training.stage import prepare_training_run, split_items


def _upstream(tmp_path: Path, n: int, config: dict | None = None):
    path = copy_demo(tmp_path, dataset={"synthetic_num_images": n}, config=config)
    cfg = load_config(path)
    ds = cfg.datasets[0]
    run_raw_dataset(cfg, ds)
    run_captions(cfg, ds)
    run_bucketed_metadata(cfg, ds)
    return path, cfg, ds


def _edit_pixels(path: Path) -> None:
    """Change one pixel and save under the same name (what a user touching up an image does)."""
    with Image.open(path) as im:
        edited = im.convert("RGB")
    edited.putpixel((0, 0), tuple(255 - c for c in edited.getpixel((0, 0))))
    edited.save(path)


def test_an_image_edited_after_metadata_is_reported_and_not_stored_under_its_old_key(tmp_path):
    _, cfg, ds = _upstream(tmp_path, 6)
    items = vae_items(cfg, ds)[1]
    victim = items[0]
    _edit_pixels(victim.path)

    result = run_vae_cache(cfg, ds, "cpu")
    store = ShardStore(vae_store_root(cfg, ds))
    assert victim.key not in store
    assert result.metadata["failed"] == 1
    [failure] = result.metadata["failed_files"]
    assert failure.startswith(f"{victim.path}: ") and "changed since bucketed_metadata was built" in failure
    assert store.keys() == {it.key for it in items} - {victim.key}
    # Re-materialising the upstream stages gives the edit a new key, which the next run encodes.
    run_raw_dataset(cfg, ds)
    run_captions(cfg, ds)
    run_bucketed_metadata(cfg, ds)
    again = run_vae_cache(cfg, ds, "cpu")
    assert again.metadata["failed"] == 0 and again.metadata["encoded"] == 1
    assert {it.key for it in vae_items(cfg, ds)[1]} <= ShardStore(store.root).keys()


def _break_two(cfg, ds) -> tuple[Path, Path]:
    """Corrupt one image (garbage bytes under the same name) and delete another."""
    items = sorted(vae_items(cfg, ds)[1], key=lambda it: str(it.path))
    corrupted, deleted = items[0].path, items[1].path
    corrupted.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    deleted.unlink()
    return corrupted, deleted


@pytest.fixture
def online_broken(tmp_path):
    _, cfg, ds = _upstream(tmp_path, 12, config={"max_train_steps": 8, "checkpointing_steps": 100,
                                                 "train_batch_size": 2, "vae_cache_disable": True})
    run_text_embed_cache(cfg, "cpu")
    corrupted, deleted = _break_two(cfg, ds)
    return cfg, ds, corrupted, deleted


def test_disabled_vae_cache_reports_bad_images_and_training_items_leave_them_out(online_broken):
    cfg, ds, corrupted, deleted = online_broken
    n_items = len({it.key for it in vae_items(cfg, ds)[1]})
    result = run_vae_cache(cfg, ds, "cpu")
    assert result.metadata["disabled"] is True
    assert result.metadata["failed"] == 2 and result.metadata["items"] == n_items - 2
    failures = "\n".join(result.metadata["failed_files"])
    assert f"{corrupted}: " in failures and "changed since bucketed_metadata was built" in failures
    assert f"{deleted}: " in failures and "FileNotFoundError" in failures

    store = OnlineVaeStore(result.path)
    bad = {it.key for it in vae_items(cfg, ds)[1] if it.path in (corrupted, deleted)}
    assert len(bad) == 2 and not bad & store.keys() and len(store) == n_items - 2
    used = set()
    for split in ("train", "eval"):
        table = split_items(cfg, split)
        used |= set(table.column("vae_key").to_pylist())
        assert not {str(corrupted.name), str(deleted.name)} & set(table.column("path").to_pylist())
    store.get_many(sorted(used))  # every item training may ask for encodes


@pytest.mark.slow
def test_training_with_vae_cache_disable_runs_on_the_images_that_are_left(online_broken):
    cfg, ds, _, _ = online_broken
    run_vae_cache(cfg, ds, "cpu")
    prepared = prepare_training_run(cfg, "cpu")
    done = subprocess.run(prepared.command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **prepared.env})
    assert done.returncode == 0, done.stderr[-3000:]
    assert prepared.complete


def test_online_store_refuses_an_image_edited_after_its_spec_was_written(tmp_path):
    _, cfg, ds = _upstream(tmp_path, 4, config={"vae_cache_disable": True})
    result = run_vae_cache(cfg, ds, "cpu")
    store = OnlineVaeStore(result.path)
    victim = sorted(vae_items(cfg, ds)[1], key=lambda it: it.key)[0]
    _edit_pixels(victim.path)
    with pytest.raises(ValueError, match="changed since bucketed_metadata was built"):
        store.get(victim.key)


