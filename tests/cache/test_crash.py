"""Crash safety and concurrency with real processes: SIGKILL mid-encode, two writers at once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open

from demo_copy import copy_demo
from pixart_pipeline.cache.stage import run_vae_cache, vae_items, vae_store_root
from pixart_pipeline.cache.store import ShardStore
from pixart_pipeline.config import load_config
from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset

# A child process encoding a dataset's VAE items with the real encoder, two items per shard. After
# each shard it sleeps a little (the log callback runs right after a flush), so the parent can see
# shards land and kill it at an arbitrary point of the next batch.
CHILD = """
import sys, time
from pixart_pipeline.cache.stage import base_model_path, vae_items, vae_store_root
from pixart_pipeline.cache.store import ShardStore
from pixart_pipeline.cache.vae import encode_images
from pixart_pipeline.config import load_config
from pixart_pipeline.models import load_vae

cfg = load_config(sys.argv[1])
ds = cfg.datasets[0]
vae = load_vae(base_model_path(cfg))
items = vae_items(cfg, ds)[1]
print("ready", flush=True)
while len(sys.argv) > 3 and not __import__("os").path.exists(sys.argv[3]):
    time.sleep(0.01)  # start line: both writers begin together
stats = encode_images(ShardStore(vae_store_root(cfg, ds)), items, vae, batch_size=2, device="cpu",
                      items_per_shard=2, log=lambda _: time.sleep(float(sys.argv[2])))
print("encoded", stats.encoded, "reused", stats.reused, flush=True)
"""


@pytest.fixture
def dataset(tmp_path) -> Path:
    path = copy_demo(tmp_path, dataset={"synthetic_num_images": 16})
    cfg = load_config(path)
    ds = cfg.datasets[0]
    run_raw_dataset(cfg, ds)
    run_captions(cfg, ds)
    run_bucketed_metadata(cfg, ds)
    return path


def _child(config: Path, pause_s: float, go: Path | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    extra = [str(go)] if go else []
    return subprocess.Popen([sys.executable, "-c", CHILD, str(config), str(pause_s), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _read_everything(root: Path) -> int:
    """What any reader does: open the store, read every indexed item. Returns the item count."""
    store = ShardStore(root)
    keys = sorted(store.keys())
    for item in store.get_many(keys):
        assert torch.isfinite(item["mean"]).all() and item["mean"].shape == item["std"].shape
    return len(keys)


@pytest.mark.slow
def test_sigkill_mid_encode_keeps_every_written_item_and_the_next_run_encodes_the_rest(dataset):
    cfg = load_config(dataset)
    ds = cfg.datasets[0]
    root = vae_store_root(cfg, ds)
    n_items = len({item.key for item in vae_items(cfg, ds)[1]})
    child = _child(dataset, pause_s=0.5)
    seen = []
    deadline = time.monotonic() + 120
    try:
        # A reader polls while the writer runs: it must never see a partial shard.
        while time.monotonic() < deadline and child.poll() is None:
            seen.append(_read_everything(root) if root.exists() else 0)
            if seen[-1] >= 4:
                break
            time.sleep(0.02)
        assert child.poll() is None, f"the child finished before it was killed: {child.communicate()}"
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL
    assert seen == sorted(seen)  # items only ever appear, never vanish

    survived = _read_everything(root)
    assert 4 <= survived < n_items and ShardStore(root).verify() == []
    result = run_vae_cache(cfg, ds, "cpu")  # the next materialisation
    assert result.metadata["reused"] == survived
    assert result.metadata["encoded"] == n_items - survived
    assert _read_everything(root) == n_items and ShardStore(root).verify() == []
    ShardStore(root).prune(min_age_s=0)  # a shard killed before its index part is an orphan: removed
    assert _read_everything(root) == n_items


@pytest.mark.slow
def test_two_processes_encoding_into_one_store_both_succeed_and_readers_see_each_item_once(dataset):
    cfg = load_config(dataset)
    ds = cfg.datasets[0]
    root = vae_store_root(cfg, ds)
    keys = {item.key for item in vae_items(cfg, ds)[1]}
    go = dataset.parent / "go"
    children = [_child(dataset, pause_s=0.05, go=go) for _ in range(2)]
    for child in children:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()[-2000:]
    go.touch()
    outs = [c.communicate(timeout=180) for c in children]
    for child, (out, err) in zip(children, outs):
        assert child.returncode == 0, err[-2000:]
        assert "encoded" in out

    store = ShardStore(root)
    assert store.keys() == keys and len(store) == len(keys)  # each item exactly once in the index
    assert _read_everything(root) == len(keys) and store.verify() == []
    # Both started before either had written, so both wrote every item: on disk each item is there
    # twice, equal, and the index (first part in name order) hands readers one copy.
    rows = pq.read_table(root / "index").select(["key", "shard"]).to_pylist()
    copies: dict[str, list[str]] = {}
    for row in rows:
        copies.setdefault(row["key"], []).append(row["shard"])
    assert set(copies) == keys and all(1 <= len(v) <= 2 for v in copies.values())
    assert sum(len(v) == 2 for v in copies.values()) > 0, "the two writers did not overlap"
    for key, shards in copies.items():
        tensors = []
        for shard in shards:
            with safe_open(str(root / "shards" / shard), framework="pt") as f:
                tensors.append(f.get_tensor(f"{key}.mean"))
        for other in tensors[1:]:
            torch.testing.assert_close(other, tensors[0])
    again = run_vae_cache(cfg, ds, "cpu")
    assert again.metadata["encoded"] == 0 and again.metadata["reused"] == len(keys)
