"""Images with several captions: each draw trains on one of them, chosen by a pure function of
(seed, global batch number, slot, item), so reruns, resumes and N processes choose alike."""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pixart_pipeline.cache import ShardStore, text_item_key
from pixart_pipeline.training.batches import caption_choice, load_items
from pixart_pipeline.training.loop import train
from pixart_pipeline.training.metrics import read_metrics
from tests.training.conftest import CAPTIONS

MULTI = [text_item_key(c) for c in CAPTIONS[:3]]  # item 0's captions; its text_key is the first


@pytest.fixture
def multi_spec(make_spec, caches, tmp_path):
    """``multi_spec(name, **hp)``: the fixture caches' items, item 0 with three captions, batches recorded."""
    table = pq.read_table(caches["items"])
    keys = [MULTI] + [None] * (table.num_rows - 1)
    path = tmp_path / "items-multi.parquet"
    pq.write_table(table.append_column("text_keys", pa.array(keys, pa.list_(pa.string()))), path)

    def make(name: str, **hp):
        return make_spec(name, **hp).replace(items=str(path), record_items=True)

    return make


def _draws(run_dir: str) -> list[tuple[int, list[int], list[str]]]:
    """(step, item indices, caption key of each item) of every micro-batch the run recorded (rank 0)."""
    record = json.loads((Path(run_dir) / "ranks" / "rank-0.json").read_text())
    return [(b[0], b[2:], keys) for b, keys in zip(record["batches"], record["text_keys"])]


def _captions_of(draws, item: int) -> list[str]:
    return [k for _, indices, keys in draws for i, k in zip(indices, keys) if i == item]


def test_caption_choice_is_a_pure_uniform_function_of_its_numbers():
    picks = [caption_choice(7, draw, 0, 0, 3) for draw in range(3000)]
    assert picks == [caption_choice(7, draw, 0, 0, 3) for draw in range(3000)]
    assert all(900 < n < 1100 for n in Counter(picks).values()) and set(picks) == {0, 1, 2}
    # every number counts: seed, draw, slot and item each change the sequence
    for changed in ([8, 0, 0], [7, 1, 0], [7, 0, 1]):
        assert picks != [caption_choice(changed[0], d, changed[1], changed[2], 3) for d in range(3000)]


def test_items_table_text_keys_are_checked(tmp_path, caches):
    table = pq.read_table(caches["items"])
    bad = [[]] + [None] * (table.num_rows - 1)
    pq.write_table(table.append_column("text_keys", pa.array(bad, pa.list_(pa.string()))), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="row 0 has text_keys"):
        load_items(tmp_path / "bad.parquet")


def test_several_captions_are_drawn_reproducibly_and_across_a_resume(multi_spec):
    # caption dropout on: it applies after the choice, and everything stays bit-identical
    hp = dict(max_train_steps=16, caption_dropout_probability=0.3)
    first = train(multi_spec("first", checkpointing_steps=5, **hp))
    draws = _draws(first.run_dir)
    used = _captions_of(draws, 0)
    assert len(used) >= 4 and set(used) <= set(MULTI) and len(set(used)) > 1, used
    items = load_items(multi_spec("x").items)
    for _, indices, keys in draws:  # every other item trains on its one caption
        assert all(k == items.text_key[i] for i, k in zip(indices, keys) if i != 0)

    again = train(multi_spec("again", checkpointing_steps=5, **hp))
    assert _draws(again.run_dir) == draws and again.weights_sha256 == first.weights_sha256

    resumed = multi_spec("resumed", checkpointing_steps=5, **hp)
    train(resumed, stop_at_step=7)  # checkpoint at 7; steps 1-7 recorded
    before = _draws(resumed.run_dir)
    done = train(resumed)
    assert before + _draws(resumed.run_dir) == draws
    assert done.weights_sha256 == first.weights_sha256
    losses = [[r["loss"] for r in read_metrics(Path(r.run_dir) / "metrics.jsonl")] for r in (first, done)]
    assert losses[0] == losses[1]


@pytest.mark.slow
def test_two_processes_choose_the_captions_one_process_chooses(multi_spec, tmp_path):
    from tests.training.test_distributed import _env, _torchrun

    spec = multi_spec("ddp", max_train_steps=8, num_processes=2, checkpointing_steps=4)
    path = spec.save(tmp_path / "ddp.json")
    done = subprocess.run(_torchrun(path), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((Path(spec.run_dir) / "ranks" / f"rank-{r}.json").read_text()) for r in (0, 1)]
    # rank r's m-th micro-batch is global batch 2m + r: interleave them into the global order
    two = [(b[2:], keys) for pair in zip(*(zip(r["batches"], r["text_keys"]) for r in ranks)) for b, keys in pair]
    single = train(multi_spec("single", max_train_steps=8, gradient_accumulation_steps=2, checkpointing_steps=4))
    one = [(indices, keys) for _, indices, keys in _draws(single.run_dir)]
    assert two == one
    assert len(set(k for indices, keys in one for i, k in zip(indices, keys) if i == 0)) > 1
    a = [r["loss"] for r in read_metrics(Path(spec.run_dir) / "metrics.jsonl")]
    b = [r["loss"] for r in read_metrics(Path(single.run_dir) / "metrics.jsonl")]
    assert torch.allclose(torch.tensor(a), torch.tensor(b), rtol=1e-4, atol=1e-6), (a, b)


THREE_LINES = "a red circle\n\n   \n  on a white table  \r\n\ta photo of a circle\n \t\n"
THREE = ["a red circle", "on a white table", "a photo of a circle"]


def _stage_config(tmp_path: Path, tiny_pixart_path: str, strategy: str):
    """A demo copy over six 128x128 images (one bucket, no eval split); ``multi.png`` has THREE captions."""
    from pixart_pipeline.config import load_config
    from tests.demo_copy import copy_demo

    dataset = {"type": "local", "instance_data_dir": "imgs", "crop": False, "caption_strategy": strategy,
               "eval_split_fraction": 0.0}
    if strategy == "parquet":
        dataset["parquet"] = {"path": "captions.parquet"}
    config = copy_demo(tmp_path, dataset=dataset,
                       config={"pretrained_model_name_or_path": tiny_pixart_path, "train_batch_size": 2,
                               "max_train_steps": 12, "lr_warmup_steps": 0, "checkpointing_steps": 100})
    cfg = load_config(config)
    root = cfg.dataset_dir(cfg.datasets[0])
    root.mkdir(parents=True)
    names = ["multi", "img1", "img2", "img3", "img4", "img5"]
    for n, name in enumerate(names):
        Image.new("RGB", (128, 128), (n * 40, 255 - n * 40, 90)).save(root / f"{name}.png")
    if strategy == "textfile":
        for name in names:
            (root / f"{name}.txt").write_text(THREE_LINES if name == "multi" else f"a picture called {name}\n")
    else:
        pq.write_table(pa.table({"id": names, "description": [[" ", *THREE, None]] + [[f"a picture called {n}"]
                                                                                   for n in names[1:]]}),
                       config.parent / "captions.parquet")
    return cfg, root


@pytest.mark.parametrize("strategy", ["textfile", "parquet"])
def test_stages_encode_every_caption_and_the_trainer_draws_them(tmp_path, tiny_pixart_path, strategy):
    from pixart_pipeline.cache.stage import caption_sources, text_key
    from pixart_pipeline.stages import text_store_root
    from pixart_pipeline.fileio import read_parquet
    from pixart_pipeline.training.spec import RunSpec
    from pixart_pipeline.training.stage import prepare_training_run
    from tests.demo_copy import run_stages_before_training

    cfg, root = _stage_config(tmp_path, tiny_pixart_path, strategy)
    run_stages_before_training(cfg)
    store = ShardStore(text_store_root(cfg))
    assert all(text_key(cfg, c) in store for c in THREE)  # every caption encoded before training
    assert caption_sources(cfg)[THREE[2]] == str(root / "multi.png")  # which image a caption came from

    prepared = prepare_training_run(cfg, "cpu")
    items = read_parquet(prepared.run_dir / "items.parquet").to_pylist()
    multi = next(i for i, row in enumerate(items) if row["path"] == "multi.png")
    assert items[multi]["text_key"] == text_key(cfg, THREE[0])
    assert items[multi]["text_keys"] == [text_key(cfg, c) for c in THREE]
    assert all(row["text_keys"] is None for row in items if row["path"] != "multi.png")

    spec = RunSpec.load(prepared.spec_path).replace(record_items=True)
    train(spec)
    used = _captions_of(_draws(spec.run_dir), multi)
    assert set(used) <= {text_key(cfg, c) for c in THREE} and len(set(used)) > 1, used

    # The metadata table carries every image's captions, so its data version (what trained_checkpoint
    # depends on) follows any edit of a list, even one that only moves existing captions between
    # images: the text cache's key set and every first caption stay the same here.
    from pixart_pipeline.config.identity import parquet_file
    from pixart_pipeline.data.stage import run_bucketed_metadata, run_captions, run_raw_dataset

    ds = cfg.datasets[0]
    before = run_bucketed_metadata(cfg, ds).data_version
    keys_before = set(caption_sources(cfg))
    moved = {"multi": THREE[:2], "img1": ["a picture called img1", THREE[2]]}
    if strategy == "textfile":
        for name, lines in moved.items():
            (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    else:
        names = ["multi", "img1", "img2", "img3", "img4", "img5"]
        pq.write_table(pa.table({"id": names, "description": [moved.get(n, [f"a picture called {n}"]) for n in names]}),
                       parquet_file(cfg, ds))
    run_raw_dataset(cfg, ds)
    run_captions(cfg, ds)
    after = run_bucketed_metadata(cfg, ds)
    assert set(caption_sources(cfg)) == keys_before and after.data_version != before
    assert after.metadata["reused_rows"] == 4  # only the two edited images were recomputed
    rows = {r["path"]: r for r in read_parquet(after.path).to_pylist()}
    assert rows["img1.png"]["captions"] == moved["img1"] and rows["img2.png"]["captions"] is None

