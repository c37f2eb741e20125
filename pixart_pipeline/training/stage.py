"""Prepare a training run from the caches: the glue between the cache stages and the trainer.

The run folder is named by a hash of everything that determines the trained weights (the stage's
fingerprint and the exact items it trains on), so re-materializing with the same inputs resumes an
interrupted run, or reuses a finished one, instead of starting over.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from pixart_pipeline.cache.stage import EMPTY_PROMPT, base_model_path, text_key, vae_items, vae_source
from pixart_pipeline.config import PipelineConfig
from pixart_pipeline.config.fingerprints import stable_hash
from pixart_pipeline.data.stage import readiness
from pixart_pipeline.fileio import atomic_write_parquet
from pixart_pipeline.models import resolve_pretrained
from pixart_pipeline.stage_result import InsufficientDataError
from pixart_pipeline.stages import ITEMS_SCHEMA, run_dir, text_store_root
from pixart_pipeline.training.result import is_finished
from pixart_pipeline.training.spec import RunSpec


@dataclass(frozen=True)
class PreparedRun:
    run_dir: Path
    spec_path: Path
    command: list[str]
    env: dict[str, str]

    @property
    def complete(self) -> bool:
        return is_finished(self.run_dir)

    @property
    def trainer_args(self) -> list[str]:
        """The trainer's arguments after ``python`` (or after a ``torchrun`` launcher's own options):
        what the multi-node launcher (``defs/k8s/multinode.py``) runs on every machine."""
        return trainer_args(self.spec_path)


def trainer_args(spec_path: Path) -> list[str]:
    return ["-m", "pixart_pipeline.training", str(spec_path), "--reuse-finished"]


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
    table = pa.Table.from_pylist(rows, schema=ITEMS_SCHEMA)
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
    return stable_hash(sorted(map(tuple, zip(*values))))


def prepare_training_run(cfg: PipelineConfig, device: str) -> PreparedRun:
    """Write the items parquet and run spec into the run folder; return how to launch it."""
    t = cfg.training
    items = split_items(cfg, "train")
    report = readiness(_draws_per_bucket(items), cfg)
    if not report.enough:
        raise InsufficientDataError(f"not training: {report.message}")
    folder = run_dir_for(cfg, items)
    items_path = folder / "items.parquet"
    if not items_path.exists():
        atomic_write_parquet(items_path, items)
    resume = t.resume_from_checkpoint
    spec = RunSpec(
        run_dir=str(folder),
        base_model=base_model_path(cfg),
        revision=t.revision,
        items=str(items_path),
        text_store=str(text_store_root(cfg)),
        empty_text_key=text_key(cfg, EMPTY_PROMPT),
        hyperparameters=t.hyperparameters(),
        settings=t.trainer_settings().model_copy(update={
            "device": device,
            "resume_from_checkpoint": resume if resume in ("latest", "none") else cfg.local_or_hub(resume),
        }),
        base_model_name=t.pretrained_model_name_or_path,
        hub_datasets={ds.id: ds.hub_repo_id for ds in cfg.datasets if ds.hub_repo_id},
        watch=watch_inputs(cfg, folder),
    )
    spec_path = folder / "run_spec.json"
    spec.save(spec_path)
    module = trainer_args(spec_path)
    # With num_machines > 1 this single-machine command only reports a finished run; training is
    # launched across machines by the k8s executor's trained_checkpoint (defs/k8s/multinode.py).
    if t.num_processes > 1 and not is_finished(folder):  # a finished run is only reported: one process
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                   f"--nproc_per_node={t.num_processes}", *module]
    else:
        command = [sys.executable, *module]
    return PreparedRun(run_dir=folder, spec_path=spec_path, command=command, env={"PYTHONUNBUFFERED": "1"})


def watch_inputs(cfg: PipelineConfig, folder: Path) -> dict | None:
    """The run spec's ``watch`` (training/watch_spec.py) when in-training validation is on: the
    evaluation settings, the eval split's items (written to ``folder/eval_items.parquet`` on every
    prepare: the split may grow while the training items stay) and the CLIP model. Not in the run
    folder's hash: none of it changes the weights."""
    t = cfg.training
    if not (t.validation_steps or t.eval_steps_interval):
        return None
    eval_items = None
    if t.eval_steps_interval and not t.eval_loss_disable:
        items = split_items(cfg, "eval")
        if items.num_rows:
            eval_items = folder / "eval_items.parquet"
            atomic_write_parquet(eval_items, items)
    clip = None
    if t.evaluation_type == "clip" and t.validation_steps:
        clip = resolve_pretrained(cfg.local_or_hub(t.pretrained_evaluation_model_name_or_path), None,
                                  cfg.model_cache_dir)
    return {"settings": t.evaluation_settings().model_dump(mode="json"), "clip_model": clip,
            "eval_items": None if eval_items is None else str(eval_items),
            "max_sequence_length": t.tokenizer_max_length}


def run_dir_for(cfg: PipelineConfig, items: pa.Table) -> Path:
    """The run folder of these training items under ``cfg`` (``stages.run_dir``)."""
    return run_dir(cfg, _table_hash(items), text_store_root(cfg))
