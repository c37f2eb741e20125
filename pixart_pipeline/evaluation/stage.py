"""The evaluation stage: build the EvalSpec from the config and the finished run, run it.

The run is the one the trained_checkpoint materialization names (its ``run_dir``), never re-derived."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

from pixart_pipeline.cache.stage import base_model_path
from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.evaluation.run import run_evaluation
from pixart_pipeline.evaluation.spec import EvalSpec
from pixart_pipeline.fileio import atomic_write_parquet
from pixart_pipeline.models import resolve_device, resolve_pretrained
from pixart_pipeline.models.attention import require_attention_mechanism
from pixart_pipeline.stage_result import MissingInputError, StageResult, markdown_table
from pixart_pipeline.stages import report_dir, text_store_root
from pixart_pipeline.training.export import CARD_INFO, refresh_model_card
from pixart_pipeline.training.previews import preview_inputs
from pixart_pipeline.training.result import TrainResult, is_finished
from pixart_pipeline.training.stage import split_items
from pixart_pipeline.training.tracking import TRACKER_FILE, log_evaluation

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def build_eval_spec(cfg: PipelineConfig, device: str, run_dir: Path) -> EvalSpec:
    """The evaluation of the finished run in ``run_dir`` (the trained_checkpoint materialization's
    ``run_dir``) on the eval split of the current caches."""
    t = cfg.training
    if not is_finished(run_dir):
        raise MissingInputError(f"{run_dir} holds no finished training run: materialize trained_checkpoint")
    require_attention_mechanism(t.attention_mechanism, resolve_device(device))  # issue 15: before any work
    items = split_items(cfg, "eval")
    out_dir = report_dir(cfg, run_dir, items.column("vae_key").to_pylist())
    items_path = out_dir / "eval_items.parquet"
    atomic_write_parquet(items_path, items)
    clip = None
    if t.evaluation_type == "clip":
        clip = resolve_pretrained(
            cfg.local_or_hub(t.pretrained_evaluation_model_name_or_path), None, cfg.model_cache_dir
        )
    return EvalSpec(
        pipeline_dir=str(run_dir / "pipeline"),
        base_model=base_model_path(cfg),
        revision=t.revision,
        out_dir=str(out_dir),
        settings=t.evaluation_settings(),
        clip_model=clip,
        eval_items=str(items_path),
        text_store=str(text_store_root(cfg)),
        device=device,
        max_sequence_length=t.tokenizer_max_length,
        # T5-XXL alone is ~19 GB in fp32: bf16 on a GPU. Base and trained eval losses use the same dtype.
        dtype="bf16" if resolve_device(device).type == "cuda" else "fp32",
        **preview_inputs(cfg),
    )


def run_evaluation_report(cfg: PipelineConfig, device: str, run_dir: str | Path, log: Log = _quiet) -> StageResult:
    """Evaluate the finished run in ``run_dir`` against its base model; write the report."""
    run_dir = Path(run_dir)
    spec = build_eval_spec(cfg, device, run_dir)
    log(f"evaluating {spec.pipeline_dir}: {len(spec.prompts)} prompt(s) x {len(spec.sizes)} size(s)")
    result = run_evaluation(spec)
    metrics = {k: float(v) for k, v in result.metrics.items() if isinstance(v, (int, float))}
    shown = {k: ("n/a" if math.isnan(v) else f"{v:.4f}") for k, v in metrics.items()}
    log(f"metrics: {shown}")
    # the model card of the evaluated run gets the metrics and sample images (only the card changes)
    report = json.loads(Path(result.json_path).read_text())
    samples = [(row["prompt"], Path(result.json_path).parent / row["file"]) for row in report.get("images", [])]
    if (run_dir / CARD_INFO).is_file():  # runs exported before model_card.json existed keep their card
        refresh_model_card(run_dir, metrics, samples)
    extra = {}
    if cfg.training.report_to in ("wandb", "all"):
        url = log_to_training_tracker(run_dir, metrics, report, Path(result.json_path).parent, log)
        if url:
            extra["tracker_url"] = url
    return StageResult(
        path=result.report_path,
        data_version=result.data_version,
        metadata={**{k: v for k, v in metrics.items() if not math.isnan(v)}, "pipeline_dir": spec.pipeline_dir,
                  "clip_model": spec.clip_model or "none", **extra},
        markdown={"metrics": markdown_table(("metric", "value"), shown)},
        images=list(result.image_paths),
    )


def log_to_training_tracker(run_dir: Path, metrics: dict[str, float], report: dict, report_folder: Path,
                            log: Log = _quiet) -> str | None:
    """``report_to: wandb``: add the validation images (captioned with prompt and CLIP score), CLIP score
    and eval losses to the training run's W&B run. Returns its URL or offline folder, or ``None``.

    The report is already saved when this runs, so a W&B failure is logged as a warning, not raised:
    evaluating again would give the same numbers.
    """
    images = []
    for row in report.get("images", []):
        score = row.get("clip_score")
        caption = row["prompt"] if score is None else f"{row['prompt']} (CLIP score {score:.4f})"
        images.append((report_folder / row["file"], caption))
    steps = TrainResult.load(run_dir).steps
    try:
        url = log_evaluation(run_dir, metrics, images, steps)
    except Exception as exc:  # noqa: BLE001 - network, auth ...: the report on disk is the result
        log(f"WARNING: could not log the evaluation to W&B ({type(exc).__name__}: {exc}); "
            f"the report is saved in {report_folder}")
        return None
    if url is None:
        log(f"report_to is 'wandb' but {run_dir / TRACKER_FILE} does not exist (the run was trained without "
            "W&B): the evaluation is not logged to W&B")
    else:
        log(f"logged {len(images)} validation image(s) and the metrics to the training run's W&B run: {url}")
    return url


def read_report_metrics(report_path: str | Path) -> dict[str, float]:
    """The numbers of a finished report (report.json beside report.html)."""
    path = Path(report_path).with_name("report.json")
    data = json.loads(path.read_text())
    return data.get("metrics", data)
