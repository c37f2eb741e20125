"""``attention_mechanism``: the attention kernel used when sampling validation images.

``diffusers`` (the default) leaves the transformer's own processors (PyTorch SDPA). ``sageattention``
installs ``KernelAttnProcessor`` with SageAttention's quantized kernel (``sageattention.sageattn``) on
every attention layer of the PixArt transformer, as SimpleTuner does for validation. It never trains:
the trainer does not read this key.

SageAttention takes no attention mask. PixArt's self-attention has none (every latent token attends
to every other), and that is where the time goes: ``(h/2 * w/2)^2`` scores per head. Its
cross-attention is masked (the T5 padding), so masked calls run PyTorch's SDPA. SimpleTuner replaces
``F.scaled_dot_product_attention`` for the whole process and drops the mask there; we keep the mask
and touch nothing outside the one transformer (README, "SageAttention").

``require_attention_mechanism`` checks the package and CUDA up front, so a run that cannot use the
kernel fails before it loads or samples anything.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

# kernel(query, key, value) -> output, all [B, heads, tokens, head_dim]; no mask, not causal
Kernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

ATTENTION_MECHANISMS = ("diffusers", "sageattention")


class AttentionUnavailableError(RuntimeError):
    """The attention_mechanism asked for cannot run here (package or device missing)."""


def sdpa_kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """PyTorch's unmasked SDPA: the reference kernel (and what the tests run the processor with)."""
    return F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)


class KernelAttnProcessor:
    """diffusers' scaled-dot-product attention for one ``Attention`` layer, with ``kernel`` in place of
    SDPA for unmasked calls. Same projections, head split and output projection as diffusers'
    ``AttnProcessor2_0``; PixArt's layers have no spatial/group norm and take ``[B, N, C]`` tokens."""

    def __init__(self, kernel: Kernel, name: str = "kernel"):
        self.kernel, self.name = kernel, name
        self.kernel_calls = 0  # unmasked calls that ran ``kernel`` (observability, and the tests)

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args, **kwargs):
        if attn.spatial_norm is not None or attn.group_norm is not None or hidden_states.ndim != 3:
            raise ValueError(f"{self.name} attention supports token-sequence layers without spatial or group "
                             "norm (PixArt's); this layer has them")
        residual = hidden_states
        batch, _, _ = hidden_states.shape  # [B, N, C]
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states  # [B, L, C']
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        if attention_mask is not None:  # [B, 1, L] additive bias -> [B, heads, 1, L]
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])

        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)
        head_dim = key.shape[-1] // attn.heads
        query = query.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # [B, heads, N, d]
        key = key.view(batch, -1, attn.heads, head_dim).transpose(1, 2)  # [B, heads, L, d]
        value = value.view(batch, -1, attn.heads, head_dim).transpose(1, 2)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        if attention_mask is None:
            out = self.kernel(query, key, value)
            self.kernel_calls += 1
        else:
            out = F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0,
                                                 is_causal=False)
        out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)  # [B, N, C]
        out = attn.to_out[1](attn.to_out[0](out))  # projection, dropout
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def install_kernel(transformer: torch.nn.Module, kernel: Kernel, name: str) -> KernelAttnProcessor:
    """Put one ``KernelAttnProcessor`` on every attention layer of ``transformer``; returns it."""
    processor = KernelAttnProcessor(kernel, name)
    transformer.set_attn_processor(processor)
    return processor


def require_attention_mechanism(mechanism: str, device: torch.device) -> None:
    """Raise ``AttentionUnavailableError`` unless ``mechanism`` can run on ``device``: SageAttention
    needs its package (``pip install sageattention``) and a CUDA device."""
    if mechanism not in ATTENTION_MECHANISMS:
        raise AttentionUnavailableError(f"attention_mechanism {mechanism!r}: use one of {ATTENTION_MECHANISMS}")
    if mechanism == "diffusers":
        return
    try:
        import sageattention  # noqa: F401
    except ImportError as exc:
        raise AttentionUnavailableError(
            "attention_mechanism 'sageattention' needs the sageattention package (pip install 'pixart_pipeline[sageattention]', "
            f"on a machine with CUDA); it could not be imported ({exc}). Set attention_mechanism to 'diffusers' "
            "to sample with PyTorch's attention.") from None
    if device.type != "cuda" or not torch.cuda.is_available():
        raise AttentionUnavailableError(
            f"attention_mechanism 'sageattention' runs only on CUDA; this evaluation runs on {device.type}. "
            "Set attention_mechanism to 'diffusers' or run on a CUDA GPU.")


def sage_kernel(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """SageAttention's ``sageattn`` (``HND`` layout = ``[B, heads, tokens, d]``). It takes fp16/bf16
    only: fp32 inputs run in bf16 and come back in fp32."""
    from sageattention import sageattn

    dtype = query.dtype
    low = dtype if dtype in (torch.float16, torch.bfloat16) else torch.bfloat16
    out = sageattn(query.to(low), key.to(low), value.to(low), tensor_layout="HND", is_causal=False)
    return out.to(dtype)


def apply_attention_mechanism(transformer: torch.nn.Module, mechanism: str,
                              device: torch.device) -> KernelAttnProcessor | None:
    """Install ``mechanism`` on ``transformer`` (after ``require_attention_mechanism``); ``None`` for
    ``diffusers``, which keeps the model's own processors."""
    require_attention_mechanism(mechanism, device)
    if mechanism == "diffusers":
        return None
    return install_kernel(transformer, sage_kernel, "sageattention")
