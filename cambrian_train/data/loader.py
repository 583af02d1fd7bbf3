"""Streams of full training batches: deterministic shuffling, skip accounting, batching.

Skipped records are counted by reason (first few ids logged) and the stream keeps drawing until
it has ``batch_size`` valid samples, so every batch is full and no bad record is ever replaced by
a silently duplicated one. ``strict`` raises on the first skip instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Callable, Dict, Iterator, List

import torch

from cambrian_train.data.dataset import Sample, Skipped

log = logging.getLogger(__name__)


class DataError(ValueError):
    """A bad record under ``data.strict=true``, or a data set with no usable record."""


class SkipStats:
    """Counts skips by reason (each occurrence: a record bad in two epochs counts twice) and
    keeps the first distinct ids of each reason."""

    def __init__(self, strict: bool = False, keep_ids: int = 5):
        self.strict = strict
        self.keep_ids = keep_ids
        self.counts: Counter = Counter()
        self.ids: Dict[str, List[str]] = {}

    def add(self, skipped: Skipped) -> None:
        message = f"record {skipped.id} skipped ({skipped.reason}): {skipped.detail}"
        if self.strict:
            raise DataError(message + " [data.strict=true]")
        self.counts[skipped.reason] += 1
        ids = self.ids.setdefault(skipped.reason, [])
        if len(ids) < self.keep_ids and skipped.id not in ids:
            ids.append(skipped.id)
            log.warning(message)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict:
        return {"total": self.total, "by_reason": dict(self.counts), "first_ids": self.ids}


class EpochSampler(torch.utils.data.Sampler):
    """Endless indices: a fresh permutation per epoch from (seed, epoch), this rank's share."""

    def __init__(self, size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle=True):
        if size == 0:
            raise DataError("the data set has no records")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.shuffle = shuffle

    def epoch_indices(self, epoch: int) -> List[int]:
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.size, generator=gen).tolist()
        else:
            order = list(range(self.size))
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[int]:
        epoch = 0
        while True:
            yield from self.epoch_indices(epoch)
            epoch += 1


def _identity(item):
    return item


def batch_stream(
    dataset: torch.utils.data.Dataset,
    sampler: EpochSampler,
    batch_size: int,
    collate_fn: Callable[[List[Sample]], object],
    stats: SkipStats,
    num_workers: int = 0,
) -> Iterator[object]:
    """Endless full batches of valid samples."""
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=None,
        sampler=sampler,
        num_workers=num_workers,
        collate_fn=_identity,
        persistent_workers=num_workers > 0,
    )
    buffer: List[Sample] = []
    drawn_since_valid = 0
    for item in loader:
        if isinstance(item, Skipped):
            stats.add(item)
            drawn_since_valid += 1
            if drawn_since_valid >= len(dataset) * 2:  # two whole passes without one valid sample
                raise DataError(f"no usable record in the data set; skips: {stats.summary()}")
            continue
        drawn_since_valid = 0
        buffer.append(item)
        if len(buffer) == batch_size:
            yield collate_fn(buffer)
            buffer = []
