"""attention_mechanism: the kernel-swapping processor's wiring, checked with PyTorch's SDPA as its
kernel against the transformer's default attention; sageattention's up-front refusal without its
package or CUDA; its place in the config and the evaluation fingerprint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pixart_pipeline.models import load_transformer
from pixart_pipeline.models.attention import (
    AttentionUnavailableError,
    KernelAttnProcessor,
    install_kernel,
    require_attention_mechanism,
    sdpa_kernel,
)


def _forward(transformer, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, 4, 16, 12, generator=g)
    embeds = torch.randn(2, 6, 32, generator=g)
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])  # padding in row 0: cross-attention is masked
    with torch.no_grad():
        return transformer(latents, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                           timestep=torch.tensor([10, 900]),
                           added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]


@pytest.fixture
def transformer(tiny_pixart_path):
    return load_transformer(tiny_pixart_path).eval()


def test_the_processor_with_sdpa_as_kernel_gives_the_default_attentions_output(transformer):
    default = _forward(transformer)
    processor = install_kernel(transformer, sdpa_kernel, "sdpa")
    assert {type(p) for p in transformer.attn_processors.values()} == {KernelAttnProcessor}
    swapped = _forward(transformer)
    torch.testing.assert_close(swapped, default, rtol=1e-5, atol=1e-6)
    # the kernel ran on the unmasked (self-attention) calls: one per transformer block
    assert processor.kernel_calls == transformer.config.num_layers


def test_the_kernel_is_what_computes_the_self_attention(transformer):
    default = _forward(transformer)
    doubled = install_kernel(transformer, lambda q, k, v: 2 * sdpa_kernel(q, k, v), "double")
    assert not torch.allclose(_forward(transformer), default, atol=1e-3)
    assert doubled.kernel_calls == transformer.config.num_layers


def test_sampling_with_the_processor_installed_makes_the_same_images(tiny_pixart_path):
    from pixart_pipeline.evaluation.sampling import generate_images, load_pipeline

    pipe = load_pipeline(tiny_pixart_path, torch.device("cpu"))
    args = dict(prompts=["a red circle"], sizes=[(64, 64)], guidance=3.5, num_inference_steps=2, seed=1,
                max_sequence_length=16)
    default = generate_images(pipe, **args)[0].image
    install_kernel(pipe.transformer, sdpa_kernel, "sdpa")
    swapped = generate_images(pipe, **args)[0].image
    assert (np.asarray(default) == np.asarray(swapped)).all()


def test_sageattention_is_refused_before_any_work_without_its_package_or_cuda():
    require_attention_mechanism("diffusers", torch.device("cpu"))
    try:
        import sageattention  # noqa: F401
        missing = None
    except ImportError:
        missing = "needs the sageattention package"
    with pytest.raises(AttentionUnavailableError, match=missing or "runs only on CUDA"):
        require_attention_mechanism("sageattention", torch.device("cpu"))


def test_an_evaluation_with_sageattention_fails_before_loading_anything(tmp_path):
    from pixart_pipeline.evaluation import EvalSpec, run_evaluation

    spec = EvalSpec.from_dict({"pipeline_dir": str(tmp_path / "nothing-here"), "base_model": "x",
                               "out_dir": str(tmp_path / "report"), "device": "cpu",
                               "settings": {"attention_mechanism": "sageattention", "evaluation_type": "none"}})
    with pytest.raises(AttentionUnavailableError, match="sageattention"):
        run_evaluation(spec)  # not "nothing-here is not a diffusers pipeline folder"
    assert not (tmp_path / "report").exists()


def test_config_key_and_evaluation_fingerprint(tmp_path):
    from pixart_pipeline.config import ConfigError, load_config
    from pixart_pipeline.stages import EVALUATION_REPORT, TRAINED_CHECKPOINT
    from tests.demo_copy import copy_demo

    base = load_config(copy_demo(tmp_path / "base"))
    sage = load_config(copy_demo(tmp_path / "sage", config={"attention_mechanism": "sageattention"}))
    explicit = load_config(copy_demo(tmp_path / "explicit", config={"attention_mechanism": "diffusers"}))
    assert EVALUATION_REPORT.code_version(sage) != EVALUATION_REPORT.code_version(base)
    assert EVALUATION_REPORT.code_version(explicit) == EVALUATION_REPORT.code_version(base)
    assert TRAINED_CHECKPOINT.code_version(sage) == TRAINED_CHECKPOINT.code_version(base)  # sampling only
    with pytest.raises(ConfigError, match="attention_mechanism"):
        load_config(copy_demo(tmp_path / "x", config={"attention_mechanism": "xformers"}))
