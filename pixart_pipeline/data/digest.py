"""Content digests of tables, computed column-wise with pyarrow (no Python loop per row).

A data version must not depend on row order, and must tell a null from an empty string. Rows are
sorted by their first column (a unique path), every column is cast to text with nulls as ``\\x01``
and the columns of a row are joined with ``\\x00``; one sha256 covers the row lengths (int64,
little-endian) and then the row bytes, read straight from Arrow's buffers. At 100,000 rows this
costs a few milliseconds, where a ``json.dumps`` per row cost half a second.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NULL = "\x01"


def row_strings(table: pa.Table, columns: list[str]) -> pa.ChunkedArray | pa.Array:
    """One string per row: ``columns`` cast to text (nulls as ``\\x01``) joined with ``\\x00``."""
    parts = [pc.fill_null(pc.cast(table.column(c), pa.string()), NULL) for c in columns]
    if len(parts) == 1:
        return parts[0]
    return pc.binary_join_element_wise(*parts, "\x00")


def table_digest(table: pa.Table, columns: list[str], length: int = 16) -> str:
    """sha256 (``length`` hex chars) of ``columns`` of ``table``, rows sorted by ``columns[0]``."""
    ordered = table.select(columns).sort_by([(columns[0], "ascending")]) if table.num_rows else table
    h = hashlib.sha256(json.dumps(columns).encode())
    if table.num_rows:
        rows = row_strings(ordered, columns)
        rows = rows.combine_chunks() if isinstance(rows, pa.ChunkedArray) else rows
        # Hash the row strings' lengths and bytes straight from Arrow's buffers (no Python string
        # per row). Lengths, not raw offsets, so a sliced array hashes like a fresh one.
        lengths = pc.binary_length(rows).cast(pa.int64())
        h.update(lengths.buffers()[1][lengths.offset * 8 : (lengths.offset + len(lengths)) * 8])
        offsets = np.frombuffer(rows.buffers()[1], dtype=np.int32)  # a string array's int32 offsets
        h.update(rows.buffers()[2][int(offsets[rows.offset]) : int(offsets[rows.offset + len(rows)])])
    return h.hexdigest()[:length]
