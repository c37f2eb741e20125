"""``vae_channels_last``: NHWC VAE encoding gives the posterior of NCHW encoding to float rounding,
and is in the vae_cache fingerprint only when set."""

from __future__ import annotations

import torch

from demo_copy import copy_demo
from pixart_pipeline.cache.vae import encode_posteriors, input_memory_format, to_channels_last
from pixart_pipeline.config import load_config
from pixart_pipeline.config import fingerprints as fp
from pixart_pipeline.models import load_vae


def test_channels_last_encoding_matches_the_usual_layout(tiny_pixart_path):
    vae = load_vae(tiny_pixart_path).eval()
    pixels = [torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(i)) * 2 - 1 for i in range(3)]
    assert input_memory_format(vae) == torch.contiguous_format
    with torch.inference_mode():
        mean, std, finite = encode_posteriors(vae, pixels, "cpu")
        nhwc = to_channels_last(vae)
        assert input_memory_format(nhwc) == torch.channels_last
        mean2, std2, finite2 = encode_posteriors(nhwc, pixels, "cpu")
    assert finite == finite2 == [True] * 3
    assert torch.allclose(mean, mean2, rtol=1e-4, atol=1e-5) and torch.allclose(std, std2, rtol=1e-4, atol=1e-5)


def test_channels_last_is_in_the_vae_fingerprint_only_when_set(tmp_path):
    base = load_config(copy_demo(tmp_path / "a"))
    nhwc = load_config(copy_demo(tmp_path / "b", {"vae_channels_last": True}))
    assert "channels_last" not in fp.vae_fields(base)
    assert fp.stable_hash(fp.vae_fields(base)) != fp.stable_hash(fp.vae_fields(nhwc))
    assert fp.stable_hash(fp.trained_checkpoint_fields(base)) == fp.stable_hash(fp.trained_checkpoint_fields(nhwc))
