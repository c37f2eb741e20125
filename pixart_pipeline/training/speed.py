"""The trainer's speed switches (SimpleTuner's keys): TF32, SDPA attention, regional ``torch.compile``.

- ``disable_tf32`` (default false): on CUDA, float32 matmuls and convolutions run on TF32 tensor
  cores (10-bit mantissa inputs, float32 accumulation). Under bf16/fp16 autocast most matmuls are
  bf16/fp16 anyway; TF32 touches the float32 rest. Nothing on the CPU.
- Attention is diffusers' ``AttnProcessor2_0``: ``torch.nn.functional.scaled_dot_product_attention``,
  which picks flash / memory-efficient kernels on CUDA (SimpleTuner's ``attention_mechanism:
  diffusers``). ``check_sdpa`` refuses a transformer whose attention is anything else.
- ``dynamo_backend`` (default ``no``) with ``dynamo_mode`` / ``dynamo_fullgraph`` / ``dynamo_dynamic``:
  ``torch.compile``; with ``dynamo_use_regional_compilation`` (our default) each of the 28 identical
  transformer blocks is compiled in place (``nn.Module.compile``: the same code object, so one
  compilation serves every block, and ``state_dict`` keys stay unchanged for checkpoints), else the
  whole transformer. Compiled kernels fuse and reorder float ops: the loss agrees with eager to float
  tolerance, not bit for bit, which is why the keys are in the checkpoint fingerprint when set.
"""

from __future__ import annotations

from typing import Callable

import torch

from pixart_pipeline.config.models import Hyperparameters
from pixart_pipeline.errors import InputError


def apply_tf32(hp: Hyperparameters, device: torch.device) -> bool:
    """Set TF32 for float32 matmuls and cuDNN convolutions on CUDA; returns whether TF32 is on.
    A process-wide setting (torch has no per-module one); the CPU is left alone."""
    if device.type != "cuda":
        return False
    on = not hp.disable_tf32
    # The legacy flags, not torch >= 2.9's ``fp32_precision``: reading a legacy flag after the new API
    # set it raises ("mix of the legacy and new APIs"), and accelerate and others use the legacy one.
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    return on


def check_sdpa(transformer: torch.nn.Module) -> None:
    """Every attention layer uses PyTorch's scaled-dot-product attention (diffusers' default)."""
    from diffusers.models.attention_processor import AttnProcessor2_0

    others = {type(p).__name__ for p in transformer.attn_processors.values() if not isinstance(p, AttnProcessor2_0)}
    if others:
        raise InputError(f"the transformer's attention uses {sorted(others)}, not SDPA (AttnProcessor2_0)")


def compile_kwargs(hp: Hyperparameters) -> dict:
    """``torch.compile`` keyword arguments of the ``dynamo_*`` keys (unset ones left to torch)."""
    kwargs: dict = {"backend": hp.dynamo_backend, "fullgraph": hp.dynamo_fullgraph}
    if hp.dynamo_mode is not None:
        kwargs["mode"] = hp.dynamo_mode
    if hp.dynamo_dynamic is not None:
        kwargs["dynamic"] = hp.dynamo_dynamic
    return kwargs


def compile_transformer(transformer: torch.nn.Module, hp: Hyperparameters,
                        log: Callable[[str], None] = print) -> int:
    """Compile the transformer in place as ``dynamo_*`` asks; returns how many modules were compiled
    (0 with ``dynamo_backend: no``). Compilation itself happens lazily at the first forward."""
    if hp.dynamo_backend == "no":
        return 0
    kwargs = compile_kwargs(hp)
    if hp.dynamo_use_regional_compilation:
        blocks = list(transformer.transformer_blocks)  # [num_layers] identical BasicTransformerBlocks
        for block in blocks:
            block.compile(**kwargs)
        log(f"compiled {len(blocks)} transformer blocks in place (regional torch.compile, {kwargs})")
        return len(blocks)
    transformer.compile(**kwargs)
    log(f"compiled the whole transformer (torch.compile, {kwargs})")
    return 1


def speed_up(transformer: torch.nn.Module, hp: Hyperparameters, device: torch.device,
             log: Callable[[str], None] = print) -> None:
    """Everything above, in the trainer's order: TF32, the SDPA check, then compilation."""
    apply_tf32(hp, device)
    check_sdpa(transformer)
    compile_transformer(transformer, hp, log)
