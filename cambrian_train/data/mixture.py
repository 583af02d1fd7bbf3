"""A mixture of several record sources as one lazy Sequence, drawn deterministically from a seed.

Each source is a record file with its own image folder and either a ``weight`` or a
``category``. The mixture has a fixed number of records ``total`` (default: the sum of the
source sizes) shared out as:

- weights: source ``i`` gets ``total * w_i / sum(w)`` records;
- category ratios: category ``c`` gets ``total * r_c`` records (ratios sum to 1), split among
  the sources of that category in proportion to their sizes.

Shares are rounded by largest remainder (ties to the earlier source), so the counts sum to
``total`` exactly. A source drawn ``k`` times from ``n`` records contributes a sample without
replacement when ``k <= n``; beyond, it is **upsampled with repetition**: ``k // n`` full copies
plus a sample of ``k % n`` without replacement. The draw depends only on the seed and the
source's name (not on the other sources), and is fixed for the whole run: the sampler reshuffles
the same mixture every epoch.

Records come back as shallow copies with ``source`` set to the source's name (replacing any
``source`` field of the record) and their ``image`` paths joined to the source's image folder
and made absolute, so one dataset serves sources with different image folders. Nothing is read
until asked for: the mixture holds one index array (8 bytes a record).
An interleaved document's ``images`` (data/documents.py) are joined and made absolute the same
way.
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass
from typing import Any, Dict, Optional, Sequence

import numpy as np

from cambrian_train.data.lengths import RecordLengths

log = logging.getLogger(__name__)
SOURCE_KEY = "source"


@dataclass
class MixtureSource:
    """One source of a mixture: its records and how much of the mixture it gets."""

    name: str
    records: Sequence
    image_folder: str
    weight: Optional[float] = None
    category: Optional[str] = None
    path: Optional[str] = None  # the data file (for caches and messages)


def apportion(total: int, shares: Sequence[float]) -> np.ndarray:
    """Integers proportional to ``shares`` summing to ``total`` (largest remainder, ties to
    the earlier entry)."""
    shares = np.asarray(shares, dtype=np.float64)
    if total < 0 or len(shares) == 0 or (shares < 0).any() or shares.sum() <= 0:
        raise ValueError(f"cannot share {total} records by {shares.tolist()}")
    exact = total * shares / shares.sum()
    counts = np.floor(exact).astype(np.int64)
    remainders = exact - counts
    order = np.argsort(-remainders, kind="stable")
    counts[order[: total - counts.sum()]] += 1
    return counts


def source_counts(
    sources: Sequence[MixtureSource],
    total: int,
    category_ratios: Optional[Dict[str, float]] = None,
) -> np.ndarray:
    """Records each source contributes to a mixture of ``total`` records (module docstring)."""
    names = [s.name for s in sources]
    for source in sources:
        if (source.weight is None) == (source.category is None):
            raise ValueError(
                f"mixture source {source.name!r}: set exactly one of weight and category "
                f"(weight={source.weight}, category={source.category!r})"
            )
        if source.weight is not None and not source.weight > 0:
            raise ValueError(f"mixture source {source.name!r}: weight={source.weight} must be > 0")
        if len(source.records) == 0:
            raise ValueError(f"mixture source {source.name!r} ({source.path}) has no records")
    if not category_ratios:
        if any(s.weight is None for s in sources):
            raise ValueError(f"mixture sources {names}: categories need category_ratios")
        return apportion(total, [s.weight for s in sources])
    if any(s.category is None for s in sources):
        raise ValueError(f"mixture sources {names}: with category_ratios every source needs one")
    categories = sorted(category_ratios)
    missing = sorted({s.category for s in sources} - set(categories))
    empty = [c for c in categories if not any(s.category == c for s in sources)]
    if missing or empty:
        raise ValueError(
            f"categories of sources without a ratio: {missing}; ratios without a source: {empty}"
        )
    counts = np.zeros(len(sources), dtype=np.int64)
    per_category = apportion(total, [category_ratios[c] for c in categories])
    for category, count in zip(categories, per_category):
        members = [i for i, s in enumerate(sources) if s.category == category]
        counts[members] = apportion(int(count), [len(sources[i].records) for i in members])
    return counts


def draw(size: int, count: int, seed: int, name: str) -> np.ndarray:
    """``count`` indices into ``size`` records: without replacement up to ``size``, then
    ``count // size`` full copies plus a sample of the rest; sorted; from (seed, name)."""
    rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
    copies, rest = divmod(count, size)
    sample = np.sort(rng.choice(size, rest, replace=False))
    return np.concatenate([np.tile(np.arange(size, dtype=np.int64), copies), sample])


class MixtureRecords(Sequence):
    """The records of a mixture: index ``j`` → (source, record) through one index array."""

    def __init__(
        self,
        sources: Sequence[MixtureSource],
        seed: int,
        total: Optional[int] = None,
        category_ratios: Optional[Dict[str, float]] = None,
    ):
        if not sources:
            raise ValueError("a mixture needs at least one source")
        names = [s.name for s in sources]
        if len(set(names)) != len(names):
            raise ValueError(f"mixture source names repeat: {names}")
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0")
        self.sources = list(sources)
        self.total = sum(len(s.records) for s in sources) if total is None else total
        if self.total < 1:
            raise ValueError(f"mixture size {self.total} must be >= 1")
        self.counts = source_counts(self.sources, self.total, category_ratios)
        self.bounds = np.cumsum(self.counts)  # mixture index j belongs to the first bound > j
        self.local = np.concatenate(
            [draw(len(s.records), int(c), seed, s.name) for s, c in zip(self.sources, self.counts)]
        )
        for source, count in zip(self.sources, self.counts):
            log.info(
                "mixture source %s: %d of %d records (x%.3f)",
                source.name,
                count,
                len(source.records),
                count / len(source.records),
            )

    def __len__(self) -> int:
        return self.total

    def source_index(self, index: int) -> int:
        """Which source mixture index ``index`` draws from."""
        return int(np.searchsorted(self.bounds, index, side="right"))

    def __getitem__(self, index: int) -> Any:
        if not -self.total <= index < self.total:
            raise IndexError(f"mixture index {index} out of range [0, {self.total})")
        index %= self.total
        source = self.sources[self.source_index(index)]
        return tag_record(source.records[int(self.local[index])], source)

    def gather_lengths(self, per_source: Sequence[RecordLengths]) -> RecordLengths:
        """The mixture's token lengths from each source's (in source order)."""
        if [len(v) for v in per_source] != [len(s.records) for s in self.sources]:
            raise ValueError("gather_lengths needs one RecordLengths per source, of its size")
        return RecordLengths.concat(
            [values.take(self.local[self.slice(k)]) for k, values in enumerate(per_source)]
        )

    def slice(self, k: int) -> slice:
        """The mixture indices of source ``k``."""
        return slice(int(self.bounds[k] - self.counts[k]), int(self.bounds[k]))


def tag_record(record: Any, source: MixtureSource) -> Any:
    """A copy of ``record`` with the source tag and absolute image (and video) paths; a record
    that is not a dict (the dataset rejects it) or whose ``image`` is malformed is returned
    unchanged."""
    if not isinstance(record, dict):
        return record
    out = dict(record)
    out[SOURCE_KEY] = source.name
    for key in ("image", "video"):  # a video: a file or a list of frame files
        media = record.get(key)
        if isinstance(media, str):
            out[key] = _absolute(source.image_folder, media)
        elif isinstance(media, list) and all(isinstance(p, str) for p in media):
            out[key] = [_absolute(source.image_folder, p) for p in media]
    images = record.get("images")  # an interleaved document's (data/documents.py); None = text
    if "texts" in record and isinstance(images, list):
        out["images"] = [
            _absolute(source.image_folder, p) if isinstance(p, str) else p for p in images
        ]
    return out


def _absolute(folder: str, path: str) -> str:
    return os.path.abspath(os.path.join(folder, path))
