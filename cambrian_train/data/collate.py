"""Samples → a static-shape :class:`Batch` (sequence length L and image slots I fixed)."""

from __future__ import annotations

from typing import Dict, Iterable, List, Tuple

import torch

from cambrian_train.batch import Batch
from cambrian_train.data.dataset import Sample
from cambrian_train.data.tokenize import IGNORE_INDEX
from cambrian_train.models.vision.base import ImageSpec


def pixel_buffers(
    image_specs: Dict[str, ImageSpec], slots: Tuple[int, int], samples: Iterable[Sample]
) -> Dict[str, torch.Tensor]:
    """Zeroed {tower: [*slots, 3, S, S]} in the samples' pixel dtype (uint8 from the data
    pipeline; float where a caller made normalised samples), uint8 when no sample has one."""
    dtypes = {name: torch.uint8 for name in image_specs}
    for s in samples:
        for name, values in s.pixel_values.items():
            if values.shape[0]:
                dtypes[name] = values.dtype
    return {
        name: torch.zeros(*slots, 3, spec.image_size, spec.image_size, dtype=dtypes[name])
        for name, spec in image_specs.items()
    }


def collate(
    samples: List[Sample],
    seq_len: int,
    max_images: int,
    slot_len: int,
    pad_id: int,
    image_specs: Dict[str, ImageSpec],
    left_pad: bool = False,
) -> Batch:
    """Pad every sample to ``seq_len`` (right, or left for generation) and ``max_images`` slots."""
    b = len(samples)
    input_ids = torch.full((b, seq_len), pad_id, dtype=torch.long)
    labels = torch.full((b, seq_len), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((b, seq_len), dtype=torch.long)
    positions = torch.zeros((b, max_images, slot_len), dtype=torch.long)
    image_mask = torch.zeros((b, max_images), dtype=torch.bool)
    boxes = torch.tensor([0.0, 0.0, 1.0, 1.0]).repeat(b, max_images, 1)
    pixels = pixel_buffers(image_specs, (b, max_images), samples)
    for row, s in enumerate(samples):
        n = len(s.input_ids)
        assert n <= seq_len, f"sample {s.id} has {n} tokens > {seq_len}"
        start = seq_len - n if left_pad else 0
        input_ids[row, start : start + n] = torch.tensor(s.input_ids)
        labels[row, start : start + n] = torch.tensor(s.labels)
        attention_mask[row, start : start + n] = 1
        for slot, first in enumerate(s.image_starts):
            positions[row, slot] = torch.arange(start + first, start + first + slot_len)
            image_mask[row, slot] = True
        for name, values in s.pixel_values.items():
            pixels[name][row, : values.shape[0]] = values
        boxes[row, : s.image_boxes.shape[0]] = s.image_boxes
    return Batch(input_ids, labels, attention_mask, positions, image_mask, pixels, boxes)
