"""What every pipeline stage returns: plain data that the Dagster shell turns into metadata.

Kept free of Dagster so that the core can be driven from the CLI, a notebook or a test.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class StageResult:
    """The outcome of one stage.

    ``data_version`` is a hash of the artefact's content (what downstream staleness compares);
    ``metadata`` holds numbers and short strings; ``markdown`` holds tables for the UI;
    ``config`` is the stage's fingerprint fields, recorded so a planner can say which key changed.
    """

    path: Path
    data_version: str
    metadata: dict[str, Any] = field(default_factory=dict)
    markdown: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    images: list[Path] = field(default_factory=list)


class MissingInputError(FileNotFoundError):
    """An upstream artefact is missing: materialize that stage first (the message says which)."""


class InsufficientDataError(ValueError):
    """Too few usable images to fill one optimizer step; the message says what to change."""


def markdown_table(header: tuple[str, str], rows: dict[str, Any]) -> str:
    """A two-column markdown table, e.g. a bucket histogram or reason counts."""
    lines = [f"| {header[0]} | {header[1]} |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows.items()]
    return "\n".join(lines)
