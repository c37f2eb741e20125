"""What every pipeline stage returns: plain data that the Dagster shell turns into metadata.

Kept free of Dagster so that the core can be driven from the CLI, a notebook or a test.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image


@dataclass
class StageResult:
    """The outcome of one stage.

    ``data_version`` is a hash of the artefact's content (what downstream staleness compares);
    ``metadata`` holds numbers and short strings; ``markdown`` holds tables for the UI; ``images``
    are shown as thumbnails. (The stage's fingerprint fields are the shell's to record: ``stages.py``.)
    """

    path: Path
    data_version: str
    metadata: dict[str, Any] = field(default_factory=dict)
    markdown: dict[str, str] = field(default_factory=dict)
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


def thumbnails_markdown(paths: list[Path], size: int = 480, limit: int = 12) -> str:
    """Inline PNG thumbnails (data URLs) so the UI shows sample images beside the numbers."""
    parts = []
    for path in paths[:limit]:
        with Image.open(path) as image:
            image.thumbnail((size, size))
            buf = io.BytesIO()
            image.convert("RGB").save(buf, format="PNG")
        data = base64.b64encode(buf.getvalue()).decode()
        parts.append(f"![{path.name}](data:image/png;base64,{data})")
    return " ".join(parts)
