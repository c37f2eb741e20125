"""Prepare a training run from the caches and read its result: the glue between stages and trainer.

The run folder is named by a hash of everything that determines the trained weights (the stage's
fingerprint and the exact items it trains on), so re-materializing with the same inputs resumes an
interrupted run, or reuses a finished one, instead of starting over.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow as pa

from pixart_pipeline.cache.stage import (
    EMPTY_PROMPT, base_model_path, text_key, text_store_root, vae_items, vae_source,
)
from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.config import fingerprints as fp
from pixart_pipeline.data.stage import readiness
from pixart_pipeline.fileio import atomic_write_parquet, read_parquet
from pixart_pipeline.stage_result import InsufficientDataError, MissingInputError, StageResult
from pixart_pipeline.training.metrics import read_metrics
from pixart_pipeline.training.plot import loss_curve_png
from pixart_pipeline.training.spec import SPEC_CONFIG_KEYS, RunSpec

RESULT_FILE = "result.json"


@dataclass(frozen=True)
class PreparedRun:
    run_dir: Path
    spec_path: Path
    command: list[str]
    env: dict[str, str]

    @property
    def complete(self) -> bool:
        return (self.run_dir / RESULT_FILE).exists() and (self.run_dir / "pipeline").is_dir()


def split_items(cfg: PipelineConfig, split: str) -> pa.Table:
    """One row per cached item of a split: where its latents and caption embedding live.

    ``text_key`` is the image's first caption (what evaluation uses); ``text_keys`` lists the keys of
    all its captions when it has several (the metadata's ``captions``; null otherwise), and the
    trainer draws one of them per batch. Items whose VAE encoding failed (reported by the vae_cache
    stage) are left out.
    """
    rows = []
    for ds in cfg.datasets:
        kept, items = vae_items(cfg, ds)
        store = vae_source(cfg, ds)  # a ShardStore, or the online encoder (vae_cache_disable)
        present = store.keys()
        for row, item in zip(kept.to_pylist(), items):
            if row["split"] != split or item.key not in present:
                continue
            captions = row.get("captions")  # absent from a table written before the column existed
            rows.append(
                {
                    "vae_store": str(store.root),
                    "vae_key": item.key,
                    "text_key": text_key(cfg, row["caption"]),
                    "target_width": row["target_width"],
                    "target_height": row["target_height"],
                    "dataset_id": ds.id,
                    "repeats": ds.repeats,
                    "text_keys": [text_key(cfg, c) for c in captions] if captions else None,
                    "path": row["path"],
                }
            )
    schema = pa.schema(
        [("vae_store", pa.string()), ("vae_key", pa.string()), ("text_key", pa.string()),
         ("target_width", pa.int64()), ("target_height", pa.int64()), ("dataset_id", pa.string()),
         ("repeats", pa.int64()), ("text_keys", pa.list_(pa.string())), ("path", pa.string())]
    )
    table = pa.Table.from_pylist(rows, schema=schema)
    return table.sort_by([("dataset_id", "ascending"), ("vae_key", "ascending")])


def _draws_per_bucket(items: pa.Table) -> dict[str, int]:
    """Draws per epoch of each target size over every dataset, as the bucket sampler pools them."""
    draws: dict[str, int] = {}
    for w, h, r in zip(*(items.column(c).to_pylist() for c in ("target_width", "target_height", "repeats"))):
        draws[f"{w}x{h}"] = draws.get(f"{w}x{h}", 0) + 1 + r
    return draws


def _table_hash(table: pa.Table) -> str:
    # ``text_keys`` counts only where some image has several captions: runs of single-caption
    # datasets keep the run folder they had before the column existed. A null list hashes as [].
    cols = [c for c in table.column_names if c != "path"
            and not (c == "text_keys" and table.column(c).null_count == table.num_rows)]
    values = [[[] if v is None else v for v in table.column(c).to_pylist()] if c == "text_keys"
              else table.column(c).to_pylist() for c in cols]
    return fp.stable_hash(sorted(map(tuple, zip(*values))))


def prepare_training_run(cfg: PipelineConfig, device: str) -> PreparedRun:
    """Write the items parquet and run spec into the run folder; return how to launch it."""
    t = cfg.training
    items = split_items(cfg, "train")
    report = readiness(_draws_per_bucket(items), cfg)
    if not report.enough:
        raise InsufficientDataError(f"not training: {report.message}")
    run_dir = run_dir_for(cfg, items)
    items_path = run_dir / "items.parquet"
    if not items_path.exists():
        atomic_write_parquet(items_path, items)
    spec = RunSpec(
        run_dir=str(run_dir),
        base_model=base_model_path(cfg),
        revision=t.revision,
        items=str(items_path),
        text_store=str(text_store_root(cfg)),
        empty_text_key=text_key(cfg, EMPTY_PROMPT),
        hyperparameters={k: getattr(t, k) for k in SPEC_CONFIG_KEYS},
        checkpointing_steps=t.checkpointing_steps,
        checkpoints_total_limit=t.checkpoints_total_limit,
        resume_from_checkpoint=(
            t.resume_from_checkpoint if t.resume_from_checkpoint in ("latest", "none")
            else cfg.local_or_hub(t.resume_from_checkpoint)
        ),
        device=device,
        gradient_checkpointing=t.gradient_checkpointing,
        base_model_name=t.pretrained_model_name_or_path,
        hub_datasets={ds.id: ds.hub_repo_id for ds in cfg.datasets if ds.hub_repo_id},
    )
    spec_path = run_dir / "run_spec.json"
    spec.save(spec_path)
    module = ["-m", "pixart_pipeline.training", str(spec_path)]
    if t.num_processes > 1:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={t.num_processes}", *module]
    else:
        command = [sys.executable, *module]
    return PreparedRun(run_dir=run_dir, spec_path=spec_path, command=command, env={"PYTHONUNBUFFERED": "1"})


def push_if_needed(cfg: PipelineConfig, run_dir: Path, log: Callable[[str], None] = print) -> None:
    """A finished run whose upload failed (or that predates ``push_to_hub``) is uploaded now: the
    weights are already saved, so a retry never retrains."""
    t = cfg.training
    result = read_training_result(run_dir)
    if not t.push_to_hub or result.get("hub_url"):
        return
    from pixart_pipeline.fileio import atomic_write_json
    from pixart_pipeline.training.hub import push_pipeline

    result["hub_url"] = push_pipeline(Path(run_dir) / "pipeline", t.hub_model_id, Path(run_dir))
    atomic_write_json(Path(run_dir) / RESULT_FILE, result)
    log(f"uploaded {run_dir / 'pipeline'} to {result['hub_url']}")


def read_training_result(run_dir: str | Path) -> dict:
    path = Path(run_dir) / RESULT_FILE
    if not path.exists():
        raise MissingInputError(f"{path} does not exist: the training run did not finish")
    return json.loads(path.read_text())


def run_dir_for(cfg: PipelineConfig, items: pa.Table) -> Path:
    """``runs/<hash of (trained_checkpoint fingerprint, training items, text store)>``."""
    run_id = fp.stable_hash(
        {
            "revision": fp.STAGE_REVISIONS["trained_checkpoint"],
            "fields": fp.trained_checkpoint_fields(cfg),
            "items": _table_hash(items),
            "text": str(text_store_root(cfg)),
        },
        12,
    )
    return cfg.output_dir / "runs" / run_id


def current_run_dir(cfg: PipelineConfig) -> Path:
    """The finished run that the current config and caches determine."""
    run_dir = run_dir_for(cfg, split_items(cfg, "train"))
    if not (run_dir / RESULT_FILE).exists():
        raise MissingInputError(f"{run_dir} has no finished run for the current config: materialize trained_checkpoint")
    return run_dir


def loss_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every logged step."""
    return [(int(r["step"]), float(r["loss"])) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def finish_training_run(cfg: PipelineConfig, prepared: PreparedRun) -> StageResult:
    result = read_training_result(prepared.run_dir)
    curve = loss_curve(prepared.run_dir)
    head = curve[: max(1, len(curve) // 10)]
    tail = curve[-max(1, len(curve) // 10):]
    metadata = {
        "run_dir": str(prepared.run_dir),
        "pipeline_dir": str(prepared.run_dir / "pipeline"),
        "steps": int(result.get("steps", len(curve))),
        "final_loss": float(result.get("final_loss", float("nan"))),
        "train_items": read_parquet(prepared.run_dir / "items.parquet").num_rows,
        "seconds": float(result.get("seconds", 0.0)),  # training time over every session (resumes included)
        "total_steps": int(result.get("total_steps", 0)),
        "epochs": float(result.get("epochs", 0.0)),
        "stopped_by": str(result.get("stopped_by")),
    }
    for key in ("tracker_url", "hub_url"):  # W&B run URL or offline folder; the Hub repo
        if result.get(key):
            metadata[key] = str(result[key])
    if curve:
        metadata["loss_first_10pct"] = sum(v for _, v in head) / len(head)
        metadata["loss_last_10pct"] = sum(v for _, v in tail) / len(tail)
    images = [loss_curve_png(curve, prepared.run_dir / "loss.png")] if curve else []
    return StageResult(
        path=prepared.run_dir / "pipeline",
        data_version=str(result["weights_sha256"]),
        metadata=metadata,
        markdown={"loss_curve": _loss_table(curve)},
        config=fp.trained_checkpoint_fields(cfg),
        images=images,
    )


def _loss_table(curve: list[tuple[int, float]], rows: int = 12) -> str:
    """A compact markdown loss curve: the mean loss over ~12 equal step windows."""
    if not curve:
        return "no metrics recorded"
    size = max(1, len(curve) // rows)
    lines = ["| steps | mean loss |", "|---|---|"]
    for i in range(0, len(curve), size):
        window = curve[i : i + size]
        lines.append(f"| {window[0][0]}-{window[-1][0]} | {sum(v for _, v in window) / len(window):.4f} |")
    return "\n".join(lines)

