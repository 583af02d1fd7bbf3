"""One optimiser step: micro-batches → one loss over the global batch → clip → masked AdamW.

The loss of a step is the sum of the token losses of every micro-batch on every data-parallel
rank divided by the number of supervised tokens in all of them. Each micro-batch's backward runs
on its *summed* loss; once all are accumulated the gradients are divided by the global token
count (a device tensor: no host sync), so accumulation ``k × B/k`` and ``1 × B`` give the same
loss and gradients, and cpu, xla_spmd and cuda_fsdp optimise the same objective.

Nothing here reads a device value: the loss, gradient norm and finite flag come back as device
tensors, the optimiser skips a non-finite step on the device (train/adamw.py), and the backend
cuts the XLA graph after every micro-step, so the compiled graphs do not depend on ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List

import torch
from torch import nn

from cambrian_train.backends.base import Backend
from cambrian_train.batch import Batch


@dataclass
class StepOutput:
    loss: torch.Tensor  # 0-dim: the global batch's mean token loss
    grad_norm: torch.Tensor  # 0-dim: before clipping
    finite: torch.Tensor  # 0-dim bool: the update was applied


class TrainStep:
    """``step(batches)`` draws ``grad_accum_steps`` micro-batches and applies one update."""

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        params: List[nn.Parameter],
        backend: Backend,
        grad_accum_steps: int,
        grad_clip: float,
    ):
        self.model = model
        self.optimizer = optimizer
        self.params = params
        self.backend = backend
        self.grad_accum_steps = grad_accum_steps
        self.grad_clip = grad_clip

    def __call__(self, batches: Iterator[Batch]) -> StepOutput:
        device = self.backend.device
        loss_sum = torch.zeros((), device=device)
        tokens = torch.zeros((), device=device)
        for _ in range(self.grad_accum_steps):
            batch = next(batches)
            with self.backend.autocast():
                micro_sum, micro_tokens = self.model(batch, reduction="sum")
            micro_sum.backward()
            loss_sum = loss_sum + micro_sum.detach()
            tokens = tokens + micro_tokens
            self.backend.micro_step_done()
        loss_sum = self.backend.sum_over_processes(loss_sum)
        tokens = self.backend.sum_over_processes(tokens).clamp(min=1.0)
        # gradients hold sums (FSDP: their mean over ranks); make them the global token mean
        self.backend.scale_gradients(self.params, self.backend.gradient_average_size / tokens)
        grad_norm = self.backend.clip_grad_norm(self.params, self.grad_clip)
        loss = loss_sum / tokens
        finite = torch.isfinite(loss) & torch.isfinite(grad_norm)
        self.optimizer.step(apply=finite)
        self.optimizer.zero_grad(set_to_none=True)
        return StepOutput(loss.detach(), grad_norm.detach(), finite)
