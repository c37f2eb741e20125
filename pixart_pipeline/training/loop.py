"""The training loop: ``train(RunSpec) -> TrainResult``.

One optimizer step = ``gradient_accumulation_steps`` micro-batches of ``train_batch_size`` items per
process. For each micro-batch (SimpleTuner's / diffusers' PixArt recipe): sample latents from the
cached posterior, draw noise (+ optional noise offset) and uniform timesteps, ``add_noise``, predict
with the transformer, keep the epsilon half of the learned-sigma output, MSE (optionally min-SNR
weighted). AdamW or Adafactor, clipped gradients, a diffusers LR schedule, optional EMA.

Batches are numbered globally: micro-step ``m`` of process ``r`` (of ``W``) takes batch
``d = m * W + r`` of the sampler's stream, and every random draw of that batch comes from a CPU
generator seeded by ``(seed, d)`` (an image with several captions trains on the one that
``batches.caption_choice`` picks from ``(seed, d, its slot, the item)``). So W processes with
accumulation ``g`` draw exactly the batches and noise of one process with accumulation ``g * W``:
same data, same loss to float rounding
(DDP averages the gradients in another order). The sampler's order is a function of
``(seed, epoch)``, so with the weights, optimizer moments, LR-schedule state and sampler position
from a checkpoint, a resumed run computes exactly what the uninterrupted run would have: bit for
bit on the CPU (tested). On CUDA the data, noise and state are the same, but some attention and
convolution backward kernels are not deterministic, so the weights agree only to float tolerance.

SIGTERM / SIGINT (see signals.py: Dagster terminating the run sends SIGINT; torchrun passes SIGTERM to every rank)
finish the current step, write a checkpoint, and stop: the run resumes from there.
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

from pixart_pipeline.config.models import TrainingConfig
from pixart_pipeline.errors import InputError
from pixart_pipeline.fileio import atomic_write_json, atomic_write_text, tensors_sha256
from pixart_pipeline.models import load_noise_scheduler, load_transformer, resolve_device
from pixart_pipeline.training import checkpoint as ckpt
from pixart_pipeline.training.batches import BatchBuilder, load_items, read_ahead, vae_scaling_factor
from pixart_pipeline.training.ema import EMA
from pixart_pipeline.training.export import CARD_INFO, export_pipeline, model_card
from pixart_pipeline.training.hub import push_pipeline
from pixart_pipeline.training.loss import draw_noise, pixart_epsilon_loss
from pixart_pipeline.training.metrics import MetricsLog, read_metrics
from pixart_pipeline.training.optim import (
    apply_hyperparameters,
    build_lr_scheduler,
    build_optimizer,
    optimizer_state_from_flat,
    scheduler_state_from_json,
    training_steps,
)
from pixart_pipeline.training.report import Reporter
from pixart_pipeline.training.resume import check_resumable, load_resume, save, set_aside_later_checkpoints
from pixart_pipeline.training.sampler import BucketBatchSampler
from pixart_pipeline.training.signals import StopRequest, check_ranks_agree
from pixart_pipeline.training.spec import HYPERPARAMETER_KEYS, RunSpec
from pixart_pipeline.training.tracking import open_tracker


@dataclass(frozen=True)
class TrainResult:
    """What a run produced. ``pipeline_path``/``weights_sha256`` are ``None`` when it stopped early."""

    run_dir: str
    steps: int  # global optimizer step reached
    final_loss: float | None
    seconds: float  # training wall time over every session of the run (resumes included)
    samples_per_s: float
    weights_sha256: str | None
    pipeline_path: str | None
    checkpoint: str | None  # the last checkpoint written or resumed from
    resumed_from: str | None
    completed: bool
    total_steps: int = 0  # the run's length: max_train_steps or fewer when num_train_epochs ends first
    epochs: float = 0.0  # epochs of data drawn (fractional)
    stopped_by: str | None = None  # "max_train_steps" | "num_train_epochs" | "signal" | "stop_at_step"
    tracker_url: str | None = None
    hub_url: str | None = None


def make_accelerator(hp: TrainingConfig, device: str) -> Accelerator:
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
    if accelerator.num_processes != hp.num_processes:
        raise InputError(
            f"hyperparameters.num_processes is {hp.num_processes} but this run has {accelerator.num_processes} "
            f"process(es); launch with `torchrun --nproc_per_node {hp.num_processes} -m pixart_pipeline.training ...`"
        )
    return accelerator


def trainable_transformer(spec: RunSpec, hp: TrainingConfig) -> torch.nn.Module:
    """The base transformer in float32, in train mode, set up as the run asks: only bias terms
    trainable with ``use_bitfit`` (BitFit, arXiv:2106.10199), activation (gradient) checkpointing on
    with ``spec.gradient_checkpointing`` (diffusers recomputes each block's forward in the backward)."""
    transformer = load_transformer(spec.base_model, spec.revision, dtype=torch.float32)
    if hp.use_bitfit:
        for name, param in transformer.named_parameters():
            param.requires_grad_(name.endswith(".bias") or name == "bias")
    if spec.gradient_checkpointing:
        transformer.enable_gradient_checkpointing()
    transformer.train()
    return transformer


def micro_batch_generator(seed: int, draw: int) -> torch.Generator:
    """CPU generator for the ``draw``-th batch of the run (global over processes): a pure function of
    ``(seed, draw)``, so any split of the same batches over processes draws the same noise."""
    digest = hashlib.sha256(f"pixart-train:{seed}:{draw}".encode()).digest()
    return torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


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
    stop_request = StopRequest()
    with stop_request.installed():
        return _run(spec, reporter, stop_at_step, stop_request)


def _run(spec: RunSpec, reporter: Reporter, stop_at_step: int | None, stop_request: StopRequest) -> TrainResult:
    session_start = time.perf_counter()
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
    builder = BatchBuilder(items, spec.text_store, spec.empty_text_key, seed=hp.seed)
    builder.check_complete(need_empty=hp.caption_dropout_probability > 0)
    sampler = BucketBatchSampler(
        items.target, hp.train_batch_size, hp.seed, items.repeats,
        # one optimizer step of one bucket; smaller buckets are dropped or repeated (README: Buckets)
        min_bucket_draws=hp.train_batch_size * hp.gradient_accumulation_steps * hp.num_processes,
        small_bucket_rule=hp.small_bucket_rule,
    )
    if sampler.dropped_per_epoch():
        reporter.info(f"{sampler.dropped_per_epoch()} item draw(s) per epoch do not fill a batch of their "
                      f"bucket and are skipped that epoch (a different random remainder each epoch)")
    total_steps = training_steps(hp, sampler.batches_per_epoch, world)

    # -- model, schedule, optimizer
    transformer = trainable_transformer(spec, hp)
    noise_scheduler = load_noise_scheduler(spec.base_model, spec.revision)
    scaling_factor = vae_scaling_factor(spec.base_model, spec.revision)
    patch = transformer.config.patch_size
    for width, height in sorted(set(items.target)):
        if (width // 8) % patch or (height // 8) % patch:
            raise ValueError(f"{spec.items}: bucket {width}x{height} gives {width // 8}x{height // 8} latents, "
                             f"not divisible by the transformer's patch size {patch}; use multiples of {8 * patch} px")
    trainable = {n: p for n, p in transformer.named_parameters() if p.requires_grad}
    optimizer = build_optimizer(trainable.values(), hp, accelerator.device, log=reporter.info)
    lr_scheduler = build_lr_scheduler(optimizer, hp, total_steps)
    ema = EMA(trainable, hp.ema_decay) if hp.use_ema else None

    # -- resume
    resume_path, state = load_resume(spec, reporter)
    global_step, seconds_before = 0, 0.0
    if state is not None:
        check_resumable(state, hp, world)
        transformer.load_state_dict(state.transformer)
        sampler.load_state_dict(state.sampler)
        lr_scheduler.load_state_dict(scheduler_state_from_json(state.lr_scheduler))
        if ema is not None:
            if state.ema is None:
                raise ValueError(f"{resume_path}: use_ema is on but the checkpoint has no EMA state")
            ema.load_state_tensors(state.ema, state.ema_updates)
        global_step = state.global_step
        seconds_before = float(state.extra.get("train_seconds", 0.0))
        reporter.info(f"resuming from {resume_path} at step {global_step}")
    if accelerator.is_main_process:
        ckpt.remove_incomplete(run_dir)
        for moved in set_aside_later_checkpoints(run_dir, resume_path):
            reporter.warning(f"resuming from an earlier checkpoint: moved the later {moved.name} to {moved.parent}")
    metrics = MetricsLog(run_dir / "metrics.jsonl", resume_step=global_step if state else None) \
        if accelerator.is_main_process else None

    transformer, optimizer = accelerator.prepare(transformer, optimizer)
    if ema is not None:
        ema.to(accelerator.device)
    if state is not None:  # after prepare: the wrapped optimizer moves the moments to the device
        optimizer.load_state_dict(optimizer_state_from_flat(state.optimizer["tensors"], state.optimizer["rest"]))
        apply_hyperparameters(getattr(optimizer, "optimizer", optimizer), lr_scheduler, hp)
        scaler_state = state.extra.get("grad_scaler")
        if accelerator.scaler is not None and scaler_state:
            accelerator.scaler.load_state_dict(scaler_state)
        ckpt.restore_rng_state(*state.rng_for(rank))
    del state
    tracker = open_tracker(hp.report_to, run_dir, hp.tracker_project_name, hp.tracker_run_name,
                           {k: getattr(hp, k) for k in HYPERPARAMETER_KEYS}, accelerator.is_main_process)

    # -- loop
    gas, batch = hp.gradient_accumulation_steps, hp.train_batch_size
    stop = total_steps if stop_at_step is None else min(stop_at_step, total_steps)
    num_train_timesteps = noise_scheduler.config.num_train_timesteps
    max_norm = hp.max_grad_norm if hp.max_grad_norm > 0 else float("inf")  # inf: measure, do not clip
    micro_step = global_step * gas  # this process's micro-batches so far
    first_step, loop_start = global_step, time.perf_counter()
    last_loss, last_checkpoint, samples_per_s = None, (str(resume_path) if resume_path else None), 0.0
    seen: list[list[int]] = []  # [step, epoch, *item indices] per micro-batch (record_items)
    captions_seen: list[list[str]] = []  # the caption key each item trained on, per micro-batch (record_items)
    signalled = False

    def train_seconds() -> float:
        return seconds_before + time.perf_counter() - session_start

    reporter.info(f"training {len(items)} items, {sampler.batches_per_epoch} batches/epoch, {world} process(es), "
                  f"steps {global_step} -> {stop} of {total_steps} on {accelerator.device} "
                  f"(mixed precision: {hp.mixed_precision}, optimizer: {hp.optimizer})")
    # the cache reads of the next batches run ahead on a thread; the sampler here moves only as batches are used
    reads = read_ahead(builder, sampler, world, rank, spec.read_ahead_batches)
    try:
        while global_step < stop:
            step_start = time.perf_counter()
            losses, grad_norm = [], None
            lr = lr_scheduler.get_last_lr()[0]  # the rate this step uses
            for _ in range(gas):
                indices = [sampler.next_batch() for _ in range(world)][rank]  # every rank advances the sampler alike
                raw = next(reads)
                draw = micro_step * world + rank
                # the reader walks a copy of the same deterministic sampler; it chose captions for ``draw``
                if raw.indices != indices or raw.draw != draw:
                    raise RuntimeError(f"read-ahead out of step: read batch {raw.draw} {raw.indices}, "
                                       f"sampler gives batch {draw} {indices}")
                if spec.record_items:
                    seen.append([global_step + 1, draw // sampler.batches_per_epoch, *indices])
                    captions_seen.append(list(raw.text_keys))
                gen = micro_batch_generator(hp.seed, draw)
                latents, prompt_embeds, attention_mask = builder.assemble(
                    raw, gen, scaling_factor, hp.caption_dropout_probability
                )
                noise = draw_noise(latents.shape, gen, hp.noise_offset)  # [B, 4, h, w]
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
            row = {"step": global_step, "loss": last_loss, "lr": lr,
                   "grad_norm": None if grad_norm is None else float(grad_norm),
                   "samples_per_s": samples_per_s, "epoch": sampler.epoch, "seconds": train_seconds()}
            if metrics is not None:
                metrics.append(row)
            tracker.log(row, global_step)
            if global_step % spec.log_every_steps == 0 or global_step in (first_step + 1, stop):
                per_step = (time.perf_counter() - loop_start) / (global_step - first_step)
                reporter.progress(global_step, total_steps, last_loss, lr, samples_per_s,
                                  per_step * (total_steps - global_step))
            signalled = stop_request.agreed(accelerator)
            if global_step % spec.checkpointing_steps == 0 or global_step == stop or signalled:
                last_checkpoint = save(accelerator, run_dir, global_step, transformer, optimizer, lr_scheduler,
                                       sampler, ema, spec, hp, train_seconds(), reporter)
            if signalled:
                reporter.warning(f"stopping on signal {stop_request.signum or 'from another process'} after step "
                                 f"{global_step}; resume from {last_checkpoint}")
                break
    finally:
        reads.close()  # stops the reader thread

    epochs = global_step * gas * world / sampler.batches_per_epoch
    if spec.record_items:
        _record_rank(run_dir, rank, accelerator.unwrap_model(transformer), seen, captions_seen)
    if global_step < total_steps:  # stopped early on request
        tracker.finish()
        return TrainResult(str(run_dir), global_step, last_loss, train_seconds(), samples_per_s, None, None,
                           last_checkpoint, str(resume_path) if resume_path else None, False, total_steps, epochs,
                           "signal" if signalled else "stop_at_step", tracker.url)

    # -- export (main process only)
    accelerator.wait_for_everyone()
    if last_loss is None:  # resumed at the end: take the loss from the log
        rows = read_metrics(run_dir / "metrics.jsonl")
        last_loss = rows[-1]["loss"] if rows else None
    final = accelerator.unwrap_model(transformer)
    check_ranks_agree(accelerator, tensors_sha256(final.state_dict()))
    if ema is not None:
        final = copy.deepcopy(final)
        ema.copy_to(final)
    result = TrainResult(
        str(run_dir), global_step, last_loss, train_seconds(), samples_per_s, tensors_sha256(final.state_dict()),
        str(run_dir / "pipeline"), last_checkpoint, str(resume_path) if resume_path else None, True, total_steps,
        epochs, "max_train_steps" if total_steps == hp.max_train_steps else "num_train_epochs", tracker.url,
    )
    tracker.finish()
    if accelerator.is_main_process:
        result = _export(spec, hp, items, final, result, reporter)
    return result


def _export(spec: RunSpec, hp, items, final: torch.nn.Module, result: TrainResult, reporter: Reporter) -> TrainResult:
    """Pipeline folder + model card, ``result.json`` (the run is done), the Hub upload, the report."""
    run_dir, pipeline_path = Path(spec.run_dir), Path(result.pipeline_path)
    export_pipeline(final, spec.base_model, spec.revision, pipeline_path)
    datasets = sorted(set(items.dataset_id))
    info = {
        "base_model": spec.base_model_name or spec.base_model, "revision": spec.revision, "steps": result.steps,
        "epochs": result.epochs, "final_loss": result.final_loss, "seconds": result.seconds,
        "weights_sha256": result.weights_sha256, "datasets": datasets, "num_items": len(items),
        "hub_datasets": sorted({spec.hub_datasets[d] for d in datasets if d in spec.hub_datasets}),
        "hyperparameters": {k: getattr(hp, k) for k in HYPERPARAMETER_KEYS},
    }
    atomic_write_json(run_dir / CARD_INFO, info)  # evaluation adds its metrics and samples to the card later
    card = model_card(info)
    atomic_write_text(pipeline_path / "README.md", card)  # the Hub renders the uploaded folder's card
    atomic_write_text(run_dir / "README.md", card)
    atomic_write_json(run_dir / "result.json", asdict(result))  # from here on the run is done and saved
    if hp.push_to_hub:
        url = push_pipeline(pipeline_path, hp.hub_model_id, run_dir)  # HubUploadError: training is kept
        result = TrainResult(**(asdict(result) | {"hub_url": url}))
        atomic_write_json(run_dir / "result.json", asdict(result))
        reporter.info(f"uploaded {pipeline_path} to {url}")
    loss = float(result.final_loss) if result.final_loss is not None else float("nan")
    metadata = {"path": str(pipeline_path), "final_loss": loss, "steps": result.steps,
                "total_steps": result.total_steps, "epochs": float(result.epochs), "seconds": float(result.seconds),
                "samples_per_s": float(result.samples_per_s), "weights_sha256": result.weights_sha256,
                "checkpoint_path": result.checkpoint or "", "metrics_path": str(run_dir / "metrics.jsonl"),
                "stopped_by": result.stopped_by}
    if result.tracker_url:
        metadata["tracker_url"] = result.tracker_url
    if result.hub_url:
        metadata["hub_url"] = result.hub_url
    reporter.materialization(metadata, data_version=result.weights_sha256)
    return result


def _record_rank(run_dir: Path, rank: int, model: torch.nn.Module, seen: list[list[int]],
                 captions: list[list[str]]) -> None:
    """``ranks/rank-<r>.json``: this process's final weights hash, the batches it trained on this
    session and the caption key each of their items trained on (``text_keys``, parallel to ``batches``)."""
    atomic_write_json(run_dir / "ranks" / f"rank-{rank}.json",
                      {"rank": rank, "weights_sha256": tensors_sha256(model.state_dict()), "batches": seen,
                       "text_keys": captions})
