"""The re-run shortcuts (fd-based folder walk with its list-comprehension fast path, ``index_in``
instead of joins, reading only the manifest's schema, skipping a sort for a table already in order)
still notice every add, delete and edit -- including an edit that keeps the file's name and size."""

from __future__ import annotations

import os

import pyarrow as pa
from PIL import Image

from pixart_pipeline.config import load_config
from pixart_pipeline.data.digest import in_order, table_digest
from pixart_pipeline.data.incremental import split_reusable
from pixart_pipeline.data.manifest import list_dataset_files, manifest_data_version, scan_dataset, sha256_file
from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset
from pixart_pipeline.stages import metadata_dir
from pixart_pipeline.fileio import read_parquet
from tests.demo_copy import copy_demo
from tests.support import age_files


def _same_size_edit(path, data: bytes) -> None:
    """New bytes, same length, and an mtime that surely differs (coarse-timestamp filesystems)."""
    st = path.stat()
    assert len(data) == st.st_size
    path.write_bytes(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def test_walk_fast_path_lists_what_the_rules_say(tmp_path):
    root = tmp_path / "ds"
    (root / "a" / "b").mkdir(parents=True)
    for rel in ("x.png", "Y.JPG", "a/cap.txt", "a/b/z.webp", "a/b/.hidden.png", "a/notes.md", "noext"):
        (root / rel).write_bytes(b"data " + rel.encode())
    (root / ".git").mkdir()
    (root / ".git" / "h.png").write_bytes(b"h")
    (root / "folder.png").mkdir()  # a folder with an image extension is walked, not listed
    (root / "folder.png" / "in.png").write_bytes(b"in")
    outside = tmp_path / "outside.png"
    outside.write_bytes(b"secret")
    os.symlink(outside, root / "link_out.png")
    os.symlink(root / "x.png", root / "link_in.png")
    os.symlink(root / "a", root / "linked_folder")
    listed = list_dataset_files(root)
    assert sorted(listed) == ["Y.JPG", "a/b/z.webp", "a/cap.txt", "folder.png/in.png", "link_in.png", "x.png"]
    assert listed["link_in.png"][0] == (root / "x.png").stat().st_size  # the target's size


def test_scan_notices_adds_deletes_and_same_size_edits_across_folders(tmp_path):
    root = tmp_path / "ds"
    for part in range(3):
        (root / f"part_{part}").mkdir(parents=True)
        for i in range(5):
            (root / f"part_{part}" / f"img_{i}.png").write_bytes(bytes([part, i]) * 50)
    age_files(root)  # older than the scan: their stat is trusted (see the racy-mtime rule)
    first, stats = scan_dataset(root)
    assert (stats.hashed, stats.total) == (15, 15)
    assert first.column("path").to_pylist() == sorted(first.column("path").to_pylist())

    edited = root / "part_1" / "img_2.png"
    _same_size_edit(edited, b"\xff" * 100)
    (root / "part_2" / "img_4.png").unlink()
    (root / "part_0" / "img_9.png").write_bytes(b"new file")
    (root / "part_3").mkdir()
    (root / "part_3" / "img_0.png").write_bytes(b"new folder")
    second, stats = scan_dataset(root, previous=first)
    assert (stats.hashed, stats.reused, stats.removed, stats.total) == (3, 13, 1, 16)
    rows = dict(zip(second.column("path").to_pylist(), second.column("sha256").to_pylist()))
    assert rows["part_1/img_2.png"] == sha256_file(edited)
    assert "part_2/img_4.png" not in rows and {"part_0/img_9.png", "part_3/img_0.png"} <= set(rows)
    # Every reused digest is still the file's digest: the shortcut changed nothing else.
    assert all(rows[p] == sha256_file(root / p) for p in rows)
    assert manifest_data_version(second) != manifest_data_version(first)
    assert second.column("path").to_pylist() == sorted(rows)


def test_split_reusable_keeps_only_rows_whose_path_sha_and_caption_all_match():
    previous = pa.table({"path": ["a", "b", "c", "d", "e"], "sha256": ["1", "2", "3", "4", "5"],
                         "caption": ["ca", "cb", "cc", None, "ce"], "status": ["ok", "ok", "ok", "ok", "missing"]})
    current = pa.table({"path": ["a", "b", "c", "d", "e", "f"], "sha256": ["1", "2x", "3", "4", "5", "6"],
                        "caption": ["ca", "cb", "cc changed", None, "ce", "cf"],
                        "caption_status": ["ok"] * 6})
    kept, todo = split_reusable(previous, current)
    assert kept.column("path").to_pylist() == ["a"]  # b: new bytes, c: new caption, d: null caption,
    assert todo.column("path").to_pylist() == ["b", "c", "d", "e", "f"]  # e: was missing, f: new


def test_digest_skips_the_sort_only_when_in_order():
    table = pa.table({"path": ["a", "b", "c"], "v": [1, None, 3]})
    assert in_order(table.column("path")) and not in_order(pa.chunked_array([["b", "a"]]))
    assert not in_order(pa.array(["a", None]))
    shuffled = table.take([2, 0, 1])
    assert table_digest(shuffled, ["path", "v"]) == table_digest(table, ["path", "v"])
    assert table_digest(table, ["path", "v"]) != table_digest(table.set_column(1, "v", pa.array([1, 2, 3])), ["path", "v"])


def test_stage_rerun_after_add_delete_and_same_size_edit_equals_a_fresh_build(tmp_path):
    config = copy_demo(tmp_path, dataset={"type": "local", "instance_data_dir": "imgs", "crop": False})
    cfg = load_config(config)
    ds = cfg.datasets[0]
    root = cfg.dataset_dir(ds)
    for part in range(2):
        (root / f"p{part}").mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (64 + 8 * i, 64 + 16 * part), (i * 30, part * 90, 0)).save(root / f"p{part}" / f"im_{i}.bmp")

    def run():
        run_raw_dataset(cfg, ds)
        run_captions(cfg, ds)
        return run_bucketed_metadata(cfg, ds)

    first = run()
    # BMP of the same pixel size: same file size, new bytes (a same-size in-place edit).
    target = root / "p0" / "im_2.bmp"
    before = target.stat().st_size
    Image.new("RGB", (80, 64), (1, 2, 3)).save(target)
    assert target.stat().st_size == before
    st = target.stat()
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    (root / "p1" / "im_5.bmp").unlink()
    Image.new("RGB", (300, 100)).save(root / "p1" / "im_new.bmp")
    result = run()
    assert result.metadata["probed"] == 2  # the edited and the new image, nothing else
    assert result.metadata["reused_rows"] == 10
    assert result.data_version != first.data_version
    incremental = read_parquet(result.path)
    rows = {r["path"]: r for r in incremental.to_pylist()}
    assert "p1/im_5.bmp" not in rows and rows["p1/im_new.bmp"]["width"] == 300
    assert rows["p0/im_2.bmp"]["sha256"] == sha256_file(target)
    for stale in metadata_dir(cfg, ds).glob("*.parquet"):
        stale.unlink()
    scratch = run()
    assert scratch.metadata["probed"] == 12
    assert read_parquet(scratch.path).equals(incremental)
    assert scratch.data_version == result.data_version
