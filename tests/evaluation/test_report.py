"""The HTML report is self-contained (images inline) and shows every number; report.json holds them."""

from __future__ import annotations

import base64
import json
import math
import re

from PIL import Image

from pixart_pipeline.evaluation.report import fmt, render_html, write_report
from pixart_pipeline.training.validation import png_bytes


def _report():
    images, png = [], {}
    colours = ["red", "green", "blue", "yellow"]
    for pi, prompt in enumerate(["a red circle", "a <b>bold</b> square"]):
        for si, (w, h) in enumerate([(16, 16), (24, 16)]):
            name = f"images/p{pi:02d}_s{si:02d}_{w}x{h}.png"
            png[name] = png_bytes(Image.new("RGB", (w, h), colours[2 * pi + si]))
            images.append({"file": name, "prompt": prompt, "prompt_index": pi, "size_index": si,
                           "width": w, "height": h, "seed": 42 + 1000 * pi + si,
                           "clip_score": 21.5 + pi + si / 10, "sha256": "x"})
    report = {
        "metrics": {"clip_score": 22.3456789, "eval_loss_base": 0.81234, "eval_loss_trained": 0.70111,
                    "eval_loss_delta": -0.11123, "eval_loss_relative_change": -0.136925,
                    "num_images": 4.0, "seconds": 1.25},
        "clip_model": "openai/clip-vit-large-patch14-336",
        "evaluation_type": "clip",
        "eval_loss": {"num_items": 3, "base": 0.81234, "trained": 0.70111, "delta": -0.11123,
                      "relative_change": -0.136925,
                      "per_timestep": [{"timestep": 62, "base": 0.9, "trained": 0.8},
                                       {"timestep": 937, "base": 0.72468, "trained": 0.60222}],
                      "skipped": []},
        "prompts": ["a red circle", "a <b>bold</b> square"],
        "sizes": [[16, 16], [24, 16]],
        "images": images,
        "settings": {"pipeline_dir": "/runs/x/pipeline", "base_model": "tiny", "guidance": 3.5,
                     "num_inference_steps": 2, "seed": 42, "negative_prompt": "blurry"},
    }
    return report, png


def test_html_inlines_every_image_and_shows_every_number():
    report, png = _report()
    page = render_html(report, png)
    inlined = re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)
    assert sorted(base64.b64decode(d) for d in inlined) == sorted(png.values())
    # nothing is loaded from elsewhere
    assert "src='images/" not in page and "http" not in page.replace("openai/clip", "")
    for value in report["metrics"].values():
        assert fmt(value) in page
    for row in report["eval_loss"]["per_timestep"]:
        assert fmt(row["base"]) in page and fmt(row["trained"]) in page
    assert "-13.69%" in page  # relative change of the eval loss
    assert "openai/clip-vit-large-patch14-336" in page  # the CLIP model is named
    assert "&lt;b&gt;bold&lt;/b&gt;" in page and "<b>bold</b>" not in page  # prompts are escaped
    for im in report["images"]:
        assert f"seed {im['seed']}" in page


def test_write_report_is_atomic_json_with_nan_as_null(tmp_path):
    report, png = _report()
    report["metrics"]["eval_loss_base"] = math.nan
    html_path, json_path = write_report(tmp_path, report, png)
    data = json.loads(json_path.read_text())  # strict JSON: no NaN tokens
    assert data["metrics"]["eval_loss_base"] is None
    assert data["metrics"]["clip_score"] == report["metrics"]["clip_score"]
    assert "n/a" in html_path.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.html", "report.json"]  # no temp left


def test_skipped_eval_items_are_listed():
    report, png = _report()
    report["eval_loss"]["skipped"] = [["shapes/abc", "no VAE cache entry in /cache/vae"]]
    page = render_html(report, png)
    assert "1 eval item(s) skipped" in page and "no VAE cache entry in /cache/vae" in page


def test_empty_eval_split_is_explained():
    report, png = _report()
    report["eval_loss"] = {"num_items": 0}
    assert "eval split is empty" in render_html(report, png)
