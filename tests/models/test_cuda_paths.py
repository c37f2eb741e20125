"""CUDA paths (marked ``gpu``; skipped without CUDA): mixed-precision steps and the memory estimate."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from pixart_pipeline.models import estimate, measure, presets
from pixart_pipeline.training.loss import pixart_epsilon_loss

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
SMALL = dict(num_layers=2, num_attention_heads=2, attention_head_dim=16, caption_channels=32)


def _step(model, optimizer, size: int, dtype: torch.dtype, scaler=None) -> float:
    """One autocast training step on random latents; returns the loss."""
    device = torch.device("cuda")
    inputs = measure.transformer_inputs(2, size, size, 20, 4, model.config.caption_channels, device=device)
    latents = inputs["hidden_states"]
    with torch.autocast("cuda", dtype=dtype):
        loss = pixart_epsilon_loss(model, latents, torch.randn_like(latents), torch.tensor([10, 900], device=device),
                                   inputs["encoder_hidden_states"], inputs["encoder_attention_mask"],
                                   DDPMScheduler()).mean()
    if scaler is None:
        loss.backward()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return float(loss)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_mixed_precision_step_updates_float32_weights(dtype):
    torch.manual_seed(0)
    model = presets.build_transformer(device="cuda", **SMALL).train()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    loss = _step(model, optimizer, 128, dtype, scaler)
    assert torch.isfinite(torch.tensor(loss))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_full_size_training_peak_is_within_10_percent_of_the_estimate_at_512px():
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    model = presets.build_transformer(device="cuda").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6, fused=True)
    for _ in range(2):  # the second step starts with the optimizer state resident
        _step(model, optimizer, 512, torch.bfloat16)
    measured = torch.cuda.max_memory_allocated()
    params = presets.count_parameters(model)
    memory = measure.transformer_train_memory(None, 2, 512, 512, 20, torch.bfloat16, False)
    predicted = estimate.training_peak(params * 4, estimate.optimizer_state_bytes(params, "adamw"), 0, memory, 1)
    assert measured == pytest.approx(predicted, rel=0.10)
