"""The memory-saving optimizers (SimpleTuner's names): ``adamw_bf16`` and ``bnb-adamw8bit``.

Bytes per trained parameter, next to ``adamw`` (float32 weights + gradients + two float32 moments = 16):

- ``adamw_bf16``: the weights themselves are bf16 (2), so are the gradients (2), the two moments
  (2 + 2) and a Kahan compensation buffer (2) = 10. Plain bf16 AdamW loses small updates (an update
  below half a bf16 ulp of the weight rounds away); Kahan summation keeps the lost low bits in the
  compensation buffer and adds them back next step, so the bf16 weights follow the float32 trajectory
  closely. Deterministic (no random rounding), so a resumed run is bit-identical. The kernel is
  torch-optimi's ``AdamW(kahan_sum=True)``; mixed_precision must be ``bf16``.
- ``bnb-adamw8bit``: float32 weights and gradients (8), the two moments block-wise quantised to
  8 bits (1 + 1, plus one float32 absmax per 256 values; Dettmers et al. 2022, arXiv:2110.02861) = 10.
  bitsandbytes >= 0.45 runs it on the CPU as well as on CUDA. Tensors under 4096 values keep
  32-bit moments (bitsandbytes' ``min_8bit_size``).

Neither library is a core dependency: ``pip install 'pixart-pipeline[lowmem]'`` installs both. A
config that names one that is missing is refused before any training with the install command.
"""

from __future__ import annotations

from typing import Iterable

import torch

from pixart_pipeline.config.models import Hyperparameters
from pixart_pipeline.errors import InputError

MEMORY_OPTIMIZERS = ("adamw_bf16", "bnb-adamw8bit")
_PACKAGE = {"adamw_bf16": ("optimi", "torch-optimi"), "bnb-adamw8bit": ("bitsandbytes", "bitsandbytes")}
# bytes per trained parameter of the optimizer state (the estimate's numbers; see the module docstring)
STATE_BYTES_PER_PARAM = {"adamw_bf16": 6, "bnb-adamw8bit": 2}
BNB_BLOCK = 256  # values per absmax in bitsandbytes' block-wise 8-bit states
BNB_MIN_8BIT_SIZE = 4096


def weight_dtype(hp: Hyperparameters) -> torch.dtype:
    """The dtype the trained transformer's weights are kept in: bf16 for ``adamw_bf16``, else float32."""
    return torch.bfloat16 if hp.optimizer == "adamw_bf16" else torch.float32


def require(optimizer: str):
    """Import the library behind ``optimizer``; a clear error naming the install command if missing."""
    module, package = _PACKAGE[optimizer]
    try:
        return __import__(module)
    except ImportError as exc:
        raise InputError(f"optimizer {optimizer!r} needs the {package} package, which is not installed "
                         f"({exc}); install it with: pip install 'pixart-pipeline[lowmem]'") from exc


def build_memory_optimizer(params: Iterable[torch.nn.Parameter], hp: Hyperparameters,
                           device: torch.device) -> torch.optim.Optimizer:
    """``adamw_bf16`` or ``bnb-adamw8bit`` over ``params`` with the run's Adam hyperparameters."""
    params = list(params)
    if hp.optimizer == "adamw_bf16":
        optimi = require("adamw_bf16")
        wrong = {p.dtype for p in params} - {torch.bfloat16}
        if wrong:
            raise InputError(f"optimizer 'adamw_bf16' trains bf16 weights, got {sorted(map(str, wrong))}")
        return optimi.AdamW(params, lr=hp.learning_rate, betas=(hp.adam_beta1, hp.adam_beta2),
                            weight_decay=hp.adam_weight_decay, eps=hp.adam_epsilon, kahan_sum=True)
    bnb = require("bnb-adamw8bit")
    if device.type not in ("cpu", "cuda"):
        raise InputError(f"optimizer 'bnb-adamw8bit' runs on the CPU and CUDA, not on {device.type!r}")
    return bnb.optim.AdamW8bit(params, lr=hp.learning_rate, betas=(hp.adam_beta1, hp.adam_beta2),
                               eps=hp.adam_epsilon, weight_decay=hp.adam_weight_decay,
                               min_8bit_size=BNB_MIN_8BIT_SIZE)


def state_bytes(optimizer: str, shapes: Iterable[int]) -> int:
    """Optimizer-state bytes of ``adamw_bf16`` / ``bnb-adamw8bit`` for parameters of ``shapes``
    (element counts): bitsandbytes keeps 32-bit moments for small tensors and, for the rest, one
    float32 absmax per block of 256 and two 256-entry float32 code books per tensor."""
    total = 0
    for n in shapes:
        if optimizer == "adamw_bf16":
            total += STATE_BYTES_PER_PARAM["adamw_bf16"] * n
        elif n < BNB_MIN_8BIT_SIZE:
            total += 8 * n
        else:
            total += 2 * n + 2 * 4 * -(-n // BNB_BLOCK) + 2 * 4 * 256  # + the two 256-entry code books
    return total
