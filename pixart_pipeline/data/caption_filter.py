"""SimpleTuner's ``caption_filter_list``: strings and regular expressions removed from every caption.

Set on the ``text_embeds`` entry (SimpleTuner: "for text embed datasets only"), it applies to every
caption of every dataset. The value is a list of filters, or the path of a ``.json`` file holding
that list, or of a ``.txt`` file with one filter per line (relative paths resolve beside
``multidatabackend.json``; SimpleTuner resolves them against its working folder). Each filter is
applied to a caption in turn, as ``PromptHandler.filter_captions`` in SimpleTuner's
``helpers/prompts.py`` does:

1. ``s/search/replace`` (exactly two ``/``): every match of the regular expression ``search`` is
   replaced by ``replace``; otherwise every occurrence of the filter as plain text is removed;
2. then, when the filter is a valid regular expression, every match of it is removed.

Nothing is stripped afterwards (a filter ``"arafed "`` with its trailing space leaves no double
space). Ours differs in three ways, each a clear result instead of a silent one: a caption left empty
or blank becomes the reason code ``empty_caption`` (SimpleTuner would train on an empty prompt); a
``s/`` filter whose ``search`` is not a valid regular expression is a config error (SimpleTuner
raises mid-run); a value that is neither a list nor a ``.json``/``.txt`` path is a config error
(SimpleTuner ignores it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa

from pixart_pipeline.config.load import PipelineConfig


def load_filters(value: list | str | None, base: Path) -> list[str]:
    """The filter strings of a ``caption_filter_list`` value; ValueError naming the file or entry."""
    if value is None or value == "" or value == []:
        return []
    if isinstance(value, str):
        path = Path(value).expanduser()
        path = path if path.is_absolute() else base / path
        if path.suffix not in (".json", ".txt"):
            raise ValueError(f"caption_filter_list {value!r} must be a list, or the path of a .json or .txt file")
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ValueError(f"caption_filter_list: cannot read {path}: {e.strerror or e}") from None
        if path.suffix == ".txt":
            # One filter per line, otherwise as written: SimpleTuner strips only the "\n" (a CRLF
            # file's "\r" stays part of its filters); we drop both.
            value = text.splitlines()
        else:
            try:
                value = json.loads(text)
            except json.JSONDecodeError as e:
                raise ValueError(f"caption_filter_list: {path} is not valid JSON: {e}") from None
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"caption_filter_list must be a list of strings, got {value!r:.200}")
    for item in value:
        if _is_substitution(item):
            try:
                re.compile(item.split("/")[1])
            except re.error as e:
                raise ValueError(f"caption_filter_list: {item!r}: search pattern is not a regular expression: {e}") from None
    return [item for item in value if item]  # an empty filter changes nothing


def caption_filters(cfg: PipelineConfig) -> list[str]:
    """The ``text_embeds`` entry's filters, read now (a filter file's edits count at once)."""
    return load_filters(cfg.text_embeds.caption_filter_list, cfg.backend_path.parent)


def not_regular_expressions(filters: list[str]) -> list[str]:
    """The filters that are not valid regular expressions (only their plain text is removed)."""
    return [item for item in filters if not _is_substitution(item) and _regex(item) is None]


def _is_substitution(item: str) -> bool:
    return item.startswith("s/") and item.count("/") == 2


def _regex(item: str) -> re.Pattern | None:
    try:
        return re.compile(item)
    except re.error:
        return None  # SimpleTuner logs it and keeps the plain-text removal


def filter_caption(caption: str, filters: list[str]) -> str:
    """``caption`` with every filter applied in order (rules in the module docstring)."""
    for item in filters:
        if _is_substitution(item):
            _, search, replace = item.split("/")
            caption = re.sub(search, replace, caption)
        else:
            caption = caption.replace(item, "")
        pattern = _regex(item)
        if pattern is not None:
            caption = pattern.sub("", caption)
    return caption


def apply_filters(table: pa.Table, filters: list[str], empty_status: str) -> pa.Table:
    """A captions table with ``filters`` applied to ``caption`` and to each entry of ``captions``.

    A caption left blank is dropped from its list; an image left with none gets ``empty_status``
    and a null caption; ``captions`` stays a list only while it holds two or more."""
    if not filters or table.num_rows == 0:
        return table
    rows = table.to_pylist()
    for row in rows:
        if row["caption_status"] != "ok":
            continue
        entries = row.get("captions") or [row["caption"]]
        kept = [c for c in (filter_caption(c, filters) for c in entries) if c.strip()]
        row["caption"] = kept[0] if kept else None
        row["caption_status"] = "ok" if kept else empty_status
        if "captions" in row:
            row["captions"] = kept if len(kept) > 1 else None
    return pa.Table.from_pylist(rows, schema=table.schema)
