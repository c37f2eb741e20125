"""Small buckets: fewer draws per epoch than one optimizer step -> dropped (SimpleTuner) or repeated (ours)."""

from collections import Counter
from pathlib import Path

import pytest

from pixart_pipeline.config.load import PipelineConfig
from pixart_pipeline.config.dataset_models import ImageDataset, TextEmbedsDataset
from pixart_pipeline.config.models import TrainingConfig
from pixart_pipeline.data.stage import readiness
from pixart_pipeline.training.sampler import BucketBatchSampler

# items 0-4 in bucket a, 5-7 in b, 8 in c
BUCKETS = ["a"] * 5 + ["b"] * 3 + ["c"]


def drawn(sampler, epochs):
    return [i for _ in range(epochs) for batch in sampler for i in batch]


def test_drop_never_draws_a_bucket_smaller_than_one_step():
    # batch 2, one step = 4 draws: b (3) and c (1) are small; a gives 5 // 2 = 2 batches per epoch
    sampler = BucketBatchSampler(BUCKETS, batch_size=2, seed=0, min_bucket_draws=4)
    assert sampler.small_buckets == {"b": 3, "c": 1}
    assert len(sampler) == 2
    seen = drawn(sampler, 10)
    assert set(seen) <= set(range(5)) and set(seen) == set(range(5))
    assert sampler.dropped_per_epoch() == 1 + 3 + 1  # a's remainder of 1, all of b and c


def test_repeat_fills_a_small_bucket_to_one_step_with_every_item_each_epoch():
    sampler = BucketBatchSampler(BUCKETS, batch_size=2, seed=0, min_bucket_draws=4, small_bucket_rule="repeat")
    # a: 2 batches; b padded 3 -> 4 draws: 2 batches; c padded 1 -> 4: 2 batches of [8, 8]
    assert len(sampler) == 6
    for epoch in range(5):
        batches = sampler.epoch_batches(epoch)
        counts = Counter(i for batch in batches for i in batch)
        assert all(counts[i] >= 1 for i in (5, 6, 7)) and sum(counts[i] for i in (5, 6, 7)) == 4
        assert counts[8] == 4
        assert all(len(set(BUCKETS[i] for i in batch)) == 1 for batch in batches)  # one bucket per batch
    # which b item is repeated changes with the epoch's shuffle
    repeated = {max((5, 6, 7), key=lambda i: Counter(j for b in sampler.epoch_batches(e) for j in b)[i])
                for e in range(20)}
    assert len(repeated) > 1


def test_default_threshold_is_one_batch_as_before():
    sampler = BucketBatchSampler(BUCKETS, batch_size=2, seed=0)
    assert sampler.small_buckets == {"c": 1}
    assert len(sampler) == 2 + 1  # a: 2 batches, b: 1 batch, c dropped


def test_repeat_resumes_exactly():
    kw = dict(batch_size=2, seed=5, min_bucket_draws=4, small_bucket_rule="repeat")
    straight = BucketBatchSampler(BUCKETS, **kw)
    expected = [straight.next_batch() for _ in range(15)]
    first = BucketBatchSampler(BUCKETS, **kw)
    head = [first.next_batch() for _ in range(7)]
    resumed = BucketBatchSampler(BUCKETS, **kw)
    resumed.load_state_dict(first.state_dict())
    assert head + [resumed.next_batch() for _ in range(8)] == expected


def test_bad_rule_or_threshold_is_an_error():
    with pytest.raises(ValueError, match="small_bucket_rule"):
        BucketBatchSampler(BUCKETS, batch_size=2, seed=0, small_bucket_rule="pad")
    with pytest.raises(ValueError, match="at least batch_size"):
        BucketBatchSampler(BUCKETS, batch_size=2, seed=0, min_bucket_draws=1)
    with pytest.raises(ValueError, match="small_bucket_rule 'repeat'"):
        BucketBatchSampler(BUCKETS, batch_size=2, seed=0, min_bucket_draws=8)


def config(**training):
    return PipelineConfig(
        config_path=Path("config.json"), backend_path=Path("multidatabackend.json"),
        training=TrainingConfig(**training), datasets=(ImageDataset(id="d", instance_data_dir="."),),
        text_embeds=TextEmbedsDataset(id="t", dataset_type="text_embeds"),
    )


def test_readiness_names_small_buckets_and_what_to_change():
    draws = {"1.0 (1024x1024)": 40, "1.43 (1216x832)": 7, "0.75 (896x1152)": 11}
    # one step = 4 x 3 x 1 = 12 draws
    report = readiness(draws, config(train_batch_size=4, gradient_accumulation_steps=3))
    assert report.needed == 12 and report.small_buckets == {"1.43 (1216x832)": 7, "0.75 (896x1152)": 11}
    assert report.usable == 40 and report.enough
    text = report.bucket_message
    assert "1.43 (1216x832): 7" in text and "0.75 (896x1152): 11" in text and "12 = train_batch_size" in text
    assert "never draws" in text and "small_bucket_rule 'repeat'" in text
    repeat = readiness(draws, config(train_batch_size=4, gradient_accumulation_steps=3, small_bucket_rule="repeat"))
    assert repeat.usable == 40 + 12 + 12 and "cycles their images" in repeat.bucket_message
    assert "set small_bucket_rule" not in repeat.bucket_message
    # only small buckets: blocking under drop, trainable under repeat
    assert not readiness({"1.0 (1024x1024)": 5}, config(train_batch_size=8)).enough
    assert readiness({"1.0 (1024x1024)": 5}, config(train_batch_size=8, small_bucket_rule="repeat")).enough


def test_asset_check_names_the_small_buckets_of_a_real_dataset(tmp_path):
    """The demo's three buckets through the data stages, then the Dagster check itself."""
    import dagster as dg
    from demo_copy import copy_demo

    from pixart_pipeline.config import load_config
    from pixart_pipeline.data.stage import (
        batch_readiness,
        run_bucketed_metadata,
        run_captions,
        run_raw_dataset,
    )
    from pixart_pipeline.defs.checks import build_dataset_checks

    cfg = load_config(copy_demo(tmp_path, config={"train_batch_size": 4, "gradient_accumulation_steps": 2}))
    ds = cfg.datasets[0]
    run_raw_dataset(cfg, ds)
    run_captions(cfg, ds)
    run_bucketed_metadata(cfg, ds)
    report = batch_readiness(cfg, ds)
    assert report.needed == 8 and report.small_buckets  # the demo's rarest shapes hold fewer than 8
    assert all(n < 8 for n in report.small_buckets.values())
    # names are "<aspect key> (<width>x<height>)" as the sampler buckets them
    assert all(" (" in name and "x" in name for name in report.small_buckets)
    check = next(c for c in build_dataset_checks(cfg, ds) if next(iter(c.check_specs)).name == "buckets_fill_a_batch")
    result = check()
    assert isinstance(result, dg.AssetCheckResult) and not result.passed
    assert result.severity == dg.AssetCheckSeverity.WARN
    for name in report.small_buckets:
        assert name in result.description
    assert "small_bucket_rule 'repeat'" in result.description
    assert result.metadata["draws_per_step"].value == 8


def test_the_trainer_applies_the_rule_from_its_run_spec(tmp_path, tiny_pixart_path):
    """Real tiny training: 6 square and 2 landscape items, batch 8. No bucket holds one step, so
    "drop" refuses to start with the sampler's advice, and "repeat" trains on both buckets."""
    from pixart_pipeline.training.loop import train
    from pixart_pipeline.training.spec import RunSpec
    from tests.training.conftest import fill_caches

    caches = fill_caches(tmp_path / "caches")

    def spec(name, rule):
        hp = {"learning_rate": 1e-3, "train_batch_size": 8, "max_train_steps": 2, "mixed_precision": "no",
              "seed": 3, "small_bucket_rule": rule}
        return RunSpec.build(run_dir=str(tmp_path / name), base_model=tiny_pixart_path, items=caches["items"],
                             text_store=caches["text_store"], empty_text_key=caches["empty_text_key"],
                             checkpointing_steps=10, device="cpu", **hp)

    assert spec("r", "repeat").hyperparameters.small_bucket_rule == "repeat"
    with pytest.raises(ValueError, match="small_bucket_rule 'repeat'"):
        train(spec("drop", "drop"))
    result = train(spec("repeat", "repeat"))
    # one padded batch per bucket: the 2 steps are exactly one epoch, so both buckets were trained on
    assert result.completed and result.steps == 2 and result.epochs == 1.0
    assert result.final_loss is not None and result.final_loss == result.final_loss
