"""AdamW + diffusers' learning-rate schedules, and their state as safetensors + JSON (no pickle).

``torch.save(optimizer.state_dict())`` would need ``torch.load`` (pickle) to read back; instead the
per-parameter tensors (``exp_avg``, ``exp_avg_sq``, ``step``) go into a safetensors file under names
``state.<param index>.<field>`` and everything else (param groups, scalars) into JSON.
"""

from __future__ import annotations

import json
from typing import Any, Iterable

import torch
from diffusers.optimization import get_scheduler


def build_optimizer(params: Iterable[torch.nn.Parameter], hp) -> torch.optim.AdamW:
    """AdamW with the ``adam_*`` hyperparameters (SimpleTuner's ``optimizer: adamw``)."""
    return torch.optim.AdamW(
        list(params),
        lr=hp.learning_rate,
        betas=(hp.adam_beta1, hp.adam_beta2),
        weight_decay=hp.adam_weight_decay,
        eps=hp.adam_epsilon,
    )


def build_lr_scheduler(optimizer: torch.optim.Optimizer, hp) -> torch.optim.lr_scheduler.LambdaLR:
    """``diffusers.optimization.get_scheduler``; stepped once per optimizer step (not per process,
    not per micro-batch), so ``lr_warmup_steps`` and ``max_train_steps`` count optimizer steps."""
    return get_scheduler(
        hp.lr_scheduler,
        optimizer=optimizer,
        num_warmup_steps=hp.lr_warmup_steps,
        num_training_steps=hp.max_train_steps,
    )


# -- JSON that keeps tuples (AdamW's ``betas``) -------------------------------------------------------
def _to_json(obj: Any) -> Any:
    if isinstance(obj, tuple):
        return {"__tuple__": [_to_json(v) for v in obj]}
    if isinstance(obj, list):
        return [_to_json(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): _to_json(v) for k, v in obj.items()}
    if isinstance(obj, torch.Tensor):
        if obj.numel() != 1:
            raise TypeError("only scalar tensors can go to JSON")
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in JSON")


def _from_json(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"__tuple__"}:
            return tuple(_from_json(v) for v in obj["__tuple__"])
        return {k: _from_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_json(v) for v in obj]
    return obj


def optimizer_state_to_flat(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors for safetensors, JSON-able rest)`` of ``optimizer.state_dict()``."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, fields in state["state"].items():
        for name, value in fields.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = _to_json(value)
    return tensors, {"param_groups": _to_json(state["param_groups"]), "scalars": scalars}


def optimizer_state_from_flat(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    """Rebuild a ``state_dict`` that ``optimizer.load_state_dict`` accepts."""
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, fields in rest.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(_from_json(fields))
    return {"state": state, "param_groups": _from_json(rest["param_groups"])}


def scheduler_state_to_json(scheduler) -> str:
    """LambdaLR state (its lambdas are closures, which ``state_dict`` stores as ``None``)."""
    return json.dumps(_to_json(scheduler.state_dict()), sort_keys=True)


def scheduler_state_from_json(text: str) -> dict:
    return _from_json(json.loads(text))
