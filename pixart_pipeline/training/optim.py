"""AdamW / Adafactor + diffusers' learning-rate schedules, and their state as safetensors + JSON (no pickle).

``torch.save(optimizer.state_dict())`` would need ``torch.load`` (pickle) to read back; instead the
per-parameter tensors (``exp_avg``, ``exp_avg_sq``, ``step``) go into a safetensors file under names
``state.<param index>.<field>`` and everything else (param groups, scalars) into JSON.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Iterable

import torch
from diffusers.optimization import get_scheduler

from pixart_pipeline.config.models import Hyperparameters
from pixart_pipeline.errors import InputError
from pixart_pipeline.training.optimizers import MEMORY_OPTIMIZERS, build_memory_optimizer


def build_optimizer(params: Iterable[torch.nn.Parameter], hp: Hyperparameters, device: torch.device,
                    log: Callable[[str], None] = print) -> torch.optim.Optimizer:
    """SimpleTuner's ``optimizer``: ``adamw`` (``adam_*`` hyperparameters) or ``adafactor``.

    ``adafactor`` is ``torch.optim.Adafactor`` (Shazeer & Stern 2018, arXiv:1804.04235): factored second
    moments (a row and a column vector per matrix instead of a full tensor, no first moment), so its
    state is a small fraction of AdamW's. It uses ``learning_rate`` and ``adam_weight_decay``; its
    betas/epsilon are its own defaults (``beta2_decay=-0.8``, ``eps=(None, 1e-3)``).

    ``fused_optimizer``: ``on`` uses AdamW's fused kernel and is an error where this torch build has
    none for ``device``; ``auto`` uses it where available and otherwise falls back, saying so, to the
    ``foreach`` implementation; ``off`` never fuses. Fused and unfused AdamW agree to float rounding,
    not necessarily bit for bit, so the choice is part of the run's identity.
    """
    params = list(params)
    if hp.optimizer in MEMORY_OPTIMIZERS:  # adamw_bf16 / bnb-adamw8bit (training/optimizers.py)
        return build_memory_optimizer(params, hp, device)
    if hp.optimizer == "adafactor":
        return torch.optim.Adafactor(params, lr=hp.learning_rate, weight_decay=hp.adam_weight_decay)
    kwargs = dict(lr=hp.learning_rate, betas=(hp.adam_beta1, hp.adam_beta2), weight_decay=hp.adam_weight_decay,
                  eps=hp.adam_epsilon)
    if hp.fused_optimizer != "off":
        supported, why = fused_adamw_supported(params, device)
        if supported:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        if hp.fused_optimizer == "on":
            raise InputError(f"fused_optimizer is 'on' but fused AdamW is not available here: {why}; "
                             "set fused_optimizer to 'auto' (falls back to the unfused kernel) or 'off'")
        log(f"fused AdamW is not available ({why}); using the unfused (foreach) AdamW")
    return torch.optim.AdamW(params, fused=False, **kwargs)


def fused_adamw_supported(params: list[torch.nn.Parameter], device: torch.device) -> tuple[bool, str]:
    """Whether ``AdamW(fused=True)`` works for these parameters on ``device`` (tried on a 1-element probe,
    since torch's own check depends on the device type and dtype of the build)."""
    dtypes = {p.dtype for p in params}
    try:
        probe = [torch.nn.Parameter(torch.zeros(1, dtype=d, device=device)) for d in dtypes]
        for p in probe:
            p.grad = torch.zeros_like(p)
        torch.optim.AdamW(probe, fused=True).step()
    except (RuntimeError, ValueError, NotImplementedError) as exc:
        return False, f"{device.type} with {sorted(map(str, dtypes))}: {str(exc).splitlines()[0]}"
    return True, ""


def training_steps(hp: Hyperparameters, batches_per_epoch: int, world: int) -> int:
    """Optimizer steps of the run: ``max_train_steps``, or fewer when ``num_train_epochs`` ends first.

    One optimizer step draws ``gradient_accumulation_steps * world`` batches; an epoch is
    ``batches_per_epoch`` batches, so ``num_train_epochs`` allows ``floor(epochs * batches_per_epoch /
    (gas * world))`` whole steps (SimpleTuner counts epochs the same way, in optimizer steps)."""
    if hp.num_train_epochs is None:
        return hp.max_train_steps
    per_step = hp.gradient_accumulation_steps * world
    by_epochs = hp.num_train_epochs * batches_per_epoch // per_step
    if by_epochs < 1:
        raise InputError(f"num_train_epochs {hp.num_train_epochs} is less than one optimizer step: an epoch has "
                         f"{batches_per_epoch} batch(es) and a step takes {per_step}")
    return min(hp.max_train_steps, by_epochs)


def build_lr_scheduler(optimizer: torch.optim.Optimizer, hp: Hyperparameters, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """``diffusers.optimization.get_scheduler`` (every schedule it offers); stepped once per optimizer
    step (not per process, not per micro-batch), so ``lr_warmup_steps`` and ``total_steps`` count
    optimizer steps. ``lr_num_cycles``/``lr_power``/``lr_step_rules`` go to the schedules that use them."""
    return get_scheduler(
        hp.lr_scheduler,
        optimizer=optimizer,
        step_rules=hp.lr_step_rules,
        num_warmup_steps=hp.lr_warmup_steps,
        num_training_steps=total_steps,
        num_cycles=hp.lr_num_cycles,
        power=hp.lr_power,
    )


def apply_hyperparameters(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler,
                          hp: Hyperparameters) -> None:
    """After loading a checkpoint's optimizer/scheduler state, put this run's learning rate, betas,
    weight decay and epsilon back: ``load_state_dict`` restores the checkpoint's param groups, so
    resuming another run's checkpoint would silently keep *its* learning rate. The schedule's position
    (``last_epoch``) is kept. For a run resuming its own checkpoint this changes nothing."""
    for group in optimizer.param_groups:
        group["initial_lr"] = hp.learning_rate
        group["weight_decay"] = hp.adam_weight_decay
        if "betas" in group:
            group["betas"] = (hp.adam_beta1, hp.adam_beta2)
            group["eps"] = hp.adam_epsilon
        if "beta1" in group:  # torch-optimi (adamw_bf16) keeps its betas as two keys
            group["beta1"], group["beta2"], group["eps"] = hp.adam_beta1, hp.adam_beta2, hp.adam_epsilon
    scheduler.base_lrs = [hp.learning_rate for _ in optimizer.param_groups]
    # the current rate of each group: base rate times the schedule's factor at its position
    for group, fn in zip(optimizer.param_groups, scheduler.lr_lambdas):
        group["lr"] = hp.learning_rate * fn(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


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
    """``(tensors for safetensors, JSON-able rest)`` of ``optimizer.state_dict()``.

    Per-parameter tensors are ``state.<index>.<field>``; a field that is a dict of tensors
    (bitsandbytes' quantisation state) nests as ``state.<index>.<field>.<key>``; a tensor in a param
    group (torch-optimi's step counter) is ``group.<group index>.<key>``, so it comes back a tensor."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}

    def put(prefix: str, fields: dict, into: dict) -> None:
        for name, value in fields.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{name}"] = value.detach().cpu().contiguous()
            elif isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values()):
                # cloned: bitsandbytes shares one code book between tensors, and safetensors refuses
                # tensors that share memory
                nested = {k: v.detach().cpu().clone() if isinstance(v, torch.Tensor) else v for k, v in value.items()}
                put(f"{prefix}.{name}", nested, into.setdefault(name, {}))
            else:
                into[name] = _to_json(value)

    for index, fields in state["state"].items():
        put(f"state.{index}", fields, scalars.setdefault(str(index), {}))
    groups = []
    for g, group in enumerate(state["param_groups"]):
        groups.append({k: v for k, v in group.items() if not isinstance(v, torch.Tensor)})
        tensors |= {f"group.{g}.{k}": v.detach().cpu().clone() for k, v in group.items() if isinstance(v, torch.Tensor)}
    return tensors, {"param_groups": _to_json(groups), "scalars": {k: v for k, v in scalars.items() if v}}


def optimizer_state_from_flat(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    """Rebuild a ``state_dict`` that ``optimizer.load_state_dict`` accepts."""
    state: dict[int, dict[str, Any]] = {}
    groups = _from_json(rest["param_groups"])
    for key, value in tensors.items():
        kind, index, name = key.split(".", 2)
        if kind == "group":
            groups[int(index)][name] = value
            continue
        node = state.setdefault(int(index), {})
        *path, leaf = name.split(".")  # nested fields (bitsandbytes' quantisation state)
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    for index, fields in rest.get("scalars", {}).items():
        _merge(state.setdefault(int(index), {}), _from_json(fields))
    return {"state": state, "param_groups": groups}


def _merge(into: dict, fields: dict) -> None:
    for key, value in fields.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = value


def scheduler_state_to_json(scheduler: torch.optim.lr_scheduler.LRScheduler) -> str:
    """LambdaLR state (its lambdas are closures, which ``state_dict`` stores as ``None``)."""
    return json.dumps(_to_json(scheduler.state_dict()), sort_keys=True)


def scheduler_state_from_json(text: str) -> dict:
    return _from_json(json.loads(text))
