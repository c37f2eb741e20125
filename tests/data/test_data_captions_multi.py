"""Several captions per image (textfile lines, parquet list entries), through the real stage functions:
every usable caption is kept in ``captions``, ``caption`` stays the first, and the data version follows
every caption while single-caption datasets keep the version they had."""

from __future__ import annotations

import dataclasses
import os

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pixart_pipeline.config import load_config
from pixart_pipeline.data.captions import captions_data_version, caption_lines, usable_captions
from pixart_pipeline.data.digest import table_digest
from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset
from pixart_pipeline.fileio import read_parquet
from tests.demo_copy import copy_demo

# Three captions between blank, whitespace-only and CRLF lines; each line is stripped.
THREE_LINES = "a red circle\n\n   \n  on a white table  \r\n\ta photo of a circle\n \t\n"
THREE = ["a red circle", "on a white table", "a photo of a circle"]


def _textfile_dataset(tmp_path, **dataset):
    config = copy_demo(tmp_path, dataset={"type": "local", "instance_data_dir": "imgs", "crop": False,
                                          "caption_strategy": "textfile", **dataset})
    cfg = load_config(config)
    root = cfg.dataset_dir(cfg.datasets[0])
    root.mkdir(parents=True)
    for name, text in (("multi", THREE_LINES), ("one", "just one line\n\n"), ("two", "first\nsecond\n")):
        Image.new("RGB", (64, 64), (len(name) * 40, 0, 0)).save(root / f"{name}.png")
        (root / f"{name}.txt").write_text(text, encoding="utf-8")
    return cfg, root


def _rows(cfg):
    ds = cfg.datasets[0]
    run_raw_dataset(cfg, ds)
    result = run_captions(cfg, ds)
    table = read_parquet(result.path)
    return result, table, {r["path"]: r for r in table.to_pylist()}


def test_caption_lines_strips_and_drops_blank_lines():
    assert caption_lines(THREE_LINES) == THREE
    assert caption_lines(" \n\t\n") == []
    assert caption_lines("dup\ndup\n") == ["dup", "dup"]  # duplicates weigh that caption, as in SimpleTuner


def test_textfile_lines_are_separate_captions(tmp_path):
    cfg, _ = _textfile_dataset(tmp_path)
    result, table, rows = _rows(cfg)
    assert (rows["multi.png"]["caption"], rows["multi.png"]["captions"]) == (THREE[0], THREE)
    assert (rows["two.png"]["caption"], rows["two.png"]["captions"]) == ("first", ["first", "second"])
    # one usable caption: ``caption`` alone, no list
    assert (rows["one.png"]["caption"], rows["one.png"]["captions"]) == ("just one line", None)
    assert dict(usable_captions(table)) == {"multi.png": THREE, "two.png": ["first", "second"],
                                            "one.png": ["just one line"]}
    assert result.metadata["multi_caption_images"] == 2
    assert result.metadata["distinct_captions"] == len(THREE) + 2 + 1
    # the metadata table's caption is the first one (its captions column lists them all)
    metadata = read_parquet(run_bucketed_metadata(cfg, cfg.datasets[0]).path)
    assert dict(zip(metadata.column("path").to_pylist(), metadata.column("caption").to_pylist())) == {
        "multi.png": THREE[0], "two.png": "first", "one.png": "just one line"}


def test_editing_the_second_line_changes_the_data_version_and_a_same_stat_edit_is_picked_up(tmp_path):
    cfg, root = _textfile_dataset(tmp_path)
    before, _, _ = _rows(cfg)
    (root / "multi.txt").write_text(THREE_LINES.replace("on a white table", "on a black table"), encoding="utf-8")
    # Same size and mtime as at the scan above, but that scan saw the file too recently to trust its
    # stat (the racy-mtime rule): it is hashed again, so the edit is read.
    st = (root / "two.txt").stat()
    (root / "two.txt").write_text("FIRST\nSECOND\n")
    os.utime(root / "two.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    after, _, rows = _rows(cfg)
    assert rows["multi.png"]["caption"] == THREE[0]  # first line unchanged ...
    assert rows["multi.png"]["captions"][1] == "on a black table"
    assert after.data_version != before.data_version  # ... but the version follows the second line
    assert rows["two.png"]["captions"] == ["FIRST", "SECOND"]
    again, _, _ = _rows(cfg)
    assert again.data_version == after.data_version


def test_single_caption_tables_keep_the_three_column_digest(tmp_path):
    cfg, root = _textfile_dataset(tmp_path)
    (root / "multi.txt").write_text("only this\n")
    (root / "two.txt").write_text("\nand this\n \n")
    result, table, rows = _rows(cfg)
    assert table.column("captions").null_count == table.num_rows
    assert result.data_version == table_digest(table, ["path", "caption", "caption_status"])
    # a filename table has no captions column at all, and the same rule
    filename = load_config(copy_demo(tmp_path / "f", dataset={"type": "local", "instance_data_dir": str(root),
                                                              "caption_strategy": "filename"}))
    result, table, _ = _rows(filename)
    assert "captions" not in table.column_names
    assert result.data_version == table_digest(table, ["path", "caption", "caption_status"])
    assert captions_data_version(table.sort_by([("path", "descending")])) == result.data_version


def test_prepend_and_only_instance_prompt_apply_to_every_caption(tmp_path):
    cfg, _ = _textfile_dataset(tmp_path, instance_prompt="sks", prepend_instance_prompt=True)
    _, _, rows = _rows(cfg)
    assert rows["multi.png"]["caption"] == "sks a red circle"
    assert rows["multi.png"]["captions"] == [f"sks {c}" for c in THREE]
    cfg, _ = _textfile_dataset(tmp_path / "only", instance_prompt="sks", only_instance_prompt=True)
    _, table, rows = _rows(cfg)
    assert {(r["caption"], r["captions"]) for r in rows.values()} == {("sks", None)}


def test_parquet_list_entries_are_separate_captions(tmp_path):
    config = copy_demo(tmp_path, dataset={"type": "local", "instance_data_dir": "imgs", "crop": False,
                                          "caption_strategy": "parquet",
                                          "parquet": {"path": "captions.parquet", "fallback_caption_column": "tags"}})
    cfg = load_config(config)
    root = cfg.dataset_dir(cfg.datasets[0])
    root.mkdir(parents=True)
    for name in ("1.png", "2.png", "3.png", "4.png"):
        Image.new("RGB", (64, 64)).save(root / name)
    table = pa.table({
        "id": [1, 2, 3, 4],
        # nulls and blank entries dropped; every other entry, stripped, in order
        "description": [[" a cat ", None, "  ", "a sitting cat"], ["two", "two", "three"], ["", None], ["one"]],
        "tags": ["x", "y", "tag fallback", "z"],
    })
    pq.write_table(table, config.parent / "captions.parquet")
    first, captions_table, rows = _rows(cfg)
    got = {p: (r["caption"], r["captions"], r["caption_status"]) for p, r in rows.items()}
    assert got == {
        "1.png": ("a cat", ["a cat", "a sitting cat"], "ok"),
        "2.png": ("two", ["two", "two", "three"], "ok"),  # a repeated entry weighs that caption
        "3.png": ("tag fallback", None, "ok"),  # no usable entry: the fallback column
        "4.png": ("one", None, "ok"),
    }
    # editing the second entry of a list changes the version
    table = table.set_column(1, "description", pa.array(
        [["a cat", "a standing cat"], ["two", "two", "three"], ["", None], ["one"]]))
    pq.write_table(table, config.parent / "captions.parquet")
    second, _, rows = _rows(cfg)
    assert rows["1.png"]["captions"] == ["a cat", "a standing cat"]
    assert second.data_version != first.data_version


def test_metadata_after_a_pixel_edit_without_rerunning_captions(tmp_path):
    """raw_dataset re-run after an image edit, captions not re-run: the metadata stage must look up
    the manifest's new sha256 for a captions table that carries the ``captions`` list column (an
    Acero join cannot carry it and raised ArrowInvalid), and give what a fresh build gives."""
    cfg, root = _textfile_dataset(tmp_path, eval_split_fraction=0.0)
    ds = cfg.datasets[0]
    _rows(cfg)
    Image.new("RGB", (64, 96), (9, 9, 9)).save(root / "one.png")  # new pixels and a new size
    run_raw_dataset(cfg, ds)
    incremental = run_bucketed_metadata(cfg, ds)
    rows = {r["path"]: r for r in read_parquet(incremental.path).to_pylist()}
    assert (rows["one.png"]["width"], rows["one.png"]["height"]) == (64, 96)
    assert rows["multi.png"]["captions"] == THREE and rows["two.png"]["captions"] == ["first", "second"]
    run_captions(cfg, ds)
    assert run_bucketed_metadata(cfg, ds).data_version == incremental.data_version


def test_metadata_keeps_the_lists_of_kept_training_images_only_and_pins_single_caption_versions(tmp_path):
    """Only a kept training image's caption list is drawn from, so only it is stored (an eval image
    or a rejected one gets null, and editing its second line changes nothing downstream). A
    dataset where no image has several captions keeps the data version it had before the column
    existed, and so does its training run folder (else every existing run would look stale)."""
    from pixart_pipeline.data.metadata import metadata_data_version
    from pixart_pipeline.training.stage import _table_hash

    cfg, root = _textfile_dataset(tmp_path, eval_split_fraction=0.0, minimum_image_size=64)
    Image.new("RGB", (16, 16)).save(root / "small.png")  # too small: rejected
    (root / "small.txt").write_text("x\ny\n")
    ds = cfg.datasets[0]
    _rows(cfg)
    rows = {r["path"]: r for r in read_parquet(run_bucketed_metadata(cfg, ds).path).to_pylist()}
    assert rows["small.png"]["status"] == "too_small" and rows["small.png"]["captions"] is None
    assert rows["multi.png"]["captions"] == THREE

    evaluated = dataclasses.replace(cfg, datasets=(ds.model_copy(update={"dataset_type": "eval"}),))
    rows = {r["path"]: r for r in read_parquet(run_bucketed_metadata(evaluated, evaluated.datasets[0]).path).to_pylist()}
    assert rows["multi.png"]["split"] == "eval" and rows["multi.png"]["captions"] is None

    single = pa.table({"path": ["a.png", "b.png"], "sha256": ["1" * 64, "2" * 64], "caption": ["a", "b"],
                       "captions": pa.nulls(2, pa.list_(pa.string()))})
    assert metadata_data_version(single) == metadata_data_version(single.drop_columns(["captions"]))
    items = pa.table({"vae_key": ["k1", "k2"], "text_key": ["t1", "t2"], "repeats": [0, 0],
                      "text_keys": pa.nulls(2, pa.list_(pa.string())), "path": ["a.png", "b.png"]})
    assert _table_hash(items) == _table_hash(items.drop_columns(["text_keys"]))
    several = items.set_column(3, "text_keys", pa.array([["t1", "t3"], None], pa.list_(pa.string())))
    assert _table_hash(several) != _table_hash(items)


def test_a_rerun_reuses_eval_and_rejected_rows_whose_lists_the_metadata_does_not_store(tmp_path):
    """The metadata keeps a caption list only for kept training images; an eval image's list is
    stored as null, and the re-run must still see its row as unchanged (not recompute it every time)."""
    cfg, root = _textfile_dataset(tmp_path, dataset_type="eval")
    ds = cfg.datasets[0]
    _rows(cfg)
    first = run_bucketed_metadata(cfg, ds)
    again = run_bucketed_metadata(cfg, ds)
    assert again.metadata["reused_rows"] == again.metadata["rows"] == 3
    assert again.data_version == first.data_version
    assert all(r["captions"] is None for r in read_parquet(again.path).to_pylist())


def test_disable_multiline_split_keeps_the_whole_sidecar_as_one_caption(tmp_path):
    """SimpleTuner's ``disable_multiline_split``: a multi-line sidecar is one caption (line breaks
    kept, outer whitespace stripped); the key is in the captions fingerprint only when set."""
    from pixart_pipeline.config import fingerprints as fp

    cfg, root = _textfile_dataset(tmp_path, disable_multiline_split=True)
    ds = cfg.datasets[0]
    run_raw_dataset(cfg, ds)
    rows = {r["path"]: r for r in read_parquet(run_captions(cfg, ds).path).to_pylist()}
    assert rows["multi.png"]["caption"] == THREE_LINES.strip() and "\n" in rows["multi.png"]["caption"]
    assert rows["multi.png"]["captions"] is None and rows["two.png"]["caption"] == "first\nsecond"
    plain, _ = _textfile_dataset(tmp_path / "plain")
    assert fp.captions_fields(cfg, cfg.datasets[0]) == {**fp.captions_fields(plain, plain.datasets[0]),
                                                        "disable_multiline_split": True}
