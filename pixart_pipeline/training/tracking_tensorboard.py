"""``report_to: tensorboard`` and ``all``: TensorBoard event files in ``run_dir/tensorboard``.

TensorBoard gets what W&B gets: every step's ``train/<key>`` scalars and the in-training
validation's ``validation/<metric>`` scalars and images (one image tag per prompt x size, its
steps on TensorBoard's slider). ``all`` is W&B and TensorBoard together (SimpleTuner's ``all``
means every tracker it has; ours are these two). ``tensorboard --logdir <run_dir>/tensorboard``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

from pixart_pipeline.errors import InputError

TENSORBOARD_DIR = "tensorboard"


class TensorBoardTracker:
    """One event-file folder per run; a resumed run appends to it."""

    url: str | None = None

    def __init__(self, run_dir: Path, config: dict[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise InputError("report_to needs TensorBoard but the tensorboard package is not installed; "
                             "pip install 'pixart_pipeline[tensorboard]' or set report_to to 'none'") from None
        folder = Path(run_dir) / TENSORBOARD_DIR
        self.writer = SummaryWriter(log_dir=str(folder))
        self.url = str(folder)
        self.writer.add_text("config", "\n".join(f"    {k}: {v}" for k, v in sorted(config.items())), 0)

    def log(self, row: dict[str, Any], step: int) -> None:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"train/{key}", value, step)

    def log_validation(self, metrics: dict[str, float], images: list[tuple[Path, str]], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(f"validation/{key}", value, step)
        for path, _caption in images:
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))  # [H, W, 3] uint8
            self.writer.add_image(f"validation/{Path(path).stem}", pixels, step, dataformats="HWC")
        self.writer.flush()

    def finish(self) -> None:
        self.writer.close()


class BothTrackers:
    """``all``: every call goes to W&B and to TensorBoard; the W&B location is the run's ``tracker_url``."""

    def __init__(self, wandb: Any, tensorboard: TensorBoardTracker) -> None:
        self.trackers = (wandb, tensorboard)
        self.url = wandb.url

    def log(self, row: dict[str, Any], step: int) -> None:
        for tracker in self.trackers:
            tracker.log(row, step)

    def log_validation(self, metrics: dict[str, float], images: list[tuple[Path, str]], step: int) -> None:
        for tracker in self.trackers:
            tracker.log_validation(metrics, images, step)

    def finish(self) -> None:
        for tracker in self.trackers:
            tracker.finish()


def open_with_tensorboard(report_to: str, run_dir: Path, config: dict[str, Any],
                          open_wandb: Callable[[], Any]) -> TensorBoardTracker | BothTrackers:
    """The tracker of ``report_to`` ``tensorboard`` or ``all``."""
    board = TensorBoardTracker(run_dir, config)
    return board if report_to == "tensorboard" else BothTrackers(open_wandb(), board)
