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
same data, same loss to float rounding (DDP averages the gradients in another order). The sampler's
order is a function of ``(seed, epoch)``, so with the weights, optimizer moments, LR-schedule state
and sampler position from a checkpoint, a resumed run computes exactly what the uninterrupted run
would have: bit for bit on the CPU (tested). On CUDA the data, noise and state are the same, but
some attention and convolution backward kernels are not deterministic, so the weights agree only to
float tolerance.

SIGTERM / SIGINT (see signals.py: Dagster terminating the run sends SIGINT; torchrun passes SIGTERM
to every rank) finish the current step, write a checkpoint, and stop: the run resumes from there.

A run folder that already holds a finished run is not trained again: ``train`` reports its result
(and retries a Hub upload that failed), so the asset materialises the same thing either way.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from pixart_pipeline.fileio import atomic_write_json, tensors_sha256
from pixart_pipeline.training.batches import read_ahead
from pixart_pipeline.training.export import CARD_INFO, export_run
from pixart_pipeline.training.hub import push_pipeline
from pixart_pipeline.training.loss import draw_noise, pixart_epsilon_loss
from pixart_pipeline.training.metrics import read_metrics
from pixart_pipeline.training.report import Reporter
from pixart_pipeline.training.result import TrainResult, is_finished, run_metadata
from pixart_pipeline.training.resume import save
from pixart_pipeline.training.scheduled_sampling import rollout_batch  # issue 15
from pixart_pipeline.training.setup import setup
from pixart_pipeline.training.signals import StopRequest, check_ranks_agree
from pixart_pipeline.training.spec import RunSpec
from pixart_pipeline.training.state import Progress, Run

__all__ = ["TrainResult", "micro_batch_generator", "train"]


def micro_batch_generator(seed: int, draw: int) -> torch.Generator:
    """CPU generator for the ``draw``-th batch of the run (global over processes): a pure function of
    ``(seed, draw)``, so any split of the same batches over processes draws the same noise."""
    digest = hashlib.sha256(f"pixart-train:{seed}:{draw}".encode()).digest()
    return torch.Generator("cpu").manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def train(spec: RunSpec, stop_at_step: int | None = None, reporter: Reporter | None = None,
          reuse_finished: bool = False) -> TrainResult:
    """Train (or resume) the run described by ``spec``; export the pipeline when finished.

    ``stop_at_step`` ends the call after that global step (with a checkpoint) without exporting,
    as an interrupted run would; calling ``train`` again resumes it. With ``reuse_finished`` (what
    the asset asks for), a run folder that already holds this run finished is reported, not retrained.
    """
    if reporter is None:
        with Reporter.open() as opened:
            return train(spec, stop_at_step, opened, reuse_finished)
    if reuse_finished and finished_for(spec):
        return report_finished(spec, reporter)
    stop_request = StopRequest()
    with stop_request.installed():
        run, progress = setup(spec, reporter)
        stopped = train_steps(run, progress, stop_at_step, stop_request)
        if stopped is not None:
            return stopped
        return finish(run, progress)


def train_steps(run: Run, progress: Progress, stop_at_step: int | None, stop_request: StopRequest) -> TrainResult | None:
    """Take optimizer steps until the run's length (or ``stop_at_step``, or a signal); ``None`` when
    the run reached its end, else the result of the early stop (a checkpoint is saved either way)."""
    spec, hp, accelerator, sampler = run.spec, run.hp, run.accelerator, run.sampler
    rank, world = accelerator.process_index, accelerator.num_processes
    gas = hp.gradient_accumulation_steps
    stop = run.total_steps if stop_at_step is None else min(stop_at_step, run.total_steps)
    num_train_timesteps = run.noise_scheduler.config.num_train_timesteps
    max_norm = hp.max_grad_norm if hp.max_grad_norm > 0 else float("inf")  # inf: measure, do not clip
    device = accelerator.device
    first_step, loop_start, signalled = progress.global_step, time.perf_counter(), False
    run.reporter.info(
        f"training {len(run.items)} items, {sampler.batches_per_epoch} batches/epoch, {world} process(es), "
        f"steps {first_step} -> {stop} of {run.total_steps} on {device} "
        f"(mixed precision: {hp.mixed_precision}, optimizer: {hp.optimizer})")
    # the cache reads of the next batches run ahead on a thread; the sampler here moves only as batches are used
    reads = read_ahead(run.builder, sampler, world, rank, spec.read_ahead_batches)
    if run.watcher is not None and first_step == 0:  # issue 14: validation_on_startup
        run.watcher.at_start()
    try:
        while progress.global_step < stop:
            step_start = time.perf_counter()
            losses, grad_norm = [], None
            lr = run.lr_scheduler.get_last_lr()[0]  # the rate this step uses
            for _ in range(gas):
                indices = [sampler.next_batch() for _ in range(world)][rank]  # every rank advances the sampler alike
                raw = next(reads)
                draw = progress.micro_step * world + rank
                # the reader walks a copy of the same deterministic sampler; it chose captions for ``draw``
                if raw.indices != indices or raw.draw != draw:
                    raise RuntimeError(f"read-ahead out of step: read batch {raw.draw} {raw.indices}, "
                                       f"sampler gives batch {draw} {indices}")
                if spec.record_items:
                    progress.seen.append([progress.global_step + 1, draw // sampler.batches_per_epoch, *indices])
                    progress.captions_seen.append(list(raw.text_keys))
                gen = micro_batch_generator(hp.seed, draw)
                latents, prompt_embeds, attention_mask = run.builder.assemble(
                    raw, gen, run.scaling_factor, hp.caption_dropout_probability
                )  # [B, 4, h, w], [B, L, 4096], [B, L]
                noise = draw_noise(latents.shape, gen, hp.noise_offset)  # [B, 4, h, w]
                timesteps = torch.randint(0, num_train_timesteps, (latents.shape[0],), generator=gen)  # [B]
                # -- issue 15: Scheduled Sampling replaces some inputs by the model's own rollout (it
                #    draws from ``gen`` only when on); Diff2Flow changes the loss. Both off by default.
                noisy_latents = None
                if hp.scheduled_sampling_max_step_offset > 0:
                    with accelerator.autocast():  # the bare module: no DDP collective per rollout forward
                        noisy_latents = rollout_batch(
                            accelerator.unwrap_model(run.transformer), run.noise_scheduler, hp, latents.to(device),
                            noise.to(device), timesteps, prompt_embeds.to(device), attention_mask.to(device), gen,
                            progress.global_step)  # [B, 4, h, w]
                with accelerator.accumulate(run.transformer):
                    loss = pixart_epsilon_loss(
                        run.transformer, latents.to(device), noise.to(device), timesteps.to(device),
                        prompt_embeds.to(device), attention_mask.to(device), run.noise_scheduler, hp.snr_gamma,
                        noisy_latents=noisy_latents, diff2flow=hp.diff2flow_loss,
                    ).mean()
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(list(run.trainable.values()), max_norm)
                        run.optimizer.step()
                        if not accelerator.optimizer_step_was_skipped:  # fp16 overflow: no update, no schedule step
                            run.lr_scheduler.step()
                        run.optimizer.zero_grad(set_to_none=True)
                losses.append(loss.detach())
                progress.micro_step += 1
            progress.global_step += 1
            if run.ema is not None:
                run.ema.update(run.trainable)

            progress.last_loss = accelerator.reduce(torch.stack(losses).mean(), reduction="mean").item()
            progress.samples_per_s = hp.train_batch_size * gas * world / (time.perf_counter() - step_start)
            log_step(run, progress, lr, grad_norm)
            step = progress.global_step
            if step % spec.log_every_steps == 0 or step in (first_step + 1, stop):
                per_step = (time.perf_counter() - loop_start) / (step - first_step)
                run.reporter.progress(step, run.total_steps, progress.last_loss, lr, progress.samples_per_s,
                                      per_step * (run.total_steps - step))
            if run.watcher is not None:  # issue 14: in-training validation (training/watch.py)
                run.watcher.maybe(step)
            signalled = stop_request.agreed(accelerator)
            if step % spec.settings.checkpointing_steps == 0 or step == stop or signalled:
                progress.last_checkpoint = save(run, progress)
            if signalled:
                run.reporter.warning(f"stopping on signal {stop_request.signum or 'from another process'} after "
                                     f"step {step}; resume from {progress.last_checkpoint}")
                break
    finally:
        reads.close()  # stops the reader thread

    if spec.record_items:
        record_rank(run, progress, accelerator.unwrap_model(run.transformer))
    if progress.global_step >= run.total_steps:
        return None
    run.tracker.finish()
    return result_of(run, progress, stopped_by="signal" if signalled else "stop_at_step", completed=False)


def log_step(run: Run, progress: Progress, lr: float, grad_norm: torch.Tensor | None) -> None:
    """One row of ``metrics.jsonl`` (main process) and of the tracker."""
    row = {"step": progress.global_step, "loss": progress.last_loss, "lr": lr,
           "grad_norm": None if grad_norm is None else float(grad_norm),
           "samples_per_s": progress.samples_per_s, "epoch": run.sampler.epoch, "seconds": progress.train_seconds()}
    if run.metrics is not None:
        run.metrics.append(row)
    run.tracker.log(row, progress.global_step)


def result_of(run: Run, progress: Progress, stopped_by: str, completed: bool,
              weights_sha256: str | None = None) -> TrainResult:
    world = run.accelerator.num_processes
    return TrainResult(
        run_dir=str(run.run_dir),
        steps=progress.global_step,
        final_loss=progress.last_loss,
        seconds=progress.train_seconds(),
        samples_per_s=progress.samples_per_s,
        weights_sha256=weights_sha256,
        pipeline_path=str(run.run_dir / "pipeline") if completed else None,
        checkpoint=progress.last_checkpoint,
        resumed_from=progress.resumed_from,
        completed=completed,
        total_steps=run.total_steps,
        epochs=progress.global_step * run.hp.gradient_accumulation_steps * world / run.sampler.batches_per_epoch,
        stopped_by=stopped_by,
        tracker_url=run.tracker.url,
    )


def finish(run: Run, progress: Progress) -> TrainResult:
    """The run reached its length: check the ranks agree, export (main process), report."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    if progress.last_loss is None:  # resumed at the end: take the loss from the log
        rows = read_metrics(run.run_dir / "metrics.jsonl")
        progress.last_loss = rows[-1]["loss"] if rows else None
    final = accelerator.unwrap_model(run.transformer)
    check_ranks_agree(accelerator, tensors_sha256(final.state_dict()))
    if run.ema is not None:  # the exported weights are the EMA of the trained ones
        final = copy.deepcopy(final)
        run.ema.copy_to(final)
    stopped_by = "max_train_steps" if run.total_steps == run.hp.max_train_steps else "num_train_epochs"
    result = result_of(run, progress, stopped_by, completed=True, weights_sha256=tensors_sha256(final.state_dict()))
    run.tracker.finish()
    if not accelerator.is_main_process:
        return result
    export_run(run.spec, final, result, sorted(set(run.items.dataset_id)), len(run.items))
    result.save()  # from here on the run is done and saved
    return report_finished(run.spec, run.reporter, result)


def finished_for(spec: RunSpec) -> bool:
    """The run folder holds a finished run of these very hyperparameters (as its model card's inputs
    record them). A spec with other hyperparameters pointed at a finished folder trains (resuming
    from its checkpoints, or refused by their checks) instead of being told the old result."""
    info = Path(spec.run_dir) / CARD_INFO
    return (is_finished(spec.run_dir) and info.is_file()
            and same_hyperparameters(json.loads(info.read_text()).get("hyperparameters"), spec.hyperparameters))


def same_hyperparameters(recorded: dict | None, hyperparameters) -> bool:
    """A card's recorded hyperparameters equal these. A key the card lacks (it was written before a
    release added that hyperparameter) matches when today's value is the key's default, which by the
    fingerprint rule is the behaviour the older release had; so upgrading never retrains a finished run."""
    if not isinstance(recorded, dict):
        return False
    now = hyperparameters.model_dump(mode="json")
    defaults = type(hyperparameters).model_construct().model_dump(mode="json")
    return set(recorded) <= set(now) and all(
        recorded[k] == v if k in recorded else v == defaults[k] for k, v in now.items())


def report_finished(spec: RunSpec, reporter: Reporter, result: TrainResult | None = None) -> TrainResult:
    """Upload a finished run when asked and not done yet (a failed upload is retried on the next
    materialization, never retrained), then report its materialization."""
    result = result or TrainResult.load(spec.run_dir)
    settings = spec.settings
    if settings.push_to_hub and not result.hub_url:
        pipeline = Path(spec.run_dir) / "pipeline"
        url = push_pipeline(pipeline, settings.hub_model_id, Path(spec.run_dir))  # HubUploadError: training is kept
        result = replace(result, hub_url=url)
        result.save()
        reporter.info(f"uploaded {pipeline} to {url}")
    reporter.materialization(run_metadata(result, spec.items), data_version=result.weights_sha256)
    return result


def record_rank(run: Run, progress: Progress, model: torch.nn.Module) -> None:
    """``ranks/rank-<r>.json``: this process's final weights hash, the batches it trained on this
    session and the caption key each of their items trained on (``text_keys``, parallel to ``batches``)."""
    rank = run.accelerator.process_index
    atomic_write_json(run.run_dir / "ranks" / f"rank-{rank}.json",
                      {"rank": rank, "weights_sha256": tensors_sha256(model.state_dict()),
                       "batches": progress.seen, "text_keys": progress.captions_seen})
