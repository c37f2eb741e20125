"""Memory-mapped shard reads equal the safetensors library's, for every dtype we store."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pixart_pipeline.cache.mapped import MappedShard, ShardMaps


def test_mapped_tensors_equal_safe_open(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "a.mean": torch.randn(4, 3, 5, generator=g),
        "a.std": torch.rand(4, 3, 5, generator=g).bfloat16(),
        "b.prompt_embeds": torch.randn(7, 32, generator=g).half(),
        "b.ids": torch.arange(6, dtype=torch.int64),
        "c.empty": torch.zeros(0, 32),
        "c.flag": torch.tensor([True, False]),
    }
    path = tmp_path / "s.safetensors"
    save_file(tensors, str(path))
    mapped = MappedShard(path)
    with safe_open(str(path), framework="pt") as f:
        for name in tensors:
            got = mapped.tensor(name)
            assert got.dtype == tensors[name].dtype and torch.equal(got, f.get_tensor(name))
    # Copy-on-write: writing into a view leaves the file alone.
    mapped.tensor("a.mean").zero_()
    assert torch.equal(MappedShard(path).tensor("a.mean"), tensors["a.mean"])
    with pytest.raises(KeyError, match="no tensor 'zz'"):
        mapped.tensor("zz")


def test_bad_files_are_named(tmp_path):
    short = tmp_path / "short.safetensors"
    short.write_bytes(b"abc")
    with pytest.raises(ValueError, match="short.safetensors.*too short"):
        MappedShard(short)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="junk.safetensors: header length"):
        MappedShard(junk)


def test_lru_keeps_at_most_capacity_maps(tmp_path):
    maps = ShardMaps(capacity=2)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.safetensors")
        save_file({"x": torch.full((2,), float(i))}, str(paths[-1]))
    views = [maps.get(p).tensor("x") for p in paths]
    assert len(maps._open) == 2 and paths[0] not in maps._open
    assert [v.tolist() for v in views] == [[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]]  # evicted maps stay valid
