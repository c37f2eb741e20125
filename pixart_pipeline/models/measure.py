"""Measure FLOPs and memory of the real architectures without a GPU and without allocating them.

Two kinds of tensors that hold no data:

- ``meta`` (FLOPs): ``torch.utils.flop_counter.FlopCounterMode`` counts every matmul and convolution.
  On ``meta``, ``scaled_dot_product_attention`` runs its math path (two batched matmuls), whose FLOPs
  equal those of the fused GPU kernels, so the counts hold for a GPU.
- fake CPU tensors (memory): ``FakeTensorMode`` runs the real CPU dispatch (autocast included, and
  CPU flash attention, which like the GPU's flash / memory-efficient kernels saves only the output
  and the log-sum-exp, never the ``[B, heads, N, N]`` matrix) with no storage behind the tensors.
  ``LiveBytes`` follows every storage an op creates until it is freed, so it reports the bytes live
  at any moment and the peak: activations saved for backward, gradients, temporaries.

Why measured and not derived: the saved set of a PixArt block (adaLN-single modulation, two
attentions, a GELU MLP, autocast casts of the weights, the residual stream in float32) is easy to get
wrong by hand, and it changes with diffusers and torch versions; measuring it follows them. Only
the training transformer is measured at a reduced depth (1 and 2 blocks) and extrapolated linearly to
all blocks (they are identical), because a fake forward costs Python time per op.
"""

from __future__ import annotations

import contextlib
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map_only
from torch.utils.flop_counter import FlopCounterMode
from torch.utils.weak import WeakIdKeyDictionary

from pixart_pipeline.models import presets

# PixArt Sigma has no micro-conditions; the stock pipeline passes these Nones.
ADDED_COND = {"resolution": None, "aspect_ratio": None}


class LiveBytes(TorchDispatchMode):
    """Bytes of the storages created by ops inside the mode that are still alive; ``peak`` is the
    most at once. Pre-existing tensors (weights) are not counted; storages are counted once."""

    def __init__(self) -> None:
        super().__init__()
        self._seen: WeakIdKeyDictionary = WeakIdKeyDictionary()
        self.live = 0
        self.peak = 0

    def _track(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        if storage in self._seen:
            return
        size = storage.nbytes()
        self._seen[storage] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, size)

    def _free(self, size: int) -> None:
        self.live -= size

    def reset_peak(self) -> None:
        self.peak = self.live

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        tree_map_only(torch.Tensor, self._track, out)
        return out


@contextlib.contextmanager
def fake_tensors() -> Iterator[None]:
    """Inside: new tensors are fake CPU tensors (shapes, dtypes and dispatch, no storage)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=False):
        yield


def _autocast(dtype: torch.dtype | None):
    """CPU autocast in ``dtype`` (bf16/fp16 mixed precision), or nothing for float32 training."""
    if dtype is None or dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast("cpu", dtype=dtype)


def transformer_inputs(batch: int, height: int, width: int, text_tokens: int, in_channels: int,
                       caption_channels: int, device: str | torch.device = "cpu",
                       dtype: torch.dtype = torch.float32) -> dict:
    """Keyword arguments of one PixArt forward at pixel size ``height`` x ``width``: latents
    ``[B, C, H/8, W/8]``, prompt embeds ``[B, L, caption_channels]``, mask ``[B, L]``, timesteps ``[B]``."""
    down = presets.VAE_DOWNSAMPLE
    return dict(
        hidden_states=torch.randn(batch, in_channels, height // down, width // down, device=device, dtype=dtype),
        encoder_hidden_states=torch.randn(batch, text_tokens, caption_channels, device=device, dtype=dtype),
        encoder_attention_mask=torch.ones(batch, text_tokens, device=device),
        timestep=torch.zeros(batch, dtype=torch.long, device=device),
        added_cond_kwargs=ADDED_COND,
        return_dict=False,
    )


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of everything ``fn`` runs (matmuls and convolutions; elementwise ops are not counted)."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def transformer_flops(config: dict | None, batch: int, height: int, width: int, text_tokens: int,
                      train: bool) -> int:
    """FLOPs of one forward (``train=False``) or forward + backward of the whole transformer, on meta."""
    model = presets.build_transformer(config, device="meta").train(train)
    kwargs = transformer_inputs(batch, height, width, text_tokens, model.config.in_channels,
                                model.config.caption_channels, device="meta")

    def step() -> None:
        with torch.set_grad_enabled(train):
            out = model(**kwargs)[0]
            if train:
                out.float().pow(2).mean().backward()

    return count_flops(step)


def vae_encode_flops(config: dict | None, batch: int, height: int, width: int) -> int:
    """FLOPs of ``vae.encode`` of ``batch`` images, on meta."""
    vae = presets.build_vae(config, device="meta")
    images = torch.randn(batch, 3, height, width, device="meta")
    with torch.no_grad():
        return count_flops(lambda: vae.encode(images))


def text_encoder_flops(config: dict | None, batch: int, tokens: int) -> int:
    """FLOPs of the T5 encoder over ``batch`` x ``tokens`` (no mask: transformers' mask helpers read
    values, which meta tensors do not have; a mask does not change the matmul FLOPs), on meta."""
    encoder = presets.build_text_encoder(config, device="meta")
    ids = torch.zeros(batch, tokens, dtype=torch.long, device="meta")
    with torch.no_grad():
        return count_flops(lambda: encoder(input_ids=ids))


@dataclass(frozen=True)
class TrainMemory:
    """Memory of one training micro-batch of the whole transformer, in bytes (weights excluded).

    activations: live when the forward ends (what the backward needs, the output and loss included).
    gradients: the parameter gradients (in the parameters' dtype).
    backward_extra: the backward's peak above ``max(activations, gradients)``: one block's working
        set (and, with gradient checkpointing, its recomputed forward).
    """

    activations: int
    gradients: int
    backward_extra: int

    @property
    def backward_peak(self) -> int:
        """Peak of a backward that starts without gradients (``zero_grad(set_to_none=True)``):
        activations are freed block by block as gradients appear, so the peak is the larger of the
        two plus the working set."""
        return max(self.activations, self.gradients) + self.backward_extra


def _train_step_memory(config: dict | None, layers: int, batch: int, height: int, width: int,
                       text_tokens: int, autocast: torch.dtype | None, checkpointing: bool,
                       weights: torch.dtype = torch.float32) -> tuple[int, int, int]:
    """(activations, backward peak, gradient bytes) of a ``layers``-block fake transformer."""
    with fake_tensors():
        model = presets.build_transformer(config, device="cpu", dtype=weights, num_layers=layers).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        gradients = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
        with LiveBytes() as live:
            kwargs = transformer_inputs(batch, height, width, text_tokens, model.config.in_channels,
                                        model.config.caption_channels)
            with _autocast(autocast):
                out = model(**kwargs)[0]
            loss = out.float().pow(2).mean()
            activations = live.live
            live.reset_peak()
            loss.backward()
            return activations, live.peak, gradients


def transformer_train_memory(config: dict | None, batch: int, height: int, width: int, text_tokens: int,
                             autocast: torch.dtype | None, checkpointing: bool,
                             weights: torch.dtype = torch.float32) -> TrainMemory:
    """Measured at 1 and 2 blocks on fake tensors; each further block adds the difference.
    ``weights``: the parameters' dtype (bf16 for optimizer ``adamw_bf16``: bf16 gradients too)."""
    config = presets.transformer_kwargs(config)
    depth = config["num_layers"]
    args = (batch, height, width, text_tokens, autocast, checkpointing, weights)
    a1, _, g1 = _train_step_memory(config, 1, *args)
    a2, peak2, g2 = _train_step_memory(config, 2, *args)
    activations = a1 + (depth - 1) * (a2 - a1)
    gradients = g1 + (depth - 1) * (g2 - g1)
    return TrainMemory(activations, gradients, max(0, peak2 - max(a2, g2)))


def inference_peak(build: Callable[[], torch.nn.Module], run: Callable[[torch.nn.Module], Any]) -> int:
    """Peak bytes of ``run(model)`` under ``no_grad`` on fake tensors (inputs created inside ``run``
    count; weights do not)."""
    with fake_tensors():
        model = build()
        with torch.no_grad(), LiveBytes() as live:
            run(model)
        return live.peak


def vae_encode_peak(config: dict | None, dtype: torch.dtype, batch: int, height: int, width: int) -> int:
    """Peak activation bytes of ``vae.encode`` of a ``[B, 3, H, W]`` batch in ``dtype``."""
    return inference_peak(lambda: presets.build_vae(config, device="cpu", dtype=dtype),
                          lambda vae: vae.encode(torch.randn(batch, 3, height, width, dtype=dtype)))


def vae_decode_peak(config: dict | None, dtype: torch.dtype, batch: int, height: int, width: int) -> int:
    """Peak activation bytes of ``vae.decode`` to ``[B, 3, H, W]`` images in ``dtype``."""
    down = presets.VAE_DOWNSAMPLE

    def run(vae):
        latents = torch.randn(batch, vae.config.latent_channels, height // down, width // down, dtype=dtype)
        vae.decode(latents)

    return inference_peak(lambda: presets.build_vae(config, device="cpu", dtype=dtype), run)


def text_encoder_peak(config: dict | None, dtype: torch.dtype, batch: int, tokens: int) -> int:
    """Peak activation bytes of the T5 encoder over ``batch`` x ``tokens`` (with a mask) in ``dtype``."""

    def run(encoder):
        ids = torch.zeros(batch, tokens, dtype=torch.long)
        encoder(input_ids=ids, attention_mask=torch.ones(batch, tokens, dtype=torch.long))

    return inference_peak(lambda: presets.build_text_encoder(config, device="cpu", dtype=dtype), run)


def transformer_inference_peak(config: dict | None, dtype: torch.dtype, batch: int, height: int, width: int,
                               text_tokens: int) -> int:
    """Peak activation bytes of one transformer forward (sampling, eval loss) in ``dtype``."""

    def run(model):
        model(**transformer_inputs(batch, height, width, text_tokens, model.config.in_channels,
                                   model.config.caption_channels, dtype=dtype))

    return inference_peak(lambda: presets.build_transformer(config, device="cpu", dtype=dtype).eval(), run)
