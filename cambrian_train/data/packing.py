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
from typing import Dict, List

import torch

from cambrian_train.batch import Batch
from cambrian_train.data.dataset import Sample
from cambrian_train.data.tokenize import IGNORE_INDEX
from cambrian_train.models.vision.base import ImageSpec


@dataclass
class Row:
    samples: List[Sample] = field(default_factory=list)
    tokens: int = 0
    images: int = 0


class RowPacker:
    """First-fit placement of samples into ``rows`` rows (module docstring)."""

    def __init__(self, rows: int, length: int, images: int):
        if rows < 1 or length < 1 or images < 0:
            raise ValueError(
                f"packing needs rows >= 1, length >= 1, images >= 0: got {rows}, {length}, {images}"
            )
        self.num_rows, self.length, self.images = rows, length, images
        self.rows = [Row() for _ in range(rows)]
        self.carry: List[Sample] = []

    def add(self, sample: Sample) -> bool:
        """Place ``sample`` (or carry it); True when the batch is ready to be taken."""
        n, k = len(sample.input_ids), len(sample.image_starts)
        if n > self.length or k > self.images:
            raise ValueError(
                f"sample {sample.id}: {n} tokens / {k} images cannot fit a packed row of "
                f"data.pack_length={self.length} tokens / data.pack_images={self.images} images"
            )
        for row in self.rows:
            if row.tokens + n <= self.length and row.images + k <= self.images:
                row.samples.append(sample)
                row.tokens += n
                row.images += k
                break
        else:
            self.carry.append(sample)
        full = all(row.tokens == self.length for row in self.rows)
        return full or len(self.carry) >= self.num_rows

    @property
    def empty(self) -> bool:
        return not any(row.samples for row in self.rows)

    def take(self) -> List[List[Sample]]:
        """The rows' samples; the packer restarts with the carried samples placed first (a
        carried sample that still fits nowhere stays carried)."""
        rows = [row.samples for row in self.rows]
        carried, self.carry = self.carry, []
        self.rows = [Row() for _ in range(self.num_rows)]
        for sample in carried:
            self.add(sample)
        return rows


def collate_packed(
    rows: List[List[Sample]],
    seq_len: int,
    max_images: int,
    slot_len: int,
    pad_id: int,
    image_specs: Dict[str, ImageSpec],
) -> Batch:
    """Rows of samples → a packed :class:`Batch` of ``len(rows)`` × ``seq_len`` tokens and
    ``max_images`` image slots per row."""
    b = len(rows)
    input_ids = torch.full((b, seq_len), pad_id, dtype=torch.long)
    labels = torch.full((b, seq_len), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((b, seq_len), dtype=torch.long)
    position_ids = torch.zeros((b, seq_len), dtype=torch.long)
    segment_ids = torch.zeros((b, seq_len), dtype=torch.long)
    positions = torch.zeros((b, max_images, slot_len), dtype=torch.long)
    image_mask = torch.zeros((b, max_images), dtype=torch.bool)
    boxes = torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(b, max_images, 1)
    pixels = {
        name: torch.zeros(b, max_images, 3, spec.image_size, spec.image_size)
        for name, spec in image_specs.items()
    }
    for r, samples in enumerate(rows):
        start, slot = 0, 0
        for segment, s in enumerate(samples, start=1):
            n = len(s.input_ids)
            end = start + n
            if end > seq_len:
                raise ValueError(f"row {r} holds {end} tokens > pack length {seq_len}")
            input_ids[r, start:end] = torch.tensor(s.input_ids)
            labels[r, start:end] = torch.tensor(s.labels)
            labels[r, start] = IGNORE_INDEX  # no target across the boundary
            attention_mask[r, start:end] = 1
            position_ids[r, start:end] = torch.arange(n)
            segment_ids[r, start:end] = segment
            k = len(s.image_starts)
            if slot + k > max_images:
                raise ValueError(f"row {r} holds {slot + k} images > {max_images} slots")
            for j, first in enumerate(s.image_starts):
                positions[r, slot + j] = torch.arange(start + first, start + first + slot_len)
                image_mask[r, slot + j] = True
            for name, values in s.pixel_values.items():
                pixels[name][r, slot : slot + values.shape[0]] = values
            boxes[r, slot : slot + k] = s.image_boxes
            start, slot = end, slot + k
    return Batch(
        input_ids,
        labels,
        attention_mask,
        positions,
        image_mask,
        pixels,
        boxes,
        position_ids=position_ids,
        segment_ids=segment_ids,
    )
