"""Reading and checking SimpleTuner's ``caption_filter_list`` (the rules that apply the filters to
captions, and why, are in ``data/caption_filter.py``).

The value, set on the ``text_embeds`` entry, is a list of filters, or the path of a ``.json`` file
holding that list, or of a ``.txt`` file with one filter per line (relative paths resolve beside
``multidatabackend.json``). A ``s/search/replace`` filter (exactly two ``/``) whose ``search`` is not
a regular expression, or a value that is neither a list nor a ``.json``/``.txt`` path, is a config
error here (SimpleTuner raises mid-run, or ignores it).
"""

from __future__ import annotations

import json
import re
from pathlib import Path


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
        if is_substitution(item):
            try:
                re.compile(item.split("/")[1])
            except re.error as e:
                raise ValueError(f"caption_filter_list: {item!r}: search pattern is not a regular expression: {e}") from None
    return [item for item in value if item]  # an empty filter changes nothing


def not_regular_expressions(filters: list[str]) -> list[str]:
    """The filters that are not valid regular expressions (only their plain text is removed)."""
    return [item for item in filters if not is_substitution(item) and as_regex(item) is None]


def is_substitution(item: str) -> bool:
    """Whether ``item`` is a ``s/search/replace`` filter (starts with ``s/``, exactly two ``/``)."""
    return item.startswith("s/") and item.count("/") == 2


def as_regex(item: str) -> re.Pattern | None:
    """``item`` compiled as a regular expression, or None when it is not one."""
    try:
        return re.compile(item)
    except re.error:
        return None  # SimpleTuner logs it and keeps the plain-text removal
