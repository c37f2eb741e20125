"""Building a run: the accelerator, the data, the model, the optimiser, and the resume.

``setup(spec, reporter) -> (Run, Progress)``: everything the loop needs, in the order that keeps a
resumed run bit-identical to an uninterrupted one (seeds, then data, model, optimizer, then the
checkpoint's state after ``accelerator.prepare``).
"""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from pixart_pipeline.config.models import Hyperparameters
from pixart_pipeline.errors import InputError
from pixart_pipeline.models import load_noise_scheduler, load_transformer, resolve_device
from pixart_pipeline.training import checkpoint as ckpt
from pixart_pipeline.training.batches import BatchBuilder, load_items, vae_scaling_factor
from pixart_pipeline.training.ema import EMA
from pixart_pipeline.training.metrics import MetricsLog
from pixart_pipeline.training.optim import (
    apply_hyperparameters,
    build_lr_scheduler,
    build_optimizer,
    optimizer_state_from_flat,
    scheduler_state_from_json,
    training_steps,
)
from pixart_pipeline.training.optimizers import weight_dtype
from pixart_pipeline.training.report import Reporter
from pixart_pipeline.training.resume import check_resumable, load_resume, set_aside_later_checkpoints
from pixart_pipeline.training.sampler import BucketBatchSampler
from pixart_pipeline.training.spec import RunSpec
from pixart_pipeline.training.speed import speed_up
from pixart_pipeline.training.state import Progress, Run
from pixart_pipeline.training.tracking import open_tracker
from pixart_pipeline.training.watch import open_watcher


def make_accelerator(hp: Hyperparameters, device: str, machines: int = 1) -> Accelerator:
    """An ``Accelerator`` on the requested device; refuses combinations that cannot work."""
    if device == "cuda" and not torch.cuda.is_available():
        raise InputError("device is 'cuda' but no CUDA GPU is available; use 'auto' or 'cpu'")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("device is 'mps' but MPS is not available; use 'auto' or 'cpu'")
    on_cpu = resolve_device(device).type == "cpu"
    if on_cpu and hp.mixed_precision == "fp16":
        raise InputError(
            "mixed_precision 'fp16' needs a GPU (fp16 gradient scaling is not supported on the CPU); "
            "set mixed_precision to 'bf16' or 'no' for CPU training"
        )
    # accelerate keeps process-wide singleton states: a second train() in one process (a notebook,
    # the tests) with another precision would be refused. Reset them; keep the distributed state
    # when launched by torchrun (one train() per process there anyway). ``_reset_state`` is private:
    # accelerate (1.15) has no public way to drop these singletons -- its own test scripts
    # (accelerate/test_utils) call the same method -- so if a release renames it, look here.
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=int(os.environ.get("WORLD_SIZE", "1")) == 1)
    GradientState._reset_state()
    accelerator = Accelerator(
        mixed_precision=hp.mixed_precision,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        cpu=on_cpu,
    )
    if accelerator.num_processes != hp.num_processes * machines:  # multi-node: num_processes per machine
        raise InputError(
            f"hyperparameters.num_processes is {hp.num_processes} (x {machines} machine(s)) but this run has "
            f"{accelerator.num_processes} process(es); launch with `torchrun --nnodes {machines} "
            f"--nproc_per_node {hp.num_processes} -m pixart_pipeline.training ...`"
        )
    return accelerator


def trainable_transformer(spec: RunSpec) -> torch.nn.Module:
    """The base transformer in float32 (bf16 for ``adamw_bf16``), in train mode, set up as the run asks: only bias terms
    trainable with ``use_bitfit`` (BitFit, arXiv:2106.10199), activation (gradient) checkpointing on
    with ``gradient_checkpointing`` (diffusers recomputes each block's forward in the backward)."""
    # float32, or bf16 weights with optimizer 'adamw_bf16'
    transformer = load_transformer(spec.base_model, spec.revision, dtype=weight_dtype(spec.hyperparameters))
    if spec.hyperparameters.use_bitfit:
        for name, param in transformer.named_parameters():
            param.requires_grad_(name.endswith(".bias") or name == "bias")
    if spec.settings.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    return transformer


def setup(spec: RunSpec, reporter: Reporter) -> tuple[Run, Progress]:
    """Build the run described by ``spec``, resumed from its checkpoint when there is one."""
    progress = Progress()
    hp = spec.hyperparameters
    run_dir = Path(spec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(hp, spec.settings.device, spec.settings.num_machines)
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(hp.seed)
    np.random.seed(hp.seed % (1 << 32))
    random.seed(hp.seed)

    # -- data: fail early if the caches do not hold every item
    items = load_items(spec.items)
    builder = BatchBuilder(items, spec.text_store, spec.empty_text_key, seed=hp.seed)
    builder.check_complete(need_empty=hp.caption_dropout_probability > 0)
    sampler = BucketBatchSampler(
        items.target, hp.train_batch_size, hp.seed, items.repeats,
        # one optimizer step of one bucket; smaller buckets are dropped or repeated (README: Buckets)
        min_bucket_draws=hp.train_batch_size * hp.gradient_accumulation_steps * hp.num_processes
        * spec.settings.num_machines,
        small_bucket_rule=hp.small_bucket_rule,
    )
    if sampler.dropped_per_epoch():
        reporter.info(f"{sampler.dropped_per_epoch()} item draw(s) per epoch do not fill a batch of their "
                      f"bucket and are skipped that epoch (a different random remainder each epoch)")

    # -- model, schedule, optimizer
    transformer = trainable_transformer(spec)
    speed_up(transformer, hp, accelerator.device, log=reporter.info)  # TF32 (CUDA), SDPA check, torch.compile
    noise_scheduler = load_noise_scheduler(spec.base_model, spec.revision)
    check_patch_size(spec, items.target, transformer.config.patch_size)
    trainable = {n: p for n, p in transformer.named_parameters() if p.requires_grad}
    optimizer = build_optimizer(trainable.values(), hp, accelerator.device, log=reporter.info)
    total_steps = training_steps(hp, sampler.batches_per_epoch, world)
    lr_scheduler = build_lr_scheduler(optimizer, hp, total_steps)
    ema = EMA(trainable, hp.ema_decay) if hp.use_ema else None

    # -- resume: model, sampler, schedule and EMA before `prepare`; optimizer, scaler and RNG after
    resume_path, state = load_resume(spec, reporter)
    if state is not None:
        check_resumable(state, hp, world)
        transformer.load_state_dict(state.transformer)
        sampler.load_state_dict(state.sampler)
        lr_scheduler.load_state_dict(scheduler_state_from_json(state.lr_scheduler))
        if ema is not None:
            if state.ema is None:
                raise InputError(f"{resume_path}: use_ema is on but the checkpoint has no EMA state")
            ema.load_state_tensors(state.ema, state.ema_updates)
        progress.global_step = state.global_step
        progress.seconds_before = float(state.extra.get("train_seconds", 0.0))
        progress.resumed_from = progress.last_checkpoint = str(resume_path)
        reporter.info(f"resuming from {resume_path} at step {progress.global_step}")
    progress.micro_step = progress.global_step * hp.gradient_accumulation_steps
    if accelerator.is_main_process:
        ckpt.remove_incomplete(run_dir)
        for moved in set_aside_later_checkpoints(run_dir, resume_path):
            reporter.warning(f"resuming from an earlier checkpoint: moved the later {moved.name} to {moved.parent}")
    metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step=progress.global_step if state else None) \
        if accelerator.is_main_process else None

    transformer, optimizer = accelerator.prepare(transformer, optimizer)
    if ema is not None:  # ema_device 'cpu': the shadow stays in host memory (no GPU bytes)
        ema.to(torch.device("cpu") if hp.ema_device == "cpu" else accelerator.device)
    if state is not None:  # after prepare: the wrapped optimizer moves the moments to the device
        optimizer.load_state_dict(optimizer_state_from_flat(state.optimizer["tensors"], state.optimizer["rest"]))
        apply_hyperparameters(getattr(optimizer, "optimizer", optimizer), lr_scheduler, hp)
        scaler_state = state.extra.get("grad_scaler")
        if accelerator.scaler is not None and scaler_state:
            accelerator.scaler.load_state_dict(scaler_state)
        ckpt.restore_rng_state(*state.rng_for(rank))
    settings = spec.settings
    tracker = open_tracker(settings.report_to, run_dir, settings.tracker_project_name, settings.tracker_run_name,
                           hp.model_dump(), accelerator.is_main_process)
    run = Run(spec=spec, accelerator=accelerator, reporter=reporter, items=items, builder=builder, sampler=sampler,
              transformer=transformer, trainable=trainable, optimizer=optimizer, lr_scheduler=lr_scheduler,
              ema=ema, noise_scheduler=noise_scheduler,
              scaling_factor=vae_scaling_factor(spec.base_model, spec.revision), total_steps=total_steps,
              metrics=metrics, tracker=tracker)
    # in-training validation (issue 14): images / eval loss every N steps, main process only
    run.watcher = open_watcher(run, progress.global_step if state else None)
    return run, progress


def check_patch_size(spec: RunSpec, targets: list[tuple[int, int]], patch: int) -> None:
    """Every bucket's latent grid (pixels / 8) must divide into the transformer's patches."""
    for width, height in sorted(set(targets)):
        if (width // 8) % patch or (height // 8) % patch:
            raise InputError(f"{spec.items}: bucket {width}x{height} gives {width // 8}x{height // 8} latents, "
                             f"not divisible by the transformer's patch size {patch}; use multiples of {8 * patch} px")
