"""Experiment trackers (SimpleTuner's ``report_to``): ``none`` or ``wandb``. Main process only.

``metrics.jsonl`` always has every step; a tracker gets the same numbers (loss, learning rate, grad
norm, samples/s, epoch). W&B follows its own environment: ``WANDB_MODE=offline`` writes the run under
``run_dir/wandb/`` without any network (``wandb sync`` uploads it later), ``WANDB_API_KEY`` logs in.
The run's URL (online) or local folder (offline) goes into the asset metadata as ``tracker_url``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class NoTracker:
    """``report_to: none``."""

    url: str | None = None

    def log(self, row: dict[str, Any], step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker:
    """One W&B run per training run; resumed runs continue the same W&B run (id = run folder name)."""

    def __init__(self, run_dir: Path, project: str, run_name: str | None, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise ValueError("report_to is 'wandb' but the wandb package is not installed; "
                             "pip install 'pixart_pipeline[wandb]' or set report_to to 'none'") from None
        self._wandb = wandb
        run_dir = Path(run_dir)
        self.run = wandb.init(project=project, name=run_name or run_dir.name, id=run_dir.name, resume="allow",
                              dir=str(run_dir), config=config)
        if getattr(self.run, "offline", False) or self.run.settings.mode in ("offline", "dryrun"):
            self.url = str(Path(self.run.dir).parent)  # run_dir/wandb/offline-run-<time>-<id>
        else:
            self.url = self.run.url

    def log(self, row: dict[str, Any], step: int) -> None:
        self.run.log({f"train/{k}": v for k, v in row.items() if v is not None and k != "step"}, step=step)

    def finish(self) -> None:
        self.run.finish()


def open_tracker(report_to: str, run_dir: Path, project: str, run_name: str | None,
                 config: dict[str, Any], is_main: bool) -> NoTracker | WandbTracker:
    """The configured tracker on the main process, ``NoTracker`` everywhere else."""
    if report_to == "wandb" and is_main:
        return WandbTracker(run_dir, project, run_name, config)
    return NoTracker()
