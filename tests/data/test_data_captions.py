import pyarrow as pa

from pixart_pipeline.config.dataset_models import ImageDataset
from pixart_pipeline.data.captions import (
    CAPTION_TOO_LARGE,
    MAX_CAPTION_BYTES,
    build_captions_table,
    captions_data_version,
)
from pixart_pipeline.data.manifest import scan_dataset


def _dataset(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ("a_red_circle.png", "plain.jpg", "sub/two_lines.png", "empty.png", "bad_utf8.png"):
        (tmp_path / name).write_bytes(b"img" + name.encode())
    (tmp_path / "plain.txt").write_text("  a plain photo  \n", encoding="utf-8")
    (tmp_path / "sub" / "two_lines.txt").write_text("\n\nfirst line\nsecond line\n", encoding="utf-8")
    (tmp_path / "empty.txt").write_text(" \n\n", encoding="utf-8")
    (tmp_path / "bad_utf8.txt").write_bytes(b"\xff\xfe\xfa")
    manifest, _ = scan_dataset(tmp_path)
    return manifest


def _captions(table):
    return {r["path"]: (r["caption"], r["caption_status"]) for r in table.to_pylist()}


def test_filename_strategy(tmp_path):
    manifest = _dataset(tmp_path)
    table = build_captions_table(manifest, tmp_path, ImageDataset(id="d", instance_data_dir=".", caption_strategy="filename"))
    got = _captions(table)
    assert got["a_red_circle.png"] == ("a red circle", "ok")
    assert got["sub/two_lines.png"] == ("two lines", "ok")
    assert "plain.txt" not in got  # sidecars are not images
    assert table.column_names == ["path", "sha256", "caption", "caption_status", "sidecar_sha256"]


def test_textfile_strategy(tmp_path):
    manifest = _dataset(tmp_path)
    table = build_captions_table(manifest, tmp_path, ImageDataset(id="d", instance_data_dir=".", caption_strategy="textfile"))
    got = _captions(table)
    assert got["plain.jpg"] == ("a plain photo", "ok")
    assert got["sub/two_lines.png"] == ("first line", "ok")
    assert got["a_red_circle.png"] == (None, "no_caption_file")
    assert got["empty.png"] == (None, "empty_caption")
    assert got["bad_utf8.png"] == (None, "caption_not_utf8")
    before = captions_data_version(table)
    (tmp_path / "plain.txt").write_text("an edited caption\n")
    manifest2, _ = scan_dataset(tmp_path)
    table2 = build_captions_table(manifest2, tmp_path, ImageDataset(id="d", instance_data_dir=".", caption_strategy="textfile"))
    assert _captions(table2)["plain.jpg"] == ("an edited caption", "ok")
    assert captions_data_version(table2) != before


def test_instanceprompt_strategy_and_version_is_order_free(tmp_path):
    manifest = _dataset(tmp_path)
    ds = ImageDataset(id="d", instance_data_dir=".", caption_strategy="instanceprompt", instance_prompt="a sks dog")
    table = build_captions_table(manifest, tmp_path, ds)
    assert {c for c, _ in _captions(table).values()} == {"a sks dog"}
    reversed_table = pa.Table.from_pylist(table.to_pylist()[::-1], schema=table.schema)
    assert captions_data_version(reversed_table) == captions_data_version(table)


def test_version_ignores_image_bytes_but_not_captions(tmp_path):
    ds = ImageDataset(id="d", instance_data_dir=".", caption_strategy="textfile")
    table = build_captions_table(_dataset(tmp_path), tmp_path, ds)
    rows = table.to_pylist()
    repixeled = pa.Table.from_pylist([{**r, "sha256": "0" * 64} for r in rows], schema=table.schema)
    assert captions_data_version(repixeled) == captions_data_version(table)
    recaptioned = pa.Table.from_pylist(
        [{**r, "caption": "new" if r["path"] == "plain.jpg" else r["caption"]} for r in rows], schema=table.schema
    )
    assert captions_data_version(recaptioned) != captions_data_version(table)
    restatused = pa.Table.from_pylist(
        [{**r, "caption_status": "caption_unreadable" if r["path"] == "empty.png" else r["caption_status"]}
         for r in rows], schema=table.schema,
    )
    assert captions_data_version(restatused) != captions_data_version(table)


def test_oversized_caption_file_is_a_reason_code(tmp_path):
    for name in ("at_cap.png", "over_cap.png"):
        (tmp_path / name).write_bytes(b"img")
    (tmp_path / "at_cap.txt").write_bytes(b"a" * MAX_CAPTION_BYTES)
    (tmp_path / "over_cap.txt").write_bytes(b"a" * (MAX_CAPTION_BYTES + 1))
    manifest, _ = scan_dataset(tmp_path)
    got = _captions(build_captions_table(manifest, tmp_path, ImageDataset(id="d", instance_data_dir=".", caption_strategy="textfile")))
    assert got["at_cap.png"] == ("a" * MAX_CAPTION_BYTES, "ok")
    assert got["over_cap.png"] == (None, CAPTION_TOO_LARGE) == (None, "caption_too_large")


def test_columnwise_filename_captions_agree_with_the_per_file_rule(tmp_path):
    import pyarrow as pa

    from pixart_pipeline.config.dataset_models import ImageDataset
    from pixart_pipeline.data.captions import build_captions_table, caption_for

    paths = ["a_red_circle.png", "sub/dir/photo.v2.JPG", "x/__.png", "x/ _ .webp", "notes.txt", "d.e/f_g.tiff",
             "ünï_cödé name.jpeg", "plain"]
    manifest = pa.table({"path": paths, "sha256": [f"{i:064x}" for i in range(len(paths))]})
    ds = ImageDataset(id="t", instance_data_dir=".", caption_strategy="filename")
    table = build_captions_table(manifest, tmp_path, ds)
    expected = sorted((p, *caption_for(p, tmp_path, ds, set(paths))) for p in paths
                      if p.rsplit(".", 1)[-1].lower() in ("png", "jpg", "jpeg", "webp", "tiff"))
    got = list(zip(*(table.column(c).to_pylist() for c in ("path", "caption", "caption_status"))))
    assert got == expected
    assert dict((p, c) for p, c, _ in got)["sub/dir/photo.v2.JPG"] == "photo.v2"
    assert dict((p, s) for p, _, s in got)["x/__.png"] == "empty_caption"


def test_prepend_and_only_instance_prompt(tmp_path):
    import pyarrow as pa

    from pixart_pipeline.config.dataset_models import ImageDataset
    from pixart_pipeline.data.captions import build_captions_table

    (tmp_path / "b.txt").write_text("a blue cube\nsecond line\n")
    paths = ["a_red_circle.png", "b.png", "c.png", "b.txt"]
    manifest = pa.table({"path": paths, "sha256": [f"{i:064x}" for i in range(len(paths))]})

    def captions(**kw):
        ds = ImageDataset(id="t", instance_data_dir=".", instance_prompt="sks style", **kw)
        table = build_captions_table(manifest, tmp_path, ds)
        return dict(zip(table.column("path").to_pylist(),
                        zip(table.column("caption").to_pylist(), table.column("caption_status").to_pylist())))

    assert captions(caption_strategy="filename", prepend_instance_prompt=True)["a_red_circle.png"] == (
        "sks style a red circle", "ok")
    got = captions(caption_strategy="textfile", prepend_instance_prompt=True)
    assert got["b.png"] == ("sks style a blue cube", "ok") and got["c.png"] == (None, "no_caption_file")
    got = captions(caption_strategy="textfile", only_instance_prompt=True)
    assert set(got.values()) == {("sks style", "ok")} and len(got) == 3
    import pytest

    with pytest.raises(ValueError, match="instance_prompt"):
        ImageDataset(id="t", instance_data_dir=".", prepend_instance_prompt=True)
