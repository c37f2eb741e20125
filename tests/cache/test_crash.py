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
from pixart_pipeline.cache.stage import run_vae_cache, vae_items
from pixart_pipeline.stages import vae_store_root
from pixart_pipeline.cache.store import CRASH_HOLD_ENV, ShardStore
from pixart_pipeline.config import load_config
from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset

# A child process encoding a dataset's VAE items with the real encoder, two items per shard.
# argv: config [go file] [barrier folder]. With a go file it waits for it before encoding (a common
# start line); with a barrier folder, after its first shard is indexed (the log callback runs right
# after a flush) it waits until two files are there: its own and the other writer's.
CHILD = """
import os, sys, time
from pathlib import Path
from pixart_pipeline.cache.stage import base_model_path, vae_items
from pixart_pipeline.stages import vae_store_root
from pixart_pipeline.cache.store import ShardStore
from pixart_pipeline.cache.vae import encode_images
from pixart_pipeline.config import load_config
from pixart_pipeline.models import load_vae

cfg = load_config(sys.argv[1])
ds = cfg.datasets[0]
vae = load_vae(base_model_path(cfg))
items = vae_items(cfg, ds)[1]
print("ready", flush=True)
go = Path(sys.argv[2]) if len(sys.argv) > 2 else None
while go and not go.exists():
    time.sleep(0.01)
barrier = Path(sys.argv[3]) if len(sys.argv) > 3 else None

def after_flush(_):
    if barrier and not (barrier / str(os.getpid())).exists():
        (barrier / str(os.getpid())).touch()
        deadline = time.monotonic() + 120
        while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)

stats = encode_images(ShardStore(vae_store_root(cfg, ds)), items, vae, batch_size=2, device="cpu",
                      items_per_shard=2, log=after_flush)
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


def _child(config: Path, *extra: Path, env: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.Popen([sys.executable, "-c", CHILD, str(config), *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _read_everything(root: Path) -> int:
    """What any reader does: open the store, read every indexed item. Returns the item count."""
    store = ShardStore(root)
    keys = sorted(store.keys())
    for item in store.get_many(keys):
        assert torch.isfinite(item["mean"]).all() and item["mean"].shape == item["std"].shape
    return len(keys)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("point", "shards_before"),
    [("before-index", 0), ("before-index", 2), ("before-shard", 1)],
    ids=["first-shard-unindexed", "third-shard-unindexed", "second-shard-unwritten"],
)
def test_sigkill_mid_encode_keeps_every_written_item_and_the_next_run_encodes_the_rest(
    dataset, point, shards_before
):
    """SIGKILL exactly where a crash hurts most: with a shard in place but its index part not yet
    written (the writer's test hook holds it there), or before a shard is written at all."""
    cfg = load_config(dataset)
    ds = cfg.datasets[0]
    root = vae_store_root(cfg, ds)
    n_items = len({item.key for item in vae_items(cfg, ds)[1]})
    ready = dataset.parent / "held"
    child = _child(dataset, env={CRASH_HOLD_ENV: f"{point}:{shards_before}:{ready}"})
    try:
        deadline = time.monotonic() + 120
        while not ready.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ready.exists() and child.poll() is None, f"the child never reached the hold: {child.communicate()}"
        held = root / "shards" / f"{ready.read_text()}.safetensors"
        assert held.exists() == (point == "before-index")
        # A reader while the writer is held: only the indexed shards' items, every one readable.
        assert _read_everything(root) == 2 * shards_before
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert child.returncode == -signal.SIGKILL

    survived = _read_everything(root)
    assert survived == 2 * shards_before and ShardStore(root).verify() == []
    assert held.exists() == (point == "before-index")  # an orphan: on disk, in no index part
    result = run_vae_cache(cfg, ds, "cpu")  # the next materialisation
    assert result.metadata["reused"] == survived and result.metadata["repaired_items"] == 0
    assert result.metadata["encoded"] == n_items - survived
    assert _read_everything(root) == n_items and ShardStore(root).verify() == []
    ShardStore(root).prune(min_age_s=0)  # the orphan shard of the killed write is removed
    assert not held.exists() and _read_everything(root) == n_items


@pytest.mark.slow
def test_two_processes_encoding_into_one_store_both_succeed_and_readers_see_each_item_once(dataset):
    cfg = load_config(dataset)
    ds = cfg.datasets[0]
    root = vae_store_root(cfg, ds)
    keys = {item.key for item in vae_items(cfg, ds)[1]}
    go, barrier = dataset.parent / "go", dataset.parent / "barrier"
    barrier.mkdir()
    children = [_child(dataset, go, barrier) for _ in range(2)]
    for child in children:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()[-2000:]
    go.touch()
    outs = [c.communicate(timeout=180) for c in children]
    for child, (out, err) in zip(children, outs):
        assert child.returncode == 0, err[-2000:]
        assert "encoded" in out
    assert len(list(barrier.iterdir())) == 2  # both wrote a shard before either wrote a second

    store = ShardStore(root)
    assert store.keys() == keys and len(store) == len(keys)  # each item exactly once in the index
    assert _read_everything(root) == len(keys) and store.verify() == []
    # The barrier makes the overlap certain: whichever writer listed its work first listed every
    # item, including the other's first shard, and never re-checks; so some items are on disk twice,
    # equal, and the index (first part in name order) hands readers one copy.
    rows = pq.read_table(root / "index").select(["key", "shard"]).to_pylist()
    copies: dict[str, list[str]] = {}
    for row in rows:
        copies.setdefault(row["key"], []).append(row["shard"])
    assert set(copies) == keys and all(1 <= len(v) <= 2 for v in copies.values())
    assert sum(len(v) == 2 for v in copies.values()) >= 2, "the two writers did not overlap"
    for key, shards in copies.items():
        tensors = []
        for shard in shards:
            with safe_open(str(root / "shards" / shard), framework="pt") as f:
                tensors.append(f.get_tensor(f"{key}.mean"))
        for other in tensors[1:]:
            torch.testing.assert_close(other, tensors[0])
    again = run_vae_cache(cfg, ds, "cpu")
    assert again.metadata["encoded"] == 0 and again.metadata["reused"] == len(keys)
