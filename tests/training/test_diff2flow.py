"""Diff2Flow's maths on worked examples with PixArt's own noise schedule (the tiny/demo model ships
the real repo's: linear betas 1e-4..0.02 over 1000 steps, epsilon prediction), and its config rules."""

from __future__ import annotations

import math

import pytest
import torch

from pixart_pipeline.config.models import Hyperparameters
from pixart_pipeline.models import load_noise_scheduler, load_transformer
from pixart_pipeline.training.diff2flow import flow_target, prediction_to_flow
from pixart_pipeline.training.loss import pixart_epsilon_loss


def _alpha_bar(t: int) -> float:
    """PixArt's schedule by hand: prod_{s<=t} (1 - beta_s), beta linear from 1e-4 to 0.02."""
    betas = [1e-4 + (0.02 - 1e-4) * s / 999 for s in range(1000)]
    return math.prod(1 - b for b in betas[: t + 1])


@pytest.fixture(scope="module")
def scheduler(tiny_pixart_path):
    return load_noise_scheduler(tiny_pixart_path)


def test_the_schedule_is_pixarts(scheduler):
    assert scheduler.config.prediction_type == "epsilon"
    for t in (0, 500, 999):
        assert float(scheduler.alphas_cumprod[t]) == pytest.approx(_alpha_bar(t), rel=1e-5)


def test_worked_example_target_and_converted_prediction(scheduler):
    # x0 = 1, eps = 0.5 at t = 0 (a = 0.9999): x_t = sqrt(a) + 0.5 sqrt(1 - a) = 1.00494999875
    a = _alpha_bar(0)
    assert a == pytest.approx(0.9999)
    x0, eps, t = torch.full((1, 1, 1, 1), 1.0), torch.full((1, 1, 1, 1), 0.5), torch.tensor([0])
    x_t = scheduler.add_noise(x0, eps, t)
    assert float(x_t) == pytest.approx(1.00494999875, abs=1e-6)
    assert float(flow_target(x0, eps)) == -0.5  # noise - latents

    # the true epsilon converts to the target exactly: x0_hat = x0, u = eps - x0
    exact = prediction_to_flow(eps, x_t, t, scheduler.alphas_cumprod, "epsilon")
    assert float(exact) == pytest.approx(-0.5, abs=1e-6)

    # eps_hat = 0.6: x0_hat = x_t / sqrt(a) - sqrt(1/a - 1) * 0.6 = 0.999999999875... - 0.0060003 ...
    x0_hat = 1.00494999875 / math.sqrt(a) - math.sqrt(1 / a - 1) * 0.6
    assert x0_hat == pytest.approx(0.99899995, abs=1e-7)
    off = prediction_to_flow(torch.full((1, 1, 1, 1), 0.6), x_t, t, scheduler.alphas_cumprod, "epsilon")
    assert float(off) == pytest.approx(0.6 - x0_hat, abs=1e-6)  # -0.39899995
    # = target + (1 + sqrt((1-a)/a)) * (eps_hat - eps) = -0.5 + 1.0100005 * 0.1
    assert float(off) == pytest.approx(-0.5 + (1 + math.sqrt((1 - a) / a)) * 0.1, abs=1e-6)


def test_the_flow_error_is_the_epsilon_error_scaled_by_one_plus_sigma(scheduler):
    """On the true x_t, u_hat - (eps - x0) = (1 + s_t)(eps_hat - eps), s_t = sqrt((1-a_t)/a_t): at
    t = 999 (a = 4.04e-5) one unit of epsilon error is ~158 units of flow error."""
    g = torch.Generator().manual_seed(0)
    x0, eps, err = (torch.randn(3, 4, 8, 8, generator=g) for _ in range(3))
    t = torch.tensor([0, 500, 999])
    x_t = scheduler.add_noise(x0, eps, t)
    u = prediction_to_flow(eps + err, x_t, t, scheduler.alphas_cumprod, "epsilon")
    s = torch.tensor([math.sqrt((1 - _alpha_bar(int(i))) / _alpha_bar(int(i))) for i in t]).view(3, 1, 1, 1)
    torch.testing.assert_close(u - flow_target(x0, eps), (1 + s) * err, rtol=1e-4, atol=1e-3)
    assert float(1 + s[2]) == pytest.approx(158.3, abs=0.2)


def test_v_prediction_converts_the_true_velocity_to_the_target(scheduler):
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([10, 700])
    v = scheduler.get_velocity(x0, eps, t)
    u = prediction_to_flow(v, scheduler.add_noise(x0, eps, t), t, scheduler.alphas_cumprod, "v_prediction")
    torch.testing.assert_close(u, flow_target(x0, eps), rtol=1e-4, atol=1e-4)


def test_the_training_loss_is_the_flow_mse_on_the_real_transformer(scheduler, tiny_pixart_path):
    """pixart_epsilon_loss(diff2flow=True) on the tiny PixArt = per-sample mean of (1 + s_t)^2 times
    the squared epsilon error of the same forward pass."""
    transformer = load_transformer(tiny_pixart_path).eval()
    g = torch.Generator().manual_seed(2)
    latents, noise = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 4, 16, 16, generator=g)
    embeds, mask = torch.randn(2, 5, 32, generator=g), torch.ones(2, 5)
    t = torch.tensor([3, 800])
    with torch.no_grad():
        flow = pixart_epsilon_loss(transformer, latents, noise, t, embeds, mask, scheduler, diff2flow=True)
        eps_pred = transformer(scheduler.add_noise(latents, noise, t), encoder_hidden_states=embeds,
                               encoder_attention_mask=mask, timestep=t,
                               added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                               return_dict=False)[0][:, :4]
    s = torch.tensor([math.sqrt((1 - _alpha_bar(int(i))) / _alpha_bar(int(i))) for i in t]).view(2, 1, 1, 1)
    expected = ((1 + s) ** 2 * (eps_pred - noise) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(flow, expected, rtol=1e-3, atol=1e-4)
    plain = pixart_epsilon_loss(transformer, latents, noise, t, embeds, mask, scheduler)
    assert not torch.allclose(flow, plain)


def test_diff2flow_config_rules():
    assert not Hyperparameters(diff2flow_enabled=True).diff2flow_loss  # the bridge alone trains as before
    with pytest.raises(ValueError, match="diff2flow_loss needs diff2flow_enabled"):
        Hyperparameters(diff2flow_loss=True)
    with pytest.raises(ValueError, match="snr_gamma has no effect with diff2flow_loss"):
        Hyperparameters(diff2flow_enabled=True, diff2flow_loss=True, snr_gamma=5.0)
