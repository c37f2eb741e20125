"""Stable eval loss: deterministic, and it differs only when the transformer's weights differ."""

from __future__ import annotations

import math

import pytest
import torch

from pixart_pipeline.evaluation.eval_loss import (
    eval_loss_per_timestep,
    eval_timestep_schedule,
    item_noise,
    read_eval_items,
    stable_eval_loss,
)
from pixart_pipeline.models import load_noise_scheduler, load_transformer

SCALING = 0.13025


@pytest.fixture(scope="module")
def parts(tiny_pixart_path):
    return load_transformer(tiny_pixart_path), load_noise_scheduler(tiny_pixart_path)


def _loss(transformer, scheduler, items, text_store, **kw):
    args = dict(timesteps=4, seed=7, device="cpu", scaling_factor=SCALING) | kw
    return eval_loss_per_timestep(transformer, items, text_store, scheduler, **args)


def test_timesteps_are_evenly_spaced_bin_midpoints():
    assert eval_timestep_schedule(1000, 8) == [62, 187, 312, 437, 562, 687, 812, 937]
    assert eval_timestep_schedule(1000, 1) == [500]
    with pytest.raises(ValueError, match="eval_timesteps=0"):
        eval_timestep_schedule(1000, 0)


def test_same_call_twice_is_identical(parts, eval_caches):
    transformer, scheduler = parts
    items_path, text_store = eval_caches
    items = read_eval_items(items_path)
    first = _loss(transformer, scheduler, items, text_store)
    second = _loss(transformer, scheduler, list(reversed(items)), text_store)  # order does not matter
    assert first.num_items == 4 and first.skipped == []
    assert first.timesteps == [125, 375, 625, 875]
    assert first.per_timestep == second.per_timestep
    assert math.isfinite(first.mean) and first.mean > 0
    # batching changes nothing but float rounding
    one_by_one = _loss(transformer, scheduler, items, text_store, batch_size=1)
    assert one_by_one.per_timestep == pytest.approx(first.per_timestep, rel=1e-5)


def test_different_weights_give_a_different_loss(parts, tiny_pixart_path, eval_caches):
    transformer, scheduler = parts
    items_path, text_store = eval_caches
    items = read_eval_items(items_path)
    other = load_transformer(tiny_pixart_path)
    with torch.no_grad():
        other.proj_out.weight.add_(0.05 * torch.randn_like(other.proj_out.weight))
    base = stable_eval_loss(transformer, items, text_store, scheduler, 4, 7, "cpu", scaling_factor=SCALING)
    changed = stable_eval_loss(other, items, text_store, scheduler, 4, 7, "cpu", scaling_factor=SCALING)
    reloaded = stable_eval_loss(
        load_transformer(tiny_pixart_path), items, text_store, scheduler, 4, 7, "cpu", scaling_factor=SCALING
    )
    assert base != changed
    assert base == reloaded  # same weights loaded again -> bit-identical


def test_noise_is_fixed_per_item_and_seed(eval_caches):
    items = read_eval_items(eval_caches[0])
    a = item_noise(7, items[0], 3, (4, 8, 8))
    assert torch.equal(a, item_noise(7, items[0], 3, (4, 8, 8)))
    assert not torch.equal(a, item_noise(8, items[0], 3, (4, 8, 8)))
    assert not torch.equal(a, item_noise(7, items[1], 3, (4, 8, 8)))


def test_missing_cache_entry_is_skipped_with_its_reason(parts, eval_caches, tmp_path):
    import dataclasses

    transformer, scheduler = parts
    items = read_eval_items(eval_caches[0])
    ghost = dataclasses.replace(items[0], vae_key="not-cached")
    wrong = dataclasses.replace(items[1], target_width=128)
    result = _loss(transformer, scheduler, items + [ghost, wrong], eval_caches[1])
    assert result.num_items == 4
    reasons = dict(result.skipped)
    assert "no VAE cache entry" in reasons["shapes/not-cached"]
    assert "expected (4, 8, 16)" in reasons["shapes/img-b"]


def test_bad_items_file_names_the_missing_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "items.parquet"
    pq.write_table(pa.table({"vae_key": ["a"]}), path)
    with pytest.raises(ValueError, match=r"items.parquet lacks column\(s\) \['vae_store'"):
        read_eval_items(path)


def test_missing_store_root_is_a_clear_error(parts, eval_caches, tmp_path):
    transformer, scheduler = parts
    items = read_eval_items(eval_caches[0])
    with pytest.raises(ValueError, match=r"text_store .*nowhere does not exist"):
        _loss(transformer, scheduler, items, tmp_path / "nowhere")
