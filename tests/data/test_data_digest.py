import pyarrow as pa

from pixart_pipeline.data.digest import table_digest


def test_digest_is_order_free_slice_free_and_tells_null_from_empty():
    table = pa.table({"path": [f"p{i:03d}" for i in range(50)], "c": [None if i % 7 == 0 else f"c{i}" for i in range(50)]})
    cols = ["path", "c"]
    assert table_digest(table, cols) == table_digest(table.take(list(range(49, -1, -1))), cols)
    part = table.slice(10, 20)  # a view into the middle of the buffers
    assert table_digest(part, cols) == table_digest(pa.Table.from_pylist(part.to_pylist()), cols)
    assert table_digest(part.select(["path"]), ["path"]) == table_digest(pa.table({"path": part.column("path").to_pylist()}), ["path"])
    null, empty = pa.table({"path": ["a"], "c": [None]}), pa.table({"path": ["a"], "c": [""]})
    assert table_digest(null, cols) != table_digest(empty, cols)
    # Row boundaries count: ("ab", "c") and ("a", "bc") differ.
    left = pa.table({"path": ["1", "2"], "c": ["ab", "c"]})
    right = pa.table({"path": ["1", "2"], "c": ["a", "bc"]})
    assert table_digest(left, cols) != table_digest(right, cols)
    # An empty table: the same digest however it came to be empty, but not that of any row, and the
    # column list still counts (a stage that changes its columns changes its empty version too).
    fresh_empty = pa.table({"path": pa.array([], pa.string()), "c": pa.array([], pa.string())})
    assert table_digest(table.slice(0, 0), cols) == table_digest(fresh_empty, cols)
    assert table_digest(fresh_empty, cols) != table_digest(table.slice(0, 1), cols)
    assert table_digest(fresh_empty, cols) != table_digest(fresh_empty, ["path"])


def test_list_columns_digest_lengths_and_entries_and_tell_null_from_empty():
    """The metadata's ``captions`` column is a list: ["a", "b"] and ["ab"] must differ, as must a null
    list and an empty one; equal content in another row order or chunking digests the same."""

    def digest(lists, paths=("x", "y")):
        return table_digest(pa.table({"path": list(paths), "captions": pa.array(lists, pa.list_(pa.string()))}),
                            ["path", "captions"])

    base = digest([["a", "b"], None])
    assert base != digest([["ab"], None])
    assert base != digest([["a", "b"], []])
    assert base != digest([["a"], ["b"]])
    assert base != digest([["b", "a"], None])
    assert base == digest([None, ["a", "b"]], paths=("y", "x"))  # rows in another order
    chunked = pa.table({"path": pa.chunked_array([["x"], ["y"]]),
                        "captions": pa.chunked_array([[["a", "b"]], [None]], pa.list_(pa.string()))})
    assert table_digest(chunked, ["path", "captions"]) == base
