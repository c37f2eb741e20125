"""``run_dir/metrics.jsonl``: one JSON object per optimizer step.

Fields: ``step``, ``loss`` (mean over the step's micro-batches and processes), ``lr`` (the rate the
step used), ``grad_norm`` (before clipping), ``samples_per_s``, ``epoch``, ``seconds`` (since start).

The file is append-only: each line is written with a single ``write`` and flushed, so a killed run
leaves whole lines (a torn last line is dropped on read). On resume the rows after the checkpoint's
step are cut away (that rewrite is atomic), so the log always describes one consistent run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pixart_pipeline.fileio import atomic_write_text


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """All complete rows (a torn last line from a killed run is ignored)."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


class MetricsLog:
    """Append-only JSONL writer."""

    def __init__(self, path: Path, resume_step: int | None) -> None:
        """``resume_step=None`` starts a fresh log; otherwise rows with ``step > resume_step`` go."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = [] if resume_step is None else [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
        atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))

    def append(self, row: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row, sort_keys=True) + "\n")
            fh.flush()
