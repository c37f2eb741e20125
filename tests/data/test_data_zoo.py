"""The hostile-input zoo: every kind of odd or broken file lands as a row with a status, through
the real stage functions (manifest -> captions -> bucketed metadata)."""

from __future__ import annotations

import io
import os
from pathlib import Path

from PIL import Image

from pixart_pipeline.config import load_config
from pixart_pipeline.data.probe_cache import load_probe_cache, probe_cache_path
from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset
from pixart_pipeline.stages import metadata_dir
from pixart_pipeline.fileio import read_parquet
from tests.data.test_data_probe import _png_with_size
from tests.demo_copy import copy_demo
from tests.support import age_files


def _jpeg(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90, **kw)
    return buf.getvalue()


def build_zoo(root: Path) -> dict[str, tuple]:
    """Write the zoo into ``root``; return ``{path: (status, width, height, note substring)}``."""
    root.mkdir(parents=True, exist_ok=True)
    noise = Image.effect_noise((96, 64), 50).convert("RGB")
    expect: dict[str, tuple] = {}

    (root / "empty.png").write_bytes(b"")
    expect["empty.png"] = ("empty_file", None, None, None)
    full = _jpeg(noise)
    (root / "truncated.jpg").write_bytes(full[: len(full) * 2 // 3])
    expect["truncated.jpg"] = ("truncated", None, None, None)
    (root / "actually_text.png").write_text("hello, I am not a PNG\n" * 20)
    expect["actually_text.png"] = ("unreadable", None, None, None)
    (root / "bomb.png").write_bytes(_png_with_size(30_000, 30_000))
    expect["bomb.png"] = ("decompression_bomb", None, None, None)
    (root / "cmyk.jpg").write_bytes(_jpeg(noise.convert("CMYK")))
    expect["cmyk.jpg"] = ("ok", 96, 64, "mode CMYK: converted to RGB")
    Image.new("I;16", (96, 64), 40000).save(root / "sixteen_bit.png")
    expect["sixteen_bit.png"] = ("ok", 96, 64, "scaled to 8-bit")
    noise.convert("P").save(root / "palette.png")
    expect["palette.png"] = ("ok", 96, 64, "mode P: converted to RGB")
    rgba = noise.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(root / "rgba.png")
    expect["rgba.png"] = ("ok", 96, 64, "alpha composited on white")
    frames = [Image.new("RGB", (96, 64), c) for c in ("red", "blue", "green")]
    frames[0].save(root / "animated.gif", save_all=True, append_images=frames[1:], duration=100)
    expect["animated.gif"] = ("ok", 96, 64, "animated GIF: first frame used")
    frames[0].save(root / "pages.tiff", save_all=True, append_images=frames[1:])
    expect["pages.tiff"] = ("ok", 96, 64, "multi-page TIFF: first page used")
    exif = Image.Exif()
    exif[0x0112] = 6
    (root / "rotated.jpg").write_bytes(_jpeg(noise, exif=exif))
    expect["rotated.jpg"] = ("ok", 64, 96, "EXIF orientation 6")
    noise.save(root / "photo.webp", format="WEBP")
    expect["photo.webp"] = ("ok", 96, 64, None)
    (root / "sub dir").mkdir()
    noise.save(root / "sub dir" / "café crème ünïcode.png")
    expect["sub dir/café crème ünïcode.png"] = ("ok", 96, 64, None)
    Image.new("L", (96, 64), 90).save(root / "grey.png")
    expect["grey.png"] = ("ok", 96, 64, "mode L: converted to RGB")
    noise.save(root / "vanishes.png")
    expect["vanishes.png"] = ("missing", None, None, None)
    # Not part of the dataset: hidden files and folders.
    (root / ".ipynb_checkpoints").mkdir()
    noise.save(root / ".ipynb_checkpoints" / "copy.png")
    noise.save(root / ".hidden.png")
    return expect


def test_zoo_every_row(tmp_path):
    config = copy_demo(tmp_path, dataset={"type": "local", "instance_data_dir": "zoo", "crop": False})
    cfg = load_config(config)
    ds = cfg.datasets[0]
    expect = build_zoo(cfg.dataset_dir(ds))
    run_raw_dataset(cfg, ds)
    run_captions(cfg, ds)
    (cfg.dataset_dir(ds) / "vanishes.png").unlink()  # listed by the manifest, gone when probed
    result = run_bucketed_metadata(cfg, ds, workers=2)
    rows = {r["path"]: r for r in read_parquet(result.path).to_pylist()}
    assert set(rows) == set(expect)
    for path, (status, width, height, note) in expect.items():
        row = rows[path]
        assert (row["status"], row["width"], row["height"]) == (status, width, height), path
        if note is None:
            assert row["note"] is None or status != "ok", (path, row["note"])
        else:
            assert note in row["note"], (path, row["note"])
        assert (row["bucket"] is not None) == (status == "ok"), path
    assert result.metadata["probed"] == len(expect)
    # The probe cache holds every content answer except "missing" (a fact about the folder, not the bytes).
    cache = load_probe_cache(probe_cache_path(metadata_dir(cfg, ds)))
    assert len(cache) == len(expect) - 1 and "missing" not in {p.status for p in cache.values()}


def test_rerun_probes_only_new_and_edited_files(tmp_path):
    config = copy_demo(tmp_path, dataset={"type": "local", "instance_data_dir": "imgs", "crop": False})
    cfg = load_config(config)
    ds = cfg.datasets[0]
    root = cfg.dataset_dir(ds)
    root.mkdir(parents=True)
    for i in range(12):
        Image.new("RGB", (64 + 8 * i, 64), (i * 20, 0, 0)).save(root / f"image_{i:02d}.png")

    def run():
        run_raw_dataset(cfg, ds)
        run_captions(cfg, ds)
        return run_bucketed_metadata(cfg, ds)

    assert run().metadata["probed"] == 12
    assert run().metadata["probed"] == 0
    Image.new("RGB", (200, 100)).save(root / "image_new.png")
    Image.new("RGB", (100, 200)).save(root / "image_03.png")  # edited: new content
    result = run()
    assert result.metadata["probed"] == 2
    rows = {r["path"]: r for r in read_parquet(result.path).to_pylist()}
    assert (rows["image_03.png"]["width"], rows["image_03.png"]["height"]) == (100, 200)
    assert (rows["image_new.png"]["width"], rows["image_new.png"]["height"]) == (200, 100)
    assert (rows["image_05.png"]["width"], rows["image_05.png"]["height"]) == (104, 64)
    assert result.metadata["reused_rows"] == 11  # 13 images: 1 new and 1 edited computed again
    # A removed image loses its row; a geometry change recomputes every row without probing again.
    (root / "image_07.png").unlink()
    assert "image_07.png" not in {r["path"] for r in read_parquet(run().path).to_pylist()}
    from tests.demo_copy import edit_json

    edit_json(cfg.backend_path, {"resolution": 96}, index=0)
    cfg = load_config(config)
    ds = cfg.datasets[0]
    result = run()
    assert (result.metadata["reused_rows"], result.metadata["probed"]) == (0, 0)
    incremental = read_parquet(result.path)
    # The same table as a build from nothing.
    for stale in metadata_dir(cfg, ds).glob("*"):
        if stale.name != "manifest.parquet" and stale.name != "captions.parquet":
            stale.unlink()
    scratch = run()
    assert scratch.metadata["probed"] == 12
    assert read_parquet(scratch.path).equals(incremental)


def test_textfile_rerun_picks_up_every_edit_and_rereads_nothing_once_files_are_old(tmp_path):
    """A sidecar rewritten with its old size and mtime right after a scan is picked up (the racy-mtime
    rule: the scan saw it too recently to trust its stat); once every file is older than the scan
    before, a re-run hashes nothing."""
    config = copy_demo(tmp_path, dataset={"type": "local", "instance_data_dir": "imgs", "crop": False,
                                          "caption_strategy": "textfile"})
    cfg = load_config(config)
    ds = cfg.datasets[0]
    root = cfg.dataset_dir(ds)
    root.mkdir(parents=True)
    for i in range(5):
        Image.new("RGB", (64, 64), (i * 40, 0, 0)).save(root / f"img{i}.png")
        (root / f"img{i}.txt").write_text(f"caption {i}\n")

    def captions():
        raw = run_raw_dataset(cfg, ds)
        table = read_parquet(run_captions(cfg, ds).path)
        got = {p: (c, s) for p, c, s in zip(*(table.column(n).to_pylist() for n in ("path", "caption", "caption_status")))}
        return got, {k: raw.metadata[k] for k in ("hashed", "rechecked_recent", "reused_hashes")}

    assert captions()[0]["img0.png"] == ("caption 0", "ok")
    # Same size and mtime, within the racy window of the scan above: re-hashed, so re-read.
    st = (root / "img1.txt").stat()
    (root / "img1.txt").write_text("CAPTION 1\n")
    os.utime(root / "img1.txt", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (root / "img1.txt").stat().st_size == st.st_size
    (root / "img2.txt").write_text("an edited caption\n")
    (root / "img3.txt").unlink()
    Image.new("RGB", (64, 64)).save(root / "img9.png")
    (root / "img9.txt").write_text("a new one\n")
    got, counts = captions()
    assert got == {"img0.png": ("caption 0", "ok"), "img1.png": ("CAPTION 1", "ok"),
                   "img2.png": ("an edited caption", "ok"), "img3.png": (None, "no_caption_file"),
                   "img4.png": ("caption 4", "ok"), "img9.png": ("a new one", "ok")}
    # img2.txt (new size), img9.png, img9.txt hashed; the 8 others had their stat but were too recent
    assert counts == {"hashed": 3, "rechecked_recent": 8, "reused_hashes": 0}

    age_files(root)  # as a real dataset is: written long before the scan
    assert captions()[1]["hashed"] == 11  # every mtime moved
    again, counts = captions()
    assert again == got and counts == {"hashed": 0, "rechecked_recent": 0, "reused_hashes": 11}
