"""Endless, resumable, sharded index samplers: plain shuffled and modality/length grouped.

Both yield this rank's share of a fresh order per epoch, drawn from ``(seed, epoch)`` only, so
every rank computes the same epoch order and takes its own disjoint share; the shares of all
ranks cover every index once per epoch (nothing is dropped or repeated). A rank's share has the
same size every epoch, so one integer — the *position*, how many indices this rank has consumed
since the start of training — says where a stream stands; ``start=position`` (or
:meth:`IndexSampler.load_state_dict`) resumes exactly there.

:class:`LengthGroupedSampler` follows the idea of LLaVA's ``get_modality_length_grouped_indices``
(written afresh, vectorised with numpy): multimodal and text-only records are shuffled
separately and cut into megabatches of ``group_batches`` steps × ``world_size`` ranks ×
``batch_size``; each megabatch is sorted by true token length (longest first) and step ``k`` of
it gives rank ``r`` the ``r``-th contiguous ``batch_size`` run of the sorted step, so every
batch holds records of neighbouring lengths and one modality, and at every step the ranks get
similar lengths. Megabatch order is shuffled; what is left of each modality (fewer than one
step) goes, sorted, to the end of the epoch, split as evenly as it goes across ranks (the only
place where the modalities can meet). 7M indices take about a second per epoch.
"""

from __future__ import annotations

import abc
import hashlib
import logging
from typing import Dict, Iterator, List, Optional

import numpy as np
import torch

log = logging.getLogger(__name__)
CHUNK = 1 << 16  # indices turned into Python ints at a time while iterating
DATA_KEYS = ("kind", "size", "seed", "shuffle")  # a resumed state must match these


class IndexSampler(torch.utils.data.Sampler, abc.ABC):
    """Base: endless iteration over :meth:`epoch_array` from position ``start``."""

    kind = "base"

    def __init__(self, size: int, seed: int, rank: int, world_size: int, start: int):
        if size < 1:
            raise ValueError("the data set has no records")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
        if seed < 0:
            raise ValueError(f"seed={seed} must be >= 0")
        if start < 0:
            raise ValueError(f"start={start} must be >= 0")
        self.size, self.seed, self.rank, self.world_size = size, seed, rank, world_size
        self.start = start
        self._cached: Optional[tuple] = None  # (epoch, this rank's indices)

    @abc.abstractmethod
    def _epoch_order(self, epoch: int) -> np.ndarray:
        """This rank's indices of ``epoch`` (int64)."""

    def epoch_array(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            self._cached = (epoch, self._epoch_order(epoch))
        return self._cached[1]

    def epoch_indices(self, epoch: int) -> List[int]:
        """This rank's indices of ``epoch`` as a list (small data sets and tests)."""
        return self.epoch_array(epoch).tolist()

    @abc.abstractmethod
    def _epoch_size(self) -> int:
        """len(this rank's indices) of any epoch, without computing an order."""

    @property
    def epoch_size(self) -> int:
        """Indices this rank yields per epoch (the same every epoch)."""
        size = self._epoch_size()
        if size == 0:
            raise ValueError(
                f"{self.size} records leave rank {self.rank} of world_size={self.world_size} "
                "nothing to read"
            )
        return size

    def locate(self, position: int) -> tuple:
        """(epoch, offset in that epoch) of ``position``."""
        return divmod(position, self.epoch_size)

    def __iter__(self) -> Iterator[int]:
        epoch, offset = self.locate(self.start)
        while True:
            order = self.epoch_array(epoch)
            for first in range(offset, len(order), CHUNK):
                yield from order[first : first + CHUNK].tolist()
            epoch, offset = epoch + 1, 0

    def identity(self) -> Dict:
        """What the order depends on. ``kind``, ``size`` and ``seed`` (the data's order) must
        match a state to resume from; the rest is the layout (rank, world size, batch)."""
        return {
            "kind": self.kind,
            "size": self.size,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.world_size,
        }

    def state_dict(self, position: Optional[int] = None) -> Dict:
        """``position`` (default ``start``) with :meth:`identity`."""
        return {"position": self.start if position is None else position, **self.identity()}

    def load_state_dict(self, state: Dict) -> None:
        """Resume at ``state['position']``.

        A state of another data order (kind, size, seed, shuffle) is a ValueError. A state of
        another layout (rank, world size, batch) or other lengths (records edited in place,
        another tokenizer) is taken with a warning: the position then lands at the same place
        in the same epoch, but the indices around it differ from the saved run's (after a change
        of world size the resume code passes the saved ranks' positions summed and shared out
        over the new ranks).
        """
        position = state.get("position")
        if not isinstance(position, int) or position < 0:
            raise ValueError(f"sampler state position={position!r} is not an int >= 0")
        changed = []
        for key, value in self.identity().items():
            if state.get(key) == value:
                continue
            if key in DATA_KEYS:
                raise ValueError(
                    f"sampler state has {key}={state.get(key)!r} but this sampler has "
                    f"{key}={value!r}: the saved position refers to a different data order"
                )
            changed.append(f"{key} {state.get(key)!r} -> {value!r}")
        if changed:
            log.warning("sampler resumed at position %d with %s", position, ", ".join(changed))
        self.start = position


class EpochSampler(IndexSampler):
    """Plain mode: a fresh permutation per epoch (or the natural order with ``shuffle=False``),
    this rank's share ``order[rank::world_size]``."""

    kind = "shuffled"

    def __init__(
        self,
        size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        start: int = 0,
    ):
        super().__init__(size, seed, rank, world_size, start)
        self.shuffle = shuffle
        self.epoch_size  # noqa: B018  (raises now when this rank would get nothing)

    def identity(self) -> Dict:
        return dict(super().identity(), shuffle=self.shuffle)

    def _epoch_size(self) -> int:
        return len(range(self.rank, self.size, self.world_size))

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self.shuffle:
            order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
        else:
            order = np.arange(self.size, dtype=np.int64)
        return order[self.rank :: self.world_size]


class LengthGroupedSampler(IndexSampler):
    """Modality- and length-grouped order (module docstring). ``lengths`` int [N] (true token
    lengths, > 0), ``multimodal`` bool [N]; ``batch_size`` is one rank's batch."""

    kind = "length_grouped"

    def __init__(
        self,
        lengths: np.ndarray,
        multimodal: np.ndarray,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        group_batches: int = 16,
        start: int = 0,
    ):
        lengths = np.asarray(lengths)
        multimodal = np.asarray(multimodal, dtype=bool)
        if lengths.ndim != 1 or lengths.shape != multimodal.shape:
            raise ValueError(
                f"lengths {lengths.shape} and multimodal {multimodal.shape} must be 1-d and equal"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} must be >= 1")
        if group_batches < 1:
            raise ValueError(f"group_batches={group_batches} must be >= 1")
        super().__init__(len(lengths), seed, rank, world_size, start)
        self.lengths = lengths.astype(np.int64)
        self.multimodal = multimodal
        self.batch_size = batch_size
        self.group_batches = group_batches
        digest = hashlib.sha256(self.lengths.tobytes() + multimodal.tobytes()).hexdigest()
        self.lengths_digest = digest[:16]
        self.epoch_size  # noqa: B018  (raises now when this rank would get nothing)

    @classmethod
    def from_signed(cls, signed: np.ndarray, batch_size: int, seed: int, **kwargs):
        """From LLaVA-style signed lengths (+ multimodal, - text-only)."""
        signed = np.asarray(signed)
        return cls(np.abs(signed), signed > 0, batch_size, seed, **kwargs)

    def identity(self) -> Dict:
        return dict(
            super().identity(),
            batch_size=self.batch_size,
            group_batches=self.group_batches,
            lengths_digest=self.lengths_digest,
        )

    def _epoch_size(self) -> int:
        step = self.world_size * self.batch_size
        mega = self.group_batches * step
        steps, leftover = 0, 0
        for n in (int(self.multimodal.sum()), int((~self.multimodal).sum())):
            steps += n // mega * self.group_batches + n % mega // step
            leftover += n % step
        tail = 0
        for first in range(0, leftover, step):
            chunk = min(step, leftover - first)
            tail += chunk // self.world_size + (self.rank < chunk % self.world_size)
        return steps * self.batch_size + tail

    def _sorted(self, index: np.ndarray) -> np.ndarray:
        """``index`` ([..., n]) sorted along its last axis by length, longest first (stable)."""
        order = np.argsort(-self.lengths[index], axis=-1, kind="stable")
        return np.take_along_axis(index, order, axis=-1)

    def _modality_units(self, index: np.ndarray, rng: np.random.Generator):
        """Shuffled ``index`` → (full megabatches [m, G, W, B], one partial megabatch
        [k, W, B] or None, left-over indices [< W*B] sorted)."""
        step = self.world_size * self.batch_size
        mega = self.group_batches * step
        index = rng.permutation(index)
        num_full = len(index) // mega
        full = self._sorted(index[: num_full * mega].reshape(num_full, mega))
        full = full.reshape(num_full, self.group_batches, self.world_size, self.batch_size)
        rest = self._sorted(index[num_full * mega :])
        num_steps = len(rest) // step
        partial = None
        if num_steps:
            partial = rest[: num_steps * step].reshape(num_steps, self.world_size, self.batch_size)
        return full, partial, rest[num_steps * step :]

    def _epoch_order(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        fulls, partials, leftovers = [], [], []
        for mask in (self.multimodal, ~self.multimodal):
            full, partial, leftover = self._modality_units(np.flatnonzero(mask), rng)
            fulls.append(full)
            if partial is not None:
                partials.append(partial)
            leftovers.append(leftover)
        full = np.concatenate(fulls)[:, :, self.rank, :]
        full = full.reshape(len(full), self.group_batches * self.batch_size)  # [m, G * B]
        units = self._shuffle_units(full, [p[:, self.rank, :].reshape(-1) for p in partials], rng)
        return np.concatenate([units, self._tail(np.concatenate(leftovers))])

    def _shuffle_units(
        self, full: np.ndarray, partials: List[np.ndarray], rng: np.random.Generator
    ) -> np.ndarray:
        """This rank's shares of all megabatches (rows of ``full`` and ``partials``) in a
        random order, concatenated."""
        order = rng.permutation(len(full) + len(partials))
        flat = full[order[order < len(full)]].reshape(-1)
        pieces, previous = [], 0
        slots = np.flatnonzero(order >= len(full))
        for k, (slot, unit) in enumerate(zip(slots, order[slots])):
            cut = (slot - k) * full.shape[1]  # positions of the full units before this slot
            pieces += [flat[previous:cut], partials[unit - len(full)]]
            previous = cut
        pieces.append(flat[previous:])
        return np.concatenate(pieces)

    def _tail(self, leftover: np.ndarray) -> np.ndarray:
        """This rank's share of the left-overs (multimodal first, then text, each sorted):
        steps of W*B split contiguously, the last one as evenly as it goes."""
        step = self.world_size * self.batch_size
        chunks = [leftover[i : i + step] for i in range(0, len(leftover), step)]
        mine = [np.array_split(chunk, self.world_size)[self.rank] for chunk in chunks]
        return np.concatenate(mine) if mine else np.zeros(0, dtype=np.int64)
