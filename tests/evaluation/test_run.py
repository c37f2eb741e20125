"""End to end: run_evaluation on the tiny model folder writes prompts x sizes images and a report."""

from __future__ import annotations

import base64
import json
import shutil

import pytest
import torch
from PIL import Image

from pixart_pipeline.config.models import EvaluationSettings
from pixart_pipeline.evaluation import EvalSpec, run_evaluation
from support import hand_clip_scores

PROMPTS = ["a red circle on a blue background", "a green square"]
SIZES = [(64, 64), (96, 64)]


def _spec(tmp_path, pipeline_dir, base_model, clip_path, caches, **kw):
    items, text_store = caches
    settings = dict(validation_prompts=PROMPTS, validation_resolution=",".join(f"{w}x{h}" for w, h in SIZES),
                    validation_guidance=3.5, validation_num_inference_steps=2, validation_seed=42,
                    validation_negative_prompt="blurry", evaluation_type="clip", eval_timesteps=3)
    settings |= {k: kw.pop(k) for k in list(kw) if k in EvaluationSettings.model_fields}
    args = dict(
        pipeline_dir=str(pipeline_dir), base_model=str(base_model), out_dir=str(tmp_path / "report"),
        clip_model=str(clip_path), eval_items=str(items), text_store=str(text_store), device="cpu",
        max_sequence_length=64, settings=settings,
    ) | kw
    return EvalSpec.from_dict(args)


def test_run_evaluation_writes_images_metrics_and_report(tmp_path, tiny_pixart_path, tiny_clip_path, eval_caches):
    spec = _spec(tmp_path, tiny_pixart_path, tiny_pixart_path, tiny_clip_path, eval_caches)
    result = run_evaluation(spec)

    assert len(result.image_paths) == len(PROMPTS) * len(SIZES)
    sizes = sorted(Image.open(p).size for p in result.image_paths)
    assert sizes == sorted(SIZES * len(PROMPTS))
    assert all(p.parent == tmp_path / "report" / "images" and p.suffix == ".png" for p in result.image_paths)

    m = result.metrics
    assert set(m) >= {"clip_score", "eval_loss_base", "eval_loss_trained", "eval_loss_delta",
                      "num_images", "seconds"}
    assert m["num_images"] == 4 and 0 <= m["clip_score"] <= 100 and m["seconds"] > 0
    # base == trained here: the same weights on the same items, timesteps and noise -> no change
    assert m["eval_loss_base"] == m["eval_loss_trained"] and m["eval_loss_delta"] == 0.0

    page = result.report_path.read_text()
    for path in result.image_paths:
        assert base64.b64encode(path.read_bytes()).decode() in page  # inline, self-contained
    assert tiny_clip_path in page
    report = json.loads(result.json_path.read_text())
    assert report["metrics"]["clip_score"] == pytest.approx(m["clip_score"])
    # Each image's score is its PNG scored against its own prompt, and the metric is their mean.
    rows = report["images"]
    assert [(im["prompt"], im["width"], im["height"]) for im in rows] == [
        (PROMPTS[im["prompt_index"]], *SIZES[im["size_index"]]) for im in rows]
    saved = [Image.open(tmp_path / "report" / im["file"]) for im in rows]
    expected = hand_clip_scores(tiny_clip_path, saved, [im["prompt"] for im in rows])
    assert [im["clip_score"] for im in rows] == pytest.approx(expected, abs=1e-3)
    assert m["clip_score"] == pytest.approx(sum(expected) / len(expected), abs=1e-3)
    assert len(report["eval_loss"]["per_timestep"]) == 3 and report["eval_loss"]["num_items"] == 4

    # Same spec again: identical images and numbers -> the same data version.
    again = run_evaluation(spec)
    assert again.data_version == result.data_version
    assert [p.read_bytes() for p in again.image_paths] == [p.read_bytes() for p in result.image_paths]


@pytest.mark.slow
def test_trained_weights_change_the_eval_loss(tmp_path, tiny_pixart_path, tiny_clip_path, eval_caches):
    from pixart_pipeline.models import load_transformer

    trained = tmp_path / "pipeline"
    shutil.copytree(tiny_pixart_path, trained)
    transformer = load_transformer(str(trained))
    with torch.no_grad():
        for p in transformer.parameters():
            p.add_(0.02 * torch.randn_like(p))
    transformer.save_pretrained(trained / "transformer", safe_serialization=True)

    spec = _spec(tmp_path, trained, tiny_pixart_path, tiny_clip_path, eval_caches, evaluation_type="none",
                 clip_model=None)
    m = run_evaluation(spec).metrics
    assert m["eval_loss_trained"] != m["eval_loss_base"]
    assert m["eval_loss_delta"] == pytest.approx(m["eval_loss_trained"] - m["eval_loss_base"])
    assert m["clip_score"] != m["clip_score"]  # NaN: scoring is off


def test_no_eval_items_still_reports_images(tmp_path, tiny_pixart_path, eval_caches):
    spec = _spec(tmp_path, tiny_pixart_path, tiny_pixart_path, None, eval_caches, evaluation_type="none",
                 clip_model=None, eval_items=None, text_store=None, validation_prompts=["a photo"],
                 validation_resolution="64x64")
    result = run_evaluation(spec)
    assert len(result.image_paths) == 1
    assert "eval split is empty" in result.report_path.read_text()
    assert json.loads(result.json_path.read_text())["metrics"]["eval_loss_base"] is None
