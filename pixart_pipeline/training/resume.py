"""Choosing, checking and writing the checkpoints of a run (the loop's side of ``checkpoint.py``).

Rules a resume follows (README, "Resuming"):

- ``latest`` takes the newest complete checkpoint of this run folder that verifies; a damaged one is
  skipped with a warning. An explicit folder must verify.
- The checkpoint must come from a run with the same ``train_batch_size``, ``gradient_accumulation_steps``,
  number of processes and items table: the sampler position would otherwise name different batches
  (the loop counts micro-batches as ``global_step * gradient_accumulation_steps``, which keys the
  noise of every batch). Such a resume is refused with a message that says what changed (start a new
  run instead).
- The checkpoint's optimizer must be the configured one (AdamW moments cannot seed Adafactor).
- This run's learning rate, betas, weight decay and epsilon apply after loading (``apply_hyperparameters``):
  resuming another run's checkpoint with a new ``learning_rate`` uses the new one.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from accelerate.utils import gather_object

from pixart_pipeline.config.models import Hyperparameters
from pixart_pipeline.errors import InputError
from pixart_pipeline.training import checkpoint as ckpt
from pixart_pipeline.training.optim import optimizer_state_to_flat, scheduler_state_to_json
from pixart_pipeline.training.report import Reporter
from pixart_pipeline.training.spec import RunSpec
from pixart_pipeline.training.state import Progress, Run


def resolve_resume(spec: RunSpec) -> Path | None:
    """The checkpoint to resume from: ``latest`` (or none yet), ``none``, or an explicit folder."""
    choice = spec.settings.resume_from_checkpoint
    if choice == "none":
        return None
    if choice == "latest":
        return ckpt.latest_checkpoint(Path(spec.run_dir))
    path = Path(choice)
    if not ckpt.is_complete(path):
        raise InputError(
            f"resume_from_checkpoint {choice!r} is not a complete checkpoint folder (step-N with COMPLETE)"
        )
    return path


def load_resume(spec: RunSpec, reporter: Reporter) -> tuple[Path | None, ckpt.CheckpointState | None]:
    """The checkpoint to resume from, loaded and verified.

    With ``latest``, a checkpoint that fails verification (bit rot, a partial copy, a lost write) is
    skipped with a warning and the one before it is used: losing some steps beats refusing to resume.
    An explicitly named checkpoint must verify.
    """
    if spec.settings.resume_from_checkpoint != "latest":
        path = resolve_resume(spec)
        return path, (ckpt.load_checkpoint(path) if path else None)
    for _, path in reversed(ckpt.list_checkpoints(Path(spec.run_dir))):
        try:
            return path, ckpt.load_checkpoint(path)
        except ValueError as err:
            reporter.warning(f"skipping damaged checkpoint {path.name}: {err}")
    return None, None


def set_aside_later_checkpoints(run_dir: Path, resume_path: Path | None) -> list[Path]:
    """Resuming an older checkpoint of this run folder starts a new branch: the checkpoints after it
    (the abandoned branch) move to ``run_dir/abandoned_checkpoints/``, so ``latest`` can never jump
    back onto them after a crash and the total limit never weighs them. Nothing is deleted."""
    if resume_path is None:
        return []
    root = ckpt.checkpoints_dir(run_dir).resolve()
    if Path(resume_path).resolve().parent != root:
        return []  # another run's checkpoint: this run's folder is not touched
    resumed_step = int(Path(resume_path).name.split("-")[1])
    moved = []
    for step, path in ckpt.list_checkpoints(run_dir):
        if step > resumed_step:
            target = Path(run_dir) / "abandoned_checkpoints" / path.name
            target.parent.mkdir(exist_ok=True)
            if target.exists():
                target = target.with_name(f"{path.name}-{uuid.uuid4().hex[:8]}")
            path.rename(target)
            moved.append(target)
    return moved


def check_resumable(state: ckpt.CheckpointState, hp: Hyperparameters, world: int) -> None:
    """Refuse a checkpoint whose sampler position or optimizer state cannot mean the same thing here."""
    saved_world = state.extra.get("world_size", 1)
    if saved_world != world:
        raise InputError(
            f"cannot resume {state.path}: it was written by a run with {saved_world} process(es) but this run "
            f"has {world}; the number of processes sets which batches each step draws, so a resume would not "
            "continue the same run. Keep num_processes, or start a new run (resume_from_checkpoint 'none')"
        )
    saved_batch = state.sampler.get("batch_size")
    if saved_batch is not None and int(saved_batch) != hp.train_batch_size:
        raise InputError(
            f"cannot resume {state.path}: it was written with train_batch_size {saved_batch} but this run has "
            f"{hp.train_batch_size}; the sampler position would name different batches. Keep train_batch_size, "
            "or start a new run (resume_from_checkpoint 'none')"
        )
    saved_gas = state.extra.get("gradient_accumulation_steps")  # absent in checkpoints before it was stored
    if saved_gas is not None and int(saved_gas) != hp.gradient_accumulation_steps:
        raise InputError(
            f"cannot resume {state.path}: it was written with gradient_accumulation_steps {saved_gas} but this "
            f"run has {hp.gradient_accumulation_steps}; the sampler position and the per-batch noise are counted "
            "in micro-batches of the old value, so a resume would not continue the same run. Keep "
            "gradient_accumulation_steps, or start a new run (resume_from_checkpoint 'none')"
        )
    saved_optimizer = state.extra.get("optimizer", "adamw")
    if saved_optimizer != hp.optimizer:
        raise InputError(
            f"cannot resume {state.path}: it holds {saved_optimizer} optimizer state but optimizer is "
            f"{hp.optimizer!r}; keep the optimizer or start a new run (resume_from_checkpoint 'none')"
        )


def save(run: Run, progress: Progress) -> str:
    """Write ``step-<global_step>`` (main process; every process waits for it) and prune old ones.

    Pruning keeps exactly ``checkpoints_total_limit`` folders: the one just written and the newest
    others. The checkpoint this run resumed from is needed only until a newer complete (``COMPLETE``
    marker, every file hashed) checkpoint exists -- which the one just written is -- so from then on
    it is pruned like any other; before that nothing is pruned, so it is never deleted while it is
    the only way back."""
    accelerator, hp = run.accelerator, run.hp
    accelerator.wait_for_everyone()
    path = ckpt.checkpoints_dir(run.run_dir) / f"step-{progress.global_step}"
    rng_states = [ckpt.capture_rng_state()]
    if accelerator.num_processes > 1:  # every process's RNG states, by rank, to the main process
        rng_states = gather_object(rng_states)
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(run.transformer)
        extra = {"world_size": accelerator.num_processes, "optimizer": hp.optimizer,
                 "gradient_accumulation_steps": hp.gradient_accumulation_steps,
                 "train_seconds": progress.train_seconds()}
        if accelerator.scaler is not None:
            extra["grad_scaler"] = accelerator.scaler.state_dict()
        path = ckpt.save_checkpoint(
            run.run_dir, progress.global_step,
            transformer_state=model.state_dict(),
            optimizer_flat=optimizer_state_to_flat(getattr(run.optimizer, "optimizer", run.optimizer)),  # unwrap
            lr_scheduler_json=scheduler_state_to_json(run.lr_scheduler),
            sampler_state=run.sampler.state_dict(),
            ema_state=run.ema.state_tensors() if run.ema is not None else None,
            ema_updates=run.ema.num_updates if run.ema is not None else 0,
            extra=extra,
            rng_states=rng_states,
        )
        run.reporter.info(f"saved checkpoint {path}")
        # only the new checkpoint is protected: it is newer than the resume source and complete
        for gone in ckpt.prune_checkpoints(run.run_dir, run.spec.settings.checkpoints_total_limit, protect=[path]):
            run.reporter.info(f"removed old checkpoint {gone}")
    accelerator.wait_for_everyone()
    return str(path)
