"""`pixart-pipeline cache verify|prune|stats` on real stores built by the real stages."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from PIL import Image

from demo_copy import copy_demo, edit_json
from support import rewrite
from pixart_pipeline.cache.stage import run_text_embed_cache, run_vae_cache, vae_items
from pixart_pipeline.stages import vae_store_root
from pixart_pipeline.cache.store import ShardStore
from pixart_pipeline.cli import main
from pixart_pipeline.config import load_config
from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset


def _upstream(path: Path):
    cfg = load_config(path)
    ds = cfg.datasets[0]
    run_raw_dataset(cfg, ds)
    run_captions(cfg, ds)
    run_bucketed_metadata(cfg, ds)
    return cfg, ds


@pytest.fixture
def cached(tmp_path) -> Path:
    """A demo copy of 10 images with both caches built by the stage functions the assets call."""
    path = copy_demo(tmp_path, dataset={"synthetic_num_images": 10})
    cfg, ds = _upstream(path)
    run_text_embed_cache(cfg, "cpu")
    run_vae_cache(cfg, ds, "cpu")
    return path


def _cli(capsys, *argv) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().out


def _flip(shard: Path, keep_mtime: bool) -> None:
    """Flip bits inside tensor data; with ``keep_mtime`` put the old mtime back (os.utime), so only
    re-reading the bytes (or the moved ctime) can tell."""
    data = bytearray(shard.read_bytes())
    data[-20:-10] = bytes(b ^ 0xFF for b in data[-20:-10])
    rewrite(shard, bytes(data), keep_mtime=keep_mtime)  # the stat moves even within one clock tick


def _assert_repaired(result, n_items: int, shard: Path, cached: Path, capsys) -> None:
    assert result.metadata["repaired_items"] > 0
    assert result.metadata["encoded"] == result.metadata["repaired_items"]
    assert result.metadata["items"] == n_items and not shard.exists()
    assert _cli(capsys, "cache", "verify", "--config", str(cached))[0] == 0
    fresh = ShardStore(shard.parent.parent)
    fresh.get_many(sorted(fresh.keys()))  # every item readable again


def test_flipped_bytes_with_the_old_mtime_are_found_by_verify_and_re_encoded_by_the_next_run(cached, capsys):
    cfg = load_config(cached)
    ds = cfg.datasets[0]
    store = ShardStore(vae_store_root(cfg, ds))
    n_items = len(store)
    assert run_vae_cache(cfg, ds, "cpu").metadata["encoded"] == 0  # a re-run: every shard now stamped
    code, out = _cli(capsys, "cache", "verify", "--config", str(cached))
    assert code == 0 and "All shards match" in out

    shard = next((store.root / "shards").glob("*.safetensors"))
    _flip(shard, keep_mtime=True)
    code, out = _cli(capsys, "cache", "verify", "--config", str(cached))  # the full check re-hashes
    assert code == 1 and f"BAD {shard}: sha256 mismatch" in out and "next cache run" in out
    _assert_repaired(run_vae_cache(cfg, ds, "cpu"), n_items, shard, cached, capsys)  # what the asset runs


@pytest.mark.parametrize("keep_mtime", [False, True], ids=["new-mtime", "old-mtime"])
def test_the_cache_asset_alone_re_encodes_a_rewritten_shard(cached, capsys, keep_mtime):
    """Without `cache verify`: the asset's quick check re-hashes a shard whose size, mtime or ctime
    moved since it last passed (a rewrite moves ctime even when the old mtime is put back)."""
    cfg = load_config(cached)
    ds = cfg.datasets[0]
    store = ShardStore(vae_store_root(cfg, ds))
    n_items = len(store)
    assert run_vae_cache(cfg, ds, "cpu").metadata["encoded"] == 0  # a re-run: every shard now stamped
    assert (store.root / "verified.json").exists()
    shard = next((store.root / "shards").glob("*.safetensors"))
    _flip(shard, keep_mtime)
    _assert_repaired(run_vae_cache(cfg, ds, "cpu"), n_items, shard, cached, capsys)


def _bytes(out: str) -> int:
    return int(re.search(r"\((\d+) bytes\)", out).group(1))


def test_edits_give_new_keys_old_items_stay_until_prune(cached, capsys):
    cfg, ds = load_config(cached), load_config(cached).datasets[0]
    old_keys = {item.key for item in vae_items(cfg, ds)[1]}
    old_root = vae_store_root(cfg, ds)

    # Edit one image's pixels under the same name: a new key, the old item stays.
    image_path = sorted(cfg.dataset_dir(ds).glob("*.png"))[0]
    with Image.open(image_path) as im:
        edited = im.convert("RGB")
    edited.putpixel((0, 0), (1, 2, 3))
    edited.save(image_path)
    cfg, ds = _upstream(cached)
    assert run_vae_cache(cfg, ds, "cpu").metadata["encoded"] == 1
    new_keys = {item.key for item in vae_items(cfg, ds)[1]}
    assert len(new_keys - old_keys) == 1 and len(ShardStore(old_root)) == len(old_keys) + 1

    # Change the VAE dtype: new keys in a new store; the old store stays.
    edit_json(cached, {"vae_dtype": "bf16"})
    cfg_bf16 = load_config(cached)
    assert run_vae_cache(cfg_bf16, ds, "cpu").metadata["encoded"] == len(new_keys)
    assert vae_store_root(cfg_bf16, ds) != old_root and old_root.is_dir()
    assert not {item.key for item in vae_items(cfg_bf16, ds)[1]} & new_keys

    code, out = _cli(capsys, "cache", "stats", "--config", str(cached))
    assert code == 0 and f"stale {old_root.name}" in out and "text" in out
    code, out = _cli(capsys, "cache", "prune", "--min-age", "0", "--config", str(cached))
    assert code == 0 and "removed the whole store" in out and _bytes(out) > 0
    assert not old_root.exists() and len(ShardStore(vae_store_root(cfg_bf16, ds))) == len(new_keys)

    # Back to fp32: the edited image's old item is unreferenced now and goes; shards are rewritten.
    edit_json(cached, {"vae_dtype": "fp32"})
    cfg = load_config(cached)
    run_vae_cache(cfg, ds, "cpu")
    edited.putpixel((0, 0), (9, 9, 9))
    edited.save(image_path)
    cfg, ds = _upstream(cached)
    run_vae_cache(cfg, ds, "cpu")
    store = ShardStore(vae_store_root(cfg, ds))
    assert len(store) == len(new_keys) + 1
    before = store.stats()["bytes"]
    code, out = _cli(capsys, "cache", "prune", "--min-age", "0", "--config", str(cached))
    assert re.search(r"vae/\S+\s+removed 1 item\(s\)", out) and _bytes(out) > 0
    after = ShardStore(store.root)
    assert after.keys() == {item.key for item in vae_items(cfg, ds)[1]}
    assert after.stats()["bytes"] < before and after.verify() == []
    after.get_many(sorted(after.keys()))
    # The bf16 store is stale again: pruned whole.
    assert not vae_store_root(cfg_bf16, ds).exists()


def test_cache_without_an_action_is_a_usage_error(cached, capsys):
    assert main(["cache", "--config", str(cached)]) == 2


def test_seeding_dagster_home_is_atomic_a_failed_copy_leaves_no_config(tmp_path, monkeypatch):
    """The CLI seeds DAGSTER_HOME/dagster.yaml once (only when it is missing). A copy that fails
    part-way must leave nothing, or every later run would keep the broken half-file. /proc/self/mem
    opens fine but fails on read: a real mid-copy I/O error."""
    import pixart_pipeline.cli as cli

    home = tmp_path / "home"
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    monkeypatch.setattr(cli, "DAGSTER_YAML", Path("/proc/self/mem"))
    with pytest.raises(OSError):
        cli._instance()
    assert not (home / "dagster.yaml").exists() and list(home.iterdir()) == []
