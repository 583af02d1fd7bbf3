"""AdamW whose step can be withheld by a device-side flag, without a host sync.

``torch.optim.AdamW`` can only skip a step when the host decides (``if bool(finite)``), which on
an accelerator stalls the step for a device→host read; and zeroing the gradients instead still
moves the weights by momentum and advances the step count. :class:`MaskedAdamW` takes the flag
as a tensor: with ``apply`` false every parameter, moment and step count is left exactly as it
was, and the same graph runs either way (so XLA never recompiles on a skipped step).

The update is torch's AdamW (decoupled weight decay, bias correction, ``eps`` outside the square
root), and the state keys (``step``, ``exp_avg``, ``exp_avg_sq``) are torch's, so checkpoints are
interchangeable. Learning rates may be floats or 0-dim tensors (the schedule writes into them in
place; on XLA they enter the graph as data).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch


class MaskedAdamW(torch.optim.Optimizer):
    def __init__(
        self,
        params,
        lr=1e-3,
        betas: Tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
    ):
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"betas={betas}: each must be in [0, 1)")
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None, apply: Optional[torch.Tensor] = None):
        """One AdamW update of every parameter with a gradient; a no-op where ``apply`` (a bool
        tensor on the parameters' device) is false."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr = on_device = None  # the group's lr, moved to the device once per step
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32, device=p.device)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if on_device != p.device:
                    lr, on_device = group["lr"], p.device
                    if isinstance(lr, torch.Tensor):
                        lr = lr.to(device=p.device, dtype=torch.float32)
                self._update(p, state, group, lr, beta1, beta2, apply)
        return loss

    @staticmethod
    def _update(p, state, group, lr, beta1: float, beta2: float, apply) -> None:
        grad = p.grad
        step, exp_avg, exp_avg_sq = state["step"], state["exp_avg"], state["exp_avg_sq"]
        if apply is None:
            on = torch.ones((), dtype=torch.float32, device=p.device)
        else:
            on = apply.to(device=p.device, dtype=torch.float32)
            # a NaN/Inf gradient must not reach the moments even multiplied by zero
            grad = torch.where(apply.to(p.device), grad, torch.zeros_like(grad))
        step.add_(on)
        count = step.clamp(min=1.0)  # bias corrections stay finite on a withheld first step
        bias1 = 1.0 - torch.pow(beta1, count)
        bias2 = 1.0 - torch.pow(beta2, count)
        p.mul_(1.0 - lr * group["weight_decay"] * on)
        exp_avg.mul_(1.0 - (1.0 - beta1) * on).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(1.0 - (1.0 - beta2) * on).addcmul_(grad, grad, value=1.0 - beta2)
        denom = (exp_avg_sq.sqrt() / bias2.sqrt()).add_(group["eps"])
        p.sub_((lr * on / bias1) * (exp_avg / denom))
