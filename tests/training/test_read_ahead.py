"""Read-ahead of cache reads: overlaps the next batch's reads with the current step without changing
what is trained (sampler position in checkpoints, random draws) -- tested against reading in place."""

from __future__ import annotations

import threading
from pathlib import Path

import torch

from pixart_pipeline.training import train
from pixart_pipeline.training.batches import BatchBuilder, load_items, read_ahead
from pixart_pipeline.training.checkpoint import list_checkpoints, load_checkpoint
from pixart_pipeline.training.metrics import read_metrics
from pixart_pipeline.training.sampler import BucketBatchSampler


def test_read_ahead_yields_the_samplers_batches_without_moving_it(caches):
    items = load_items(caches["items"])
    builder = BatchBuilder(items, caches["text_store"], caches["empty_text_key"])
    sampler = BucketBatchSampler(items.target, 2, seed=3)
    sampler.next_batch()  # start mid-epoch, as after a resume
    state = sampler.state_dict()
    reference = BucketBatchSampler(items.target, 2, seed=3)
    reference.load_state_dict(state)

    reads = read_ahead(builder, sampler, world=2, rank=1, depth=2)
    try:
        got = [next(reads) for _ in range(5)]  # 10 batch draws: crosses into later epochs (4 batches each)
        assert any(t.name == "cache-prefetch" for t in threading.enumerate())
    finally:
        reads.close()
    assert sampler.state_dict() == state  # only the caller's consumption moves the real sampler
    for raw in got:
        expected = [reference.next_batch() for _ in range(2)][1]
        assert raw.indices == expected
        # the same tensors reading in place gives, and the same draws from equal generators
        a = builder.assemble(raw, torch.Generator().manual_seed(5), 0.13, 0.5)
        b = builder.build(expected, torch.Generator().manual_seed(5), 0.13, 0.5)
        assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_training_with_read_ahead_is_bit_identical_and_checkpoints_the_consumed_position(make_spec):
    hp = dict(caption_dropout_probability=0.3, gradient_accumulation_steps=2, max_train_steps=6)
    in_place = train(make_spec("in-place", checkpointing_steps=3, **hp).replace(read_ahead_batches=0))
    ahead = train(make_spec("ahead", checkpointing_steps=3, **hp))  # default: 2 batches ahead
    assert ahead.weights_sha256 == in_place.weights_sha256
    losses = [[r["loss"] for r in read_metrics(Path(r.run_dir) / "metrics.jsonl")] for r in (in_place, ahead)]
    assert losses[0] == losses[1] and len(losses[0]) == 6
    # the landscape bucket (2 items) is below one optimizer step (4) and dropped: 3 batches per epoch
    checkpoints = [dict(list_checkpoints(Path(r.run_dir))) for r in (in_place, ahead)]
    assert sorted(checkpoints[1]) == [3, 6]
    for step in (3, 6):  # the reader thread was up to 2 batches further on when each was saved
        states = [load_checkpoint(c[step]).sampler for c in checkpoints]
        assert states[0] == states[1]
        assert states[1]["epoch"] * 3 + states[1]["position"] == step * 2
