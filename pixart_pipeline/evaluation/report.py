"""The evaluation report: one self-contained HTML file (images inline as base64 PNG) + report.json.

The HTML needs no other file and no network: open it from anywhere, attach it to an issue, archive
it. report.json holds every number the HTML shows (NaN written as null, since JSON has no NaN).
"""

from __future__ import annotations

import base64
import html
import json
import math
from pathlib import Path
from typing import Any, Mapping

from pixart_pipeline.fileio import atomic_write_text

_CSS = """
body{font-family:system-ui,sans-serif;margin:2rem;color:#222}
table{border-collapse:collapse;margin:1rem 0}
th,td{border:1px solid #ccc;padding:.35rem .6rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.grid img{display:block;max-width:320px;height:auto;image-rendering:pixelated}
.caption{font-size:.8rem;color:#555}
.better{color:#176d2b}.worse{color:#a3261b}
"""


def fmt(value: Any) -> str:
    """Numbers as the report shows them: 6 significant digits; None/NaN as 'n/a'."""
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.6g}"
    return str(value)


def json_safe(value: Any) -> Any:
    """Recursively replace NaN/inf floats with None so the JSON is standard."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(
        f"<tr><th>{_e(k)}</th><td class='num'>{_e(fmt(v))}</td></tr>" for k, v in rows
    )
    return f"<table>{body}</table>"


def _image_grid(report: Mapping[str, Any], png_by_file: Mapping[str, bytes]) -> str:
    """Rows = prompts, columns = sizes; each cell the image, its seed and its CLIP score."""
    sizes = report["sizes"]
    by_cell = {(im["prompt_index"], im["size_index"]): im for im in report["images"]}
    head = "".join(f"<th>{w}x{h}</th>" for w, h in sizes)
    rows = []
    for pi, prompt in enumerate(report["prompts"]):
        cells = []
        for si in range(len(sizes)):
            im = by_cell.get((pi, si))
            if im is None or im["file"] not in png_by_file:
                cells.append("<td>missing</td>")
                continue
            data = base64.b64encode(png_by_file[im["file"]]).decode("ascii")
            caption = f"seed {im['seed']}"
            if im.get("clip_score") is not None:
                caption += f" &middot; CLIP {_e(fmt(im['clip_score']))}"
            cells.append(
                f"<td><img alt='{_e(prompt)} {im['width']}x{im['height']}' "
                f"src='data:image/png;base64,{data}'><div class='caption'>{caption}</div></td>"
            )
        rows.append(f"<tr><th>{_e(prompt)}</th>{''.join(cells)}</tr>")
    return f"<table class='grid'><tr><th>prompt</th>{head}</tr>{''.join(rows)}</table>"


def _eval_loss_section(loss: Mapping[str, Any]) -> str:
    if loss.get("num_items", 0) == 0:
        return ("<p>No eval items (the eval split is empty), so no eval loss: no image is held out "
                "(eval_split_fraction 0, or every dataset too small for the auto hold-out) and no dataset "
                "has dataset_type \"eval\".</p>")
    rel = loss.get("relative_change")
    known = rel is not None and not (isinstance(rel, float) and math.isnan(rel))
    cls = "" if not known or rel == 0 else ("better" if rel < 0 else "worse")
    rel_text = f"{100 * rel:+.2f}%" if known else "n/a"
    skipped = loss.get("skipped") or []
    skipped_html = (
        f"<details><summary>{len(skipped)} eval item(s) skipped</summary><ul>"
        + "".join(f"<li><code>{_e(key)}</code>: {_e(why)}</li>" for key, why in skipped)
        + "</ul></details>"
        if skipped
        else ""
    )
    summary = (
        "<table><tr><th></th><th>base</th><th>trained</th><th>delta (trained - base)</th>"
        "<th>relative change</th></tr>"
        f"<tr><th>eval loss</th><td class='num'>{_e(fmt(loss['base']))}</td>"
        f"<td class='num'>{_e(fmt(loss['trained']))}</td>"
        f"<td class='num'>{_e(fmt(loss['delta']))}</td>"
        f"<td class='num {cls}'>{_e(rel_text)}</td></tr></table>"
    )
    per_t = "".join(
        f"<tr><td class='num'>{row['timestep']}</td><td class='num'>{_e(fmt(row['base']))}</td>"
        f"<td class='num'>{_e(fmt(row['trained']))}</td></tr>"
        for row in loss.get("per_timestep", [])
    )
    return (
        f"<p>Epsilon MSE on {loss['num_items']} eval items at {len(loss.get('per_timestep', []))} "
        "fixed timesteps with fixed noise; latents are the cached VAE posterior means, so base and "
        "trained differ only by their weights. Lower is better.</p>"
        + summary
        + "<details><summary>per timestep</summary><table><tr><th>timestep</th><th>base</th>"
        + f"<th>trained</th></tr>{per_t}</table></details>"
        + skipped_html
    )


def render_html(report: Mapping[str, Any], png_by_file: Mapping[str, bytes]) -> str:
    """The report page. ``png_by_file`` maps each image's ``file`` (as in report['images']) to PNG bytes."""
    settings = report.get("settings", {})
    metrics = report.get("metrics", {})
    clip_name = report.get("clip_model")
    clip_line = (
        f"CLIP score = 100 &middot; max(cos(image, prompt), 0) with <code>{_e(clip_name)}</code>, "
        "averaged over all images."
        if clip_name
        else "CLIP scoring is off (evaluation_type 'none')."
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        "<title>PixArt Sigma evaluation</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>PixArt Sigma evaluation</h1>"
        f"<p>Trained pipeline <code>{_e(settings.get('pipeline_dir', ''))}</code>, base model "
        f"<code>{_e(settings.get('base_model', ''))}</code>.</p>"
        "<h2>Metrics</h2>"
        f"<p>{clip_line}</p>"
        + _table(list(metrics.items()))
        + "<h2>Eval loss: base vs trained</h2>"
        + _eval_loss_section(report.get("eval_loss", {}))
        + "<h2>Validation images</h2>"
        + _image_grid(report, png_by_file)
        + "<h2>Settings</h2>"
        + _table([(k, v if not isinstance(v, (list, dict)) else json.dumps(v)) for k, v in settings.items()])
        + "</body></html>"
    )


def write_report(
    out_dir: Path, report: Mapping[str, Any], png_by_file: Mapping[str, bytes]
) -> tuple[Path, Path]:
    """Write ``out_dir/report.json`` then ``out_dir/report.html``, each atomically."""
    json_path = out_dir / "report.json"
    html_path = out_dir / "report.html"
    atomic_write_text(json_path, json.dumps(json_safe(report), indent=2, sort_keys=True))
    atomic_write_text(html_path, render_html(report, png_by_file))
    return html_path, json_path
