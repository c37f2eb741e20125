"""Captions for every image of a manifest, by SimpleTuner's caption strategies.

Rules (learned from SimpleTuner's ``helpers/prompts.py`` ``PromptHandler``):

- ``filename``: the file's stem with every ``_`` replaced by a space
  (``a_red_circle.png`` -> ``"a red circle"``). Nothing else is stripped or changed.
- ``textfile``: the sibling file with the same stem and a ``.txt`` extension
  (``os.path.splitext(path)[0] + ".txt"``). Every line is a caption (SimpleTuner's
  ``prepare_instance_prompt_from_textfile`` splits the file on newlines; its sampler picks one
  caption per draw). Each line is stripped and blank or whitespace-only lines are dropped;
  duplicates stay (they weigh that caption, as in SimpleTuner's random choice). The file must be UTF-8 and at most ``MAX_CAPTION_BYTES``
  (64 KiB): a caption is a prompt of a few hundred bytes, and reading an arbitrarily large file in
  full could exhaust memory. A larger file gets ``caption_too_large``. When no sidecar has the
  exact name, one whose name is equal in Unicode NFC is used (an image named on macOS, which
  stores names as NFD, beside a ``.txt`` written by a script in NFC; macOS itself would open it).
- ``instanceprompt``: every image gets ``instance_prompt``.
- ``parquet``: the ``parquet`` block's caption column (see ``parquet_source.py`` for the lookup rules);
  a list value gives one caption per non-empty entry.

An image may so have several captions. ``caption`` is always the first usable one (the metadata
table, the data version of single-caption datasets and evaluation use it); the ``captions`` column
(textfile and parquet tables only: the other strategies give one caption by construction) holds
all of them when there are two or more, else null. The text cache encodes every one and the
trainer picks one per draw (``training.batches.caption_choice``).

Then SimpleTuner's modifiers: ``only_instance_prompt`` (every caption is ``instance_prompt``) and
``prepend_instance_prompt`` (``instance_prompt + " " + caption``), and last the text_embeds entry's
``caption_filter_list`` (``caption_filter.py``).

A missing or empty caption is a reason code in ``caption_status``, never an exception.
``filename``/``instanceprompt`` are computed with pyarrow string kernels (no loop per image);
``textfile`` re-reads only sidecars whose sha256 changed since the previous table.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections.abc import Iterator, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pixart_pipeline.config.dataset_models import ImageDataset
from pixart_pipeline.data.caption_filter import apply_filters
from pixart_pipeline.data.digest import in_order, table_digest
from pixart_pipeline.data.manifest import IMAGE_EXTENSIONS, is_image_path
from pixart_pipeline.data.parquet_source import EMPTY_CAPTION, parquet_captions

# sidecar_sha256: the sha256 of the image's .txt sidecar (textfile strategy; null otherwise), so a
# re-run re-reads only the sidecars that changed.
CAPTIONS_SCHEMA = pa.schema(
    [("path", pa.string()), ("sha256", pa.string()), ("caption", pa.string()), ("caption_status", pa.string()),
     ("sidecar_sha256", pa.string())]
)
# textfile and parquet tables add ``captions``: every usable caption of the image when it has two or
# more (``caption`` is the first of them), null otherwise, so single-caption rows cost nothing.
MULTI_SCHEMA = CAPTIONS_SCHEMA.append(pa.field("captions", pa.list_(pa.string())))
# Reason codes (``caption_status`` when not "ok"; ``empty_caption`` is EMPTY_CAPTION, shared with parquet_source).
NO_CAPTION_FILE = "no_caption_file"
CAPTION_NOT_UTF8 = "caption_not_utf8"
CAPTION_UNREADABLE = "caption_unreadable"
CAPTION_TOO_LARGE = "caption_too_large"
# Largest caption sidecar read, in bytes. T5 sees 120 (PixArt-alpha) to 300 (PixArt-Sigma) tokens,
# a few KiB of text at most; 64 KiB leaves room for long multi-line files without reading a
# multi-GB file whole.
MAX_CAPTION_BYTES = 64 * 1024


def caption_from_filename(path: str) -> str:
    """SimpleTuner's ``filename`` strategy: stem, underscores to spaces."""
    return Path(path).stem.replace("_", " ")


def caption_file_for(path: str) -> str:
    """The ``.txt`` sidecar SimpleTuner looks for: same path, extension replaced by ``.txt``."""
    return os.path.splitext(path)[0] + ".txt"


def caption_lines(text: str) -> list[str]:
    """Every line of a caption file that is not blank, stripped, in file order (duplicates kept)."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def several(captions: list[str]) -> list[str] | None:
    """The ``captions`` cell of an image: its captions when there are two or more, else null."""
    return list(captions) if len(captions) > 1 else None


def read_capped(path: Path, limit: int = MAX_CAPTION_BYTES) -> bytes | None:
    """The bytes of ``path``, or None when it holds more than ``limit`` bytes (reads ``limit + 1`` at most).

    Raises ``OSError`` like ``open`` (``FileNotFoundError`` for a missing file).
    """
    with open(path, "rb") as f:
        raw = f.read(limit + 1)
    return None if len(raw) > limit else raw


def sidecars_by_nfc(listed: set[str]) -> dict[str, str] | None:
    """``{NFC name: listed name}`` of the listed ``.txt`` files, or None when every listed name is
    ASCII (then NFC changes nothing and exact lookups suffice)."""
    if all(p.isascii() for p in listed):
        return None
    return {unicodedata.normalize("NFC", p): p for p in listed if p.endswith(".txt")}


def sidecar_for(path: str, listed: set[str], by_nfc: Mapping[str, str] | None = None) -> str | None:
    """The listed sidecar of image ``path``: the exact ``caption_file_for`` name, else (with
    ``by_nfc`` from :func:`sidecars_by_nfc`) the one equal to it in NFC; None when there is none."""
    sidecar = caption_file_for(path)
    if sidecar in listed:
        return sidecar
    return by_nfc.get(unicodedata.normalize("NFC", sidecar)) if by_nfc else None


def textfile_captions(
    root: Path, path: str, listed: set[str], by_nfc: Mapping[str, str] | None = None, split_lines: bool = True
) -> tuple[list[str], str]:
    """(every caption line of image ``path``'s sidecar, status); no captions unless status is ok.

    ``split_lines`` False (``disable_multiline_split``): the whole text, stripped, is one caption
    and keeps its line breaks."""
    sidecar = sidecar_for(path, listed, by_nfc)
    if sidecar is None:
        return [], NO_CAPTION_FILE
    try:
        raw = read_capped(root / sidecar)
    except FileNotFoundError:
        return [], NO_CAPTION_FILE
    except OSError:
        return [], CAPTION_UNREADABLE
    if raw is None:
        return [], CAPTION_TOO_LARGE
    try:
        text = raw.decode("utf-8-sig")  # tolerate a BOM written by Windows editors
    except UnicodeDecodeError:
        return [], CAPTION_NOT_UTF8
    lines = caption_lines(text) if split_lines else [text.strip()] if text.strip() else []
    return (lines, "ok") if lines else ([], EMPTY_CAPTION)


def caption_for(
    path: str, root: Path, ds: ImageDataset, listed: set[str], by_nfc: Mapping[str, str] | None = None
) -> tuple[str | None, str]:
    """(first caption, status) for one image path (relative to ``root``) under ``ds.caption_strategy``,
    the per-image statement of the rules that the column-wise tables are tested against; ``by_nfc``
    (:func:`sidecars_by_nfc` of ``listed``) lets ``textfile`` match across Unicode forms."""
    if ds.caption_strategy == "filename":
        caption = caption_from_filename(path)
    elif ds.caption_strategy == "textfile":
        lines, status = textfile_captions(root, path, listed, by_nfc, not ds.disable_multiline_split)
        return (lines[0] if lines else None), status
    elif ds.caption_strategy == "instanceprompt":
        caption = ds.instance_prompt or ""
    else:  # the config model allows nothing else; keep the error explicit if it ever does
        raise ValueError(f"dataset {ds.id!r}: unsupported caption_strategy {ds.caption_strategy!r}")
    return (caption, "ok") if caption.strip() else (None, EMPTY_CAPTION)


def build_captions_table(
    manifest: pa.Table,
    root: Path,
    ds: ImageDataset,
    parquet_path: Path | None = None,
    previous: pa.Table | None = None,
    filters: list[str] | None = None,
) -> pa.Table:
    """One row per image file of ``manifest`` (sidecars excluded): path, sha256, caption,
    caption_status, sidecar_sha256, and for ``textfile``/``parquet`` captions (see ``MULTI_SCHEMA``).

    ``parquet_path`` (the resolved ``parquet.path``) is required by ``caption_strategy: "parquet"``.
    ``previous``: the last captions table built with the same inputs (the caller checks the
    fingerprint); with ``textfile``, its rows whose (path, sha256, sidecar sha256) are unchanged
    are kept and only the other sidecars are read. ``filters``: the ``caption_filter_list``
    (``caption_filter.py``), applied after the instance-prompt modifiers, as SimpleTuner filters
    the captions it is about to encode.
    """
    root = Path(root)
    if ds.caption_strategy == "textfile":
        return _textfile_captions(manifest, root, ds, previous, filters or [])
    return _finish(_strategy_captions(manifest, ds, parquet_path), ds, filters or [])


def _finish(table: pa.Table, ds: ImageDataset, filters: list[str]) -> pa.Table:
    """SimpleTuner's instance-prompt modifiers, then its caption filters."""
    return apply_filters(apply_instance_prompt(table, ds), filters, EMPTY_CAPTION)


def _image_rows(manifest: pa.Table) -> pa.Table:
    """The manifest's image rows (path, sha256), sorted by path, selected with a regex kernel."""
    ext = "|".join(sorted(IMAGE_EXTENSIONS))
    table = manifest.select(["path", "sha256"])
    is_image = pc.match_substring_regex(table.column("path"), rf"\.({ext})$", ignore_case=True)
    if not pc.all(is_image).as_py():  # no copy when there is no sidecar to drop
        table = table.filter(is_image)
    # A manifest is written in path order; sort only a table that is not.
    return table if in_order(table.column("path")) else table.sort_by("path")


def _textfile_captions(
    manifest: pa.Table, root: Path, ds: ImageDataset, previous: pa.Table | None, filters: list[str]
) -> pa.Table:
    images = _image_rows(manifest)
    listed = set(manifest.column("path").to_pylist())
    by_nfc = sidecars_by_nfc(listed)
    if by_nfc is None:
        sidecars = pc.replace_substring_regex(images.column("path"), r"\.[^./]*$", ".txt")  # caption_file_for
    else:  # some name is not ASCII: resolve each sidecar through the NFC match
        sidecars = pa.array([sidecar_for(p, listed, by_nfc) or caption_file_for(p)
                             for p in images.column("path").to_pylist()], pa.string())
    shas = manifest.select(["path", "sha256"]).rename_columns(["sidecar", "sidecar_sha256"])
    current = images.append_column("sidecar", sidecars).join(shas, keys="sidecar", join_type="left outer")
    current = current.select(["path", "sha256", "sidecar_sha256"]).sort_by("path")
    keys = ["path", "sha256", "sidecar_sha256"]
    kept = None
    todo = current
    # A table written before the ``captions`` column existed kept only first lines: never reused.
    if previous is not None and previous.num_rows and set(MULTI_SCHEMA.names) <= set(previous.column_names):
        prev = previous.select(MULTI_SCHEMA.names).cast(MULTI_SCHEMA)
        # Acero joins carry no list column, so the semi join picks row numbers (a null sidecar sha
        # never matches) and ``take`` copies those rows.
        numbered = prev.select(keys).append_column("row", pa.array(range(prev.num_rows), pa.int64()))
        kept = prev.take(numbered.join(current, keys=keys, join_type="left semi").column("row"))
        todo = current.join(prev.select(keys), keys=keys, join_type="left anti").sort_by("path")
    rows: dict[str, list] = {name: [] for name in MULTI_SCHEMA.names}
    for path, sha, sidecar_sha in zip(*(todo.column(c).to_pylist() for c in keys)):
        lines, status = textfile_captions(root, path, listed, by_nfc, not ds.disable_multiline_split)
        first = lines[0] if lines else None
        for name, value in zip(rows, (path, sha, first, status, sidecar_sha, several(lines))):
            rows[name].append(value)
    fresh = _finish(pa.table(rows, schema=MULTI_SCHEMA), ds, filters)
    if kept is None or kept.num_rows == 0:
        return fresh
    return pa.concat_tables([kept, fresh]).sort_by("path")


def apply_instance_prompt(table: pa.Table, ds: ImageDataset) -> pa.Table:
    """SimpleTuner's two caption modifiers, applied to every row with an ``ok`` caption:
    ``only_instance_prompt`` replaces the caption by ``instance_prompt`` (its ``use_captions=False``;
    then every image is ``ok``, as with the ``instanceprompt`` strategy), ``prepend_instance_prompt``
    gives ``instance_prompt + " " + caption`` (missing/empty captions stay reason codes), to each
    caption of a ``captions`` list too."""
    if not (ds.only_instance_prompt or ds.prepend_instance_prompt):
        return table
    multi = "captions" in table.column_names
    if ds.only_instance_prompt:
        prompt = pa.array([ds.instance_prompt] * table.num_rows, pa.string())
        ok = pa.array(["ok"] * table.num_rows, pa.string())
        table = table.set_column(2, "caption", prompt).set_column(3, "caption_status", ok)
        if multi:  # one caption per image: the instance prompt
            table = table.set_column(5, "captions", pa.nulls(table.num_rows, pa.list_(pa.string())))
        return table
    is_ok = pc.equal(table.column("caption_status"), "ok")
    prefixed = pc.binary_join_element_wise(ds.instance_prompt, table.column("caption"), " ")
    table = table.set_column(2, "caption", pc.if_else(is_ok, prefixed, table.column("caption")))
    if multi and table.column("captions").null_count < table.num_rows:
        lists = [None if v is None else [f"{ds.instance_prompt} {c}" for c in v]
                 for v in table.column("captions").to_pylist()]
        table = table.set_column(5, "captions", pa.array(lists, pa.list_(pa.string())))
    return table


def _strategy_captions(manifest: pa.Table, ds: ImageDataset, parquet_path: Path | None) -> pa.Table:
    """``filename``/``instanceprompt`` (column-wise) and ``parquet`` captions (``textfile`` has its own path)."""
    if ds.caption_strategy in ("filename", "instanceprompt"):
        return _columnwise_captions(manifest, ds)
    if ds.caption_strategy != "parquet":  # the config model allows nothing else; keep the error explicit
        raise ValueError(f"dataset {ds.id!r}: unsupported caption_strategy {ds.caption_strategy!r}")
    if parquet_path is None:
        raise ValueError(f"dataset {ds.id!r}: caption_strategy 'parquet' needs the parquet file's path")
    images = sorted((p, d) for p, d in zip(manifest.column("path").to_pylist(), manifest.column("sha256").to_pylist())
                    if is_image_path(p))
    from_parquet = parquet_captions(parquet_path, ds.parquet, [p for p, _ in images])
    rows: dict[str, list] = {name: [] for name in MULTI_SCHEMA.names}
    for path, digest in images:
        texts, status = from_parquet[path]
        for name, value in zip(rows, (path, digest, texts[0] if texts else None, status, None, several(texts))):
            rows[name].append(value)
    return pa.table(rows, schema=MULTI_SCHEMA)


def _columnwise_captions(manifest: pa.Table, ds: ImageDataset) -> pa.Table:
    """``filename``/``instanceprompt`` captions with pyarrow string kernels, no Python loop per row.

    Same rules as :func:`caption_for` (a test checks both agree): the stem is the last path part
    without its extension (image paths always have one), underscores become spaces, and a caption
    that is empty after stripping whitespace is ``empty_caption``.
    """
    images = _image_rows(manifest)
    paths = images.column("path")
    if ds.caption_strategy == "filename":
        names = pc.replace_substring_regex(paths, r"^.*/", "")
        captions = pc.replace_substring(pc.replace_substring_regex(names, r"\.[^.]*$", ""), "_", " ")
    else:
        captions = pa.array([ds.instance_prompt or ""] * images.num_rows, pa.string())
    empty = pc.equal(pc.utf8_trim_whitespace(captions), "")
    status = pc.if_else(empty, EMPTY_CAPTION, "ok")
    caption = pc.if_else(empty, pa.scalar(None, pa.string()), captions)
    return pa.table({"path": paths, "sha256": images.column("sha256"), "caption": caption,
                     "caption_status": status, "sidecar_sha256": pa.nulls(images.num_rows, pa.string())},
                    schema=CAPTIONS_SCHEMA)


def usable_captions(table: pa.Table) -> Iterator[tuple[str, list[str]]]:
    """(path, every usable caption in order) of each ``ok`` row of a captions table; the first is
    its ``caption``. Tables without a ``captions`` column (or rows where it is null) give one."""
    ok = table.filter(pc.equal(table.column("caption_status"), "ok"))
    firsts = ok.column("caption").to_pylist()
    lists = ok.column("captions").to_pylist() if "captions" in ok.column_names else [None] * ok.num_rows
    for path, first, more in zip(ok.column("path").to_pylist(), firsts, lists):
        yield path, (more if more else [first])


def multi_caption_rows(table: pa.Table) -> list[tuple[str, list[str]]]:
    """(path, captions) of the rows with two or more captions, sorted by path."""
    if "captions" not in table.column_names or table.column("captions").null_count == table.num_rows:
        return []
    multi = table.filter(pc.is_valid(table.column("captions")))
    return sorted(zip(multi.column("path").to_pylist(), multi.column("captions").to_pylist()))


def captions_data_version(table: pa.Table) -> str:
    """Digest (16 hex chars) of the (path, caption, caption_status) rows sorted by path, and of every
    caption of the images that have several.

    The image's ``sha256`` is left out on purpose: text embeddings depend on the caption only, so
    editing an image's pixels must not make the text-embedding cache look out of date. A null
    caption and an empty one differ (see ``digest.py``). A table where no image has several captions
    keeps the digest of the three columns alone, so single-caption datasets keep their version;
    editing any caption of a multi-caption image changes it (the text cache must encode it).
    """
    base = table_digest(table, ["path", "caption", "caption_status"])
    multi = multi_caption_rows(table)
    if not multi:
        return base
    blob = json.dumps([base, multi], ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(b"captions-lists-v1" + blob.encode()).hexdigest()[:16]
