"""The hardware seam: everything device-, mesh- or rank-specific sits behind :class:`Backend`.

Models and data never mention devices; the trainer calls only these methods.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Iterable

import torch
from torch import nn

from cambrian_train.batch import Batch
from cambrian_train.config.schema import BackendConfig, MeshConfig


class Backend(abc.ABC):
    name: str = ""

    def __init__(self, cfg: BackendConfig, mesh: MeshConfig):
        self.cfg = cfg
        self.mesh = mesh
        self.rank = 0
        self.world_size = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    @abc.abstractmethod
    def device(self) -> torch.device:
        """Where batches and parameters live."""

    @property
    def data_parallel_rank(self) -> int:
        return self.rank

    @property
    def data_parallel_size(self) -> int:
        return self.world_size

    def setup(self) -> None:
        """Initialise the runtime (process groups, meshes); called once before building models."""

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move/shard/wrap a model whose trainable parameters are already marked."""
        return model.to(self.device)

    def move_batch(self, batch: Batch) -> Batch:
        return batch.to(self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.cfg.dtype == "bfloat16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def clip_grad_norm(self, params: Iterable[nn.Parameter], max_norm: float) -> torch.Tensor:
        return torch.nn.utils.clip_grad_norm_(list(params), max_norm)

    def step_done(self) -> None:
        """End of an optimiser step (XLA cuts the graph here)."""

    def barrier(self) -> None:
        """Wait for all processes."""

    def shutdown(self) -> None:
        """Release the runtime."""
