"""Validation loss: the mean token loss over a validation set, with the training loss's code.

Every batch goes through ``model(batch, reduction="sum")`` (the step's loss, models/vlm.py):
the summed token losses and the supervised-token counts accumulate as device tensors, are summed
over data-parallel processes once, and divided once — one loss definition, one host read at
the end, no sync per batch.

Sharding: process ``r`` of ``P`` takes samples ``r, r + P, …`` in batches of ``batch_size``
rows; every process runs the same number of batches (a collective backend needs equal forwards),
so short batches are filled with an empty row (one pad token, no label), which adds nothing. A
validation record the dataset skips becomes such a row too, and is counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, List

import torch

from cambrian_train.data.dataset import Sample, Skipped
from cambrian_train.data.instruct import text_sample
from cambrian_train.data.tokenize import IGNORE_INDEX


@dataclass
class ValidationSet:
    """A validation dataset and how its host batches are made."""

    dataset: torch.utils.data.Dataset
    batch_size: int  # rows per host batch
    collate_fn: Callable[[List[Sample]], object]
    pad_id: int
    rank: int = 0
    world_size: int = 1

    @property
    def num_batches(self) -> int:
        per_rank = math.ceil(len(self.dataset) / self.world_size)
        return math.ceil(per_rank / self.batch_size)

    def batches(self, skipped: List[Skipped]) -> Iterator[object]:
        """This process's host batches; skipped records are appended to ``skipped``."""
        mine = range(self.rank, len(self.dataset), self.world_size)
        empty = text_sample("empty", [self.pad_id], [IGNORE_INDEX], -1)
        for b in range(self.num_batches):
            rows = []
            for index in mine[b * self.batch_size : (b + 1) * self.batch_size]:
                item = self.dataset[index]
                if isinstance(item, Skipped):
                    skipped.append(item)
                    item = empty
                rows.append(item)
            rows += [empty] * (self.batch_size - len(rows))
            yield self.collate_fn(rows)


def validation_loss(model, backend, val: ValidationSet) -> dict:
    """{"val_loss", "val_tokens", "val_skipped"} of ``val`` (mean token loss over all
    processes' supervised tokens); the model is put back in the mode it was in."""
    was_training = model.training
    model.eval()
    device = backend.device
    total = torch.zeros((), device=device)
    count = torch.zeros((), device=device)
    skipped: List[Skipped] = []
    try:
        with torch.no_grad():
            for batch in backend.device_stream(val.batches(skipped)):
                with backend.autocast():
                    batch_sum, batch_count = model(batch, reduction="sum")
                total = total + batch_sum.float()
                count = count + batch_count
                backend.micro_step_done()
        total = backend.sum_over_processes(total)
        count = backend.sum_over_processes(count)
        loss = total / count.clamp(min=1.0)
        values = torch.stack([loss, count]).cpu().tolist()  # the one host read
    finally:
        model.train(was_training)
    return {"val_loss": values[0], "val_tokens": int(values[1]), "val_skipped": len(skipped)}
