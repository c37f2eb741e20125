"""In-training validation (issue 14, point 2): images every validation_steps, the stable eval-loss
curve every eval_steps_interval, TensorBoard event files, the materialization's curve and strip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pixart_pipeline.training.loop import train
from pixart_pipeline.training.result import run_metadata

pytestmark = pytest.mark.slow


def _watch(caches: dict, **settings) -> dict:
    return {"settings": {"validation_prompt": "a red circle", "validation_resolution": "128x128",
                         "validation_num_inference_steps": 2, "validation_guidance": 3.5,
                         "validation_guidance_rescale": 0.7, "evaluation_type": "none", "eval_timesteps": 4,
                         "validation_seed": 3} | settings,
            "eval_items": caches["items"], "max_sequence_length": 16}


def _events(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def test_validation_and_the_eval_loss_curve_during_training(make_spec, caches, tiny_pixart_path):
    spec = make_spec("watched", max_train_steps=10, validation_steps=5, eval_steps_interval=5,
                     validation_on_startup=True, report_to="tensorboard").model_copy(update={"watch": _watch(caches)})
    result = train(spec)
    run_dir = Path(result.run_dir)
    rows = [json.loads(line) for line in (run_dir / "validation.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 5, 10]
    for r in rows:
        assert len(r["images"]) == 1 and (run_dir / r["images"][0]).is_file()
    # The curve's points are the evaluation stage's stable eval loss of the weights at those steps:
    # step 0 is the base model, step 10 the exported one (same items, timesteps, noise and seed).
    from pixart_pipeline.evaluation.eval_loss import eval_loss_per_timestep, read_eval_items
    from pixart_pipeline.models import load_noise_scheduler, load_transformer

    def stable(folder: str) -> float:
        return eval_loss_per_timestep(load_transformer(folder), read_eval_items(caches["items"]), caches["text_store"],
                                      load_noise_scheduler(tiny_pixart_path), 4, 3, "cpu",
                                      scaling_factor=_scaling(tiny_pixart_path)).mean

    assert rows[0]["eval_loss"] == pytest.approx(stable(tiny_pixart_path), rel=1e-5)
    assert rows[-1]["eval_loss"] == pytest.approx(stable(str(run_dir / "pipeline")), rel=1e-5)
    assert rows[0]["eval_loss"] != rows[-1]["eval_loss"]
    # TensorBoard: the training scalars every step, the eval loss and the images at the validation steps
    events = _events(run_dir / "tensorboard")
    assert [e.step for e in events.Scalars("validation/eval_loss")] == [0, 5, 10]
    assert [e.value for e in events.Scalars("validation/eval_loss")] == pytest.approx([r["eval_loss"] for r in rows])
    assert len(events.Scalars("train/loss")) == 10
    assert [e.step for e in events.Images("validation/p00_s00_128x128")] == [0, 5, 10]
    # The checkpoint's materialization: the curve and the strip of images over the steps
    metadata = run_metadata(result, spec.items)
    assert "| 10 |" in metadata["eval_loss_curve_md"] and metadata["eval_loss_last"] == rows[-1]["eval_loss"]
    assert metadata["validation_strip_md"].startswith("steps 0, 5, 10")
    assert metadata["validation_strip_md"].count("data:image/png") == 3


def _scaling(path: str) -> float:
    return json.loads((Path(path) / "vae" / "config.json").read_text()).get("scaling_factor", 1.0)


def test_the_preview_hook_sees_every_denoising_step_and_rescale_changes_the_image(tiny_pixart_path):
    from pixart_pipeline.models import load_transformer
    from pixart_pipeline.training.validation import ValidationSampler, rescale_guidance

    sampler = ValidationSampler(tiny_pixart_path, None, ["a red circle", "a star"], "", 16, torch.device("cpu"))
    seen = []
    transformer = load_transformer(tiny_pixart_path)
    args = dict(guidance=4.0, steps=3, seed=1)
    plain = sampler.sample(transformer, [(128, 128)], guidance_rescale=0.0, **args,
                           on_step=lambda i, latents: seen.append((i, tuple(latents.shape))))
    assert seen == [(0, (2, 4, 16, 16)), (1, (2, 4, 16, 16)), (2, (2, 4, 16, 16))]
    rescaled = sampler.sample(transformer, [(128, 128)], guidance_rescale=1.0, **args)
    assert [s.file_name for s in plain] == ["p00_s00_128x128.png", "p01_s00_128x128.png"]
    assert plain[0].image.tobytes() != rescaled[0].image.tobytes()
    eps, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8) * 3
    assert torch.equal(rescale_guidance(eps, cond, 0.0), eps)
    assert torch.allclose(rescale_guidance(eps, cond, 1.0).std(dim=(1, 2, 3)), cond.std(dim=(1, 2, 3)))


def test_the_asset_streams_validation_through_pipes_and_shows_the_curve_and_strip(tmp_path):
    """The real trained_checkpoint asset on a copy of the demo: the validation lines (with image
    paths) reach the Dagster run log, the materialization has the eval-loss curve and the strip."""
    import dagster

    from demo_copy import copy_demo, run_stages_before_training
    from pixart_pipeline.config import load_config
    from pixart_pipeline.defs.build import build_definitions

    path = copy_demo(tmp_path, config={"max_train_steps": 4, "checkpointing_steps": 4, "validation_steps": 2,
                                       "eval_steps_interval": 2, "report_to": "tensorboard",
                                       "validation_num_inference_steps": 2},
                     dataset={"synthetic_num_images": 16})
    cfg = load_config(path)
    run_stages_before_training(cfg)
    job = build_definitions(cfg).resolve_implicit_global_asset_job_def()
    instance = dagster.DagsterInstance.ephemeral()
    run = job.execute_in_process(instance=instance, asset_selection=[dagster.AssetKey("trained_checkpoint")])
    mat = run.asset_materializations_for_node("trained_checkpoint")[0]
    md = {k: v.value for k, v in mat.metadata.items()}
    assert md["eval_loss_curve"].count("\n") == 1 + 3  # header, rule, steps 0, 2, 4
    assert md["validation_strip"].startswith("steps 0, 2, 4") and "data:image/png" in md["eval_loss_plot"]
    assert isinstance(md["eval_loss_last"], float) and md["tracker_url"].endswith("tensorboard")
    messages = [e.user_message for e in instance.all_logs(run.run_id)]
    lines = [m for m in messages if m.startswith("validation at step")]
    assert [m.split(":")[0] for m in lines] == [f"validation at step {s}" for s in (0, 2, 4)]
    assert all("eval_loss" in m and "clip_score" in m and ".png" in m for m in lines)


def test_report_to_all_sends_the_validation_to_wandb_and_tensorboard(make_spec, caches, monkeypatch):
    """``report_to: all``: W&B (offline, read back from its run file) and TensorBoard both get the
    eval loss and the images at the validation steps."""
    from evaluation.wandb_records import history_rows
    from support import require_wandb

    require_wandb()
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DISABLE_CODE": "true",
                       "WANDB_DISABLE_GIT": "true"}.items():
        monkeypatch.setenv(key, value)
    spec = make_spec("all", max_train_steps=2, validation_steps=2, eval_steps_interval=2,
                     report_to="all").model_copy(update={"watch": _watch(caches)})  # no validation_on_startup: no step 0
    result = train(spec)
    run_dir = Path(result.run_dir)
    (wandb_file,) = (run_dir / "wandb").glob("offline-run-*/run-*.wandb")
    rows = [r for r in history_rows(wandb_file) if "validation/eval_loss" in r]
    assert [r["_step"] for r in rows] == [2]
    assert all(r["validation/images/count"] == 1 for r in rows)
    assert [e.step for e in _events(run_dir / "tensorboard").Scalars("validation/eval_loss")] == [2]
    assert result.tracker_url == str(next((run_dir / "wandb").glob("offline-run-*")))
