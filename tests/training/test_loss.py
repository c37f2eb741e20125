"""Loss: min-SNR weights on a worked example; the PixArt epsilon loss on the real tiny transformer."""

from __future__ import annotations

import pytest
import torch
from diffusers.training_utils import compute_snr

from pixart_pipeline.models import load_noise_scheduler, load_transformer
from pixart_pipeline.training.loss import min_snr_weights, pixart_epsilon_loss, snr_from_scheduler


def test_min_snr_weights_worked_example():
    snr = torch.tensor([10.0, 5.0, 1.0])
    # epsilon: min(SNR, 5) / SNR
    assert torch.allclose(min_snr_weights(snr, 5.0), torch.tensor([0.5, 1.0, 1.0]))
    # v-prediction: min(SNR, 5) / (SNR + 1)
    assert torch.allclose(min_snr_weights(snr, 5.0, "v_prediction"), torch.tensor([5 / 11, 5 / 6, 1 / 2]))
    with pytest.raises(ValueError, match="not 'sample'"):
        min_snr_weights(snr, 5.0, "sample")


def test_snr_matches_diffusers_compute_snr(tiny_pixart_path):
    scheduler = load_noise_scheduler(tiny_pixart_path)
    timesteps = torch.tensor([0, 10, 500, 999])
    ours = snr_from_scheduler(scheduler, timesteps)
    assert torch.allclose(ours, compute_snr(scheduler, timesteps), rtol=1e-5)
    # at t=0 the SNR is huge (weight gamma/SNR small), at t=999 tiny (weight 1)
    weights = min_snr_weights(ours, 5.0)
    assert weights[0] < 0.01 and weights[-1] == 1.0


def test_epsilon_loss_uses_only_the_epsilon_half_of_learned_sigma(tiny_pixart_path):
    torch.manual_seed(0)
    transformer = load_transformer(tiny_pixart_path)
    scheduler = load_noise_scheduler(tiny_pixart_path)
    latents, noise = torch.randn(2, 4, 16, 16), torch.randn(2, 4, 16, 16)
    timesteps = torch.tensor([100, 800])
    embeds, mask = torch.randn(2, 5, 32), torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])

    loss = pixart_epsilon_loss(transformer, latents, noise, timesteps, embeds, mask, scheduler)
    assert loss.shape == (2,)
    # the same computed by hand
    noisy = scheduler.add_noise(latents, noise, timesteps)
    out = transformer(noisy, encoder_hidden_states=embeds, encoder_attention_mask=mask, timestep=timesteps,
                      added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
    assert out.shape[1] == 8
    manual = ((out[:, :4] - noise) ** 2).mean(dim=(1, 2, 3))
    assert torch.allclose(loss, manual, atol=1e-6)

    # the variance channels get no gradient: proj_out rows are ordered (p, p, out_channels)
    loss.mean().backward()
    grad = transformer.proj_out.weight.grad.reshape(2, 2, 8, -1)  # [p, p, C_out, inner]
    assert grad[:, :, 4:].abs().max() == 0 and grad[:, :, :4].abs().max() > 0

    weighted = pixart_epsilon_loss(transformer, latents, noise, timesteps, embeds, mask, scheduler, snr_gamma=5.0)
    expected = loss.detach() * min_snr_weights(snr_from_scheduler(scheduler, timesteps), 5.0)
    assert torch.allclose(weighted.detach(), expected, atol=1e-6)
