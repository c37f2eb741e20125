"""The published full-size architectures, built on the meta device: parameters, shapes, FLOPs."""

from __future__ import annotations

import pytest
import torch

from pixart_pipeline.models import measure, presets


@pytest.fixture(scope="module")
def transformer():
    return presets.build_transformer()


@pytest.fixture(scope="module")
def vae():
    return presets.build_vae()


def test_parameter_counts_match_the_published_models(transformer, vae):
    published = presets.PUBLISHED_PARAMETERS
    assert presets.count_parameters(transformer) == published["transformer"] == 610_856_096
    assert presets.count_parameters(vae) == published["vae"] == 83_653_863
    assert presets.vae_encoder_parameters(vae) == published["vae_encoder"] == 34_163_592
    assert presets.count_parameters(presets.build_text_encoder()) == published["text_encoder"] == 4_762_310_656


def test_meta_builds_allocate_nothing(transformer):
    assert {p.device.type for p in transformer.parameters()} == {"meta"}


def test_hub_only_keys_are_dropped_and_typos_refused():
    kwargs = presets.transformer_kwargs()
    assert "use_linear_projection" not in kwargs and kwargs["num_layers"] == 28
    assert presets.transformer_kwargs(num_attention_heads=2, attention_head_dim=8)["cross_attention_dim"] == 16
    with pytest.raises(KeyError, match="num_layer"):
        presets.transformer_kwargs(num_layer=2)


@pytest.mark.parametrize("width,height", [(512, 512), (1024, 1024), (1344, 768)])
def test_transformer_forward_shapes(transformer, width, height):
    kwargs = measure.transformer_inputs(2, height, width, 300, 4, 4096, device="meta")
    with torch.no_grad():
        out = transformer(**kwargs)[0]
    assert out.shape == (2, 8, height // 8, width // 8)  # learned sigma: epsilon + variance


@pytest.mark.parametrize("width,height", [(1024, 1024), (832, 1216)])
def test_vae_encode_and_t5_shapes(vae, width, height):
    with torch.no_grad():
        posterior = vae.encode(torch.randn(1, 3, height, width, device="meta")).latent_dist
    assert posterior.mean.shape == (1, 4, height // 8, width // 8)


def test_text_encoder_shape():
    encoder = presets.build_text_encoder()
    with torch.no_grad():
        out = encoder(input_ids=torch.zeros(2, 300, dtype=torch.long, device="meta")).last_hidden_state
    assert out.shape == (2, 300, 4096)


def test_flops_match_the_reference_figures():
    """Issue 13's table: 6.63 TFLOP forward and 19.9 forward+backward per 1024px sample (300 text
    tokens), 3.86 train at 512px, 4.88 to encode a 1024px image, about 2 x params x tokens for T5."""
    tflop = lambda v: v / 1e12  # noqa: E731
    assert tflop(measure.transformer_flops(None, 1, 1024, 1024, 300, train=False)) == pytest.approx(6.63, abs=0.005)
    assert tflop(measure.transformer_flops(None, 1, 1024, 1024, 300, train=True)) == pytest.approx(19.9, abs=0.05)
    assert tflop(measure.transformer_flops(None, 1, 512, 512, 300, train=True)) == pytest.approx(3.86, abs=0.005)
    assert tflop(measure.vae_encode_flops(None, 1, 1024, 1024)) == pytest.approx(4.88, abs=0.005)
    t5 = measure.text_encoder_flops(None, 1, 300)
    assert t5 == pytest.approx(2 * 4_762_310_656 * 300, rel=0.03)  # the embedding lookup is no matmul
