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
(SimpleTuner ignores it). Reading and checking the value is config's job
(``config/caption_filters.py``; the filters as read now: ``config.identity.caption_filters``); this
module applies them.
"""

from __future__ import annotations

import re

import pyarrow as pa

from pixart_pipeline.config.caption_filters import as_regex, is_substitution


def filter_caption(caption: str, filters: list[str]) -> str:
    """``caption`` with every filter applied in order (rules in the module docstring)."""
    for item in filters:
        if is_substitution(item):
            _, search, replace = item.split("/")
            caption = re.sub(search, replace, caption)
        else:
            caption = caption.replace(item, "")
        pattern = as_regex(item)
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
