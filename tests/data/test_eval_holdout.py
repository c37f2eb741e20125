"""The eval hold-out is explicit (issue 14, point 4): a few images by default, none from a small
dataset or when an eval dataset exists, nothing with eval_split_fraction 0; validate says so."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import pyarrow.compute as pc

from pixart_pipeline.config import load_config
from pixart_pipeline.config.holdout import auto_count
from pixart_pipeline.config.models import ImageDataset
from pixart_pipeline.data.captions import build_captions_table
from pixart_pipeline.data.manifest import scan_dataset
from pixart_pipeline.data.metadata import build_metadata_table
from pixart_pipeline.data.synthetic import generate_synthetic_dataset


def _splits(root: Path, ds: ImageDataset) -> dict[str, str]:
    manifest, _ = scan_dataset(root)
    table = build_metadata_table(manifest, build_captions_table(manifest, root, ds), root, ds)
    ok = table.filter(pc.equal(table.column("status"), "ok"))
    return dict(zip(ok.column("path").to_pylist(), ok.column("split").to_pylist()))


def test_the_default_holds_out_a_few_images_and_none_from_a_small_dataset(tmp_path):
    assert [auto_count(n) for n in (0, 24, 25, 60, 99, 100, 10_000)] == [0, 0, 1, 2, 3, 4, 4]
    big, small = tmp_path / "big", tmp_path / "small"
    generate_synthetic_dataset(big, 60, seed=1)
    generate_synthetic_dataset(small, 20, seed=1)
    ds = ImageDataset(id="d", instance_data_dir=".", resolution=128)  # eval_split_fraction unset
    assert list(_splits(big, ds).values()).count("eval") == 2  # 60 kept -> 60 // 25
    assert set(_splits(small, ds).values()) == {"train"}  # 20 kept: too few to spare one
    # eval_split_fraction 0: every image trains, as in SimpleTuner
    assert set(_splits(big, ds.model_copy(update={"eval_split_fraction": 0.0})).values()) == {"train"}


def test_the_auto_holdout_is_a_function_of_the_images_not_of_their_order(tmp_path):
    generate_synthetic_dataset(tmp_path, 60, seed=2)
    ds = ImageDataset(id="d", instance_data_dir=".", resolution=128)
    first = _splits(tmp_path, ds)
    assert _splits(tmp_path, ds) == first


def _write(tmp_path: Path, entries: list) -> Path:
    (tmp_path / "multidatabackend.json").write_text(json.dumps(entries + [
        {"id": "text", "type": "local", "dataset_type": "text_embeds", "default": True}]))
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "full", "output_dir": "out"}))
    return path


def test_an_eval_dataset_turns_the_default_holdout_off(tmp_path):
    train = {"id": "train", "type": "local", "instance_data_dir": "train"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        alone = load_config(_write(tmp_path, [train]))
        both = load_config(_write(tmp_path, [train, {"id": "ev", "type": "local", "dataset_type": "eval",
                                                     "instance_data_dir": "ev"}]))
    assert alone.dataset("train").eval_split_fraction is None
    assert both.dataset("train").eval_split_fraction == 0.0


def test_validate_says_what_each_dataset_holds_out(tmp_path):
    path = _write(tmp_path, [{"id": "a", "type": "local", "instance_data_dir": "a"},
                             {"id": "b", "type": "local", "instance_data_dir": "b", "eval_split_fraction": 0},
                             {"id": "c", "type": "local", "instance_data_dir": "c", "eval_split_fraction": 0.2}])
    run = subprocess.run([sys.executable, "-m", "pixart_pipeline.cli", "validate", "--config", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "eval hold-out a: auto: 1 image per 25 kept, at most 4" in run.stdout
    assert "eval hold-out b: none (eval_split_fraction 0" in run.stdout
    assert "eval hold-out c: 20% of the images by hash" in run.stdout


def test_the_metadata_materialization_and_validate_say_how_many_are_held_out(tmp_path):
    from demo_copy import copy_demo
    from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset

    path = copy_demo(tmp_path, dataset={"synthetic_num_images": 60})
    backend = path.parent / "multidatabackend.json"
    entries = json.loads(backend.read_text())
    del entries[0]["eval_split_fraction"]  # the default: the auto hold-out
    backend.write_text(json.dumps(entries))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = load_config(path)
    ds = cfg.datasets[0]
    run_raw_dataset(cfg, ds)
    run_captions(cfg, ds)
    result = run_bucketed_metadata(cfg, ds)
    assert (result.metadata["kept"], result.metadata["eval"], result.metadata["train"]) == (60, 2, 58)
    assert result.metadata["eval_holdout"].startswith("auto: 1 image per 25 kept, at most 4")
    run = subprocess.run([sys.executable, "-m", "pixart_pipeline.cli", "validate", "--config", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert "eval hold-out shapes: auto" in run.stdout and "held out now: 2 of 60 kept images" in run.stdout
