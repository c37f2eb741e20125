"""ShardStore: round trip, reopen, duplicates, invisible orphan shards, versions, readers."""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest
import torch
from safetensors import safe_open
from support import rewrite

from pixart_pipeline.cache import ShardStore, pad_prompt_embeds, sample_latents, text_item_key, vae_item_key
from pixart_pipeline.cache.store import stat_stamp


def _item(seed: int, length: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"mean": torch.randn(4, 2, length, generator=g), "std": torch.rand(4, 2, length, generator=g).bfloat16()}


def test_round_trip_and_reopen(tmp_path):
    store = ShardStore(tmp_path / "fp")
    items = {f"k{i}": _item(i) for i in range(5)}
    store.write(dict(list(items.items())[:3]))
    store.write(dict(list(items.items())[3:]))
    assert store.keys() == set(items) and "k0" in store and "nope" not in store

    reopened = ShardStore(tmp_path / "fp")
    assert reopened.keys() == set(items)
    got = reopened.get_many(["k4", "k0", "k3"])
    for key, value in zip(["k4", "k0", "k3"], got):
        assert value.keys() == {"mean", "std"}
        for field in value:
            assert value[field].dtype == items[key][field].dtype
            assert torch.equal(value[field], items[key][field])
    assert torch.equal(reopened.get("k1")["mean"], items["k1"]["mean"])

    stats = reopened.stats()
    assert stats["items"] == 5 and stats["shards"] == 2 and stats["bytes"] > 0
    # Shards are plain safetensors with "<key>.<field>" names; index parts are parquet.
    shard = next((tmp_path / "fp" / "shards").glob("*.safetensors"))
    with safe_open(str(shard), framework="pt") as f:
        assert {n.rsplit(".", 1)[1] for n in f.keys()} == {"mean", "std"}
    index = pq.read_table(next((tmp_path / "fp" / "index").glob("*.parquet"))).to_pydict()
    assert set(index) == {"key", "shard", "fields", "shapes", "dtypes", "shard_sha256"}
    assert reopened.verify() == []


def test_missing_key_is_a_clear_key_error(tmp_path):
    store = ShardStore(tmp_path / "fp")
    store.write({"a": _item(0)})
    with pytest.raises(KeyError, match="'zz' is not in the cache store"):
        store.get("zz")


def test_other_writers_become_visible_after_refresh(tmp_path):
    reader = ShardStore(tmp_path / "fp")
    assert reader.keys() == set()
    ShardStore(tmp_path / "fp").write({"a": _item(0)})
    assert torch.equal(reader.get("a")["mean"], _item(0)["mean"])  # get refreshes on a miss
    reader.refresh()
    assert reader.keys() == {"a"}


def test_duplicate_write_is_harmless(tmp_path):
    store = ShardStore(tmp_path / "fp")
    store.write({"a": _item(0), "b": _item(1)})
    store.write({"a": _item(0)})
    other = ShardStore(tmp_path / "fp")
    assert other.keys() == {"a", "b"}
    assert other.stats()["items"] == 2
    assert torch.equal(other.get("a")["mean"], _item(0)["mean"])


def test_shard_without_index_row_is_invisible_and_pruned(tmp_path):
    store = ShardStore(tmp_path / "fp")
    store.write({"a": _item(0)})
    shard_id = store.write({"b": _item(1)})
    # Simulate a crash after the shard was renamed into place but before its index part was.
    os.remove(tmp_path / "fp" / "index" / f"{shard_id}.parquet")
    # ...and a temp file left half written.
    (tmp_path / "fp" / "shards" / ".junk.safetensors.tmp").write_bytes(b"partial")
    fresh = ShardStore(tmp_path / "fp")
    assert fresh.keys() == {"a"} and "b" not in fresh
    assert fresh.stats()["shards"] == 1
    assert fresh.prune(min_age_s=3600) == 0  # too young: might be a writer in flight
    assert fresh.prune(min_age_s=0) == 2
    remaining = list((tmp_path / "fp" / "shards").iterdir())
    assert len(remaining) == 1 and remaining[0].stem != shard_id
    assert fresh.get("a")["mean"].shape == (4, 2, 3)


def test_corrupt_shard_names_the_file(tmp_path):
    store = ShardStore(tmp_path / "fp")
    shard_id = store.write({"a": _item(0)})
    path = tmp_path / "fp" / "shards" / f"{shard_id}.safetensors"
    path.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match=shard_id):
        ShardStore(tmp_path / "fp").get("a")
    assert ShardStore(tmp_path / "fp").verify() == [(f"{shard_id}.safetensors", "sha256 mismatch")]


def test_data_version_depends_on_keys_and_root(tmp_path):
    a = ShardStore(tmp_path / "fp1")
    a.write({"x": _item(0), "y": _item(1)})
    assert a.data_version() == a.data_version(["y", "x"]) == ShardStore(tmp_path / "fp1").data_version()
    assert a.data_version(["x"]) != a.data_version()
    b = ShardStore(tmp_path / "fp2")
    b.write({"x": _item(0), "y": _item(1)})
    assert b.data_version() != a.data_version()


def test_keys_are_content_hashes():
    assert text_item_key("a red circle") == text_item_key("a red circle") != text_item_key("a red circle ")
    k = vae_item_key("abc", (160, 128), (0, 0), (128, 128))
    assert k == vae_item_key("abc", (160, 128), (0, 0), (128, 128))
    assert k != vae_item_key("abc", (160, 128), (32, 0), (128, 128))
    assert k != vae_item_key("abd", (160, 128), (0, 0), (128, 128))


def test_pad_prompt_embeds():
    e1, e2 = torch.randn(3, 32), torch.randn(5, 32)
    embeds, mask = pad_prompt_embeds([e1, e2])
    assert embeds.shape == (2, 5, 32) and mask.dtype == torch.long
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert torch.equal(embeds[0, :3], e1) and torch.equal(embeds[1], e2) and not embeds[0, 3:].any()


def test_sample_latents_is_seeded_and_scaled():
    mean, std = torch.randn(2, 4, 8, 8), torch.rand(2, 4, 8, 8)
    z1 = sample_latents(mean, std, 0.13025, torch.Generator().manual_seed(1))
    z2 = sample_latents(mean, std, 0.13025, torch.Generator().manual_seed(1))
    assert torch.equal(z1, z2) and z1.shape == mean.shape
    assert torch.allclose(sample_latents(mean, torch.zeros_like(std), 0.5), mean * 0.5)
    shifted = sample_latents(mean, torch.zeros_like(std), 1.5, shift_factor=0.0609)
    assert torch.allclose(shifted, (mean - 0.0609) * 1.5)  # SD3-style VAEs: (x - shift) * scale


def test_shard_writer_flushes_every_n_items_and_the_rest_on_close(tmp_path):
    from pixart_pipeline.cache.store import ShardWriter

    store = ShardStore(tmp_path / "store")
    writer = ShardWriter(store, items_per_shard=2)
    flushed = [writer.add(f"k{i}", {"x": torch.full((3,), float(i))}) for i in range(5)]
    assert flushed == [False, True, False, True, False]
    assert writer.written == 4 and len(ShardStore(store.root)) == 4  # the 5th is not durable yet
    writer.close()
    reopened = ShardStore(store.root)
    assert reopened.stats()["shards"] == 3 and reopened.keys() == {f"k{i}" for i in range(5)}
    assert torch.equal(reopened.get("k4")["x"], torch.full((3,), 4.0))


def test_prefetch_yields_in_order_bounded_and_reraises(tmp_path):
    import threading

    from pixart_pipeline.cache.reader import prefetch

    store = ShardStore(tmp_path / "s")
    store.write({f"k{i}": {"mean": torch.full((2,), float(i))} for i in range(6)})
    batches = [["k0", "k1"], ["k5"], ["k2", "k3", "k4"]]
    got = [[x["mean"][0].item() for x in b] for b in prefetch(store.get_many, batches, depth=1)]
    assert got == [[0.0, 1.0], [5.0], [2.0, 3.0, 4.0]]

    started = []

    def slow(i):
        started.append(i)
        return i

    it = prefetch(slow, range(100), depth=2)
    assert next(it) == 0
    threading.Event().wait(0.1)
    assert len(started) <= 4  # one yielded, two queued, one blocked on the full queue
    it.close()

    def bad(i):
        if i == 2:
            raise KeyError("item 2 missing")
        return i

    out = []
    with pytest.raises(KeyError, match="item 2 missing"):
        for v in prefetch(bad, range(5)):
            out.append(v)
    assert out == [0, 1]


def test_quick_verify_rehashes_rewritten_shards_even_with_their_old_mtime(tmp_path):
    store = ShardStore(tmp_path / "fp")
    shard_id = store.write({"a": _item(0)})
    path = tmp_path / "fp" / "shards" / f"{shard_id}.safetensors"
    assert store.verify(quick=True) == []  # hashed once, stamped in verified.json
    assert (tmp_path / "fp" / "verified.json").exists()

    # A rewrite (new mtime) is re-hashed by the quick check.
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    rewrite(path, bytes(data), keep_mtime=False)
    assert store.verify(quick=True) == [(path.name, "sha256 mismatch")]

    # A rewrite that puts the stamped size and mtime back is re-hashed too: the write (and utime
    # itself) moved the inode's ctime, which user space cannot set back.
    data[-1] ^= 0xFF
    rewrite(path, bytes(data), keep_mtime=False)
    assert store.verify(quick=True) == []
    before = path.stat()
    data[-2] ^= 0xFF
    rewrite(path, bytes(data), keep_mtime=True)
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert store.verify(quick=True) == [(path.name, "sha256 mismatch")]


def test_silent_rot_is_found_by_the_full_check_and_then_by_the_next_quick_check(tmp_path):
    """Corruption below the file system (a disk returning other bytes) changes no size, mtime or
    ctime: the quick check trusts its stamp; `cache verify` (full) re-hashes, reports the shard and
    clears its stamp, so the next quick check (what the cache asset runs) drops it."""
    store = ShardStore(tmp_path / "fp")
    shard_id = store.write({"a": _item(0)})
    path = tmp_path / "fp" / "shards" / f"{shard_id}.safetensors"
    assert store.verify(quick=True) == []
    data = bytearray(path.read_bytes())
    data[-2] ^= 0xFF
    path.write_bytes(bytes(data))
    # Simulate rot that no stat field shows: the stamp says these very stat values passed.
    stamps_path = tmp_path / "fp" / "verified.json"
    stamps = json.loads(stamps_path.read_text())
    stamps[path.name] = stat_stamp(path.stat(), stamps[path.name][-1])
    stamps_path.write_text(json.dumps(stamps))
    assert store.verify(quick=True) == []  # the quick check reads nothing it has a stamp for

    assert store.verify() == [(path.name, "sha256 mismatch")]
    assert path.name not in json.loads(stamps_path.read_text())
    assert store.verify(quick=True) == [(path.name, "sha256 mismatch")]
    assert store.drop_shard(path.name) == ["a"] and "a" not in ShardStore(tmp_path / "fp")
