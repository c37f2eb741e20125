"""The speed switches on the CPU: regional torch.compile trains to the eager loss within tolerance
(and leaves checkpoints and resume as they were), attention is SDPA, TF32 touches CUDA only."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pixart_pipeline.config.models import TrainingConfig
from pixart_pipeline.errors import InputError
from pixart_pipeline.models import load_transformer
from pixart_pipeline.training.loop import train
from pixart_pipeline.training.metrics import read_metrics
from pixart_pipeline.training.speed import apply_tf32, check_sdpa, compile_kwargs, compile_transformer


def _losses(run_dir: str) -> list[float]:
    return [r["loss"] for r in read_metrics(Path(run_dir) / "metrics.jsonl")]


@pytest.mark.slow
def test_regional_compile_trains_to_the_eager_loss_and_resumes(make_spec):
    """Inductor on the CPU: the same losses to float tolerance, the same checkpoint keys, and a
    compiled run stopped and resumed ends where the uninterrupted compiled run does."""
    hp = dict(max_train_steps=4, use_ema=True, gradient_checkpointing=True)
    eager = train(make_spec("eager", checkpointing_steps=2, **hp))
    compiled = train(make_spec("compiled", checkpointing_steps=2, dynamo_backend="inductor", **hp))
    assert _losses(compiled.run_dir) == pytest.approx(_losses(eager.run_dir), rel=1e-4, abs=1e-6)
    name = "checkpoints/step-4/transformer.safetensors"
    a, b = load_file(str(Path(eager.run_dir) / name)), load_file(str(Path(compiled.run_dir) / name))
    assert a.keys() == b.keys()  # no "_orig_mod." prefixes: compiled in place
    assert all(torch.allclose(a[k], b[k], rtol=1e-3, atol=1e-5) for k in a)

    spec = make_spec("compiled-resumed", checkpointing_steps=2, dynamo_backend="inductor", **hp)
    train(spec, stop_at_step=2)
    resumed = train(spec)
    assert resumed.resumed_from and _losses(resumed.run_dir) == pytest.approx(_losses(compiled.run_dir), rel=1e-5)


def test_regional_compile_compiles_every_block_in_place(tiny_pixart_path):
    model = load_transformer(tiny_pixart_path)
    keys = list(model.state_dict())
    assert compile_transformer(model, TrainingConfig(), log=lambda _: None) == 0  # dynamo_backend "no"
    hp = TrainingConfig(dynamo_backend="aot_eager")  # no code generation: quick, and bit-exact
    x = dict(hidden_states=torch.randn(1, 4, 16, 16), encoder_hidden_states=torch.randn(1, 5, 32),
             timestep=torch.tensor([500]), added_cond_kwargs={"resolution": None, "aspect_ratio": None})
    with torch.no_grad():
        before = model(**x).sample
        assert compile_transformer(model, hp, log=lambda _: None) == model.config.num_layers
        after = model(**x).sample
    assert list(model.state_dict()) == keys and torch.equal(before, after)
    assert compile_kwargs(TrainingConfig(dynamo_backend="inductor", dynamo_mode="max-autotune", dynamo_dynamic=False)) \
        == {"backend": "inductor", "fullgraph": False, "mode": "max-autotune", "dynamic": False}


def test_attention_is_scaled_dot_product_attention(tiny_pixart_path):
    from diffusers.models.attention_processor import AttnProcessor

    model = load_transformer(tiny_pixart_path)
    check_sdpa(model)  # diffusers' default processor
    model.set_attn_processor(AttnProcessor())  # the plain softmax(QK^T)V one
    with pytest.raises(InputError, match="not SDPA"):
        check_sdpa(model)


def test_tf32_is_a_cuda_switch_only():
    before = torch.get_float32_matmul_precision()
    assert apply_tf32(TrainingConfig(), torch.device("cpu")) is False
    assert torch.get_float32_matmul_precision() == before
