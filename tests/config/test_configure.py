"""`pixart-pipeline configure` (issue 14, point 3): driven through standard input by a script, it
writes files `validate` accepts, and makes SimpleTuner's safety checks."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

from PIL import Image

from pixart_pipeline.config import load_config


def _configure(tmp_path: Path, answers: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pixart_pipeline.cli", "configure"], input="\n".join(answers) + "\n",
                          capture_output=True, text=True, cwd=tmp_path, timeout=120)


def _images(folder: Path, sizes: list[tuple[int, int]]) -> None:
    folder.mkdir(parents=True)
    for i, size in enumerate(sizes):
        Image.new("RGB", size, (i * 20, 80, 160)).save(folder / f"image {i}.png")


def test_the_wizard_writes_files_validate_accepts_and_refuses_what_simpletuner_warns_about(tmp_path):
    # 5 square images and 1 landscape one: the landscape bucket is smaller than a batch of 2
    _images(tmp_path / "config" / "datasets" / "train", [(256, 256)] * 5 + [(384, 256)])
    answers = [
        "",                    # folder: config (the default)
        "",                    # images: datasets/train
        "",                    # captions: filename
        "shapes",              # dataset id
        "256",                 # resolution
        "",                    # minimum size: 128
        "",                    # no square crop
        "0",                   # hold out nothing (SimpleTuner's way)
        "tiny-random",         # base model
        "",                    # output dir
        "8", "1",              # batch 8 x 1: more than the 6 images -> asked again
        "2", "1",              # batch 2: the landscape bucket (1 image) is too small ...
        "n",                   # ... do not keep it -> asked again
        "1", "1",              # batch 1
        "50",                  # max_train_steps
        "1e-3", "n",           # too high for a full fine-tune: do not keep it
        "1e-5",                # learning rate
        "no",                  # mixed precision
        "",                    # checkpointing steps
        "",                    # validation prompt
        "1000x1000",           # off the grid -> asked again
        "256x256,384x256",     # validation resolutions
        "",                    # guidance
        "10", "10",            # validation / eval-loss intervals
        "tensorboard",         # report_to
    ]
    run = _configure(tmp_path, answers)
    assert run.returncode == 0, run.stdout + run.stderr
    out = run.stdout
    assert "6 usable images in 2 bucket(s)" in out
    assert "one optimizer step needs 8 images but the dataset has 6" in out
    assert "has 1 image(s), fewer than one step (2)" in out
    assert "is high for a full fine-tune" in out
    assert "'1000x1000': width and height must be multiples of 16" in out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cfg = load_config(tmp_path / "config" / "config.json")
    t = cfg.training
    assert (t.train_batch_size, t.learning_rate, t.validation_steps, t.report_to) == (1, 1e-5, 10, "tensorboard")
    assert t.validation_sizes == [(256, 256), (384, 256)]
    (ds,) = cfg.datasets
    assert ds.id == "shapes" and ds.eval_split_fraction == 0.0 and ds.resolution == 256
    assert cfg.dataset_dir(ds) == (tmp_path / "config" / "datasets" / "train").resolve()
    validate = subprocess.run([sys.executable, "-m", "pixart_pipeline.cli", "validate", "--config",
                               str(tmp_path / "config" / "config.json")], capture_output=True, text=True, timeout=120)
    assert validate.returncode == 0 and validate.stdout.rstrip().endswith("OK")


def test_the_wizard_keeps_existing_files_unless_told(tmp_path):
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.json").write_text("{}")
    run = _configure(tmp_path, ["", "n"])
    assert run.returncode == 1 and "Nothing written" in run.stdout
    assert json.loads((tmp_path / "config" / "config.json").read_text()) == {}
