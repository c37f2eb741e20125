"""SimpleTuner's caption_filter_list (``data/caption_filter.py``): worked examples derived from its
``PromptHandler.filter_captions`` rules, the file forms, the config errors, and the real stages."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from pixart_pipeline.config import fingerprints as fp
from pixart_pipeline.config import load_config
from pixart_pipeline.config.caption_filters import load_filters
from pixart_pipeline.config.load import ConfigError
from pixart_pipeline.data.caption_filter import filter_caption
from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset
from pixart_pipeline.fileio import read_parquet
from tests.demo_copy import copy_demo


@pytest.mark.parametrize("filters, caption, expected", [
    (["arafed "], "arafed a cat on a mat", "a cat on a mat"),  # plain text, its trailing space too
    (["this .* has a"], "this photo has a dog", " dog"),  # a regular expression: its match goes
    (["^a "], "a cat and a dog", "cat and a dog"),  # anchored: only at the start
    (["s/cat/dog"], "a cat and a cat", "a dog and a dog"),  # s/search/replace: every match
    (["s/cat/dog/"], "a cat", "a cat"),  # three "/": not a substitution, and that text is absent
    (["a(b"], "xa(by", "xy"),  # not a valid regex: its plain text is still removed
    (["the ", "s/red/blue"], "the red ball", "blue ball"),  # in order
])
def test_filters_follow_simpletuners_rules(filters, caption, expected):
    assert filter_caption(caption, filters) == expected


def test_filter_lists_load_from_a_list_a_txt_or_a_json_file(tmp_path):
    (tmp_path / "f.txt").write_bytes(b"arafed \r\nthis .* has a\r\n\r\n")
    (tmp_path / "f.json").write_text(json.dumps(["s/cat/dog", ""]))
    assert load_filters("f.txt", tmp_path) == ["arafed ", "this .* has a"]  # CRLF and blank lines dropped
    assert load_filters(str(tmp_path / "f.json"), tmp_path) == ["s/cat/dog"]
    assert load_filters(["x"], tmp_path) == ["x"] and load_filters(None, tmp_path) == []
    with pytest.raises(ValueError, match="must be a list, or the path of a .json or .txt file"):
        load_filters("filters.csv", tmp_path)
    with pytest.raises(ValueError, match=r"cannot read .*missing\.txt"):
        load_filters("missing.txt", tmp_path)
    with pytest.raises(ValueError, match=r"'s/\(/x': search pattern is not a regular expression"):
        load_filters(["s/(/x"], tmp_path)
    with pytest.raises(ValueError, match="must be a list of strings"):
        load_filters([1], tmp_path)


def _dataset(tmp_path, filters, filter_file: str | None = None):
    """A textfile demo copy whose text_embeds entry has ``filters`` (``filter_file``: the text of
    ``filters.txt`` beside the config, written first)."""
    config = copy_demo(tmp_path, dataset={"type": "local", "instance_data_dir": "imgs", "crop": False,
                                          "caption_strategy": "textfile", "eval_split_fraction": 0.0})
    backend = config.parent / "multidatabackend.json"
    entries = json.loads(backend.read_text())
    text = next(e for e in entries if e.get("dataset_type") == "text_embeds")
    text["caption_filter_list"] = filters
    backend.write_text(json.dumps(entries))
    if filter_file is not None:
        (config.parent / "filters.txt").write_text(filter_file)
    cfg = load_config(config)
    root = cfg.dataset_dir(cfg.datasets[0])
    root.mkdir(parents=True)
    for name, text_ in (("multi", "arafed a red circle\nthe image shows\nthe image shows a blue square\n"),
                        ("gone", "the image shows\n"), ("plain", "a green triangle\n")):
        Image.new("RGB", (64, 64), (len(name) * 30, 0, 0)).save(root / f"{name}.png")
        (root / f"{name}.txt").write_text(text_)
    return cfg, config.parent


def test_the_stages_filter_every_caption_and_the_filter_file_is_in_the_fingerprint(tmp_path):
    cfg, folder = _dataset(tmp_path, "filters.txt", filter_file="arafed \nthe image shows ?\n")
    ds = cfg.datasets[0]
    run_raw_dataset(cfg, ds)
    rows = {r["path"]: r for r in read_parquet(run_captions(cfg, ds).path).to_pylist()}
    # the line "the image shows" is left blank by the regex and dropped; two captions remain
    assert rows["multi.png"]["captions"] == ["a red circle", "a blue square"]
    assert rows["multi.png"]["caption"] == "a red circle"
    assert (rows["gone.png"]["caption"], rows["gone.png"]["caption_status"]) == (None, "empty_caption")
    assert rows["plain.png"]["caption"] == "a green triangle"
    metadata = {r["path"]: r for r in read_parquet(run_bucketed_metadata(cfg, ds).path).to_pylist()}
    assert metadata["gone.png"]["status"] == "empty_caption" and metadata["multi.png"]["status"] == "ok"
    before = fp.captions_fields(cfg, ds)
    assert before["caption_filter_list"] == ["arafed ", "the image shows ?"]
    (folder / "filters.txt").write_text("arafed \n")  # editing the file changes the captions fingerprint
    assert fp.captions_fields(cfg, ds) != before


def test_filter_config_errors_name_the_entry(tmp_path):
    with pytest.raises(ConfigError, match=r"text_embeds .*caption_filter_list: cannot read .*nope\.txt"):
        _dataset(tmp_path / "a", "nope.txt")
    config = copy_demo(tmp_path / "b", dataset={"caption_filter_list": ["x"]})
    with pytest.raises(ConfigError, match=r"\[0\]\.caption_filter_list = \['x'\] is not supported yet: .*text_embeds entry"):
        load_config(config)
    with pytest.warns(UserWarning, match="'a\\(b' is not a regular expression; only its plain-text"):
        cfg, _ = _dataset(tmp_path / "c", ["a(b"])
    assert any("'a(b' is not a regular expression" in w for w in cfg.warnings)
