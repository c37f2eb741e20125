"""Names written in another Unicode normalisation form still match (macOS stores names as NFD,
most tools write NFC): parquet identifiers and textfile sidecars are compared in NFC."""

from __future__ import annotations

import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pixart_pipeline.config import load_config
from pixart_pipeline.data.stage import run_captions, run_raw_dataset
from pixart_pipeline.fileio import read_parquet
from tests.demo_copy import copy_demo

NAME = "café crème/Ångström"  # a folder and a file, both with composed/decomposed letters


def nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


def nfd(s: str) -> str:
    return unicodedata.normalize("NFD", s)


def _captions(cfg) -> dict[str, tuple]:
    ds = cfg.datasets[0]
    run_raw_dataset(cfg, ds)
    rows = read_parquet(run_captions(cfg, ds).path).to_pylist()
    return {r["path"]: (r["caption"], r["caption_status"]) for r in rows}


@pytest.mark.parametrize("file_form, table_form", [(nfd, nfc), (nfc, nfd)])
def test_parquet_identifier_matches_across_normalisation_forms(tmp_path, file_form, table_form):
    assert file_form(NAME) != table_form(NAME)  # different code points, same text
    config = copy_demo(tmp_path, dataset={"type": "local", "instance_data_dir": "imgs", "crop": False,
                                          "caption_strategy": "parquet",
                                          "parquet": {"path": "captions.parquet"}})
    cfg = load_config(config)
    root = cfg.dataset_dir(cfg.datasets[0])
    image = root / (file_form(NAME) + ".png")
    image.parent.mkdir(parents=True)
    Image.new("RGB", (64, 64)).save(image)
    Image.new("RGB", (64, 64)).save(root / (file_form("naïve") + ".png"))  # matched by bare name
    pq.write_table(pa.table({"id": [table_form(NAME), table_form("naïve")],
                             "description": ["a full path", "a bare name"]}),
                   config.parent / "captions.parquet")
    got = _captions(cfg)
    assert got == {file_form(NAME) + ".png": ("a full path", "ok"),  # the path on disk is kept as is
                   file_form("naïve") + ".png": ("a bare name", "ok")}


@pytest.mark.parametrize("image_form, sidecar_form", [(nfd, nfc), (nfc, nfd)])
def test_textfile_sidecar_matches_across_normalisation_forms(tmp_path, image_form, sidecar_form):
    config = copy_demo(tmp_path, dataset={"type": "local", "instance_data_dir": "imgs", "crop": False,
                                          "caption_strategy": "textfile"})
    cfg = load_config(config)
    root = cfg.dataset_dir(cfg.datasets[0])
    (root / image_form("café crème")).mkdir(parents=True)
    (root / sidecar_form("café crème")).mkdir(exist_ok=True)  # two folders on Linux, one on macOS
    Image.new("RGB", (64, 64)).save(root / (image_form(NAME) + ".png"))
    (root / (sidecar_form(NAME) + ".txt")).write_text("a caption\n", encoding="utf-8")
    Image.new("RGB", (64, 64)).save(root / "plain.png")
    (root / "plain.txt").write_text("plain caption\n", encoding="utf-8")
    got = _captions(cfg)
    assert got == {image_form(NAME) + ".png": ("a caption", "ok"), "plain.png": ("plain caption", "ok")}
    # Editing the sidecar is noticed (its sha is joined through the same NFC match).
    (root / (sidecar_form(NAME) + ".txt")).write_text("edited\n", encoding="utf-8")
    assert _captions(cfg)[image_form(NAME) + ".png"] == ("edited", "ok")
