"""Scheduled Sampling ("rollout"): train some samples on the model's own denoised input.

SimpleTuner's ``scheduled_sampling_*`` keys (documentation/experimental/SCHEDULED_SAMPLING.md). For a
sample with training timestep ``t`` the plan draws an offset ``k`` (0..``max_step_offset``); with the
rollout probability the sample is rolled out: ``x_{t+k} = add_noise(latents, noise, t+k)`` is denoised
by the current weights, one training timestep per step (``t+k, t+k-1, ..., t+1``), with the chosen
solver (``unipc`` / ``dpm`` / ``euler``, diffusers' schedulers built from the training noise schedule),
and the result replaces ``x_t`` as the model's input. The target stays the sample's ``noise`` (or the
Diff2Flow target): the model learns to correct the drift of its own sampling.

Choices where SimpleTuner is ambiguous (README, "Scheduled Sampling"):

- The ramp: the documentation says the probability ramps from ``scheduled_sampling_prob_start``
  (default 0.0) to ``scheduled_sampling_prob_end`` (default 0.5) over ``ramp_steps``; SimpleTuner's
  code reads ``prob_start or scheduled_sampling_probability``, so an explicit 0.0 start becomes the
  plain probability. We follow the documentation: with a ramp the two ends are used as written and
  ``scheduled_sampling_probability`` is not read; without one, only it is.
- The solvers: SimpleTuner's come from the ``skrample`` package; ours are diffusers' UniPC,
  DPM-Solver++ (multistep) and Euler schedulers stepped over the consecutive training timesteps.
- Every draw (apply?, offset) comes from the micro-batch generator, after the noise and timesteps,
  so a resumed run draws the same rollouts; and with the feature off nothing extra is drawn.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from pixart_pipeline.config.models import Hyperparameters


def rollout_probability(hp: Hyperparameters, global_step: int) -> float:
    """The probability that a sample is rolled out during optimizer step ``global_step + 1``
    (``global_step`` = steps already taken): ``scheduled_sampling_probability`` without a ramp;
    with ``scheduled_sampling_ramp_steps`` = R, ``prob_start`` until ``start_step``, then
    ``start + (end - start) * shape(min(1, (step - start_step) / R))`` (linear, or cosine
    ``0.5 - 0.5 cos(pi x)``). Example: start 0, end 0.5, R 10: step 4 -> 0.2, step 20 -> 0.5."""
    if hp.scheduled_sampling_ramp_steps == 0:
        return hp.scheduled_sampling_probability
    start, end = hp.scheduled_sampling_prob_start, hp.scheduled_sampling_prob_end
    if global_step < hp.scheduled_sampling_start_step:
        return start
    x = min(1.0, (global_step - hp.scheduled_sampling_start_step) / hp.scheduled_sampling_ramp_steps)
    if hp.scheduled_sampling_ramp_shape == "cosine":
        x = 0.5 - 0.5 * math.cos(math.pi * x)
    return start + (end - start) * x


def plan_offsets(batch: int, max_offset: int, probability: float, strategy: str,
                 generator: torch.Generator) -> torch.Tensor:
    """Rollout lengths ``k`` ``[B]`` (int64): 0 for a sample not rolled out (probability
    ``1 - probability``), else ``uniform`` on 0..max, ``biased_early`` ``round(u^2 max)`` (short ones
    likelier) or ``biased_late`` ``round((1 - u^2) max)``. Two draws from ``generator`` (CPU)."""
    applied = torch.rand(batch, generator=generator) < probability  # [B] bool
    u = torch.rand(batch, generator=generator)  # [B]
    if strategy == "uniform":
        offsets = torch.floor(u * (max_offset + 1)).clamp(max=max_offset)
    elif strategy == "biased_early":
        offsets = torch.round(u ** 2 * max_offset)
    elif strategy == "biased_late":
        offsets = torch.round((1.0 - u ** 2) * max_offset)
    else:
        raise ValueError(f"unknown scheduled_sampling_strategy {strategy!r} (uniform, biased_early, biased_late)")
    return offsets.long() * applied


def make_solver(sampler: str, order: int, noise_scheduler):
    """A fresh diffusers scheduler for one rollout, built from the training noise schedule's config
    (betas, ``num_train_timesteps``, ``prediction_type``): ``unipc``, ``dpm`` (DPM-Solver++) or
    ``euler``. ``variance_type`` is unset: the caller passes the epsilon half of a learned-sigma output."""
    from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, UniPCMultistepScheduler

    config = noise_scheduler.config
    if sampler == "unipc":
        return UniPCMultistepScheduler.from_config(config, solver_order=order)
    if sampler == "dpm":
        return DPMSolverMultistepScheduler.from_config(config, solver_order=order, variance_type=None)
    if sampler == "euler":
        return EulerDiscreteScheduler.from_config(config)
    raise ValueError(f"unknown scheduled_sampling_sampler {sampler!r} (unipc, euler, dpm)")


def set_training_timesteps(solver, timesteps: list[int]) -> None:
    """Make ``solver`` step over exactly these (descending, integer) training ``timesteps``, with the
    sigmas diffusers' DPM/Euler custom-timestep path gives: ``sqrt((1-a_t)/a_t)`` at each, then the
    final sigma. UniPC has no custom-timestep option, so its grid is set after a plain
    ``set_timesteps`` of the same length (which resets its multistep state)."""
    solver.set_timesteps(num_inference_steps=len(timesteps))
    ac = solver.alphas_cumprod
    sig = (((1 - ac) / ac) ** 0.5).numpy()  # the float32 values diffusers computes, as an array
    last = 0.0 if getattr(solver.config, "final_sigmas_type", "zero") == "zero" else float(sig[0])
    solver.sigmas = torch.from_numpy(np.concatenate([sig[timesteps], [last]]).astype(np.float32))
    # Euler keeps float timesteps (and refuses integer ones in ``step``); the multistep solvers int64
    euler = type(solver).__name__.startswith("Euler")
    solver.timesteps = torch.tensor(timesteps, dtype=torch.float32 if euler else torch.int64)
    solver.num_inference_steps = len(timesteps)


def epsilon_half(model_out: torch.Tensor, channels: int) -> torch.Tensor:
    """The first ``channels`` of a learned-sigma output ``[B, 2C, h, w]`` (or the output itself)."""
    return model_out[:, :channels] if model_out.shape[1] == 2 * channels else model_out


@torch.no_grad()
def roll_out(transformer: torch.nn.Module, solver, x_source: torch.Tensor, source: int, target: int,
             prompt_embeds: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Denoise one sample from ``x_source`` at training timestep ``source`` to ``target`` with the
    current weights, one training timestep per solver step; ``[1, C, h, w]`` at ``target``.

    ``x_source`` and the result are variance-preserving latents (what ``add_noise`` gives). Euler
    works on ``x / sqrt(a)`` = ``x * sqrt(1 + sigma^2)``, hence the scaling in and out."""
    timesteps = list(range(source, target - 1, -1))  # [source, ..., target]: k steps, k + 1 points
    set_training_timesteps(solver, timesteps)
    euler = type(solver).__name__.startswith("Euler")
    x = x_source * torch.sqrt(1 + solver.sigmas[0] ** 2).to(x_source) if euler else x_source
    quiet = torch.Generator(x_source.device.type).manual_seed(0)  # Euler draws (unused) noise: not the global RNG
    for i, t in enumerate(timesteps[:-1]):
        step_t = solver.timesteps[i]
        model_in = solver.scale_model_input(x, step_t)  # VP latents for every solver
        out = transformer(model_in.to(x_source.dtype), encoder_hidden_states=prompt_embeds,
                          encoder_attention_mask=attention_mask,
                          timestep=torch.tensor([t], device=x_source.device),
                          added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
        pred = epsilon_half(out, x_source.shape[1])  # [1, C, h, w]
        extra = {"generator": quiet} if euler else {}
        x = solver.step(pred, step_t, x, return_dict=False, **extra)[0]
    if euler:
        x = x / torch.sqrt(1 + solver.sigmas[len(timesteps) - 1] ** 2).to(x)
    return x.to(x_source.dtype)


def rollout_batch(transformer: torch.nn.Module, noise_scheduler, hp: Hyperparameters, latents: torch.Tensor,
                  noise: torch.Tensor, timesteps: torch.Tensor, prompt_embeds: torch.Tensor,
                  attention_mask: torch.Tensor, generator: torch.Generator, global_step: int) -> torch.Tensor:
    """The model inputs ``[B, C, h, w]`` of one micro-batch under Scheduled Sampling: ``add_noise``
    at ``timesteps`` for samples not rolled out, the rollout from ``t + k`` (clamped to the last
    training timestep) to ``t`` for the others.

    ``latents``/``noise``/``prompt_embeds``/``attention_mask`` are on the model's device;
    ``timesteps`` ``[B]`` and ``generator`` on the CPU (the plan's draws)."""
    num_train = noise_scheduler.config.num_train_timesteps
    offsets = plan_offsets(latents.shape[0], hp.scheduled_sampling_max_step_offset,
                           rollout_probability(hp, global_step), hp.scheduled_sampling_strategy, generator)
    sources = torch.clamp(timesteps + offsets, max=num_train - 1)  # [B]
    noisy = noise_scheduler.add_noise(latents, noise, timesteps.to(latents.device))  # [B, C, h, w]
    for i in range(latents.shape[0]):
        source, target = int(sources[i]), int(timesteps[i])
        if source <= target:
            continue
        x_source = noise_scheduler.add_noise(latents[i:i + 1], noise[i:i + 1],
                                             torch.tensor([source], device=latents.device))
        solver = make_solver(hp.scheduled_sampling_sampler, hp.scheduled_sampling_order, noise_scheduler)
        noisy[i:i + 1] = roll_out(transformer, solver, x_source, source, target,
                                  prompt_embeds[i:i + 1], attention_mask[i:i + 1])
    return noisy
