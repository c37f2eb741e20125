"""The PixArt Sigma training loss: epsilon MSE on the learned-sigma transformer, optional min-SNR.

PixArt's transformer predicts ``2 * C`` channels (epsilon and the variance interpolation of
"Improved DDPM", arXiv:2102.09672). Like diffusers' and SimpleTuner's PixArt trainers we keep only
the first ``C`` (the epsilon prediction) and train it with MSE; the variance half gets no gradient.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from pixart_pipeline.training.diff2flow import flow_target, prediction_to_flow

if TYPE_CHECKING:
    from diffusers import DDPMScheduler


def snr_from_scheduler(noise_scheduler: DDPMScheduler, timesteps: torch.Tensor) -> torch.Tensor:
    """SNR(t) = alpha_bar_t / (1 - alpha_bar_t) for each timestep; float32 ``[B]``.

    Same quantity as ``diffusers.training_utils.compute_snr``."""
    alphas_cumprod = noise_scheduler.alphas_cumprod.to(device=timesteps.device, dtype=torch.float32)
    alpha_bar = alphas_cumprod[timesteps.long()]
    return alpha_bar / (1.0 - alpha_bar)


def min_snr_weights(snr: torch.Tensor, snr_gamma: float, prediction_type: str = "epsilon") -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al., arXiv:2303.09556, eq. 7).

    The paper weights the x0-loss by ``min(SNR, gamma)``; an epsilon-MSE equals the x0-MSE times
    ``1/SNR``, so the epsilon weight is ``min(SNR, gamma) / SNR``. For v-prediction the v-MSE equals
    the x0-MSE times ``1/(SNR + 1)``, hence ``min(SNR, gamma) / (SNR + 1)`` (as in diffusers PR #2565).

    Example: gamma = 5, SNR = [10, 5, 1] -> epsilon weights [0.5, 1.0, 1.0].
    """
    if snr_gamma <= 0:
        raise ValueError(f"snr_gamma must be > 0, got {snr_gamma}")
    clipped = torch.clamp(snr, max=snr_gamma)
    if prediction_type == "epsilon":
        return clipped / snr
    if prediction_type == "v_prediction":
        return clipped / (snr + 1.0)
    raise ValueError(f"min-SNR weighting supports 'epsilon' and 'v_prediction', not {prediction_type!r}")


def draw_noise(shape: torch.Size | tuple[int, ...], generator: torch.Generator, noise_offset: float = 0.0) -> torch.Tensor:
    """The diffusion noise of one batch, float32 ``shape`` = ``[B, C, h, w]``, from ``generator`` (CPU).

    ``noise_offset > 0`` adds ``noise_offset`` times one more normal draw per sample and channel
    (``[B, C, 1, 1]``, constant over the image): Guttenberg's "Diffusion with Offset Noise", as in
    SimpleTuner / diffusers' ``--noise_offset``; it lets the model learn to change an image's mean
    brightness. With 0 it is exactly ``torch.randn(shape, generator=generator)`` and the extra draw
    is not made, so the generator's later draws (timesteps) are unchanged."""
    noise = torch.randn(shape, generator=generator)
    if noise_offset > 0:
        offset = torch.randn((shape[0], shape[1], 1, 1), generator=generator)  # [B, C, 1, 1]
        noise = noise + noise_offset * offset
    return noise


def pixart_epsilon_loss(
    transformer: torch.nn.Module,
    latents: torch.Tensor,
    noise: torch.Tensor,
    timesteps: torch.Tensor,
    prompt_embeds: torch.Tensor,
    attention_mask: torch.Tensor,
    noise_scheduler: DDPMScheduler,
    snr_gamma: float | None = None,
    noisy_latents: torch.Tensor | None = None,
    diff2flow: bool = False,
) -> torch.Tensor:
    """Per-sample diffusion loss ``[B]`` (float32).

    Args:
        transformer: a ``PixArtTransformer2DModel`` (learned sigma: ``out_channels == 2 * C``, or ``C``).
        latents: clean latents ``[B, C, h, w]`` (already multiplied by the VAE scaling factor).
        noise: ``[B, C, h, w]`` standard normal (plus any noise offset).
        timesteps: ``[B]`` integer timesteps in ``[0, num_train_timesteps)``.
        prompt_embeds: ``[B, L, D]`` T5 embeddings, padded; ``attention_mask``: ``[B, L]`` (1 = real token).
        noise_scheduler: a ``DDPMScheduler`` (``add_noise``, ``alphas_cumprod``, ``config.prediction_type``).
        snr_gamma: if set, min-SNR-gamma weighting per sample.
        noisy_latents: the model input ``[B, C, h, w]`` when not ``add_noise(latents, noise, timesteps)``
            (Scheduled Sampling's rollouts, training/scheduled_sampling.py).
        diff2flow: the Diff2Flow loss (training/diff2flow.py): the flow-converted prediction against
            ``noise - latents``, unweighted.
    """
    prediction_type = noise_scheduler.config.prediction_type
    if noisy_latents is None:
        noisy_latents = noise_scheduler.add_noise(latents, noise, timesteps)  # [B, C, h, w]
    model_pred = transformer(
        noisy_latents,
        encoder_hidden_states=prompt_embeds,
        encoder_attention_mask=attention_mask,
        timestep=timesteps,
        # PixArt Sigma has no micro-conditions; the stock pipeline passes these Nones too.
        added_cond_kwargs={"resolution": None, "aspect_ratio": None},
        return_dict=False,
    )[0]  # [B, 2C, h, w] with learned sigma
    channels = latents.shape[1]
    if model_pred.shape[1] == 2 * channels:
        model_pred = model_pred[:, :channels]  # epsilon half; the learned variance is not trained
    elif model_pred.shape[1] != channels:
        raise ValueError(
            f"transformer predicts {model_pred.shape[1]} channels for {channels}-channel latents; "
            f"expected {channels} or {2 * channels} (learned sigma)"
        )

    if diff2flow:  # issue 15: SimpleTuner's flow branch, no min-SNR weight (the config refuses both)
        flow = prediction_to_flow(model_pred, noisy_latents, timesteps, noise_scheduler.alphas_cumprod, prediction_type)
        loss = F.mse_loss(flow, flow_target(latents, noise).float(), reduction="none")
        return loss.mean(dim=tuple(range(1, loss.ndim)))  # [B]
    if prediction_type == "epsilon":
        target = noise
    elif prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r} (use 'epsilon' or 'v_prediction')")

    loss = F.mse_loss(model_pred.float(), target.float(), reduction="none")
    loss = loss.mean(dim=tuple(range(1, loss.ndim)))  # [B]
    if snr_gamma is not None:
        snr = snr_from_scheduler(noise_scheduler, timesteps)
        loss = loss * min_snr_weights(snr, snr_gamma, prediction_type).to(loss.device)
    return loss
