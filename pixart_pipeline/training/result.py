"""A finished run's result: ``result.json``, and the materialization the trainer reports from it.

This is the one result path of ``trained_checkpoint`` (DESIGN.md 3.1): the trainer builds the
metadata here and reports it (through Dagster Pipes, or printed when run by hand) whether it just
trained, resumed, or found the run already finished; the asset materialises exactly that.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pixart_pipeline.fileio import atomic_write_json
from pixart_pipeline.stage_result import MissingInputError, thumbnails_markdown
from pixart_pipeline.training.metrics import read_metrics
from pixart_pipeline.training.plot import loss_curve_png
from pixart_pipeline.training.watch_report import watch_metadata

RESULT_FILE = "result.json"  # written last: a run folder holding it is finished


@dataclass(frozen=True)
class TrainResult:
    """What a run produced. ``pipeline_path``/``weights_sha256`` are ``None`` when it stopped early."""

    run_dir: str
    steps: int  # global optimizer step reached
    final_loss: float | None
    seconds: float  # training wall time over every session of the run (resumes included)
    samples_per_s: float
    weights_sha256: str | None
    pipeline_path: str | None
    checkpoint: str | None  # the last checkpoint written or resumed from
    resumed_from: str | None
    completed: bool
    total_steps: int = 0  # the run's length: max_train_steps or fewer when num_train_epochs ends first
    epochs: float = 0.0  # epochs of data drawn (fractional)
    stopped_by: str | None = None  # "max_train_steps" | "num_train_epochs" | "signal" | "stop_at_step"
    tracker_url: str | None = None
    hub_url: str | None = None

    def save(self) -> None:
        """Write ``result.json``: from here on the run is done and saved."""
        atomic_write_json(Path(self.run_dir) / RESULT_FILE, asdict(self))

    @classmethod
    def load(cls, run_dir: str | Path) -> "TrainResult":
        path = Path(run_dir) / RESULT_FILE
        if not path.exists():
            raise MissingInputError(f"{path} does not exist: the training run did not finish")
        data = json.loads(path.read_text())
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**(known | {"run_dir": str(run_dir)}))


def is_finished(run_dir: str | Path) -> bool:
    return (Path(run_dir) / RESULT_FILE).exists() and (Path(run_dir) / "pipeline").is_dir()


def loss_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) of every logged step."""
    return [(int(r["step"]), float(r["loss"])) for r in read_metrics(run_dir / "metrics.jsonl") if "loss" in r]


def run_metadata(result: TrainResult, items: str | Path) -> dict[str, Any]:
    """The materialization of a finished run: where it is, how long and how far it trained, the loss
    (its first and last tenth, a table and a plot), the tracker and Hub links. Keys ending in
    ``_path`` are paths and ``_md`` markdown (``report.Reporter`` types them for Dagster). ``items``
    is the run's items parquet (``RunSpec.items``)."""
    run_dir = Path(result.run_dir)
    curve = loss_curve(run_dir)
    metadata: dict[str, Any] = {
        "path": str(run_dir / "pipeline"),
        "run_dir": str(run_dir),
        "pipeline_dir": str(run_dir / "pipeline"),
        "steps": int(result.steps),
        "final_loss": float("nan") if result.final_loss is None else float(result.final_loss),
        "train_items": pq.read_metadata(items).num_rows,  # the items parquet the run trained on
        "seconds": float(result.seconds),  # training time over every session (resumes included)
        "samples_per_s": float(result.samples_per_s),
        "total_steps": int(result.total_steps),
        "epochs": float(result.epochs),
        "stopped_by": str(result.stopped_by),
        "weights_sha256": str(result.weights_sha256),
        "checkpoint_path": result.checkpoint or "",
        "metrics_path": str(run_dir / "metrics.jsonl"),
        "loss_curve_md": _loss_table(curve),
    }
    for key in ("tracker_url", "hub_url"):  # W&B run URL or offline folder; the Hub repo
        if getattr(result, key):
            metadata[key] = str(getattr(result, key))
    if curve:
        tenth = max(1, len(curve) // 10)
        metadata["loss_first_10pct"] = sum(v for _, v in curve[:tenth]) / tenth
        metadata["loss_last_10pct"] = sum(v for _, v in curve[-tenth:]) / tenth
        metadata["images_md"] = thumbnails_markdown([loss_curve_png(curve, run_dir / "loss.png")])
    metadata |= watch_metadata(run_dir)  # issue 14: the eval-loss curve and validation image strip
    return metadata


def _loss_table(curve: list[tuple[int, float]], rows: int = 12) -> str:
    """A compact markdown loss curve: the mean loss over ~12 equal step windows."""
    if not curve:
        return "no metrics recorded"
    size = max(1, len(curve) // rows)
    lines = ["| steps | mean loss |", "|---|---|"]
    for i in range(0, len(curve), size):
        window = curve[i : i + size]
        lines.append(f"| {window[0][0]}-{window[-1][0]} | {sum(v for _, v in window) / len(window):.4f} |")
    return "\n".join(lines)
