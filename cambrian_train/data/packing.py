"""Multimodal sequence packing: several samples per fixed-length row (``data.packing=true``).

Samples are placed first-fit, in the sampler's order, into the ``B`` rows of the batch being
built: a sample goes to the first row with room for its tokens (``pack_length``) and its images
(``pack_images`` slots per row). A sample that fits no row waits in a *carry* list (at most ``B``
samples) and opens the next batch; the batch is closed when the carry is full or every row is
full. On a length-grouped order (longest first within a megabatch) this is a streaming
first-fit-decreasing. The order depends on the sampler's order only, so it is deterministic, and
the stream's state is the sampler position plus the indices of the carried samples, so a resumed
stream yields exactly the batches this one would have (data/loader.py).

In a packed row (see batch.py) position ids restart at 0 for each sample, segment ids number the
samples 1, 2, … (0 = padding), and the first label of every sample is dropped: it would be the
target of the previous sample's last token (unpacked, a row's first label is never a target
either). Each image slot belongs to one sample and sits at that sample's own positions, so the
connector and the SVA layers inside the LLM work per image, hence per sample, as unpacked.

Batch semantics: ``global_batch_size`` counts rows, so with packing a step holds a fixed number
of token positions (rows × ``pack_length``) and a varying number of samples; the loss is the
mean over the step's supervised tokens either way (train/step.py), so the learning rate applies
to a fixed token budget, not a fixed sample count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from cambrian_train.batch import Batch
from cambrian_train.data.collate import pixel_buffers
from cambrian_train.data.dataset import Sample
from cambrian_train.data.tokenize import IGNORE_INDEX
from cambrian_train.models.vision.base import ImageSpec


@dataclass
class Row:
    samples: List[Sample] = field(default_factory=list)
    tokens: int = 0


class RowPacker:
    """First-fit placement of samples into ``rows`` rows of ``length`` tokens (module
    docstring), with ``images`` image slots per group of ``group_rows`` consecutive rows
    (batch.py) and at most ``max_per_row`` samples per row (1: no packing, only the shared
    image budget)."""

    def __init__(
        self,
        rows: int,
        length: int,
        images: int,
        group_rows: int = 1,
        max_per_row: Optional[int] = None,
    ):
        if rows < 1 or length < 1 or images < 0 or group_rows < 1 or rows % group_rows:
            raise ValueError(
                f"packing needs rows >= 1 in groups of group_rows that divide them, length "
                f">= 1, images >= 0: got rows={rows}, group_rows={group_rows}, length={length},"
                f" images={images}"
            )
        self.num_rows, self.length, self.images = rows, length, images
        self.group_rows, self.max_per_row = group_rows, max_per_row
        self.rows = [Row() for _ in range(rows)]
        self.group_images = [0] * (rows // group_rows)
        self.carry: List[Sample] = []

    def add(self, sample: Sample) -> bool:
        """Place ``sample`` (or carry it); True when the batch is ready to be taken."""
        n, k = len(sample.input_ids), len(sample.image_starts)
        if n > self.length or k > self.images:
            raise ValueError(
                f"sample {sample.id}: {n} tokens / {k} images cannot fit a row of "
                f"{self.length} tokens (data.pack_length / the stage's max_length) and "
                f"{self.images} image slots (data.pack_images / data.image_budget)"
            )
        for r, row in enumerate(self.rows):
            group = r // self.group_rows
            if (
                row.tokens + n <= self.length
                and self.group_images[group] + k <= self.images
                and (self.max_per_row is None or len(row.samples) < self.max_per_row)
            ):
                row.samples.append(sample)
                row.tokens += n
                self.group_images[group] += k
                break
        else:
            self.carry.append(sample)
        return self.full or len(self.carry) >= self.num_rows

    @property
    def full(self) -> bool:
        if self.max_per_row is not None:
            return all(len(row.samples) >= self.max_per_row for row in self.rows)
        return all(row.tokens == self.length for row in self.rows)

    def take(self) -> List[List[Sample]]:
        """The rows' samples; the packer restarts with the carried samples placed first (a
        carried sample that still fits nowhere stays carried)."""
        rows = [row.samples for row in self.rows]
        carried, self.carry = self.carry, []
        self.rows = [Row() for _ in range(self.num_rows)]
        self.group_images = [0] * len(self.group_images)
        for sample in carried:
            self.add(sample)
        return rows


def collate_rows(
    rows: List[List[Sample]],
    seq_len: int,
    max_images: int,
    slot_len: int,
    pad_id: int,
    image_specs: Dict[str, ImageSpec],
    group_rows: int = 1,
    packed: bool = True,
) -> Batch:
    """Rows of samples → a :class:`Batch` of ``len(rows)`` × ``seq_len`` tokens with
    ``max_images`` image slots per group of ``group_rows`` rows. ``packed``: segment and
    per-sample position ids (rows may hold several samples); else every row must hold at most
    one sample and the batch is a plain right-padded one."""
    b = len(rows)
    if b % group_rows:
        raise ValueError(f"{b} rows do not split into groups of {group_rows}")
    g = b // group_rows
    input_ids = torch.full((b, seq_len), pad_id, dtype=torch.long)
    labels = torch.full((b, seq_len), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((b, seq_len), dtype=torch.long)
    position_ids = torch.zeros((b, seq_len), dtype=torch.long)
    segment_ids = torch.zeros((b, seq_len), dtype=torch.long)
    positions = torch.zeros((g, max_images, slot_len), dtype=torch.long)
    image_mask = torch.zeros((g, max_images), dtype=torch.bool)
    boxes = torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(g, max_images, 1)
    pixels = pixel_buffers(image_specs, (g, max_images), (s for r in rows for s in r))
    slots = [0] * g
    for r, samples in enumerate(rows):
        if not packed and len(samples) > 1:
            raise ValueError(f"row {r} holds {len(samples)} samples but the batch is not packed")
        group, offset = divmod(r, group_rows)
        start = 0
        for segment, s in enumerate(samples, start=1):
            n = len(s.input_ids)
            end = start + n
            if end > seq_len:
                raise ValueError(f"row {r} holds {end} tokens > row length {seq_len}")
            input_ids[r, start:end] = torch.tensor(s.input_ids)
            labels[r, start:end] = torch.tensor(s.labels)
            labels[r, start] = IGNORE_INDEX  # no target across a boundary (none at 0 anyway)
            attention_mask[r, start:end] = 1
            position_ids[r, start:end] = torch.arange(n)
            segment_ids[r, start:end] = segment
            slot, k = slots[group], len(s.image_starts)
            if slot + k > max_images:
                raise ValueError(
                    f"image group {group} holds {slot + k} images > {max_images} slots"
                )
            base = offset * seq_len + start  # the sample's start in its group's rows
            for j, first in enumerate(s.image_starts):
                positions[group, slot + j] = torch.arange(base + first, base + first + slot_len)
                image_mask[group, slot + j] = True
            for name, values in s.pixel_values.items():
                pixels[name][group, slot : slot + values.shape[0]] = values
            boxes[group, slot : slot + k] = s.image_boxes
            start, slots[group] = end, slot + k
    extra = dict(position_ids=position_ids, segment_ids=segment_ids) if packed else {}
    return Batch(input_ids, labels, attention_mask, positions, image_mask, pixels, boxes, **extra)


def collate_packed(rows: List[List[Sample]], *args, **kwargs) -> Batch:
    """A packed batch of ``rows`` (:func:`collate_rows` with ``packed=True``)."""
    return collate_rows(rows, *args, packed=True, **kwargs)


@dataclass
class BatchShape:
    """How a stage's host batches are built from its data config (``batch_shape``)."""

    seq_len: int  # positions per row
    images: int  # image slots per group
    group_rows: int  # rows per image group (1 = slots per row)
    packing: bool  # several samples per row
    budget: bool  # images from a shared budget: rows go through the packer one sample each

    @property
    def uses_packer(self) -> bool:
        return self.packing or self.budget

    def packer(self, host_batch: int) -> Optional[RowPacker]:
        """A fresh packer for a stream of ``host_batch`` rows (None: one sample per row,
        ``data/collate.py``)."""
        if not self.uses_packer:
            return None
        return RowPacker(
            host_batch,
            self.seq_len,
            self.images,
            group_rows=self.group_rows,
            max_per_row=None if self.packing else 1,
        )

    def collate_kwargs(self) -> dict:
        kwargs = dict(seq_len=self.seq_len, max_images=self.images)
        if self.uses_packer:
            kwargs.update(group_rows=self.group_rows, packed=self.packing)
        return kwargs

    def describe(self) -> str:
        rows = "packed rows" if self.packing else "rows of one sample"
        where = (
            f"per group of {self.group_rows} rows (data.image_budget)" if self.budget else "per row"
        )
        return f"{rows} of {self.seq_len} positions, {self.images} image slots {where}"


def batch_shape(data, stage, slot_len: int, tensor: int = 1) -> BatchShape:
    """The batch layout of ``stage`` (a StageConfig with its per-device batch resolved) under
    ``data`` (DataConfig): packing (``data.packing``, ``pack_length``, ``pack_images``) and the
    shared image budget (``data.image_budget``, slots per device micro-batch: the
    ``per_device_batch_size / tensor`` rows one device holds when the batch is also split over
    ``mesh.tensor``, xla_spmd)."""
    from cambrian_train.config.validate import pack_shape

    length, images = stage.max_length, data.max_images
    if data.packing:
        length, images = pack_shape(data, stage, slot_len)
    budget = data.image_budget is not None
    group_rows = 1
    if budget:
        images, group_rows = data.image_budget, max(1, stage.per_device_batch_size // tensor)
    return BatchShape(length, images, group_rows, data.packing, budget)
