from pathlib import Path

import pyarrow as pa

from pixart_pipeline.config import load_config
from pixart_pipeline.config.dataset_models import ImageDataset
from pixart_pipeline.data.captions import build_captions_table
from pixart_pipeline.data.manifest import scan_dataset
from pixart_pipeline.data.metadata import (
    METADATA_SCHEMA,
    bucket_histogram,
    build_metadata_table,
    metadata_data_version,
    split_for,
    status_counts,
)
from pixart_pipeline.data.synthetic import BROKEN_NAME, TINY_NAME, generate_synthetic_dataset
from pixart_pipeline.fileio import atomic_write_parquet, read_parquet

DEMO = Path(__file__).resolve().parents[2] / "config" / "demo" / "config.json"


def _metadata(root: Path, ds: ImageDataset):
    manifest, _ = scan_dataset(root)
    return build_metadata_table(manifest, build_captions_table(manifest, root, ds), root, ds)


def test_demo_dataset_buckets_and_rejections(tmp_path):
    ds = load_config(DEMO).dataset("shapes")
    generate_synthetic_dataset(tmp_path, ds.synthetic_num_images, ds.synthetic_seed)
    table = _metadata(tmp_path, ds)
    assert table.schema == METADATA_SCHEMA
    assert table.num_rows == ds.synthetic_num_images + 2
    assert status_counts(table) == {"ok": ds.synthetic_num_images, "too_small": 1, "unreadable": 1}
    hist = bucket_histogram(table)
    assert len(hist) >= 3 and set(hist) == {"0.67", "1.0", "1.5"} and sum(hist.values()) == ds.synthetic_num_images
    rows = {r["path"]: r for r in table.to_pylist()}
    broken, tiny = rows[BROKEN_NAME], rows[TINY_NAME]
    assert broken["status"] == "unreadable" and broken["width"] is None and broken["bucket"] is None
    assert tiny["status"] == "too_small" and (tiny["width"], tiny["height"]) == (40, 40)
    assert tiny["target_width"] is None and tiny["caption"] == "a tiny red circle on a white background"
    for r in rows.values():
        if r["status"] == "ok":
            assert r["caption"] and r["target_width"] % 64 == 0 and r["target_height"] % 64 == 0
            assert r["crop_left"] + r["target_width"] <= r["intermediary_width"]
            assert r["crop_top"] + r["target_height"] <= r["intermediary_height"]
    assert {r["split"] for r in rows.values()} == {"train", "eval"}


def test_rejected_caption_keeps_row(tmp_path):
    generate_synthetic_dataset(tmp_path, 4, seed=0)
    ds = ImageDataset(id="d", instance_data_dir=".", caption_strategy="textfile", resolution=128)
    table = _metadata(tmp_path, ds)
    counts = status_counts(table)
    assert counts == {"no_caption_file": 5, "unreadable": 1}  # the probe failure wins over the caption
    assert bucket_histogram(table) == {}


def test_split_is_stable_when_images_are_added(tmp_path):
    ds = ImageDataset(id="d", instance_data_dir=".", resolution=128, eval_split_fraction=0.3)
    generate_synthetic_dataset(tmp_path, 20, seed=0)
    small = {r["path"]: r["split"] for r in _metadata(tmp_path, ds).to_pylist()}
    generate_synthetic_dataset(tmp_path, 60, seed=0)
    large = {r["path"]: r["split"] for r in _metadata(tmp_path, ds).to_pylist()}
    assert len(large) == 62 and all(large[p] == s for p, s in small.items())
    assert 0.1 < sum(s == "eval" for s in large.values()) / len(large) < 0.5
    assert split_for("00000000" + "f" * 56, 0.1) == "eval" and split_for("f" * 64, 0.1) == "train"
    assert split_for("00000000" + "0" * 56, 0.0) == "train"


def test_data_version_is_order_free_and_semantic(tmp_path):
    ds = ImageDataset(id="d", instance_data_dir=".", resolution=128, crop=True, crop_aspect="preserve")
    generate_synthetic_dataset(tmp_path / "ds", 10, seed=0)
    table = _metadata(tmp_path / "ds", ds)
    atomic_write_parquet(tmp_path / "meta.parquet", table)
    assert read_parquet(tmp_path / "meta.parquet").equals(table)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "meta.parquet"]  # no temp file left
    shuffled = pa.Table.from_pylist(table.to_pylist()[::-1], schema=table.schema)
    assert metadata_data_version(shuffled) == metadata_data_version(table)
    # A resolution change alters rows and the version.
    bigger = ds.model_copy(update={"resolution": 192})
    assert metadata_data_version(_metadata(tmp_path / "ds", bigger)) != metadata_data_version(table)


def test_a_training_seed_change_keeps_the_metadata_rows_and_version(tmp_path):
    """The training ``seed`` is not an input of the metadata stage (the eval split hashes the image,
    not the seed): two demo copies that differ only in config.json's seed build, each from nothing,
    the same table and data version."""
    from demo_copy import copy_demo
    from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset

    def metadata(seed: int):
        config = copy_demo(tmp_path / f"seed{seed}", config={"seed": seed}, dataset={"synthetic_num_images": 10})
        cfg = load_config(config)
        assert cfg.training.seed == seed
        ds = cfg.datasets[0]
        run_raw_dataset(cfg, ds)
        run_captions(cfg, ds)
        result = run_bucketed_metadata(cfg, ds)
        return result, read_parquet(result.path)

    first, table = metadata(1)
    second, again = metadata(2)
    assert second.data_version == first.data_version
    assert again.equals(table)
    assert table.num_rows == 12 and set(table.column("split").to_pylist()) == {"train", "eval"}


def test_geometry_values_are_the_metadata_geometry_columns_in_order():
    """build_metadata_table writes ``Geometry.values()`` into the columns named by GEOMETRY_COLUMNS:
    both orders must be the dataclass's field order and the schema's."""
    import dataclasses

    from pixart_pipeline.data.buckets import Geometry
    from pixart_pipeline.data.metadata import GEOMETRY_COLUMNS

    names = tuple(f.name for f in dataclasses.fields(Geometry))
    g = Geometry(*range(6), "1.5")
    assert g.values() == tuple(getattr(g, n) for n in names)
    assert names == GEOMETRY_COLUMNS
    start = METADATA_SCHEMA.names.index(GEOMETRY_COLUMNS[0])
    assert tuple(METADATA_SCHEMA.names[start:start + len(names)]) == names
