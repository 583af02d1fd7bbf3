"""Streams of full training batches: skip accounting, batching, and the resume cursor.

Skipped records are counted by reason (first few ids logged) and the stream keeps drawing until
it has ``batch_size`` valid samples, so every batch is full and no bad record is ever replaced by
a silently duplicated one. ``strict`` raises on the first skip instead. Indices come from a
sampler of :mod:`cambrian_train.data.sampler` (``EpochSampler`` is re-exported here); the
stream's :meth:`BatchStream.state_dict` is where a resumed run starts its sampler.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, Iterator, List, Optional

import torch

from cambrian_train.data.dataset import Sample, Skipped
from cambrian_train.data.packing import RowPacker
from cambrian_train.data.sampler import EpochSampler, IndexSampler

__all__ = ["BatchStream", "Cursor", "DataError", "EpochSampler", "SkipStats", "batch_stream"]

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

    def state_dict(self) -> dict:
        return {"counts": dict(self.counts), "ids": {k: list(v) for k, v in self.ids.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Continue the counts of a resumed run."""
        self.counts = Counter(state["counts"])
        self.ids = {k: list(v) for k, v in state["ids"].items()}


def _identity(item):
    return item


@dataclass
class Cursor:
    """Where a stream stands: sampler positions taken, batches yielded and (packing) the
    dataset indices of samples taken but not yet in a yielded batch."""

    position: int
    num_batches: int = 0
    carry: List[int] = field(default_factory=list)


class BatchStream:
    """Endless full batches of valid samples, with a resume cursor.

    :attr:`position` is how many sampler positions (valid and skipped records alike) the main
    process has taken from the loader up to the last batch it yielded; loader workers that
    prefetch ahead do not move it. A stream built on a sampler with ``start=position`` (see
    :meth:`IndexSampler.load_state_dict`) continues with exactly the batches this one would
    have yielded next. Loader workers stop on :meth:`close` (or ``with``), or when the last
    reference to the stream goes.
    """

    def __init__(
        self,
        dataset: torch.utils.data.Dataset,
        sampler: IndexSampler,
        batch_size: int,
        collate_fn: Callable[[List[Sample]], object],
        stats: SkipStats,
        num_workers: int = 0,
        packer: Optional[RowPacker] = None,
        carry: Optional[List[int]] = None,
    ):
        """``packer``: pack samples into its rows (data/packing.py; ``collate_fn`` then takes
        rows of samples) instead of one sample per row; ``carry``: the carried sample indices
        of the state being resumed."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        self.sampler, self.stats = sampler, stats
        self.cursor = Cursor(sampler.start, carry=list(carry or []))
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=None,
            sampler=sampler,
            num_workers=num_workers,
            collate_fn=_identity,
            persistent_workers=num_workers > 0,
            # its own generator: an iterator draws its workers' base seed from it, never from
            # the global stream that dropout draws from (a resumed run continues that stream)
            generator=torch.Generator().manual_seed(sampler.start),
        )
        # the generator holds no reference to self: dropping the stream stops the workers
        if packer is None:
            self._batches = _full_batches(
                loader, len(dataset), batch_size, collate_fn, stats, self.cursor
            )
        else:
            carried = [dataset[i] for i in self.cursor.carry]  # re-read in this process
            self._batches = _packed_batches(
                loader, carried, len(dataset), packer, collate_fn, stats, self.cursor
            )

    @property
    def position(self) -> int:
        return self.cursor.position

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self):
        return next(self._batches)

    def close(self) -> None:
        """Stop the loader's workers now (unless a prefetching thread, such as XLA's device
        loader, is inside the stream at this moment: then they stop when it is dropped)."""
        try:
            self._batches.close()
        except ValueError:  # "generator already executing" in another thread
            log.debug("batch stream busy in a prefetch thread; its workers stop with it")

    def __enter__(self) -> BatchStream:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def state_dict(self) -> Dict:
        """The sampler state at :attr:`position` (what a resumed sampler loads), the number of
        batches yielded and the skip counts (``SkipStats.load_state_dict(state['skips'])``)."""
        return {
            **self.sampler.state_dict(self.cursor.position),
            "batches": self.cursor.num_batches,
            "skips": self.stats.state_dict(),
            "carry": list(self.cursor.carry),
        }


def _full_batches(
    loader: Iterable,
    num_records: int,
    batch_size: int,
    collate_fn: Callable[[List[Sample]], object],
    stats: SkipStats,
    cursor: Cursor,
) -> Iterator[object]:
    """Collated batches of ``batch_size`` valid samples; skips counted; ``cursor`` advanced by
    the positions each batch took, just before it is yielded."""
    buffer: List[Sample] = []
    taken = 0  # positions taken since the last yielded batch
    drawn_since_valid = 0
    for item in loader:
        taken += 1
        if isinstance(item, Skipped):
            stats.add(item)
            drawn_since_valid += 1
            if drawn_since_valid >= num_records * 2:  # two whole passes without a valid one
                raise DataError(f"no usable record in the data set; skips: {stats.summary()}")
            continue
        drawn_since_valid = 0
        buffer.append(item)
        if len(buffer) == batch_size:
            batch = collate_fn(buffer)
            buffer = []
            cursor.position += taken
            cursor.num_batches += 1
            taken = 0
            yield batch


def _packed_batches(
    loader: Iterable,
    carried: List,
    num_records: int,
    packer: RowPacker,
    collate_fn: Callable[[List[List[Sample]]], object],
    stats: SkipStats,
    cursor: Cursor,
) -> Iterator[object]:
    """Packed batches (data/packing.py): samples carried over from a resumed state first, then
    the loader's; ``cursor`` advanced by the positions taken and set to the new carry just
    before each batch is yielded."""
    drawn_since_valid = 0
    taken = 0

    def items():
        yield from ((item, False) for item in carried)
        yield from ((item, True) for item in loader)

    for item, from_loader in items():
        taken += from_loader
        if isinstance(item, Skipped):
            stats.add(item)
            drawn_since_valid += 1
            if drawn_since_valid >= num_records * 2:
                raise DataError(f"no usable record in the data set; skips: {stats.summary()}")
            continue
        drawn_since_valid = 0
        if packer.add(item):
            carry = [s.index for s in packer.carry]  # arrival order: a resume re-adds them in it
            rows = packer.take()
            cursor.position += taken
            cursor.num_batches += 1
            cursor.carry = carry
            taken = 0
            yield collate_fn(rows)


def batch_stream(
    dataset: torch.utils.data.Dataset,
    sampler: IndexSampler,
    batch_size: int,
    collate_fn: Callable[[List[Sample]], object],
    stats: SkipStats,
    num_workers: int = 0,
) -> BatchStream:
    """Endless full batches of valid samples (a :class:`BatchStream`)."""
    return BatchStream(dataset, sampler, batch_size, collate_fn, stats, num_workers)
