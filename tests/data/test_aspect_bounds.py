"""SimpleTuner's ``minimum_aspect_ratio`` / ``maximum_aspect_ratio``: a kept image whose bucket key
(the target's rounded aspect, not the image's own ratio) is outside the bounds becomes a rejected row
with a reason code; 0 or null is no bound. Worked examples derived by hand at 512 px (pixel_area)."""

from __future__ import annotations

import pytest
from PIL import Image

from pixart_pipeline.config import fingerprints as fp
from pixart_pipeline.config import load_config
from pixart_pipeline.config.load import ConfigError
from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset
from pixart_pipeline.fileio import read_parquet
from tests.demo_copy import copy_demo

# (width, height) -> bucket key at resolution 512 pixel_area without crop:
# 1024x512 (2.0) -> target 704x384 = "1.83"; 512x1024 (0.5) -> 384x704 = "0.55";
# 600x500 (1.2) -> 576x448 = "1.29"; 500x500 -> 512x512 = "1.0".
SIZES = {"wide": (1024, 512), "tall": (512, 1024), "near": (600, 500), "square": (500, 500)}


def _metadata(tmp_path, **bounds):
    config = copy_demo(tmp_path, dataset={"type": "local", "instance_data_dir": "imgs", "crop": False,
                                          "resolution": 512, "resolution_type": "pixel_area",
                                          "eval_split_fraction": 0.0, **bounds})
    cfg = load_config(config)
    ds = cfg.datasets[0]
    root = cfg.dataset_dir(ds)
    root.mkdir(parents=True)
    for name, size in SIZES.items():
        Image.new("RGB", size, (len(name) * 30, 90, 9)).save(root / f"{name}.png")
    run_raw_dataset(cfg, ds)
    run_captions(cfg, ds)
    rows = read_parquet(run_bucketed_metadata(cfg, ds).path).to_pylist()
    return cfg, {r["path"].removesuffix(".png"): r for r in rows}


def test_buckets_outside_the_bounds_are_rejected_with_a_reason_and_no_geometry(tmp_path):
    _, unbounded = _metadata(tmp_path / "free")
    assert {n: r["bucket"] for n, r in unbounded.items()} == {"wide": "1.83", "tall": "0.55", "near": "1.29",
                                                             "square": "1.0"}
    cfg, rows = _metadata(tmp_path / "bounded", minimum_aspect_ratio=0.6, maximum_aspect_ratio=1.5)
    assert {n: r["status"] for n, r in rows.items()} == {"wide": "above_max_aspect_ratio", "tall": "below_min_aspect_ratio",
                                                        "near": "ok", "square": "ok"}
    assert rows["wide"]["bucket"] is None and rows["wide"]["target_width"] is None
    assert rows["near"]["bucket"] == "1.29"
    # The key compared is the bucket's, not the image's own 1.2: a bound of 1.25 drops "near".
    _, tighter = _metadata(tmp_path / "tighter", maximum_aspect_ratio=1.25)
    assert tighter["near"]["status"] == "above_max_aspect_ratio" and tighter["square"]["status"] == "ok"


def test_zero_means_no_bound_and_only_set_bounds_enter_the_fingerprint(tmp_path):
    cfg, rows = _metadata(tmp_path / "zero", minimum_aspect_ratio=0, maximum_aspect_ratio=0)
    assert all(r["status"] == "ok" for r in rows.values())
    plain = load_config(copy_demo(tmp_path / "plain", dataset={"type": "local", "instance_data_dir": "imgs",
                                                                "crop": False, "resolution": 512,
                                                                "resolution_type": "pixel_area",
                                                                "eval_split_fraction": 0.0}))
    assert fp.bucketed_metadata_fields(cfg, cfg.datasets[0]) == fp.bucketed_metadata_fields(plain, plain.datasets[0])
    bounded = load_config(copy_demo(tmp_path / "b", dataset={"minimum_aspect_ratio": 0.6}))
    assert fp.bucketed_metadata_fields(bounded, bounded.datasets[0])["minimum_aspect_ratio"] == 0.6


def test_a_bucket_on_a_bound_is_kept(tmp_path):
    """SimpleTuner compares strictly (``float(bucket) < minimum``): a key equal to a bound stays."""
    _, rows = _metadata(tmp_path, minimum_aspect_ratio=0.55, maximum_aspect_ratio=1.29)
    assert (rows["tall"]["status"], rows["near"]["status"], rows["wide"]["status"]) == (
        "ok", "ok", "above_max_aspect_ratio")


def test_crossed_bounds_are_a_config_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"\[0\]\.maximum_aspect_ratio = 1\.0: .*below minimum_aspect_ratio 2\.0"):
        load_config(copy_demo(tmp_path, dataset={"minimum_aspect_ratio": 2.0, "maximum_aspect_ratio": 1.0}))
