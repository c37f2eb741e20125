"""vae_cache_disable: nothing stored, the trainer encodes on the fly with the same keys and latents."""

from __future__ import annotations

import os
import subprocess

import pyarrow.parquet as pq
import pytest
import torch

from demo_copy import copy_demo, edit_json, run_stages_before_training
from pixart_pipeline.cache.online import OnlineVaeStore, open_vae_store
from pixart_pipeline.cache.stage import base_model_path, run_vae_cache
from pixart_pipeline.stages import text_store_root, vae_store_root
from pixart_pipeline.cache.store import ShardStore
from pixart_pipeline.config import load_config
from pixart_pipeline.training.batches import BatchBuilder, load_items, vae_scaling_factor
from pixart_pipeline.training.stage import prepare_training_run, split_items


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """One demo copy, cached; then the same copy with vae_cache_disable set."""
    path = copy_demo(tmp_path_factory.mktemp("online"), dataset={"synthetic_num_images": 12},
                     config={"max_train_steps": 3, "checkpointing_steps": 100, "train_batch_size": 2})
    cfg = load_config(path)
    ds = cfg.datasets[0]
    run_stages_before_training(cfg)
    cached_items = split_items(cfg, "train")
    bytes_before = ShardStore(vae_store_root(cfg, ds)).stats()["bytes"]
    edit_json(path, {"vae_cache_disable": True})
    online_cfg = load_config(path)
    result = run_vae_cache(online_cfg, ds, "cpu")
    return {"path": path, "cfg": cfg, "online_cfg": online_cfg, "cached_items": cached_items,
            "result": result, "bytes_before": bytes_before}


def test_disabled_vae_cache_stores_nothing_and_says_so(both):
    result, ds = both["result"], both["online_cfg"].datasets[0]
    assert result.metadata["disabled"] is True and result.metadata["encoded"] == 0
    assert ShardStore(vae_store_root(both["online_cfg"], ds)).stats()["bytes"] == both["bytes_before"]
    assert isinstance(open_vae_store(result.path), OnlineVaeStore)


def test_online_items_have_the_cached_keys_and_the_cached_posteriors(both, tmp_path):
    online_items = split_items(both["online_cfg"], "train")
    cached_items = both["cached_items"]
    assert online_items.column("vae_key").to_pylist() == cached_items.column("vae_key").to_pylist()
    assert online_items.column("text_key").to_pylist() == cached_items.column("text_key").to_pylist()
    assert all(s.endswith("/online") for s in online_items.column("vae_store").to_pylist())

    keys = cached_items.column("vae_key").to_pylist()
    online = OnlineVaeStore(online_items.column("vae_store")[0].as_py()).get_many(keys)
    cached = ShardStore(cached_items.column("vae_store")[0].as_py()).get_many(keys)
    for a, b in zip(online, cached):
        torch.testing.assert_close(a["mean"], b["mean"].float(), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a["std"], b["std"].float(), rtol=1e-4, atol=1e-5)

    # The trainer's batches: same seed, same latents whether read from the cache or encoded online.
    cfg = both["cfg"]
    scaling = vae_scaling_factor(base_model_path(cfg), None)
    text_root = str(text_store_root(cfg))
    latents = []
    for table, name in [(cached_items, "cached"), (online_items, "online")]:
        pq.write_table(table, tmp_path / f"{name}.parquet")
        builder = BatchBuilder(load_items(tmp_path / f"{name}.parquet"), text_root, None)
        builder.check_complete(need_empty=False)
        first = table.column("target_width")[0].as_py(), table.column("target_height")[0].as_py()
        same_bucket = [i for i in range(table.num_rows)
                       if (table.column("target_width")[i].as_py(), table.column("target_height")[i].as_py()) == first]
        latents.append(builder.build(same_bucket[:2], torch.Generator().manual_seed(3), scaling)[0])
    torch.testing.assert_close(latents[0], latents[1], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_training_with_vae_cache_disable_runs(both):
    prepared = prepare_training_run(both["online_cfg"], "cpu")
    done = subprocess.run(prepared.command, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **prepared.env})
    assert done.returncode == 0, done.stderr[-3000:]
    assert prepared.complete


@pytest.mark.slow
def test_the_dagster_vae_cache_asset_records_that_it_is_disabled(both):
    import dagster as dg

    from pixart_pipeline.defs.assets.vae_cache import build_vae_cache_asset
    from pixart_pipeline.defs.resources import DeviceResource

    cfg = both["online_cfg"]
    asset = build_vae_cache_asset(cfg, cfg.datasets[0])
    result = dg.materialize([asset], resources={"device": DeviceResource(device="cpu")})
    assert result.success
    [event] = result.get_asset_materialization_events()
    metadata = event.materialization.metadata
    assert metadata["disabled"].value in (True, "True") and metadata["encoded"].value == 0
    assert metadata["items"].value == both["result"].metadata["items"] > 0


def test_eval_loss_encodes_each_online_item_once(both):
    """vae_cache_disable: the eval loss encodes an item once (it used to encode it in the usability
    check and again for its batch), and the base model's loss reuses the same latents."""
    from pixart_pipeline.evaluation.eval_loss import EvalItem, eval_loss_per_timestep, read_eval_latents
    from pixart_pipeline.models import load_noise_scheduler, load_transformer

    cfg = both["online_cfg"]
    rows = split_items(cfg, "train").to_pylist()[:5]
    items = [EvalItem(r["vae_store"], r["vae_key"], r["text_key"], r["target_width"], r["target_height"],
                      r["dataset_id"]) for r in rows]
    root = items[0].vae_store
    store = OnlineVaeStore(root)
    base = base_model_path(cfg)
    transformer = load_transformer(base, None, dtype=torch.float32)
    args = dict(text_store=str(text_store_root(cfg)), noise_scheduler=load_noise_scheduler(base, None),
                timesteps=2, seed=0, device="cpu", scaling_factor=vae_scaling_factor(base, None), batch_size=2)

    result = eval_loss_per_timestep(transformer, items, vae_stores={root: store}, **args)
    assert result.num_items == len(items) and not result.skipped
    assert store.encoded == len(items)

    again = OnlineVaeStore(root)
    latents = read_eval_latents(items, args["text_store"], int(transformer.config.in_channels), {root: again})
    first = eval_loss_per_timestep(transformer, items, latents=latents, **args)
    second = eval_loss_per_timestep(transformer, items, latents=latents, **args)
    assert again.encoded == len(items)  # two losses, one encode per item
    assert first.per_timestep == second.per_timestep == result.per_timestep
