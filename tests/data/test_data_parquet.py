"""caption_strategy / metadata_backend "parquet", and dataset_type "eval", through the stage functions."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pixart_pipeline.config import ConfigError, load_config
from pixart_pipeline.config import fingerprints as fp
from pixart_pipeline.data.parquet_source import ParquetSourceError
from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset
from pixart_pipeline.fileio import read_parquet
from tests.demo_copy import copy_demo, edit_json


def _setup(tmp_path, parquet: dict, **dataset):
    config = copy_demo(tmp_path, dataset={"type": "local", "instance_data_dir": "imgs", "crop": False,
                                          "caption_strategy": "parquet", "parquet": parquet, **dataset})
    cfg = load_config(config)
    root = cfg.dataset_dir(cfg.datasets[0])
    (root / "sub").mkdir(parents=True)
    for name in ("1.png", "2.png", "3.png", "4.png", "sub/5.jpg", "orphan.png"):
        Image.new("RGB", (64, 64)).save(root / name)
    table = pa.table({
        "id": [1, 2, 3, 4, 5],
        # a list column (SimpleTuner samples one entry per step; we keep the first non-empty one)
        "description": [["a cat"], [""], None, ["", "first of a list", "second"], [" in a sub-folder "]],
        "tags": ["x", "tag fallback", None, "y", "z"],
        "width": [200, 64, 64, 64, 0],
        "height": [100, 64, 64, 64, 64],
    })
    pq.write_table(table, config.parent / "captions.parquet")
    return cfg


def _run(cfg):
    ds = cfg.datasets[0]
    run_raw_dataset(cfg, ds)
    captions = read_parquet(run_captions(cfg, ds).path)
    metadata = read_parquet(run_bucketed_metadata(cfg, ds).path)
    return {r["path"]: r for r in captions.to_pylist()}, {r["path"]: r for r in metadata.to_pylist()}


def test_parquet_captions_with_fallback_lists_and_missing_rows(tmp_path):
    cfg = _setup(tmp_path, {"path": "captions.parquet", "fallback_caption_column": "tags"})
    captions, metadata = _run(cfg)
    got = {p: (r["caption"], r["caption_status"]) for p, r in captions.items()}
    assert got == {
        "1.png": ("a cat", "ok"),
        "2.png": ("tag fallback", "ok"),  # empty caption -> fallback column
        "3.png": (None, "empty_caption"),  # both null
        "4.png": ("first of a list", "ok"),
        "sub/5.jpg": ("in a sub-folder", "ok"),  # matched by bare name, extension stripped
        "orphan.png": (None, "not_in_parquet"),
    }
    # discovery sizes: images are opened (the parquet's 200x100 is not used)
    assert (metadata["1.png"]["width"], metadata["1.png"]["height"]) == (64, 64)
    assert metadata["orphan.png"]["status"] == "not_in_parquet"


def test_parquet_metadata_backend_takes_sizes_without_opening_images(tmp_path):
    cfg = _setup(tmp_path, {"path": "captions.parquet", "width_column": "width", "height_column": "height"},
                 metadata_backend="parquet")
    root = cfg.dataset_dir(cfg.datasets[0])
    (root / "4.png").write_bytes(b"not an image")  # never opened, so not rejected here
    _, metadata = _run(cfg)
    assert (metadata["1.png"]["width"], metadata["1.png"]["height"], metadata["1.png"]["status"]) == (200, 100, "ok")
    assert metadata["4.png"]["status"] == "ok"
    assert metadata["sub/5.jpg"]["status"] == "parquet_size_invalid"
    assert metadata["orphan.png"]["status"] == "not_in_parquet"


def test_identifier_including_extension_and_fingerprint_follows_the_file(tmp_path):
    cfg = _setup(tmp_path, {"path": "captions.parquet", "identifier_includes_extension": True})
    captions, _ = _run(cfg)
    assert {r["caption_status"] for r in captions.values()} == {"not_in_parquet"}  # ids have no extension
    before = fp.captions_fields(cfg, cfg.datasets[0])
    pq.write_table(pa.table({"id": ["1.png"], "description": ["now with extension"]}),
                   cfg.backend_path.parent / "captions.parquet")
    assert fp.captions_fields(cfg, cfg.datasets[0]) != before
    captions, _ = _run(cfg)
    assert captions["1.png"]["caption"] == "now with extension"


def test_bad_parquet_config_and_files_are_clear_errors(tmp_path):
    cfg = _setup(tmp_path, {"path": "captions.parquet", "caption_column": "nope"})
    run_raw_dataset(cfg, cfg.datasets[0])
    with pytest.raises(ParquetSourceError, match="nope"):
        run_captions(cfg, cfg.datasets[0])
    backend = cfg.backend_path
    edit_json(backend, {"parquet": None}, index=0)
    with pytest.raises(ConfigError, match="parquet"):
        load_config(cfg.config_path)
    edit_json(backend, {"parquet": {"path": "captions.parquet"}, "metadata_backend": "parquet"}, index=0)
    with pytest.raises(ConfigError, match="width_column"):
        load_config(cfg.config_path)


def test_eval_dataset_is_all_eval_split(tmp_path):
    config = copy_demo(tmp_path)
    entries = json.loads((config.parent / "multidatabackend.json").read_text())
    held_out = entries[0] | {"id": "held-out", "dataset_type": "eval", "synthetic_num_images": 6,
                              "instance_data_dir": "../../output/demo/datasets/held-out"}
    (config.parent / "multidatabackend.json").write_text(json.dumps([held_out] + entries))
    cfg = load_config(config)
    ds = cfg.dataset("held-out")
    assert ds.dataset_type == "eval"
    run_raw_dataset(cfg, ds)
    run_captions(cfg, ds)
    table = read_parquet(run_bucketed_metadata(cfg, ds).path)
    assert set(table.column("split").to_pylist()) == {"eval"}
    train = cfg.dataset("shapes")
    assert fp.bucketed_metadata_fields(cfg, ds)["dataset_type"] != fp.bucketed_metadata_fields(cfg, train)["dataset_type"]
    from pixart_pipeline.defs.checks import build_checks

    names = {spec.asset_key.to_user_string() for c in build_checks(cfg) for spec in c.check_specs}
    assert "bucketed_metadata/shapes" in names and "bucketed_metadata/held-out" not in names


def test_disabled_dataset_has_no_lane_and_repeats_reach_the_readiness_count(tmp_path):
    config = copy_demo(tmp_path)
    backend = config.parent / "multidatabackend.json"
    entries = json.loads(backend.read_text())
    off = entries[0] | {"id": "switched-off", "disabled": True, "instance_data_dir": "nowhere"}
    entries[0] |= {"repeats": 2}
    backend.write_text(json.dumps([off] + entries))
    cfg = load_config(config)
    assert [d.id for d in cfg.datasets] == ["shapes"]
    from pixart_pipeline.defs.build import build_definitions

    keys = {k.to_user_string() for k in build_definitions(cfg).resolve_asset_graph().get_all_asset_keys()}
    assert "raw_dataset/shapes" in keys and not any("switched-off" in k for k in keys)
    ds = cfg.dataset("shapes")
    for run in (run_raw_dataset, run_captions, run_bucketed_metadata):
        run(cfg, ds)
    from pixart_pipeline.data.stage import batch_readiness

    train_ok = sum(1 for r in read_parquet(run_bucketed_metadata(cfg, ds).path).to_pylist()
                   if r["status"] == "ok" and r["split"] == "train")
    report = batch_readiness(cfg, ds)
    assert report.usable + sum(report.small_buckets.values()) == train_ok * 3  # 1 + repeats draws each
