"""The published full-size configs of PixArt Sigma's three parts, kept in code (no download).

``PixArt-alpha/PixArt-Sigma-XL-2-1024-MS`` ships three GPU components. Their ``config.json`` values
are copied here so the full-size architectures can be built without the Hub, on the ``meta`` device
(no memory, no weights) for parameter counts, shapes and FLOPs, or with random weights for
benchmarks:

- ``transformer/``: ``PixArtTransformer2DModel``, 28 blocks of 16 heads x 72 (width 1152), caption
  channels 4096 (T5-XXL), patch 2, 4 latent channels in and 8 out (learned sigma); 610,856,096
  parameters.
- ``vae/``: SDXL's ``AutoencoderKL`` (channels 128/256/512/512, 2 resnets per block, scaling factor
  0.13025); 83,653,863 parameters, of which the encoder (with ``quant_conv``) is 34,163,592.
- ``text_encoder/``: ``T5EncoderModel`` of T5 v1.1 XXL (d_model 4096, d_ff 10240, 24 layers, 64
  heads of 64, gated GELU, vocabulary 32128); 4,762,310,656 parameters.

The hub's transformer config also carries ``double_self_attention``, ``only_cross_attention`` and
``use_linear_projection`` (left over from the generic ``Transformer2DModel`` it was converted for);
``PixArtTransformer2DModel`` (diffusers >= 0.28) does not take them as arguments, so they are kept in
the published dict but dropped when building (``from_pretrained`` drops them the same way).
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator

import torch

# transformer/config.json of PixArt-alpha/PixArt-Sigma-XL-2-1024-MS
PIXART_SIGMA_XL_2_1024 = {
    "activation_fn": "gelu-approximate",
    "attention_bias": True,
    "attention_head_dim": 72,
    "attention_type": "default",
    "caption_channels": 4096,
    "cross_attention_dim": 1152,
    "double_self_attention": False,
    "dropout": 0.0,
    "in_channels": 4,
    "interpolation_scale": 2,  # 1024 px: positional embeddings of a base grid of 64 patches, scaled by 2
    "norm_elementwise_affine": False,
    "norm_eps": 1e-6,
    "norm_num_groups": 32,
    "norm_type": "ada_norm_single",
    "num_attention_heads": 16,
    "num_embeds_ada_norm": 1000,
    "num_layers": 28,
    "only_cross_attention": False,
    "out_channels": 8,
    "patch_size": 2,
    "sample_size": 128,
    "upcast_attention": False,
    "use_additional_conditions": False,
    "use_linear_projection": False,
}

# vae/config.json (SDXL's VAE, as shipped in the PixArt Sigma repo)
SDXL_VAE = {
    "act_fn": "silu",
    "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "force_upcast": True,
    "in_channels": 3,
    "latent_channels": 4,
    "layers_per_block": 2,
    "norm_num_groups": 32,
    "out_channels": 3,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
}

# text_encoder/config.json (DeepFloyd/t5-v1_1-xxl's encoder)
T5_V1_1_XXL = {
    "d_ff": 10240,
    "d_kv": 64,
    "d_model": 4096,
    "decoder_start_token_id": 0,
    "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1,
    "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-6,
    "num_decoder_layers": 24,
    "num_heads": 64,
    "num_layers": 24,
    "pad_token_id": 0,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False,
    "vocab_size": 32128,
}

# The published parameter counts (what the presets must build, to the unit).
PUBLISHED_PARAMETERS = {
    "transformer": 610_856_096,
    "vae": 83_653_863,
    "vae_encoder": 34_163_592,  # vae.encoder (vae_cache also runs quant_conv, 72 parameters)
    "text_encoder": 4_762_310_656,
}
MAX_SEQUENCE_LENGTH = 300  # PixArt Sigma's T5 token limit
VAE_DOWNSAMPLE = 8  # 2 ** (len(block_out_channels) - 1)


def transformer_kwargs(config: dict | None = None, **overrides: Any) -> dict:
    """Constructor arguments of ``PixArtTransformer2DModel`` from ``config`` (default: the published
    one; keys the constructor does not take, such as the legacy ones and ``_class_name``, are dropped),
    with ``overrides`` applied (e.g. ``num_layers=2``, or a smaller width for a smoke run)."""
    from diffusers import PixArtTransformer2DModel

    accepted = set(inspect.signature(PixArtTransformer2DModel.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in (config or PIXART_SIGMA_XL_2_1024).items() if k in accepted}
    unknown = set(overrides) - accepted
    if unknown:
        raise KeyError(f"not PixArtTransformer2DModel arguments: {sorted(unknown)}")
    kwargs.update(overrides)
    if "cross_attention_dim" not in overrides and {"num_attention_heads", "attention_head_dim"} & set(overrides):
        # cross-attention works at the transformer's width (heads x head_dim), also when it is shrunk
        kwargs["cross_attention_dim"] = kwargs["num_attention_heads"] * kwargs["attention_head_dim"]
    return kwargs


@contextlib.contextmanager
def _building(device: str | torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Create parameters directly on ``device`` in ``dtype`` (no float32 copy first: a real-size
    T5-XXL in float32 would take 19 GB, and fake tensors cannot be cast in place)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            yield
    finally:
        torch.set_default_dtype(previous)


def build_transformer(config: dict | None = None, device: str | torch.device = "meta",
                      dtype: torch.dtype = torch.float32, **overrides: Any):
    """``PixArtTransformer2DModel`` of ``config`` (default: published), random weights unless on ``meta``."""
    from diffusers import PixArtTransformer2DModel

    with _building(device, dtype):
        return PixArtTransformer2DModel(**transformer_kwargs(config, **overrides))


def build_vae(config: dict | None = None, device: str | torch.device = "meta",
              dtype: torch.dtype = torch.float32, **overrides: Any):
    """``AutoencoderKL`` of ``config`` (default: SDXL's), random weights unless on ``meta``, eval mode."""
    from diffusers import AutoencoderKL

    accepted = set(inspect.signature(AutoencoderKL.__init__).parameters) - {"self"}
    kwargs = {k: v for k, v in {**(config or SDXL_VAE), **overrides}.items() if k in accepted}
    with _building(device, dtype):
        return AutoencoderKL(**kwargs).eval()


def build_text_encoder(config: dict | None = None, device: str | torch.device = "meta",
                       dtype: torch.dtype = torch.float32, **overrides: Any):
    """``T5EncoderModel`` of ``config`` (default: T5 v1.1 XXL), random weights unless on ``meta``, eval mode."""
    from transformers import T5Config, T5EncoderModel

    values = {k: v for k, v in {**(config or T5_V1_1_XXL), **overrides}.items() if not k.startswith("_")}
    with _building(device, dtype):
        return T5EncoderModel(T5Config(**values)).eval()


def count_parameters(module: torch.nn.Module) -> int:
    """Number of parameters (works on ``meta`` modules: only shapes are read)."""
    return sum(p.numel() for p in module.parameters())


def vae_encoder_parameters(vae: torch.nn.Module) -> int:
    """Parameters of ``vae.encoder`` (an encode pass also runs ``quant_conv``: 72 more, 8 x 8 + 8)."""
    return count_parameters(vae.encoder)
