"""BucketBatchSampler: one bucket per batch, every item once per epoch, exact resume."""

from __future__ import annotations

from collections import Counter

import pytest

from pixart_pipeline.training.sampler import BucketBatchSampler

# 3 buckets with 6, 4 and 2 items: all divisible by batch size 2, so nothing is dropped
BUCKETS = [(128, 128)] * 6 + [(192, 128)] * 4 + [(128, 192)] * 2


def test_every_batch_is_one_bucket_and_every_item_appears_once_per_epoch():
    sampler = BucketBatchSampler(BUCKETS, batch_size=2, seed=3)
    assert len(sampler) == 6 and sampler.dropped_per_epoch() == 0
    for epoch in range(3):
        batches = list(sampler)
        assert len(batches) == 6
        assert all(len({BUCKETS[i] for i in b}) == 1 and len(b) == 2 for b in batches)
        assert sorted(i for b in batches for i in b) == list(range(len(BUCKETS)))
    assert sampler.epoch == 3 and sampler.position == 0
    # epochs are shuffled differently, and buckets interleave
    assert sampler.epoch_batches(0) != sampler.epoch_batches(1)


def test_repeats_show_an_item_one_plus_repeats_times():
    sampler = BucketBatchSampler(["a"] * 4, batch_size=2, seed=0, repeats=[0, 1, 0, 3])
    counts = Counter(i for b in sampler.epoch_batches(0) for i in b)
    assert counts == {0: 1, 1: 2, 2: 1, 3: 4}


def test_incomplete_batches_are_dropped_but_each_epoch_drops_a_different_item():
    sampler = BucketBatchSampler(["a"] * 5 + ["b"] * 3, batch_size=2, seed=1)
    assert len(sampler) == 3 and sampler.dropped_per_epoch() == 2
    seen = set()
    for epoch in range(10):
        batch_items = [i for b in sampler.epoch_batches(epoch) for i in b]
        assert len(batch_items) == 6 and len(set(batch_items)) == 6
        seen |= set(batch_items)
    assert seen == set(range(8))


def test_no_full_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="no bucket holds a full batch: train_batch_size is 4"):
        BucketBatchSampler(["a", "a", "b"], batch_size=4, seed=0)


def test_resume_from_state_equals_uninterrupted():
    straight = BucketBatchSampler(BUCKETS, batch_size=2, seed=9)
    expected = [straight.next_batch() for _ in range(20)]  # crosses three epoch boundaries

    first = BucketBatchSampler(BUCKETS, batch_size=2, seed=9)
    got = [first.next_batch() for _ in range(8)]
    state = dict(first.state_dict())  # e.g. what a checkpoint stores (JSON)
    resumed = BucketBatchSampler(BUCKETS, batch_size=2, seed=9)
    resumed.load_state_dict(state)
    got += [resumed.next_batch() for _ in range(12)]
    assert got == expected


def test_state_from_another_item_set_is_refused():
    state = BucketBatchSampler(BUCKETS, batch_size=2, seed=9).state_dict()
    with pytest.raises(ValueError, match="num_items is 12 in the checkpoint but 6 now"):
        BucketBatchSampler(BUCKETS[:6], batch_size=2, seed=9).load_state_dict(state)
