"""Content digests of tables, computed column-wise with pyarrow (no Python loop per row).

A data version must not depend on row order, and must tell a null from an empty string. Rows are
sorted by their first column (a unique path), every column is cast to text with nulls as ``\\x01``,
the columns of a row are joined with ``\\x00`` and the rows with ``\\n``: one sha256 over that. At
100,000 rows this costs tens of milliseconds, where a ``json.dumps`` per row cost half a second.
"""

from __future__ import annotations

import hashlib
import json

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
        h.update("\n".join(row_strings(ordered, columns).to_pylist()).encode("utf-8", "surrogatepass"))
    return h.hexdigest()[:length]
