"""Captions and sizes from a dataset's ``parquet`` block (SimpleTuner's parquet metadata backend).

How an image finds its row (SimpleTuner's ``prepare_instance_prompt_from_parquet``): the image's
path relative to ``instance_data_dir``, with its extension removed unless
``identifier_includes_extension`` is true, is looked up in ``filename_column`` (values are compared
as strings, so an integer ``id`` column works). If no row matches the relative path, the bare file
name (same extension rule) is tried, so a flat table still matches images kept in sub-folders.
Both sides are compared in Unicode NFC: macOS stores file names decomposed (NFD: ``e`` + a
combining accent) while most tools write tables composed (NFC), and the two must match.

Caption value: a string is stripped; bytes are decoded as UTF-8; a list gives one caption per
entry (SimpleTuner's ``prepare_instance_prompt_from_parquet`` keeps every entry, stripped; its
sampler picks one per draw), in order, with null and blank entries dropped (SimpleTuner keeps an
entry that is empty after stripping and may train on it) and nested lists flattened. A value with
no usable caption falls back to ``fallback_caption_column`` (SimpleTuner's rule), then is
``empty_caption``. An image with no row is ``not_in_parquet``.
"""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from pixart_pipeline.config.dataset_models import ParquetConfig
from pixart_pipeline.stage_result import MissingInputError

# Caption status (and, under metadata_backend "parquet", metadata status) of an image without a row.
NOT_IN_PARQUET = "not_in_parquet"
EMPTY_CAPTION = "empty_caption"  # no usable caption (also captions.py's status for an empty sidecar)


class ParquetSourceError(MissingInputError):
    """The parquet file is missing, unreadable, or lacks a configured column (names file and column)."""


def _read(path: Path, columns: list[str]) -> pa.Table:
    if not path.is_file():
        raise ParquetSourceError(f"parquet file {path} does not exist (the dataset's parquet.path)")
    try:
        if path.suffix.lower() == ".jsonl":
            table = pa_json.read_json(path)
        else:
            table = pq.read_table(path, columns=[c for c in columns if c in pq.read_schema(path).names])
    except pa.ArrowException as e:
        raise ParquetSourceError(f"{path}: cannot read it as {path.suffix[1:] or 'parquet'}: {e}") from None
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ParquetSourceError(f"{path}: no column(s) {missing}; columns are {table.column_names}")
    return table.select(columns)


def identifier(path: str, with_extension: bool) -> str:
    """The key an image is looked up by: its relative path, extension stripped unless told not to."""
    return path if with_extension else os.path.splitext(path)[0]


def _nfc(text: str) -> str:
    # ASCII is already NFC; skipping it keeps the 100k-row case cheap.
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def _rows_for(paths: list[str], keys: list, with_extension: bool) -> dict[str, int]:
    """``{image path: row index}`` by relative path, else by bare file name (first row wins);
    identifiers and image paths compared in NFC (the returned keys are the paths as given)."""
    index: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key is not None:
            index.setdefault(_nfc(str(key)), i)
    out = {}
    for path in paths:
        name = _nfc(path)
        row = index.get(identifier(name, with_extension))
        if row is None:
            row = index.get(identifier(name.rsplit("/", 1)[-1], with_extension))
        if row is not None:
            out[path] = row
    return out


def _texts(value) -> list[str]:
    """Every usable caption of one cell: stripped, non-empty, in order (lists flattened)."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _texts(v)]
    if value is None:
        return []
    text = str(value).strip()
    return [text] if text else []


def parquet_captions(path: Path, pcfg: ParquetConfig, paths: list[str]) -> dict[str, tuple[list[str], str]]:
    """``{image path: (captions, caption_status)}`` for every one of ``paths``; ``captions`` holds
    every usable caption of the image (the first is its ``caption``), empty unless the status is ok."""
    columns = [pcfg.filename_column, pcfg.caption_column]
    if pcfg.fallback_caption_column:
        columns.append(pcfg.fallback_caption_column)
    table = _read(path, columns)
    rows = _rows_for(paths, table.column(pcfg.filename_column).to_pylist(), pcfg.identifier_includes_extension)
    captions = table.column(pcfg.caption_column).to_pylist()
    fallback = table.column(pcfg.fallback_caption_column).to_pylist() if pcfg.fallback_caption_column else None
    out = {}
    for p in paths:
        row = rows.get(p)
        if row is None:
            out[p] = ([], NOT_IN_PARQUET)
            continue
        texts = _texts(captions[row]) or (_texts(fallback[row]) if fallback else [])
        out[p] = (texts, "ok") if texts else ([], EMPTY_CAPTION)
    return out


def parquet_sizes(path: Path, pcfg: ParquetConfig, paths: list[str]) -> dict[str, tuple]:
    """``{image path: (width, height)}`` for the images that have a row (values as stored; the
    caller rejects non-positive or non-integer sizes). Sizes are taken as displayed sizes."""
    table = _read(path, [pcfg.filename_column, pcfg.width_column, pcfg.height_column])
    rows = _rows_for(paths, table.column(pcfg.filename_column).to_pylist(), pcfg.identifier_includes_extension)
    widths = table.column(pcfg.width_column).to_pylist()
    heights = table.column(pcfg.height_column).to_pylist()

    def as_int(v: object) -> object:  # 640.0 -> 640; anything else as stored (checked by the caller)
        return int(v) if isinstance(v, float) and v.is_integer() else v

    return {p: (as_int(widths[r]), as_int(heights[r])) for p, r in rows.items()}
