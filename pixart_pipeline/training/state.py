"""The state of one training run, in two objects: what is built once (``Run``) and what moves every
step (``Progress``). The loop, the checkpoint writer and the export all take these instead of a
dozen loose arguments."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator

from pixart_pipeline.config.models import Hyperparameters
from pixart_pipeline.training.batches import BatchBuilder, Items
from pixart_pipeline.training.ema import EMA
from pixart_pipeline.training.metrics import MetricsLog
from pixart_pipeline.training.report import Reporter
from pixart_pipeline.training.sampler import BucketBatchSampler
from pixart_pipeline.training.spec import RunSpec


@dataclass
class Run:
    """Everything that lives for the whole run: the spec, the data, the model and its optimiser."""

    spec: RunSpec
    accelerator: Accelerator
    reporter: Reporter
    items: Items
    builder: BatchBuilder
    sampler: BucketBatchSampler
    transformer: torch.nn.Module  # wrapped by accelerate (DDP under torchrun)
    trainable: dict[str, torch.nn.Parameter]  # every parameter with requires_grad (bias terms with BitFit)
    optimizer: Any  # accelerate's AcceleratedOptimizer around AdamW / Adafactor
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler
    ema: EMA | None
    noise_scheduler: Any  # diffusers DDPMScheduler: add_noise, alphas_cumprod
    scaling_factor: float  # the VAE's latent scale (0.13025 for the SDXL VAE)
    total_steps: int
    metrics: MetricsLog | None  # main process only
    tracker: Any  # NoTracker | WandbTracker
    watcher: Any = None  # training/watch.py Watcher (main process, when validation is on) or None

    @property
    def hp(self) -> Hyperparameters:
        return self.spec.hyperparameters

    @property
    def run_dir(self) -> Path:
        return Path(self.spec.run_dir)


@dataclass
class Progress:
    """What the loop moves: counters, the last loss, the last checkpoint, the training time."""

    global_step: int = 0  # optimizer steps taken (over every session of the run)
    micro_step: int = 0  # this process's micro-batches so far: global_step * gradient_accumulation_steps
    last_loss: float | None = None
    samples_per_s: float = 0.0
    last_checkpoint: str | None = None
    resumed_from: str | None = None
    seconds_before: float = 0.0  # training time of the earlier sessions (from the checkpoint)
    session_start: float = field(default_factory=time.perf_counter)
    # record_items: [step, epoch, *item indices] and the caption key of each item, per micro-batch
    seen: list[list[int]] = field(default_factory=list)
    captions_seen: list[list[str]] = field(default_factory=list)

    def train_seconds(self) -> float:
        return self.seconds_before + time.perf_counter() - self.session_start
