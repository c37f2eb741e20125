"""Progress reporting: Dagster Pipes messages when launched by Dagster, plain lines otherwise.

Under ``PipesSubprocessClient`` the trainer's log lines go through ``context.log`` and the result
comes back as ``report_asset_materialization`` (metadata + ``data_version`` = weights hash), so the
asset's materialization is exactly what the trainer produced. Run by hand, the same lines are printed.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO


def is_dagster_pipes_process() -> bool:
    """True when Dagster launched us with a Pipes context (``DAGSTER_PIPES_CONTEXT`` is set)."""
    from dagster_pipes import PipesEnvVarParamsLoader

    return PipesEnvVarParamsLoader().is_dagster_pipes_process()


def format_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_line(step: int, total: int, loss: float, lr: float, samples_per_s: float, eta_s: float) -> str:
    return (
        f"step {step}/{total} loss {loss:.4f} lr {lr:.3g} "
        f"{samples_per_s:.2f} samples/s ETA {format_eta(eta_s)}"
    )


def _pipes_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """Typed Pipes metadata: ``*_path``/``path`` keys as paths, ``*_md`` as markdown, rest inferred."""
    out: dict[str, Any] = {}
    for key, value in metadata.items():
        if key == "path" or key.endswith("_path"):
            out[key] = {"raw_value": str(value), "type": "path"}
        elif key.endswith("_md"):
            out[key[: -len("_md")]] = {"raw_value": str(value), "type": "md"}
        elif isinstance(value, bool):
            out[key] = {"raw_value": value, "type": "bool"}
        elif isinstance(value, int):
            out[key] = {"raw_value": value, "type": "int"}
        elif isinstance(value, float):
            out[key] = {"raw_value": value, "type": "float"}
        else:
            out[key] = value
    return out


class Reporter:
    """Sends progress lines and the final result to Dagster Pipes (``context``) or to ``stream``."""

    def __init__(self, context: Any | None = None, stream: TextIO | None = None) -> None:
        self.context = context
        self.stream = stream if stream is not None else sys.stdout

    @classmethod
    @contextmanager
    def open(cls, stream: TextIO | None = None) -> Iterator["Reporter"]:
        """A Pipes-backed reporter under Dagster (the connection is closed, and buffered messages
        flushed, on exit), a printing one otherwise."""
        # Under torchrun only rank 0 talks to Dagster: one message stream, one "closed" message.
        if is_dagster_pipes_process() and os.environ.get("RANK", "0") == "0":
            from dagster_pipes import open_dagster_pipes

            with open_dagster_pipes() as context:
                yield cls(context, stream)
        else:
            yield cls(None, stream)

    @property
    def under_pipes(self) -> bool:
        return self.context is not None

    def info(self, message: str) -> None:
        if self.context is not None:
            self.context.log.info(message)
        else:
            print(message, file=self.stream, flush=True)

    def warning(self, message: str) -> None:
        if self.context is not None:
            self.context.log.warning(message)
        else:
            print(f"warning: {message}", file=self.stream, flush=True)

    def progress(self, step: int, total: int, loss: float, lr: float, samples_per_s: float, eta_s: float) -> None:
        self.info(progress_line(step, total, loss, lr, samples_per_s, eta_s))

    def materialization(self, metadata: dict[str, Any], data_version: str) -> None:
        """The end of a run: an asset materialization under Pipes, a summary line otherwise."""
        if self.context is not None:
            self.context.report_asset_materialization(metadata=_pipes_metadata(metadata), data_version=data_version)
        else:
            summary = ", ".join(f"{k}={v}" for k, v in metadata.items() if not k.endswith("_md"))
            print(f"done: {summary}, data_version={data_version}", file=self.stream, flush=True)
