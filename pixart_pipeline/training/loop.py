"""The training loop: ``train(RunSpec) -> TrainResult``.

One optimizer step = ``gradient_accumulation_steps`` micro-batches of ``train_batch_size`` items per
process. For each micro-batch (SimpleTuner's / diffusers' PixArt recipe): sample latents from the
cached posterior, draw noise (+ optional noise offset) and uniform timesteps, ``add_noise``, predict
with the transformer, keep the epsilon half of the learned-sigma output, MSE (optionally min-SNR
weighted). AdamW, clipped gradients, a diffusers LR schedule, optional EMA.

Exact resume: every random draw of micro-batch ``m`` comes from a CPU generator seeded by
``(seed, m, rank)``, and the sampler's order is a function of ``(seed, epoch)``. With the weights,
AdamW moments, LR-schedule state and sampler position from the checkpoint, a resumed run computes
exactly what the uninterrupted run would have: bit for bit on the CPU (tested). On CUDA the data,
noise and state are the same, but some attention and convolution backward kernels are not
deterministic, so the weights agree only to float tolerance.
"""

from __future__ import annotations

import copy
import hashlib
import os
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator

from pixart_pipeline.fileio import atomic_write_json, tensors_sha256
from pixart_pipeline.models import load_noise_scheduler, load_transformer
from pixart_pipeline.training import checkpoint as ckpt
from pixart_pipeline.training.batches import BatchBuilder, load_items, vae_scaling_factor
from pixart_pipeline.training.ema import EMA
from pixart_pipeline.training.export import export_pipeline, write_model_card
from pixart_pipeline.training.loss import pixart_epsilon_loss
from pixart_pipeline.training.metrics import MetricsLog, read_metrics
from pixart_pipeline.training.optim import (
    build_lr_scheduler,
    build_optimizer,
    optimizer_state_from_flat,
    optimizer_state_to_flat,
    scheduler_state_from_json,
    scheduler_state_to_json,
)
from pixart_pipeline.training.report import Reporter
from pixart_pipeline.training.sampler import BucketBatchSampler
from pixart_pipeline.training.spec import HYPERPARAMETER_KEYS, RunSpec


@dataclass(frozen=True)
class TrainResult:
    """What a run produced. ``pipeline_path``/``weights_sha256`` are ``None`` when it stopped early."""

    run_dir: str
    steps: int  # global optimizer step reached
    final_loss: float | None
    seconds: float  # wall time of this call
    samples_per_s: float
    weights_sha256: str | None
    pipeline_path: str | None
    checkpoint: str | None  # the last checkpoint written or resumed from
    resumed_from: str | None
    completed: bool


def make_accelerator(hp, device: str) -> Accelerator:
    """An ``Accelerator`` on the requested device; refuses combinations that cannot work."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device is 'cuda' but no CUDA GPU is available; use 'auto' or 'cpu'")
    if device == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError("device is 'mps' but MPS is not available; use 'auto' or 'cpu'")
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available()
                                 and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()))
    if on_cpu and hp.mixed_precision == "fp16":
        raise ValueError(
            "mixed_precision 'fp16' needs a GPU (fp16 gradient scaling is not supported on the CPU); "
            "set mixed_precision to 'bf16' or 'no' for CPU training"
        )
    # accelerate keeps process-wide singleton states: a second train() in one process (a notebook,
    # the tests) with another precision would be refused. Reset them; keep the distributed state
    # when launched by torchrun (one train() per process there anyway).
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=int(os.environ.get("WORLD_SIZE", "1")) == 1)
    GradientState._reset_state()
    accelerator = Accelerator(
        mixed_precision=hp.mixed_precision,
        gradient_accumulation_steps=hp.gradient_accumulation_steps,
        cpu=on_cpu,
    )
    if accelerator.num_processes != hp.num_processes:
        raise ValueError(
            f"hyperparameters.num_processes is {hp.num_processes} but this run has {accelerator.num_processes} "
            f"process(es); launch with `torchrun --nproc_per_node {hp.num_processes} -m pixart_pipeline.training ...`"
        )
    return accelerator


def micro_batch_generator(seed: int, micro_step: int, rank: int) -> torch.Generator:
    """CPU generator for one micro-batch: a pure function of (seed, micro-step, rank)."""
    digest = hashlib.sha256(f"pixart-train:{seed}:{micro_step}:{rank}".encode()).digest()
    return torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def resolve_resume(spec: RunSpec) -> Path | None:
    """The checkpoint to resume from: ``latest`` (or none yet), ``none``, or an explicit folder."""
    choice = spec.resume_from_checkpoint
    if choice == "none":
        return None
    if choice == "latest":
        return ckpt.latest_checkpoint(Path(spec.run_dir))
    path = Path(choice)
    if not ckpt.is_complete(path):
        raise ValueError(
            f"resume_from_checkpoint {choice!r} is not a complete checkpoint folder (step-N with COMPLETE)"
        )
    return path


def load_resume(spec: RunSpec, reporter: Reporter) -> tuple[Path | None, ckpt.CheckpointState | None]:
    """The checkpoint to resume from, loaded and verified.

    With ``latest``, a checkpoint that fails verification (bit rot, a partial copy, a lost write) is
    skipped with a warning and the one before it is used: losing some steps beats refusing to resume.
    An explicitly named checkpoint must verify.
    """
    if spec.resume_from_checkpoint != "latest":
        path = resolve_resume(spec)
        return path, (ckpt.load_checkpoint(path) if path else None)
    for _, path in reversed(ckpt.list_checkpoints(Path(spec.run_dir))):
        try:
            return path, ckpt.load_checkpoint(path)
        except ValueError as err:
            reporter.warning(f"skipping damaged checkpoint {path.name}: {err}")
    return None, None


def train(spec: RunSpec, stop_at_step: int | None = None, reporter: Reporter | None = None) -> TrainResult:
    """Train (or resume) the run described by ``spec``; export the pipeline when finished.

    ``stop_at_step`` ends the call after that global step (with a checkpoint) without exporting,
    as an interrupted run would; calling ``train`` again resumes it.
    """
    if reporter is not None:
        return _train(spec, reporter, stop_at_step)
    with Reporter.open() as opened:
        return _train(spec, opened, stop_at_step)


def _train(spec: RunSpec, reporter: Reporter, stop_at_step: int | None) -> TrainResult:
    started = time.perf_counter()
    hp = spec.training_config()
    run_dir = Path(spec.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    accelerator = make_accelerator(hp, spec.device)
    rank, world = accelerator.process_index, accelerator.num_processes
    torch.manual_seed(hp.seed)
    np.random.seed(hp.seed % (1 << 32))
    random.seed(hp.seed)

    # -- data: fail early if the caches do not hold every item
    items = load_items(spec.items)
    builder = BatchBuilder(items, spec.text_store, spec.empty_text_key)
    builder.check_complete(need_empty=hp.caption_dropout_probability > 0)
    sampler = BucketBatchSampler(items.target, hp.train_batch_size, hp.seed, items.repeats)
    if sampler.dropped_per_epoch():
        reporter.info(f"{sampler.dropped_per_epoch()} item draw(s) per epoch do not fill a batch of their "
                      f"bucket and are skipped that epoch (a different random remainder each epoch)")

    # -- model, schedule, optimizer
    transformer = load_transformer(spec.base_model, spec.revision, dtype=torch.float32)
    noise_scheduler = load_noise_scheduler(spec.base_model, spec.revision)
    scaling_factor = vae_scaling_factor(spec.base_model, spec.revision)
    patch = transformer.config.patch_size
    for width, height in sorted(set(items.target)):
        if (width // 8) % patch or (height // 8) % patch:
            raise ValueError(f"{spec.items}: bucket {width}x{height} gives {width // 8}x{height // 8} latents, "
                             f"not divisible by the transformer's patch size {patch}; use multiples of {8 * patch} px")
    if hp.use_bitfit:  # BitFit (arXiv:2106.10199): train only the bias terms
        for name, param in transformer.named_parameters():
            param.requires_grad_(name.endswith(".bias") or name == "bias")
    if spec.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    trainable = {n: p for n, p in transformer.named_parameters() if p.requires_grad}
    optimizer = build_optimizer(trainable.values(), hp)
    lr_scheduler = build_lr_scheduler(optimizer, hp)
    ema = EMA(trainable, hp.ema_decay) if hp.use_ema else None

    # -- resume
    resume_path, state = load_resume(spec, reporter)
    global_step = 0
    if state is not None:
        transformer.load_state_dict(state.transformer)
        sampler.load_state_dict(state.sampler)
        lr_scheduler.load_state_dict(scheduler_state_from_json(state.lr_scheduler))
        if ema is not None:
            if state.ema is None:
                raise ValueError(f"{resume_path}: use_ema is on but the checkpoint has no EMA state")
            ema.load_state_tensors(state.ema, state.ema_updates)
        global_step = state.global_step
        reporter.info(f"resuming from {resume_path} at step {global_step}")
    if accelerator.is_main_process:
        ckpt.remove_incomplete(run_dir)
    metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step=global_step if state else None) \
        if accelerator.is_main_process else None

    transformer, optimizer = accelerator.prepare(transformer, optimizer)
    if ema is not None:
        ema.to(accelerator.device)
    if state is not None:  # after prepare: the wrapped optimizer moves the moments to the device
        optimizer.load_state_dict(optimizer_state_from_flat(state.optimizer["tensors"], state.optimizer["rest"]))
        scaler_state = state.extra.get("grad_scaler")
        if accelerator.scaler is not None and scaler_state:
            accelerator.scaler.load_state_dict(scaler_state)
        ckpt.restore_rng_state(*state.rng)
    del state

    # -- loop
    gas, batch = hp.gradient_accumulation_steps, hp.train_batch_size
    stop = hp.max_train_steps if stop_at_step is None else min(stop_at_step, hp.max_train_steps)
    num_train_timesteps = noise_scheduler.config.num_train_timesteps
    max_norm = hp.max_grad_norm if hp.max_grad_norm > 0 else float("inf")  # inf: measure, do not clip
    micro_step = global_step * gas
    first_step, loop_start = global_step, time.perf_counter()
    last_loss, last_checkpoint, samples_per_s = None, (str(resume_path) if resume_path else None), 0.0
    reporter.info(f"training {len(items)} items, {sampler.batches_per_epoch} batches/epoch, "
                  f"steps {global_step} -> {stop} on {accelerator.device} (mixed precision: {hp.mixed_precision})")
    while global_step < stop:
        step_start = time.perf_counter()
        losses, grad_norm = [], None
        lr = lr_scheduler.get_last_lr()[0]  # the rate this step uses
        for _ in range(gas):
            indices = [sampler.next_batch() for _ in range(world)][rank]  # every rank advances the sampler alike
            gen = micro_batch_generator(hp.seed, micro_step, rank)
            latents, prompt_embeds, attention_mask = builder.build(
                indices, gen, scaling_factor, hp.caption_dropout_probability
            )
            noise = torch.randn(latents.shape, generator=gen)  # [B, 4, h, w]
            if hp.noise_offset > 0:  # per-channel offset on every sample (Guttenberg, "Diffusion with Offset Noise")
                offset = torch.randn((latents.shape[0], latents.shape[1], 1, 1), generator=gen)  # [B, 4, 1, 1]
                noise = noise + hp.noise_offset * offset
            timesteps = torch.randint(0, num_train_timesteps, (latents.shape[0],), generator=gen)  # [B]
            device = accelerator.device
            with accelerator.accumulate(transformer):
                loss = pixart_epsilon_loss(
                    transformer, latents.to(device), noise.to(device), timesteps.to(device),
                    prompt_embeds.to(device), attention_mask.to(device), noise_scheduler, hp.snr_gamma,
                ).mean()
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    grad_norm = accelerator.clip_grad_norm_(list(trainable.values()), max_norm)
                    optimizer.step()
                    if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: no update, no schedule step
                        lr_scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
            losses.append(loss.detach())
            micro_step += 1
        global_step += 1
        if ema is not None:
            ema.update(trainable)

        last_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
        step_seconds = time.perf_counter() - step_start
        samples_per_s = batch * gas * world / step_seconds
        if metrics is not None:
            metrics.append({
                "step": global_step, "loss": last_loss, "lr": lr,
                "grad_norm": None if grad_norm is None else float(grad_norm),
                "samples_per_s": samples_per_s, "epoch": sampler.epoch,
                "seconds": time.perf_counter() - started,
            })
        if global_step % spec.log_every_steps == 0 or global_step in (first_step + 1, stop):
            per_step = (time.perf_counter() - loop_start) / (global_step - first_step)
            reporter.progress(global_step, hp.max_train_steps, last_loss, lr, samples_per_s,
                              per_step * (hp.max_train_steps - global_step))
        if global_step % spec.checkpointing_steps == 0 or global_step == stop:
            last_checkpoint = _save(accelerator, run_dir, global_step, transformer, optimizer, lr_scheduler,
                                    sampler, ema, spec, resume_path, reporter)

    if global_step < hp.max_train_steps:  # stopped early on request
        return TrainResult(str(run_dir), global_step, last_loss, time.perf_counter() - started, samples_per_s,
                           None, None, last_checkpoint, str(resume_path) if resume_path else None, False)

    # -- export (main process only)
    accelerator.wait_for_everyone()
    if last_loss is None:  # resumed at the end: take the loss from the log
        rows = read_metrics(run_dir / "metrics.jsonl")
        last_loss = rows[-1]["loss"] if rows else None
    final = accelerator.unwrap_model(transformer)
    if ema is not None:
        final = copy.deepcopy(final)
        ema.copy_to(final)
    weights_sha256 = tensors_sha256(final.state_dict())
    pipeline_path = run_dir / "pipeline"
    seconds = time.perf_counter() - started
    if accelerator.is_main_process:
        export_pipeline(final, spec.base_model, spec.revision, pipeline_path)
        info = {
            "base_model": spec.base_model, "revision": spec.revision, "steps": global_step,
            "final_loss": last_loss, "seconds": seconds, "weights_sha256": weights_sha256,
            "pipeline_path": str(pipeline_path), "datasets": sorted(set(items.dataset_id)),
            "num_items": len(items), "hyperparameters": {k: getattr(hp, k) for k in HYPERPARAMETER_KEYS},
        }
        write_model_card(run_dir / "README.md", info)
        result = TrainResult(str(run_dir), global_step, last_loss, seconds, samples_per_s, weights_sha256,
                             str(pipeline_path), last_checkpoint, str(resume_path) if resume_path else None, True)
        atomic_write_json(run_dir / "result.json", asdict(result))  # last: the run is done
        reporter.materialization(
            {"path": str(pipeline_path), "final_loss": float(last_loss) if last_loss is not None else float("nan"),
             "steps": global_step, "seconds": seconds, "samples_per_s": samples_per_s,
             "weights_sha256": weights_sha256, "checkpoint_path": last_checkpoint or "",
             "metrics_path": str(run_dir / "metrics.jsonl")},
            data_version=weights_sha256,
        )
    return TrainResult(str(run_dir), global_step, last_loss, seconds, samples_per_s, weights_sha256,
                       str(pipeline_path), last_checkpoint, str(resume_path) if resume_path else None, True)


def _save(accelerator, run_dir, global_step, transformer, optimizer, lr_scheduler, sampler, ema, spec,
          resume_path, reporter) -> str:
    accelerator.wait_for_everyone()
    path = None
    if accelerator.is_main_process:
        model = accelerator.unwrap_model(transformer)
        extra = {"grad_scaler": accelerator.scaler.state_dict()} if accelerator.scaler is not None else {}
        path = ckpt.save_checkpoint(
            run_dir, global_step,
            transformer_state=model.state_dict(),
            optimizer_flat=optimizer_state_to_flat(getattr(optimizer, "optimizer", optimizer)),  # unwrap accelerate
            lr_scheduler_json=scheduler_state_to_json(lr_scheduler),
            sampler_state=sampler.state_dict(),
            ema_state=ema.state_tensors() if ema is not None else None,
            ema_updates=ema.num_updates if ema is not None else 0,
            extra=extra,
        )
        reporter.info(f"saved checkpoint {path}")
        for gone in ckpt.prune_checkpoints(run_dir, spec.checkpoints_total_limit, protect=resume_path):
            reporter.info(f"removed old checkpoint {gone}")
    accelerator.wait_for_everyone()
    return str(path) if path else str(ckpt.checkpoints_dir(run_dir) / f"step-{global_step}")
