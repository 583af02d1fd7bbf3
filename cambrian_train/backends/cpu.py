"""The CPU backend: one process, eager PyTorch; the reference for tests and the demo."""

from __future__ import annotations

import torch

from cambrian_train.backends.base import Backend
from cambrian_train.registry import BACKENDS


@BACKENDS.register("cpu")
class CPUBackend(Backend):
    name = "cpu"

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def start(self) -> None:
        if self.cfg.num_threads:
            torch.set_num_threads(self.cfg.num_threads)
