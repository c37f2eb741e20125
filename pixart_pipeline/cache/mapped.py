"""Zero-copy reads of safetensors shards: each shard memory-mapped once, tensors as views into it.

A safetensors file is ``u64 header length | JSON header | raw data``; the header gives each tensor's
dtype, shape and byte range (https://github.com/huggingface/safetensors, "Format"). Mapping the file
once and wrapping byte ranges with ``torch.frombuffer`` costs no parse and no copy per read, where
``safe_open`` re-opens and re-parses the shard on every batch. The mapping is private copy-on-write
(``ACCESS_COPY``): pages come from the page cache, and a caller writing into a tensor never touches
the file. Open maps are kept in a small LRU so a store with thousands of shards keeps few descriptors.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections import OrderedDict
from pathlib import Path

import torch

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors library's own limit


class MappedShard:
    """One shard file, mapped; ``tensor(name)`` is a view (no copy) of that tensor's bytes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with open(path, "rb") as f:
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        size = len(self._map)
        if size < 8:
            raise ValueError(f"{path}: {size} bytes is too short for a safetensors file")
        (n,) = struct.unpack("<Q", self._map[:8])
        if n > min(_MAX_HEADER, size - 8):
            raise ValueError(f"{path}: header length {n} does not fit the {size}-byte file")
        try:
            header = json.loads(self._map[8 : 8 + n])
        except ValueError as e:
            raise ValueError(f"{path}: unreadable safetensors header ({e})") from None
        header.pop("__metadata__", None)
        self._start = 8 + n
        self._size = size
        self.header: dict = header

    def tensor(self, name: str) -> torch.Tensor:
        info = self.header.get(name)
        if info is None:
            raise KeyError(f"{self.path}: no tensor {name!r}")
        dtype = _DTYPES.get(info["dtype"])
        begin, end = (self._start + int(o) for o in info["data_offsets"])
        if dtype is None or not self._start <= begin <= end <= self._size:
            raise ValueError(f"{self.path}: tensor {name!r} has a bad dtype or byte range {info}")
        shape = [int(s) for s in info["shape"]]
        count = (end - begin) // dtype.itemsize
        if count != (torch.Size(shape).numel()):
            raise ValueError(f"{self.path}: tensor {name!r} has {count} elements for shape {shape}")
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        return torch.frombuffer(self._map, dtype=dtype, count=count, offset=begin).view(shape)


class ShardMaps:
    """An LRU of ``MappedShard``s (at most ``capacity`` open maps)."""

    def __init__(self, capacity: int = 64) -> None:
        self.capacity = capacity
        self._open: OrderedDict[Path, MappedShard] = OrderedDict()

    def get(self, path: Path) -> MappedShard:
        shard = self._open.get(path)
        if shard is None:
            shard = MappedShard(path)
            self._open[path] = shard
            while len(self._open) > self.capacity:
                self._open.popitem(last=False)  # its map closes when the last view of it is freed
        else:
            self._open.move_to_end(path)
        return shard

    def forget(self) -> None:
        self._open.clear()
