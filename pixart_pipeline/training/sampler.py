"""Aspect-bucket batch sampler: every batch comes from one bucket (one target size).

A transformer batch must be one tensor, so all its latents share a size; SimpleTuner's
``MultiAspectSampler`` draws each batch from a single aspect bucket for the same reason.

Rules (all deterministic given ``seed``):

- Item ``i`` appears ``1 + repeats[i]`` times per epoch (SimpleTuner's ``repeats``).
- A bucket with fewer draws per epoch than ``min_bucket_draws`` (one optimizer step:
  ``train_batch_size x gradient_accumulation_steps x num_processes``) is **small**. With
  ``small_bucket_rule="drop"`` it is never drawn, as SimpleTuner drops such buckets
  (``split_buckets_between_processes`` trims every bucket to whole effective batches). With
  ``"repeat"`` (ours, not SimpleTuner's) each epoch its shuffled items are cycled until it holds
  ``min_bucket_draws``, so its images are trained on, more often than the others.
- Each epoch, each bucket's list is shuffled with an RNG seeded by ``(seed, epoch)``, cut into
  batches of ``batch_size``, and **the incomplete last batch of each bucket is dropped** (a smaller
  batch would change the effective learning rate and the per-step cost). Because the shuffle differs
  per epoch, a different remainder is dropped each time, so over epochs every item is seen.
- The batches of all buckets are then shuffled together, so buckets interleave.

The order of an epoch is a pure function of ``(seed, epoch)``; the state is therefore just
``(epoch, position)`` and a resumed run continues with exactly the batches an uninterrupted one
would have drawn.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Hashable, Iterator, Sequence
from typing import Any

import numpy as np

from pixart_pipeline.errors import InputError


class BucketBatchSampler:
    """Yields lists of item indices, all of one bucket, forever (epoch after epoch).

    Args:
        buckets: ``buckets[i]`` is item ``i``'s bucket (e.g. its ``(target_width, target_height)``).
        batch_size: items per batch.
        seed: shuffling seed.
        repeats: extra times each item is shown per epoch (default 0 for all).
        min_bucket_draws: draws per epoch below which a bucket is small (default ``batch_size``).
        small_bucket_rule: ``"drop"`` small buckets (SimpleTuner) or ``"repeat"`` their items.
    """

    def __init__(
        self,
        buckets: Sequence[Hashable],
        batch_size: int,
        seed: int,
        repeats: Sequence[int] | None = None,
        min_bucket_draws: int | None = None,
        small_bucket_rule: str = "drop",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if repeats is not None and len(repeats) != len(buckets):
            raise ValueError(f"repeats has {len(repeats)} entries for {len(buckets)} items")
        if repeats is not None and any(r < 0 for r in repeats):
            raise ValueError("repeats must be >= 0")
        if small_bucket_rule not in ("drop", "repeat"):
            raise ValueError(f"small_bucket_rule must be 'drop' or 'repeat', got {small_bucket_rule!r}")
        min_draws = batch_size if min_bucket_draws is None else int(min_bucket_draws)
        if min_draws < batch_size:
            raise ValueError(f"min_bucket_draws ({min_draws}) must be at least batch_size ({batch_size})")
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.num_items = len(buckets)
        # bucket -> expanded item indices (repeats applied), in a stable order (sorted bucket keys)
        groups: dict[Hashable, list[int]] = defaultdict(list)
        for index, bucket in enumerate(buckets):
            times = 1 + (int(repeats[index]) if repeats is not None else 0)
            groups[bucket].extend([index] * times)
        self.bucket_sizes = {key: len(groups[key]) for key in groups}
        self.small_buckets = {key: n for key, n in self.bucket_sizes.items() if n < min_draws}
        self.small_bucket_rule = small_bucket_rule
        # (items, draws per epoch) per bucket: a small bucket is dropped or padded to min_draws
        self._groups = [
            (groups[key], min_draws if key in self.small_buckets else len(groups[key]))
            for key in sorted(groups, key=repr)
            if key not in self.small_buckets or small_bucket_rule == "repeat"
        ]
        self.batches_per_epoch = sum(draws // self.batch_size for _, draws in self._groups)
        if self.batches_per_epoch == 0:
            largest = max(self.bucket_sizes.values(), default=0)
            raise InputError(
                f"no bucket holds a full batch: train_batch_size is {batch_size} and one optimizer step needs "
                f"{min_draws} draws of one bucket, but the largest bucket has {largest} (repeats included); "
                "lower train_batch_size or gradient_accumulation_steps, add images or repeats, "
                "or set small_bucket_rule 'repeat'"
            )
        self.epoch = 0
        self.position = 0  # batches already taken from the current epoch
        self._cache: tuple[int, list[list[int]]] | None = None

    def __len__(self) -> int:
        return self.batches_per_epoch

    def dropped_per_epoch(self) -> int:
        """Item draws dropped per epoch because they would form an incomplete batch."""
        return sum(draws % self.batch_size for _, draws in self._groups) + (
            0 if self.small_bucket_rule == "repeat" else sum(self.small_buckets.values())
        )

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch``, in order. Pure function of ``(seed, epoch)``."""
        if self._cache is not None and self._cache[0] == epoch:
            return self._cache[1]
        rng = np.random.default_rng([self.seed % (1 << 63), epoch])  # SeedSequence needs >= 0
        batches: list[list[int]] = []
        for group, draws in self._groups:
            order = rng.permutation(len(group))
            # a small bucket under "repeat" cycles its shuffled items up to ``draws``
            shuffled = [group[order[i % len(group)]] for i in range(draws)]
            full = draws // self.batch_size * self.batch_size  # drop the incomplete remainder
            batches.extend(shuffled[s : s + self.batch_size] for s in range(0, full, self.batch_size))
        batches = [batches[i] for i in rng.permutation(len(batches))]
        self._cache = (epoch, batches)
        return batches

    def next_batch(self) -> list[int]:
        """The next batch; moves to the next epoch when this one is used up."""
        if self.position >= self.batches_per_epoch:
            self.epoch += 1
            self.position = 0
        batch = self.epoch_batches(self.epoch)[self.position]
        self.position += 1
        return list(batch)

    def __iter__(self) -> Iterator[list[int]]:
        """The remaining batches of the current epoch (then the state points at the next epoch)."""
        while True:
            if self.position >= self.batches_per_epoch:
                self.epoch += 1
                self.position = 0
                return
            yield self.next_batch()

    # -- resume -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "batch_size": self.batch_size,
            "num_items": self.num_items,
            "batches_per_epoch": self.batches_per_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``epoch``/``position``; refuses a state from a different item set or batch size,
        because then the same position would name different batches."""
        for key in ("seed", "batch_size", "num_items", "batches_per_epoch"):
            if key in state and int(state[key]) != getattr(self, key):
                raise InputError(
                    f"sampler state does not match this run: {key} is {state[key]} in the checkpoint "
                    f"but {getattr(self, key)} now (did the items table or batch size change?)"
                )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
