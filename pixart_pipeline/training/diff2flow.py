"""Diff2Flow: train an epsilon (or v) prediction model on the flow-matching objective.

SimpleTuner's ``diff2flow_enabled`` + ``diff2flow_loss`` (documentation/experimental/DIFF2FLOW.md).
The model and its output are unchanged; only the loss changes. With the diffusion forward process

    x_t = sqrt(a_t) * x0 + sqrt(1 - a_t) * eps          (a_t = alphas_cumprod[t])

a prediction is turned into the clean-latent estimate ``x0_hat`` and the noise estimate ``eps_hat``
it implies, and the flow vector is ``u_hat = eps_hat - x0_hat``. The target is the rectified-flow
velocity ``noise - latents`` (SimpleTuner's convention, pointing from data to noise). The loss is the
MSE between the two, unweighted (SimpleTuner's flow branch applies no min-SNR weight; the config
refuses ``snr_gamma`` with ``diff2flow_loss``).

For epsilon prediction on the true ``x_t`` the error is a rescaled epsilon error:
``u_hat - (eps - x0) = (1 + s_t) * (eps_hat - eps)`` with ``s_t = sqrt((1 - a_t) / a_t)``, so the flow
loss is the epsilon MSE weighted by ``(1 + s_t)^2`` (large at high noise). With Scheduled Sampling
``x_t`` is the model's own rollout, not the true noisy latent, and the identity no longer holds.
"""

from __future__ import annotations

import torch


def flow_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The flow-matching target ``noise - latents`` ``[B, C, h, w]``."""
    return noise - latents


def _per_sample(values: torch.Tensor, timesteps: torch.Tensor, ndim: int) -> torch.Tensor:
    """``values[timesteps]`` as float32 ``[B, 1, ..., 1]`` broadcastable over a ``ndim``-dim batch."""
    picked = values.to(device=timesteps.device, dtype=torch.float32)[timesteps.long()]
    return picked.view(-1, *([1] * (ndim - 1)))


def prediction_to_flow(prediction: torch.Tensor, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                       alphas_cumprod: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Convert a diffusion prediction at ``noisy_latents`` (``x_t``) into the flow vector
    ``eps_hat - x0_hat``, float32 ``[B, C, h, w]``.

    Args:
        prediction: the model's epsilon (or v) prediction ``[B, C, h, w]`` (learned-sigma half removed).
        noisy_latents: the model's input ``x_t`` ``[B, C, h, w]``.
        timesteps: ``[B]`` integer timesteps of ``x_t``.
        alphas_cumprod: the noise schedule's ``[T]`` cumulative alphas.
        prediction_type: ``"epsilon"`` or ``"v_prediction"``.
    """
    a = _per_sample(alphas_cumprod, timesteps, noisy_latents.ndim)  # [B, 1, 1, 1]
    x_t, pred = noisy_latents.float(), prediction.float()
    if prediction_type == "epsilon":
        eps_hat = pred
        x0_hat = torch.sqrt(1.0 / a) * x_t - torch.sqrt(1.0 / a - 1.0) * eps_hat
    elif prediction_type == "v_prediction":  # v = sqrt(a) eps - sqrt(1 - a) x0
        x0_hat = torch.sqrt(a) * x_t - torch.sqrt(1.0 - a) * pred
        eps_hat = torch.sqrt(a) * pred + torch.sqrt(1.0 - a) * x_t
    else:
        raise ValueError(f"Diff2Flow converts 'epsilon' or 'v_prediction' predictions, not {prediction_type!r}")
    return eps_hat - x0_hat

