"""Experiment trackers (SimpleTuner's ``report_to``): ``none``, ``wandb``, ``tensorboard`` or ``all``. Main process only.

``metrics.jsonl`` always has every step; a tracker gets the same numbers (loss, learning rate, grad
norm, samples/s, epoch). W&B follows its own environment: ``WANDB_MODE=offline`` writes the run under
``run_dir/wandb/`` without any network (``wandb sync`` uploads it later), ``WANDB_API_KEY`` logs in.
The run's URL (online) or local folder (offline) goes into the asset metadata as ``tracker_url``.

The trainer records its W&B run in ``run_dir/tracker.json`` (project, run id, name). Evaluation is a
separate stage (a separate process, after training), so ``log_evaluation`` resumes that run by its id
and adds the validation images, CLIP score and eval losses to it, as SimpleTuner's validation does
within its one training run. Offline, the resumed run is another folder under ``run_dir/wandb/`` with
the same run id; ``wandb sync`` uploads both into the one run.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pixart_pipeline.errors import InputError
from pixart_pipeline.fileio import atomic_write_json

TRACKER_FILE = "tracker.json"


def _import_wandb():
    try:
        import wandb
    except ImportError:
        raise InputError("report_to is 'wandb' but the wandb package is not installed; "
                         "pip install 'pixart_pipeline[wandb]' or set report_to to 'none'") from None
    return wandb


def _location(run) -> str:
    """The run's URL online; its local folder offline (``run_dir/wandb/offline-run-<time>-<id>``)."""
    if getattr(run, "offline", False) or run.settings.mode in ("offline", "dryrun"):
        return str(Path(run.dir).parent)
    return run.url


class NoTracker:
    """``report_to: none``."""

    url: str | None = None

    def log(self, row: dict[str, Any], step: int) -> None:
        pass

    def log_validation(self, metrics: dict[str, float], images: list[tuple[Path, str]], step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class WandbTracker:
    """One W&B run per training run; resumed runs continue the same W&B run (id = run folder name)."""

    def __init__(self, run_dir: Path, project: str, run_name: str | None, config: dict[str, Any]) -> None:
        wandb = _import_wandb()
        run_dir = Path(run_dir)
        name = run_name or run_dir.name
        self.run = wandb.init(project=project, name=name, id=run_dir.name, resume="allow",
                              dir=str(run_dir), config=config)
        self.url = _location(self.run)
        # evaluation (another stage, later) resumes this run by its id to add the validation results
        atomic_write_json(run_dir / TRACKER_FILE, {"report_to": "wandb", "project": project,
                                                   "run_id": run_dir.name, "run_name": name, "url": self.url})

    def log(self, row: dict[str, Any], step: int) -> None:
        self.run.log({f"train/{k}": v for k, v in row.items() if v is not None and k != "step"}, step=step)

    def log_validation(self, metrics: dict[str, float], images: list[tuple[Path, str]], step: int) -> None:
        """In-training validation (training/watch.py): ``validation/<metric>`` and the images at ``step``."""
        wandb = _import_wandb()
        row: dict[str, Any] = {f"validation/{k}": v for k, v in metrics.items()}
        if images:
            row["validation/images"] = [wandb.Image(str(p), caption=c) for p, c in images]
        self.run.log(row, step=step)

    def finish(self) -> None:
        self.run.finish()
        _flush(_import_wandb())


def _flush(wandb) -> None:
    """Wait until W&B's service has written the run's files. ``run.finish()`` can return while the
    offline ``run-<id>.wandb`` log is still empty on a busy machine (seen in CI), and the ``atexit``
    hook that would wait is unreliable in multiprocessing workers such as Dagster's step processes."""
    wandb.teardown()


def open_tracker(report_to: str, run_dir: Path, project: str, run_name: str | None,
                 config: dict[str, Any], is_main: bool) -> NoTracker | WandbTracker:
    """The configured tracker on the main process, ``NoTracker`` everywhere else. ``tensorboard``
    and ``all`` (W&B and TensorBoard): see ``tracking_tensorboard.py``."""
    if report_to in ("tensorboard", "all") and is_main:
        from pixart_pipeline.training.tracking_tensorboard import open_with_tensorboard

        return open_with_tensorboard(report_to, run_dir, config,
                                     lambda: WandbTracker(run_dir, project, run_name, config))
    if report_to == "wandb" and is_main:
        return WandbTracker(run_dir, project, run_name, config)
    return NoTracker()


def log_evaluation(run_dir: Path, metrics: dict[str, float], images: list[tuple[Path, str]],
                   train_step: int) -> str | None:
    """Add an evaluation to the training run's W&B run (resumed by the id in ``run_dir/tracker.json``).

    Logs ``eval/<metric>`` for every finite metric, ``eval/validation_images`` (one ``wandb.Image``
    per ``(png path, caption)``) and ``eval/train_step`` (the step of the evaluated weights; the eval
    keys are plotted against it, since a resumed run's own step counter restarts when offline).
    Returns the run's URL or offline folder; ``None`` when the training run did not use W&B.
    """
    path = Path(run_dir) / TRACKER_FILE
    if not path.is_file():
        return None
    info = json.loads(path.read_text())
    if info.get("report_to") != "wandb":
        return None
    wandb = _import_wandb()
    run = wandb.init(project=info["project"], id=info["run_id"], name=info.get("run_name"), resume="allow",
                     dir=str(run_dir))
    try:
        run.define_metric("eval/train_step")
        run.define_metric("eval/*", step_metric="eval/train_step")
        row: dict[str, Any] = {f"eval/{k}": float(v) for k, v in metrics.items() if math.isfinite(float(v))}
        row["eval/train_step"] = int(train_step)
        if images:
            row["eval/validation_images"] = [wandb.Image(str(png), caption=caption) for png, caption in images]
        run.log(row)
        return _location(run)
    finally:
        run.finish()
        _flush(wandb)
