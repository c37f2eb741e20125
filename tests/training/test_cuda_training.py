"""The trainer's CUDA paths on the tiny model (marked ``gpu``; skipped without CUDA; written for one
H100/H200, where ``benchmarks/gpu.py`` runs them with the benchmark).

Stated tolerances: on CUDA some attention/convolution backward kernels accumulate with atomics, so
a resumed run matches the uninterrupted one to float tolerance, not bit for bit: per-step losses
within rel 1e-3, final weights within abs 2e-3 after 6 AdamW steps of lr 1e-3 (an Adam step moves a
weight by at most ~lr, so this bounds a few steps' worth of drift, far below a lost or repeated step).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pixart_pipeline.training import checkpoint as ckpt
from pixart_pipeline.training.loop import train
from pixart_pipeline.training.metrics import read_metrics

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
LOSS_RTOL, WEIGHT_ATOL = 1e-3, 2e-3


def _cuda_spec(make_spec, name: str, **values):
    return make_spec(name, checkpointing_steps=3, max_train_steps=6, **values).replace(device="cuda")


def _losses(run_dir: str) -> list[float]:
    return [r["loss"] for r in read_metrics(Path(run_dir) / "metrics.jsonl")]


def _final_weights(run_dir: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "checkpoints" / "step-6" / "transformer.safetensors"))


def _assert_resume_matches(make_spec, name: str, **values) -> tuple:
    """Train 6 steps straight and 3 + 3 with a resume; same losses and weights to the stated tolerance."""
    straight = train(_cuda_spec(make_spec, f"{name}-straight", **values))
    spec = _cuda_spec(make_spec, f"{name}-resumed", **values)
    train(spec, stop_at_step=3)
    resumed = train(spec)
    assert resumed.resumed_from and resumed.completed
    assert _losses(resumed.run_dir) == pytest.approx(_losses(straight.run_dir), rel=LOSS_RTOL)
    a, b = _final_weights(straight.run_dir), _final_weights(resumed.run_dir)
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst < WEIGHT_ATOL, f"resumed weights differ by {worst}"
    return straight, resumed


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_resumes_on_cuda(make_spec, precision):
    straight, _ = _assert_resume_matches(make_spec, f"mp-{precision}", mixed_precision=precision)
    assert all(torch.isfinite(torch.tensor(v)) for v in _losses(straight.run_dir))
    state = ckpt.load_checkpoint(Path(straight.run_dir) / "checkpoints" / "step-3")
    assert ("grad_scaler" in state.extra) == (precision == "fp16")  # fp16's loss scale is resumed too
    assert {t.dtype for t in state.transformer.values()} == {torch.float32}  # float32 master weights


def test_cuda_rng_state_is_in_the_checkpoint_and_restored(make_spec):
    spec = _cuda_spec(make_spec, "rng", mixed_precision="bf16")
    train(spec, stop_at_step=3)
    saved = ckpt.load_checkpoint(Path(spec.run_dir) / "checkpoints" / "step-3")
    tensors, rest = saved.rng
    assert all(f"cuda.{i}" in tensors for i in range(torch.cuda.device_count()))
    ckpt.restore_rng_state(tensors, rest)
    first = torch.randn(4, device="cuda")
    ckpt.restore_rng_state(tensors, rest)
    assert torch.equal(first, torch.randn(4, device="cuda"))


@pytest.mark.parametrize("optimizer", ["adamw_bf16", "bnb-adamw8bit"])
def test_memory_saving_optimizers_train_and_resume_on_cuda(make_spec, optimizer):
    pytest.importorskip({"adamw_bf16": "optimi", "bnb-adamw8bit": "bitsandbytes"}[optimizer])
    straight, _ = _assert_resume_matches(make_spec, optimizer, optimizer=optimizer, mixed_precision="bf16")
    weights = _final_weights(straight.run_dir)
    expected = torch.bfloat16 if optimizer == "adamw_bf16" else torch.float32
    assert {t.dtype for t in weights.values()} == {expected}


def test_ema_on_the_cpu_while_training_on_cuda(make_spec):
    on_cpu = train(_cuda_spec(make_spec, "ema-cpu", mixed_precision="bf16", use_ema=True, ema_device="cpu"))
    on_gpu = train(_cuda_spec(make_spec, "ema-gpu", mixed_precision="bf16", use_ema=True))
    a = load_file(str(Path(on_cpu.run_dir) / "checkpoints" / "step-6" / "ema.safetensors"))
    b = load_file(str(Path(on_gpu.run_dir) / "checkpoints" / "step-6" / "ema.safetensors"))
    # the same trained weights up to CUDA's atomics; the average itself is float32 either way
    assert max((a[k] - b[k]).abs().max().item() for k in a) < WEIGHT_ATOL
    _assert_resume_matches(make_spec, "ema-cpu-resume", mixed_precision="bf16", use_ema=True, ema_device="cpu")


def test_regional_compile_and_tf32_on_cuda(make_spec):
    eager = train(_cuda_spec(make_spec, "eager", mixed_precision="bf16"))
    compiled = train(_cuda_spec(make_spec, "compiled", mixed_precision="bf16", dynamo_backend="inductor"))
    assert _losses(compiled.run_dir) == pytest.approx(_losses(eager.run_dir), rel=1e-2)  # bf16 kernels fused
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # disable_tf32 false
    train(_cuda_spec(make_spec, "no-tf32", mixed_precision="bf16", disable_tf32=True))
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32


def test_bf16_evaluation_sampling_on_cuda(tiny_pixart_path):
    import numpy as np

    from pixart_pipeline.evaluation.sampling import generate_images, load_pipeline

    kwargs = dict(guidance=3.5, num_inference_steps=4, seed=3, max_sequence_length=16)
    images = {}
    for dtype in ("fp32", "bf16"):
        pipe = load_pipeline(tiny_pixart_path, torch.device("cuda"), dtype)
        assert pipe.transformer.dtype == {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
        images[dtype] = generate_images(pipe, ["a red circle", "a star"], [(128, 128), (192, 128)], **kwargs)
    assert [(i.width, i.height) for i in images["bf16"]] == [(i.width, i.height) for i in images["fp32"]]
    for full, half in zip(images["fp32"], images["bf16"]):
        a, b = np.asarray(full.image, dtype=np.float32), np.asarray(half.image, dtype=np.float32)
        assert a.shape == b.shape and np.abs(a - b).mean() < 8.0  # same seeds: the same picture to bf16 rounding
