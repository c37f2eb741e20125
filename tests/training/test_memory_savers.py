"""The memory savers of issue 13 on the tiny model (CPU): ``ema_device: cpu``, ``optimizer:
adamw_bf16`` (bf16 weights, Kahan-summed AdamW) and ``optimizer: bnb-adamw8bit``; each trains, resumes
bit-identically and is in the checkpoint fingerprint only where set."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pixart_pipeline.config import load_config
from pixart_pipeline.config import fingerprints as fp
from pixart_pipeline.config.models import TrainingConfig
from pixart_pipeline.models import estimate
from pixart_pipeline.training.loop import train
from pixart_pipeline.training.optim import optimizer_state_from_flat, optimizer_state_to_flat
from pixart_pipeline.training.optimizers import state_bytes
from tests.config.test_config import QUICKSTART_BACKEND, QUICKSTART_CONFIG, write

REPO = Path(__file__).resolve().parents[2]


def _straight_and_resumed(make_spec, name: str, **hp):
    """The same 6-step run straight and stopped at step 3 then resumed: (straight, resumed) results."""
    straight = train(make_spec(f"{name}-straight", checkpointing_steps=3, max_train_steps=6, **hp))
    spec = make_spec(f"{name}-resumed", checkpointing_steps=3, max_train_steps=6, **hp)
    train(spec, stop_at_step=3)
    return straight, train(spec)


def test_ema_on_the_cpu_resumes_exactly_and_equals_the_accelerator_ema(make_spec):
    straight, resumed = _straight_and_resumed(make_spec, "ema-cpu", use_ema=True, ema_device="cpu")
    assert resumed.resumed_from and resumed.weights_sha256 == straight.weights_sha256
    # on a CPU run both placements are the same kernel: the exported EMA weights are identical
    beside = train(make_spec("ema-acc", checkpointing_steps=3, max_train_steps=6, use_ema=True))
    assert beside.weights_sha256 == straight.weights_sha256


def test_adamw_bf16_trains_bf16_weights_and_resumes_exactly(make_spec):
    pytest.importorskip("optimi")
    hp = dict(optimizer="adamw_bf16", mixed_precision="bf16")
    straight, resumed = _straight_and_resumed(make_spec, "bf16", **hp)
    assert resumed.resumed_from and resumed.weights_sha256 == straight.weights_sha256
    ckpt = Path(straight.run_dir) / "checkpoints" / "step-6"
    weights = load_file(str(ckpt / "transformer.safetensors"))
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    state = load_file(str(ckpt / "optimizer.safetensors"))
    assert any(k.endswith(".kahan_comp") for k in state) and state["group.0.step"].item() == 6
    stored = sum(t.numel() * t.element_size() for k, t in state.items() if k.startswith("state."))
    params = sum(t.numel() for t in weights.values())
    assert stored == state_bytes("adamw_bf16", [t.numel() for t in weights.values()]) \
        == estimate.optimizer_state_bytes(params, "adamw_bf16")  # what `estimate` counts
    base = load_file(str(Path(straight.run_dir).parent / "bf16-straight" / "checkpoints" / "step-3" /
                          "transformer.safetensors"))
    assert any(not torch.equal(base[k], weights[k]) for k in weights)  # it trains


def test_kahan_summation_keeps_updates_that_plain_bf16_rounds_away():
    """A weight of 1.0 in bf16 has an ulp of 2^-7; 200 AdamW steps of lr 1e-4 move a float32 weight
    by ~0.02, which plain bf16 AdamW loses step by step (each update rounds back to 1.0). Kahan
    summation carries the lost bits and ends close to the float32 result."""
    optimi = pytest.importorskip("optimi")

    def run(dtype, make):
        p = torch.nn.Parameter(torch.ones(64, dtype=dtype))
        opt = make([p])
        for _ in range(200):
            p.grad = torch.full_like(p, 0.5)
            opt.step()
        return p.detach().float()

    kw = dict(lr=1e-4, weight_decay=0.0)
    reference = run(torch.float32, lambda ps: torch.optim.AdamW(ps, **kw))
    plain = run(torch.bfloat16, lambda ps: torch.optim.AdamW(ps, **kw))
    kahan = run(torch.bfloat16, lambda ps: optimi.AdamW(ps, kahan_sum=True, **kw))
    assert torch.equal(plain, torch.ones(64))  # every update lost
    assert (reference - kahan).abs().max() < 0.005 < (reference - plain).abs().max()


def test_bnb_adamw8bit_resumes_exactly_with_smaller_state(make_spec):
    pytest.importorskip("bitsandbytes")
    straight, resumed = _straight_and_resumed(make_spec, "bnb", optimizer="bnb-adamw8bit")
    assert resumed.resumed_from and resumed.weights_sha256 == straight.weights_sha256
    state = load_file(str(Path(straight.run_dir) / "checkpoints" / "step-6" / "optimizer.safetensors"))
    assert any(t.dtype == torch.uint8 for t in state.values())  # the 8-bit moments
    weights = load_file(str(Path(straight.run_dir) / "checkpoints" / "step-6" / "transformer.safetensors"))
    expected = state_bytes("bnb-adamw8bit", [t.numel() for t in weights.values()])
    stored = sum(t.numel() * t.element_size() for k, t in state.items() if k.startswith("state."))
    assert stored == pytest.approx(expected, rel=0.02)


def test_the_estimates_8bit_formula_holds_for_the_full_size_transformer():
    """``estimate`` counts 2 bytes + an absmax per 256 for every parameter; the per-tensor rule
    (32-bit moments under 4096 values, code books) differs by under 0.5% on the real model (its
    small tensors are a tiny share; on the tiny test model they dominate)."""
    from pixart_pipeline.models import presets

    sizes = [p.numel() for p in presets.build_transformer().parameters()]  # meta: no memory
    exact = state_bytes("bnb-adamw8bit", sizes)
    assert estimate.optimizer_state_bytes(sum(sizes), "bnb-adamw8bit") == pytest.approx(exact, rel=0.005)


def test_nested_optimizer_state_round_trips_through_safetensors_and_json():
    bnb = pytest.importorskip("bitsandbytes")
    params = [torch.nn.Parameter(torch.randn(64, 128)), torch.nn.Parameter(torch.randn(5))]
    opt = bnb.optim.AdamW8bit(params, lr=1e-3, min_8bit_size=4096)
    for p in params:
        p.grad = torch.randn_like(p)
    opt.step()
    rebuilt = optimizer_state_from_flat(*optimizer_state_to_flat(opt))
    twin = [torch.nn.Parameter(p.detach().clone()) for p in params]
    opt2 = bnb.optim.AdamW8bit(twin, lr=1e-3, min_8bit_size=4096)
    opt2.load_state_dict(rebuilt)
    for a, b in zip(params, twin):
        a.grad = torch.ones_like(a)
        b.grad = torch.ones_like(b)
    opt.step()
    opt2.step()
    assert all(torch.equal(a, b) for a, b in zip(params, twin))


@pytest.mark.parametrize("module, optimizer, package", [("optimi", "adamw_bf16", "torch-optimi"),
                                                        ("bitsandbytes", "bnb-adamw8bit", "bitsandbytes")])
def test_a_missing_library_is_a_clear_error_naming_the_install(module, optimizer, package):
    # a real interpreter where importing the library fails, as on a machine without the extra
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "import torch\nfrom pixart_pipeline.config.models import TrainingConfig\n"
            "from pixart_pipeline.training.optimizers import build_memory_optimizer\n"
            f"hp = TrainingConfig(optimizer={optimizer!r}, mixed_precision='bf16')\n"
            "build_memory_optimizer([torch.nn.Parameter(torch.zeros(2, dtype=torch.bfloat16))], hp, torch.device('cpu'))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode != 0
    assert f"needs the {package} package" in done.stderr and "pixart-pipeline[lowmem]" in done.stderr


def test_adamw_bf16_needs_bf16_mixed_precision():
    with pytest.raises(ValueError, match="adamw_bf16.*needs mixed_precision 'bf16'"):
        TrainingConfig(optimizer="adamw_bf16", mixed_precision="no")
    with pytest.raises(ValueError, match="fused_optimizer 'on' needs optimizer 'adamw'"):
        TrainingConfig(optimizer="bnb-adamw8bit", fused_optimizer="on")


@pytest.mark.parametrize("setting, key, value, retrains", [
    ({}, "ema_device", "cpu", False),  # no EMA: nothing to place
    ({"use_ema": True}, "ema_device", "cpu", True),
    ({}, "disable_tf32", True, True),
    ({}, "dynamo_mode", "max-autotune", False),  # no compile: the mode is not read
    ({}, "dynamo_backend", "inductor", True),
    ({"dynamo_backend": "inductor"}, "dynamo_fullgraph", True, True),
    ({}, "optimizer", "adamw_bf16", True),
    ({"optimizer": "bnb-adamw8bit"}, "fused_optimizer", "off", False),
    ({"optimizer": "bnb-adamw8bit"}, "adam_beta1", 0.8, True),
])
def test_the_new_keys_are_in_the_checkpoint_fingerprint_only_where_set(tmp_path, setting, key, value, retrains):
    base = QUICKSTART_CONFIG | {"mixed_precision": "bf16"} | setting
    before = fp.trained_checkpoint_fields(load_config(write(tmp_path, base, QUICKSTART_BACKEND)))
    after = fp.trained_checkpoint_fields(load_config(write(tmp_path, base | {key: value}, QUICKSTART_BACKEND)))
    assert (fp.stable_hash(before) != fp.stable_hash(after)) == retrains


def test_the_new_keys_at_their_defaults_leave_the_fingerprint_as_before(tmp_path):
    fields = fp.trained_checkpoint_fields(load_config(write(tmp_path, QUICKSTART_CONFIG, QUICKSTART_BACKEND)))
    assert not set(fp.OMITTED_AT_DEFAULT) & set(fields["hyperparameters"])
