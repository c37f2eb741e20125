"""Scheduled Sampling's maths: a rollout input is the scheduler's own denoising from t+k to t with the
current weights (against the stock PixArtSigmaPipeline loop, and DDIM written out by hand), drawn
with the documented probability, offsets and ramp."""

from __future__ import annotations

import math

import pytest
import torch

from pixart_pipeline.config.models import Hyperparameters
from pixart_pipeline.models import load_noise_scheduler, load_transformer
from pixart_pipeline.training.scheduled_sampling import (
    make_solver,
    plan_offsets,
    roll_out,
    rollout_batch,
    rollout_probability,
)


@pytest.fixture(scope="module")
def parts(tiny_pixart_path):
    g = torch.Generator().manual_seed(0)
    return {
        "scheduler": load_noise_scheduler(tiny_pixart_path),
        "transformer": load_transformer(tiny_pixart_path),
        "latents": torch.randn(2, 4, 16, 16, generator=g),
        "noise": torch.randn(2, 4, 16, 16, generator=g),
        "embeds": torch.randn(2, 5, 32, generator=g),
        "mask": torch.ones(2, 5),
    }


def _x_at(parts, t: int, i: int = 0) -> torch.Tensor:
    return parts["scheduler"].add_noise(parts["latents"][i:i + 1], parts["noise"][i:i + 1], torch.tensor([t]))


def test_dpm_rollout_is_the_stock_pipelines_denoising_from_t_plus_k_to_t(parts, tiny_pixart_path):
    """PixArtSigmaPipeline (its DPM-Solver++ scheduler, the real repo's config) run over the training
    timesteps [t+k, ..., t] from x_{t+k}, no guidance: its latents after k steps are the rollout, bit for bit."""
    from diffusers import PixArtSigmaPipeline

    pipe = PixArtSigmaPipeline.from_pretrained(tiny_pixart_path, transformer=parts["transformer"])
    pipe.set_progress_bar_config(disable=True)
    source, target = 604, 600
    x_source = _x_at(parts, source)
    seen = {}
    pipe(prompt=None, prompt_embeds=parts["embeds"][:1], prompt_attention_mask=parts["mask"][:1],
         guidance_scale=1.0, timesteps=list(range(source, target - 1, -1)), latents=x_source.clone(),
         height=128, width=128, output_type="latent", use_resolution_binning=False,
         callback=lambda i, t, latents: seen.__setitem__(i, latents.clone()))
    rolled = roll_out(parts["transformer"], make_solver("dpm", 2, parts["scheduler"]), x_source, source, target,
                      parts["embeds"][:1], parts["mask"][:1])
    assert torch.equal(rolled, seen[source - target - 1])  # after k = 4 steps
    assert not torch.allclose(rolled, _x_at(parts, target), atol=1e-3)  # not the teacher-forced input


def _ddim(parts, x: torch.Tensor, source: int, target: int) -> torch.Tensor:
    """Deterministic DDIM, one training timestep per step, written out: x0 = (x - sqrt(1-a) eps) / sqrt(a),
    x' = sqrt(a') x0 + sqrt(1-a') eps (the first-order solver every scheduler here reduces to)."""
    ac = parts["scheduler"].alphas_cumprod.double()
    x = x.double()
    for t in range(source, target, -1):
        with torch.no_grad():
            out = parts["transformer"](x.float(), encoder_hidden_states=parts["embeds"][:1],
                                       encoder_attention_mask=parts["mask"][:1], timestep=torch.tensor([t]),
                                       added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                                       return_dict=False)[0]
        eps = out[:, :4].double()
        x0 = (x - (1 - ac[t]).sqrt() * eps) / ac[t].sqrt()
        x = ac[t - 1].sqrt() * x0 + (1 - ac[t - 1]).sqrt() * eps
    return x.float()


def test_euler_rollout_is_ddim_by_hand(parts):
    source, target = 303, 300
    x_source = _x_at(parts, source)
    rolled = roll_out(parts["transformer"], make_solver("euler", 2, parts["scheduler"]), x_source, source, target,
                      parts["embeds"][:1], parts["mask"][:1])
    torch.testing.assert_close(rolled, _ddim(parts, x_source, source, target), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sampler", ["unipc", "dpm"])
def test_one_multistep_step_is_first_order_ddim(parts, sampler):
    x_source = _x_at(parts, 401)
    rolled = roll_out(parts["transformer"], make_solver(sampler, 2, parts["scheduler"]), x_source, 401, 400,
                      parts["embeds"][:1], parts["mask"][:1])
    torch.testing.assert_close(rolled, _ddim(parts, x_source, 401, 400), rtol=1e-4, atol=1e-5)


def test_unipc_second_order_differs_from_first_order(parts):
    x_source = _x_at(parts, 405)
    args = (x_source, 405, 400, parts["embeds"][:1], parts["mask"][:1])
    second = roll_out(parts["transformer"], make_solver("unipc", 2, parts["scheduler"]), *args)
    first = roll_out(parts["transformer"], make_solver("unipc", 1, parts["scheduler"]), *args)
    assert not torch.equal(first, second)
    torch.testing.assert_close(first, second, rtol=0, atol=0.05)  # same path, another solver order


def test_probability_without_and_with_the_ramp():
    assert rollout_probability(Hyperparameters(scheduled_sampling_probability=0.3), 123) == 0.3
    ramp = Hyperparameters(scheduled_sampling_ramp_steps=10, scheduled_sampling_probability=0.9)  # not read
    assert [rollout_probability(ramp, s) for s in (0, 4, 10, 50)] == pytest.approx([0.0, 0.2, 0.5, 0.5])
    late = Hyperparameters(scheduled_sampling_ramp_steps=4, scheduled_sampling_start_step=6,
                           scheduled_sampling_prob_start=0.2, scheduled_sampling_prob_end=1.0,
                           scheduled_sampling_ramp_shape="cosine")
    expected = [0.2, 0.2, 0.2 + 0.8 * (0.5 - 0.5 * math.cos(math.pi / 4)), 0.6, 1.0, 1.0]
    assert [rollout_probability(late, s) for s in (0, 5, 7, 8, 10, 99)] == pytest.approx(expected)


@pytest.mark.parametrize("strategy", ["uniform", "biased_early", "biased_late"])
def test_offsets_follow_the_probability_and_strategy(strategy):
    g = torch.Generator().manual_seed(3)
    offsets = plan_offsets(20000, 10, 0.25, strategy, g)
    assert offsets.dtype == torch.int64 and 0 <= int(offsets.min()) and int(offsets.max()) == 10
    drawn = plan_offsets(20000, 10, 1.0, strategy, torch.Generator().manual_seed(4)).double()
    mean = {"uniform": 5.0, "biased_early": 10 / 3, "biased_late": 20 / 3}[strategy]  # E[u^2] = 1/3
    assert float(drawn.mean()) == pytest.approx(mean, abs=0.1)
    if strategy == "uniform":  # every length 0..10 about equally often
        counts = torch.bincount(drawn.long(), minlength=11).double() / 20000
        assert torch.allclose(counts, torch.full((11,), 1 / 11, dtype=torch.float64), atol=0.01)
        # with probability 0.25 the nonzero share is 0.25 * 10/11
        assert float((offsets > 0).double().mean()) == pytest.approx(0.25 * 10 / 11, abs=0.01)
    assert not plan_offsets(1000, 10, 0.0, strategy, torch.Generator().manual_seed(5)).any()


def test_rollout_batch_replaces_exactly_the_planned_samples(parts):
    hp = Hyperparameters(scheduled_sampling_max_step_offset=5, scheduled_sampling_probability=0.5,
                         scheduled_sampling_sampler="dpm")
    timesteps = torch.tensor([200, 998])
    # find a seed whose plan rolls out one sample and keeps the other, and check against the plan
    for seed in range(50):
        plan = plan_offsets(2, 5, 0.5, "uniform", torch.Generator().manual_seed(seed))
        if plan[0] > 0 and plan[1] == 0:
            break
    noisy = rollout_batch(parts["transformer"], parts["scheduler"], hp, parts["latents"], parts["noise"], timesteps,
                          parts["embeds"], parts["mask"], torch.Generator().manual_seed(seed), global_step=0)
    assert torch.equal(noisy[1:], _x_at(parts, 998, 1))  # kept: the plain add_noise input
    k = int(plan[0])
    expected = roll_out(parts["transformer"], make_solver("dpm", 2, parts["scheduler"]), _x_at(parts, 200 + k),
                        200 + k, 200, parts["embeds"][:1], parts["mask"][:1])
    assert torch.equal(noisy[:1], expected)


def test_source_is_clamped_to_the_last_training_timestep(parts):
    hp = Hyperparameters(scheduled_sampling_max_step_offset=5, scheduled_sampling_probability=1.0,
                         scheduled_sampling_sampler="euler")
    noisy = rollout_batch(parts["transformer"], parts["scheduler"], hp, parts["latents"][:1], parts["noise"][:1],
                          torch.tensor([999]), parts["embeds"][:1], parts["mask"][:1],
                          torch.Generator().manual_seed(0), global_step=0)
    assert torch.equal(noisy, _x_at(parts, 999))  # nothing above 999 to roll out from
