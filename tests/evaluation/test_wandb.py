"""report_to wandb: the evaluation stage adds its validation images, CLIP score and eval losses to the
training run's W&B run (resumed by the id the trainer recorded). Real wandb, offline, read back from
the run files it wrote."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from demo_copy import copy_demo
from support import require_wandb
from pixart_pipeline.cache.stage import run_text_embed_cache, run_vae_cache
from pixart_pipeline.config import load_config
from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset
from pixart_pipeline.evaluation.stage import run_evaluation_report
from pixart_pipeline.training import train
from pixart_pipeline.training.spec import RunSpec
from pixart_pipeline.training.stage import prepare_training_run
from evaluation.wandb_records import history_rows, read_records, run_ids

OFFLINE = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_CODE": "true",
           "WANDB_DISABLE_GIT": "true"}


def test_evaluation_logs_images_and_metrics_to_the_training_wandb_run(tmp_path, monkeypatch):
    require_wandb()
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
    path = copy_demo(tmp_path, dataset={"synthetic_num_images": 12},
                     config={"max_train_steps": 3, "checkpointing_steps": 100, "report_to": "wandb",
                             "tracker_project_name": "eval-test", "validation_num_inference_steps": 2,
                             # the demo's in-training validation logs too; this test is about the evaluation's
                             "validation_steps": None, "eval_steps_interval": None})
    cfg = load_config(path)
    ds = cfg.datasets[0]
    for stage in (run_raw_dataset, run_captions, run_bucketed_metadata):
        stage(cfg, ds)
    run_text_embed_cache(cfg, "cpu")
    run_vae_cache(cfg, ds, "cpu")
    prepared = prepare_training_run(cfg, "cpu")
    train(RunSpec.load(prepared.spec_path))
    logs: list[str] = []
    result = run_evaluation_report(cfg, "cpu", prepared.run_dir, logs.append)

    run_dir = prepared.run_dir
    tracker = json.loads((run_dir / "tracker.json").read_text())
    assert tracker["project"] == "eval-test" and tracker["run_id"] == run_dir.name
    logs_files = sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(logs_files) == 2  # the training session and the evaluation's resume
    for f in logs_files:  # one W&B run: each file's run records name it (update records may leave the id empty)
        kinds = [r.WhichOneof("record_type") for r in read_records(f)]
        assert run_ids(f) - {""} == {tracker["run_id"]}, (f, run_ids(f), kinds)
    rows = {f: history_rows(f) for f in logs_files}
    train_file = next(f for f in logs_files if any("train/loss" in r for r in rows[f]))
    eval_file = next(f for f in logs_files if f != train_file)
    assert [r["_step"] for r in rows[train_file]] == [1, 2, 3]
    (row,) = rows[eval_file]

    report = json.loads(Path(result.path).with_name("report.json").read_text())
    metrics = report["metrics"]
    assert row["eval/clip_score"] == metrics["clip_score"]
    assert row["eval/eval_loss_trained"] == metrics["eval_loss_trained"]
    assert row["eval/eval_loss_base"] == metrics["eval_loss_base"]
    assert row["eval/train_step"] == 3
    images = row["eval/validation_images/filenames"]
    assert row["eval/validation_images/count"] == len(images) == len(report["images"]) == 4  # 2 prompts x 2 sizes
    for logged, caption, shown in zip(images, row["eval/validation_images/captions"], report["images"]):
        assert caption == f"{shown['prompt']} (CLIP score {shown['clip_score']:.4f})"
        sent = np.asarray(Image.open(eval_file.parent / "files" / logged).convert("RGB"))
        saved = np.asarray(Image.open(Path(result.path).parent / shown["file"]).convert("RGB"))
        assert np.array_equal(sent, saved)
    assert result.metadata["tracker_url"] == str(eval_file.parent)
    assert any("validation image(s)" in m and str(eval_file.parent) in m for m in logs)


def test_a_run_trained_without_wandb_is_not_logged_and_says_why(tmp_path):
    from pixart_pipeline.evaluation.stage import log_to_training_tracker

    from pixart_pipeline.training.result import TrainResult

    TrainResult(run_dir=str(tmp_path), steps=3, final_loss=0.5, seconds=1.0, samples_per_s=2.0, weights_sha256="ab",
                pipeline_path=str(tmp_path / "pipeline"), checkpoint=None, resumed_from=None, completed=True).save()
    logs: list[str] = []
    assert log_to_training_tracker(tmp_path, {"clip_score": 0.3}, {"images": []}, tmp_path, logs.append) is None
    assert logs == [f"report_to is 'wandb' but {tmp_path / 'tracker.json'} does not exist (the run was trained "
                    "without W&B): the evaluation is not logged to W&B"]
    assert not (tmp_path / "wandb").exists()
