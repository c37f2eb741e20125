"""Evaluation: validation sampling, CLIP score, stable eval loss (base vs trained), HTML report.

``run_evaluation(EvalSpec) -> EvalResult`` is the entry point. Names are imported lazily so that
``from pixart_pipeline.evaluation import EvalSpec`` does not load diffusers or the caches.
"""

from __future__ import annotations

from importlib import import_module

_EXPORTS = {
    "EvalSpec": "spec",
    "EvalResult": "run",
    "run_evaluation": "run",
    "clip_score": "clip_score",
    "clip_score_from_embeddings": "clip_score",
    "stable_eval_loss": "eval_loss",
    "eval_loss_per_timestep": "eval_loss",
    "read_eval_items": "eval_loss",
    "EvalItem": "eval_loss",
    "generate_images": "sampling",
    "render_html": "report",
    "write_report": "report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f"pixart_pipeline.evaluation.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'pixart_pipeline.evaluation' has no attribute {name!r}")
