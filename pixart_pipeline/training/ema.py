"""Exponential moving average of the trained parameters (SimpleTuner's ``--use_ema``).

``shadow = d * shadow + (1 - d) * param`` after every optimizer step, with the warm-up
``d_t = min(decay, (1 + t) / (10 + t))`` that diffusers' ``EMAModel`` uses by default, so the first
steps do not drag the average towards the random start for thousands of steps.
"""

from __future__ import annotations

import torch

from pixart_pipeline.errors import InputError


def ema_decay_at(step: int, decay: float) -> float:
    """Decay for the ``step``-th update (1-based). Step 1 copies the parameters (decay 0)."""
    t = step - 1
    if t <= 0:
        return 0.0
    return min(decay, (1.0 + t) / (10.0 + t))


class EMA:
    """A float32 shadow copy of the named trainable parameters.

    Args:
        named_params: ``{name: parameter}`` of what is trained (frozen parameters never change,
            so their EMA equals themselves and is not stored).
        decay: the target decay (``ema_decay``).
    """

    def __init__(self, named_params: dict[str, torch.nn.Parameter], decay: float) -> None:
        self.decay = float(decay)
        self.num_updates = 0
        self.shadow = {name: p.detach().float().clone() for name, p in named_params.items()}

    @torch.no_grad()
    def update(self, named_params: dict[str, torch.nn.Parameter]) -> None:
        self.num_updates += 1
        d = ema_decay_at(self.num_updates, self.decay)
        for name, param in named_params.items():
            shadow = self.shadow[name]
            # shadow <- d * shadow + (1 - d) * param, in place (lerp towards the parameter)
            shadow.lerp_(param.detach().float().to(shadow.device), 1.0 - d)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        """Write the averaged weights into ``model`` (e.g. a copy used for export)."""
        params = dict(model.named_parameters())
        for name, shadow in self.shadow.items():
            params[name].copy_(shadow.to(dtype=params[name].dtype, device=params[name].device))

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def to(self, device: torch.device) -> "EMA":
        """Keep the shadow beside the parameters: updating a CPU shadow from GPU parameters would copy
        every trained tensor off the GPU each optimizer step."""
        self.shadow = {name: t.to(device) for name, t in self.shadow.items()}
        return self

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], num_updates: int) -> None:
        missing = set(self.shadow) - set(tensors)
        if missing:
            raise InputError(f"EMA state lacks {len(missing)} parameter(s), e.g. {sorted(missing)[0]!r}")
        self.shadow = {name: tensors[name].float().clone() for name in self.shadow}
        self.num_updates = int(num_updates)
