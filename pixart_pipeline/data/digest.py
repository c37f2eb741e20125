"""Content digests of tables, computed column-wise with pyarrow (no Python loop per row).

A data version must not depend on row order, and must tell a null from an empty string. Rows are
put in the order of their first column (a unique path; the sort is skipped when the table is in
that order already, as every stage table is). Then one sha256 covers, column after column: the
validity (one byte per row, or one marker when the column has no null), and for a text column each value's length (int64,
little-endian) and its bytes, for an integer column its int64 values (nulls as 0), for a list column
each list's length and then its flattened entries. Everything is
read straight from Arrow's buffers: at 100,000 rows this costs a few milliseconds, where a
``json.dumps`` per row cost half a second and casting every column to text and joining the
columns per row still cost 40 ms for the metadata table.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Part of the digest: a change of the scheme changes every data version once.
SCHEME = b"columns-v2"


def in_order(column: pa.Array | pa.ChunkedArray) -> bool:
    """True when ``column`` has no nulls and never decreases (a sort would keep it as it is)."""
    if column.null_count or len(column) < 2:
        return column.null_count == 0
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return not pc.any(pc.less(arr.slice(1), arr.slice(0, len(arr) - 1))).as_py()


def _update(h: "hashlib._Hash", arr: pa.Array) -> None:
    """Feed one column (validity, then values) into ``h``."""
    if arr.null_count:
        h.update(b"V" + np.ascontiguousarray(arr.is_valid().to_numpy(zero_copy_only=False), dtype=np.uint8).tobytes())
    else:
        h.update(b"A")  # all valid (the common case: no bitmap to build)
    if pa.types.is_list(arr.type):
        # Each list's length (0 for a null one; the validity above tells null from []), then every
        # entry, flattened, as a column of its own: ["a", "b"] and ["ab"] differ.
        h.update(pc.fill_null(pc.list_value_length(arr), 0).cast(pa.int64()).to_numpy(zero_copy_only=False)
                 .astype("<i8").tobytes())
        _update(h, pc.list_flatten(arr))
        return
    if pa.types.is_integer(arr.type) or pa.types.is_boolean(arr.type):
        h.update(pc.fill_null(arr.cast(pa.int64()), 0).to_numpy(zero_copy_only=False).astype("<i8").tobytes())
        return
    if not pa.types.is_string(arr.type):
        arr = arr.cast(pa.string())  # floats, large strings, ...: their text form
    if arr.null_count:
        arr = pc.fill_null(arr, "")  # a null slot's bytes are undefined in Arrow; the validity tells it apart
    # Lengths, not raw offsets, so a sliced array hashes like a fresh one.
    lengths = pc.binary_length(arr).cast(pa.int64())
    h.update(lengths.to_numpy(zero_copy_only=False).astype("<i8").tobytes())
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)  # a string array's int32 offsets
    data = arr.buffers()[2]
    if data is not None:
        h.update(data[int(offsets[arr.offset]) : int(offsets[arr.offset + len(arr)])])


def table_digest(table: pa.Table, columns: list[str], length: int = 16) -> str:
    """sha256 (``length`` hex chars) of ``columns`` of ``table``, rows in the order of ``columns[0]``."""
    h = hashlib.sha256(SCHEME + json.dumps(columns).encode())
    if table.num_rows:
        ordered = table.select(columns)
        if not in_order(ordered.column(columns[0])):
            ordered = ordered.sort_by([(columns[0], "ascending")])
        h.update(np.array([table.num_rows], dtype="<i8").tobytes())
        for name in columns:
            _update(h, ordered.column(name).combine_chunks())
    return h.hexdigest()[:length]
