"""Devices and dtypes by name: the one table of dtype names and the one "auto" device rule."""

from __future__ import annotations

import os

import torch

# The dtype names configs and specs use (text_encoder_dtype, vae_dtype, eval dtype) -> torch dtypes.
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``"auto"`` -> cuda if available, else mps, else cpu; any other name is used as given."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def process_device(name: str) -> torch.device:
    """The device of this process: under torchrun with several GPUs, this rank's own GPU."""
    resolved = resolve_device(name)
    local_rank = os.environ.get("LOCAL_RANK")
    if resolved.type == "cuda" and resolved.index is None and local_rank is not None and torch.cuda.device_count() > 1:
        return torch.device("cuda", int(local_rank))
    return resolved
