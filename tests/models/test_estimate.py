"""`estimate`: fake-tensor memory measurement, the peak maths, and the CLI on a tiny config."""

from __future__ import annotations

import json

import pytest
import torch

from demo_copy import copy_demo
from pixart_pipeline.cli import main
from pixart_pipeline.models import estimate, measure, presets

SMALL = dict(num_attention_heads=2, attention_head_dim=16, caption_channels=32)  # width 32


def test_live_bytes_counts_created_storages_until_freed():
    with measure.LiveBytes() as live:
        a = torch.ones(1000)  # 4000 bytes
        b = a.view(10, 100)  # a view: no new storage
        c = torch.ones(500, dtype=torch.bfloat16)  # 1000 bytes
        assert live.live == 5000
        del a, b, c
    assert live.live == 0 and live.peak == 5000


def test_two_block_extrapolation_equals_a_direct_measurement():
    """Blocks are identical, so 1- and 2-block measurements give the 4-block activations exactly."""
    config = presets.transformer_kwargs(num_layers=4, **SMALL)
    for checkpointing in (False, True):
        got = measure.transformer_train_memory(config, 2, 128, 96, 20, torch.bfloat16, checkpointing)
        activations, peak, gradients = measure._train_step_memory(config, 4, 2, 128, 96, 20, torch.bfloat16,
                                                                  checkpointing)
        assert got.activations == activations and got.gradients == gradients
        assert got.backward_peak == pytest.approx(peak, rel=0.05)


def test_checkpointing_keeps_far_fewer_activations():
    config = presets.transformer_kwargs(num_layers=4, **SMALL)
    plain = measure.transformer_train_memory(config, 2, 256, 256, 20, None, False)
    ckpt = measure.transformer_train_memory(config, 2, 256, 256, 20, None, True)
    assert ckpt.activations < plain.activations / 3


def test_training_peak_takes_the_larger_of_backward_and_step():
    gib = estimate.GIB
    memory = measure.TrainMemory(activations=8 * gib, gradients=2 * gib, backward_extra=gib)
    assert estimate.training_peak(2 * gib, 4 * gib, 0, memory, 1) == 15 * gib  # 2 + 4 + (8 + 1)
    assert estimate.training_peak(2 * gib, 4 * gib, 0, memory, 2) == 17 * gib  # gradients stay resident
    small = measure.TrainMemory(activations=gib, gradients=2 * gib, backward_extra=0)
    assert estimate.training_peak(2 * gib, 4 * gib, 0, small, 1, step_transient=2 * gib) == 10 * gib


def test_fits_leaves_headroom():
    assert estimate.fits(10 * estimate.GIB, 12 * estimate.GIB) is True
    assert estimate.fits(11 * estimate.GIB, 12 * estimate.GIB) is False
    assert estimate.fits(11 * estimate.GIB, None) is None


def test_evaluation_batch_constants_follow_the_evaluation_code():
    import inspect

    from pixart_pipeline.evaluation.sampling import generate_images
    from pixart_pipeline.evaluation.spec import EvalSpec

    assert inspect.signature(generate_images).parameters["batch_size"].default == estimate.SAMPLING_BATCH
    spec_fields = getattr(EvalSpec, "model_fields", None) or EvalSpec.__dataclass_fields__  # pydantic or dataclass
    assert spec_fields["eval_batch_size"].default == estimate.EVAL_LOSS_BATCH


def test_estimate_cli_json_on_the_demo_config(tmp_path, capsys):
    config = copy_demo(tmp_path)
    assert main(["estimate", "--config", str(config), "--json", "--gpu-memory-gb", "24"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [s["stage"] for s in result["stages"]] == ["text_embed_cache", "vae_cache", "trained_checkpoint",
                                                       "evaluation_report"]
    train = result["stages"][2]
    assert train["weights"] == result["parameters"]["transformer"] * 4  # float32 master weights
    assert train["optimizer_state"] == 2 * train["weights"]  # AdamW: two moments
    assert train["activations_checkpointed"] < train["activations"]
    assert all(s["fits"] is True and s["peak"] >= s["weights"] for s in result["stages"])
    assert result["largest_bucket"] == [128, 128]


def test_estimate_says_what_to_change_when_it_does_not_fit(tmp_path, capsys):
    config = copy_demo(tmp_path, {"use_ema": True})
    assert main(["estimate", "--config", str(config), "--gpu-memory-gb", "0.001"]) == 1
    out = capsys.readouterr().out
    assert "| trained_checkpoint |" in out and "NO" in out
    assert "gradient_checkpointing: true" in out and "ema_device 'cpu'" in out


def _train_stage(tmp_path, capsys, overrides: dict) -> dict:
    config = copy_demo(tmp_path / str(len(list(tmp_path.iterdir()))), overrides)
    assert main(["estimate", "--config", str(config), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    return result["parameters"]["transformer"], result["stages"][2]


def test_estimate_knows_the_bytes_of_each_memory_saver(tmp_path, capsys):
    params, adamw = _train_stage(tmp_path, capsys, {"use_ema": True})
    assert adamw["ema"] == 4 * params and adamw["optimizer_state"] == 8 * params
    _, cpu_ema = _train_stage(tmp_path, capsys, {"use_ema": True, "ema_device": "cpu"})
    assert cpu_ema["ema"] == 0 and cpu_ema["peak"] == adamw["peak"] - adamw["ema"]
    _, bf16 = _train_stage(tmp_path, capsys, {"optimizer": "adamw_bf16", "mixed_precision": "bf16"})
    assert bf16["weights"] == 2 * params and bf16["optimizer_state"] == 6 * params
    assert bf16["gradients"] == adamw["gradients"] // 2  # bf16 gradients of bf16 weights
    _, eight = _train_stage(tmp_path, capsys, {"optimizer": "bnb-adamw8bit"})
    assert eight["weights"] == 4 * params and 2 * params < eight["optimizer_state"] < 2.05 * params
