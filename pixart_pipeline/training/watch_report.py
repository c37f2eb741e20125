"""The in-training validation's part of a finished run's materialization (``training/watch.py``
writes the log this reads). Light: no torch, so the run's result can be reported cheaply."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pixart_pipeline.stage_result import thumbnails_markdown
from pixart_pipeline.training.metrics import read_metrics
from pixart_pipeline.training.plot import loss_curve_png

VALIDATION_LOG = "validation.jsonl"
VALIDATION_DIR = "validation"


def validation_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of ``validation.jsonl`` (empty when the run did not validate)."""
    path = Path(run_dir) / VALIDATION_LOG
    return read_metrics(path) if path.is_file() else []


def watch_metadata(run_dir: Path) -> dict[str, Any]:
    """The finished run's materialization entries of the in-training validation: the eval-loss curve
    (``eval_loss_curve_md`` table, ``eval_loss_plot_md`` plot), the CLIP scores, and a strip of the
    first validation image at each validated step (``validation_strip_md``)."""
    rows = validation_rows(run_dir)
    if not rows:
        return {}
    out: dict[str, Any] = {"validation_log_path": str(Path(run_dir) / VALIDATION_LOG)}
    curve = [(r["step"], r["eval_loss"]) for r in rows if "eval_loss" in r]
    lines = ["| step | eval loss | CLIP score |", "|---|---|---|"]
    for r in rows:
        if "eval_loss" in r or "clip_score" in r:
            loss = f"{r['eval_loss']:.5f}" if "eval_loss" in r else ""
            clip = f"{r['clip_score']:.3f}" if "clip_score" in r else ""
            lines.append(f"| {r['step']} | {loss} | {clip} |")
    out["eval_loss_curve_md"] = "\n".join(lines)
    if curve:
        out["eval_loss_first"], out["eval_loss_last"] = float(curve[0][1]), float(curve[-1][1])
        plot = loss_curve_png(curve, Path(run_dir) / "eval_loss.png")
        out["eval_loss_plot_md"] = thumbnails_markdown([plot])
    strip = [Path(run_dir) / r["images"][0] for r in rows if r.get("images")]
    if strip:
        steps = ", ".join(str(r["step"]) for r in rows if r.get("images"))
        out["validation_strip_md"] = f"steps {steps}\n\n" + thumbnails_markdown(strip, size=160, limit=24)
    return out
