"""Scheduled Sampling and Diff2Flow through the trainer: each changes the run, resumes bit for bit,
and is in the trained_checkpoint fingerprint only when on (the demo's fingerprints are unchanged)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pixart_pipeline.config import fingerprints as fp
from pixart_pipeline.config import load_config
from pixart_pipeline.stages import TRAINED_CHECKPOINT
from pixart_pipeline.training.loop import train
from pixart_pipeline.training.metrics import read_metrics
from tests.demo_copy import copy_demo

ROLLOUT = dict(scheduled_sampling_max_step_offset=3, scheduled_sampling_ramp_steps=6,
               scheduled_sampling_prob_start=0.25, scheduled_sampling_prob_end=1.0,
               scheduled_sampling_sampler="unipc")
FLOW = dict(diff2flow_enabled=True, diff2flow_loss=True)


def _weights(run_dir: str) -> dict[str, torch.Tensor]:
    return load_file(str(Path(run_dir) / "pipeline" / "transformer" / "diffusion_pytorch_model.safetensors"))


def _losses(run_dir: str) -> list[float]:
    return [r["loss"] for r in read_metrics(Path(run_dir) / "metrics.jsonl")]


@pytest.fixture(scope="module")
def plain(tmp_path_factory, tiny_pixart_path, caches):
    from pixart_pipeline.training.spec import RunSpec

    spec = RunSpec.build(run_dir=str(tmp_path_factory.mktemp("plain") / "run"), base_model=tiny_pixart_path,
                         items=caches["items"], text_store=caches["text_store"],
                         empty_text_key=caches["empty_text_key"], checkpointing_steps=10, device="cpu",
                         log_every_steps=5, learning_rate=1e-3, lr_scheduler="constant", train_batch_size=2,
                         max_train_steps=12, mixed_precision="no", seed=7)
    return train(spec)


@pytest.mark.parametrize("name, values", [pytest.param("rollout", ROLLOUT, marks=pytest.mark.slow),
                                          pytest.param("diff2flow", FLOW, marks=pytest.mark.slow),
                                          ("both", ROLLOUT | FLOW)])
def test_resumed_run_is_bit_identical_and_differs_from_plain_training(make_spec, plain, name, values):
    hp = dict(max_train_steps=12, gradient_accumulation_steps=2, **values)
    straight = train(make_spec(f"{name}-straight", **hp))
    spec = make_spec(f"{name}-resumed", **hp)
    train(spec, stop_at_step=5)  # mid-ramp: the resumed session must use step 5's probability
    resumed = train(spec)
    assert resumed.resumed_from.endswith("step-5")
    assert resumed.weights_sha256 == straight.weights_sha256
    a, b = _weights(straight.run_dir), _weights(resumed.run_dir)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert _losses(straight.run_dir) == _losses(spec.run_dir)
    # the feature did something: another loss from the first step on (Diff2Flow) or once rollouts start
    assert _losses(straight.run_dir) != _losses(plain.run_dir)


def test_in_the_fingerprint_only_when_on(tmp_path):
    demo = load_config(copy_demo(tmp_path / "demo"))
    fields = fp.trained_checkpoint_fields(demo)["hyperparameters"]
    assert not [k for k in fields if k.startswith(("scheduled_sampling_", "diff2flow_"))]  # as before the keys

    def version(name: str, **config) -> str:
        return TRAINED_CHECKPOINT.code_version(load_config(copy_demo(tmp_path / name, config=config)))

    base = version("base")
    # inert settings keep the fingerprint: the bridge without its loss, rollout keys without an offset
    assert version("bridge", diff2flow_enabled=True) == base
    assert version("inert", scheduled_sampling_probability=0.5, scheduled_sampling_sampler="euler") == base
    flow = version("flow", diff2flow_enabled=True, diff2flow_loss=True)
    rollout = version("rollout", scheduled_sampling_max_step_offset=4, scheduled_sampling_probability=0.5)
    other_p = version("other_p", scheduled_sampling_max_step_offset=4, scheduled_sampling_probability=0.25)
    euler = version("euler", scheduled_sampling_max_step_offset=4, scheduled_sampling_probability=0.5,
                    scheduled_sampling_sampler="euler")
    assert len({base, flow, rollout, other_p, euler}) == 5


def test_reflexflow_is_refused_and_its_weights_warned(tmp_path):
    from pixart_pipeline.config import ConfigError

    with pytest.raises(ConfigError, match="scheduled_sampling_reflexflow.*flow-matching"):
        load_config(copy_demo(tmp_path / "a", config={"scheduled_sampling_reflexflow": True}))
    assert load_config(copy_demo(tmp_path / "b", config={"scheduled_sampling_reflexflow": False}))
    with pytest.warns(UserWarning, match="scheduled_sampling_reflexflow_alpha"):
        load_config(copy_demo(tmp_path / "c", config={"scheduled_sampling_reflexflow_alpha": 1.0}))
