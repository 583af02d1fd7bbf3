"""Next-token cross-entropy straight from hidden states, without materialising the logits.

At Llama-3's 128k vocabulary the fp32 logits of one micro-batch (2 × 2048 tokens) take 2 GB,
and the usual ``logits[:, :-1].float()`` path holds several copies of them through the backward.
:class:`LinearCrossEntropy` runs the head one chunk of tokens at a time: in the forward it
computes each chunk's logits in float32, its summed loss and at once the chunk's gradients
(``softmax - onehot``) with respect to the hidden states and the head weight, then drops the
logits; the backward only scales those gradients. Peak extra memory is one chunk of logits
(``chunk_size × V`` floats) instead of several ``B·L × V`` tensors. The loss and gradients
equal ``F.cross_entropy(hidden @ weight.T, labels, reduction="sum")`` (tested).

Labels are the batch's, not shifted: the target of position t is ``labels[t + 1]``, and the
last position of every row has none.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100


def next_token_targets(labels: torch.Tensor) -> torch.Tensor:
    """[B, L] labels → [B, L] targets (``labels`` shifted left by one, -100 at the end), so
    hidden states are used in place (no ``hidden[:, :-1]`` copy)."""
    pad = torch.full_like(labels[:, :1], IGNORE_INDEX)
    return torch.cat([labels[:, 1:], pad], dim=1)


class LinearCrossEntropy(torch.autograd.Function):
    """sum over tokens of CE(hidden @ weight.T, targets), chunked over tokens."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size: int):
        # hidden [N, D] (compute dtype), weight [V, D], targets [N] (IGNORE_INDEX = no target)
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_hidden = torch.zeros_like(hidden) if need_hidden else None
        grad_weight = torch.zeros_like(weight, dtype=torch.float32) if need_weight else None
        for start in range(0, hidden.shape[0], chunk_size):
            h = hidden[start : start + chunk_size]  # [C, D]
            t = targets[start : start + chunk_size]  # [C]
            logits = (h @ weight.t()).float()  # [C, V]
            valid = t != IGNORE_INDEX
            safe = t.clamp(min=0).unsqueeze(1)  # [C, 1]; ignored targets masked below
            target_logit = logits.gather(1, safe).squeeze(1)  # [C]
            lse = torch.logsumexp(logits, dim=-1)  # [C]
            total = total + ((lse - target_logit) * valid).sum()
            if not (need_hidden or need_weight):
                continue
            # d loss / d logits = softmax - onehot, built in the logits' own buffer
            grad = logits.sub_(lse.unsqueeze(1)).exp_()
            grad.scatter_add_(1, safe, -torch.ones_like(grad[:, :1]))
            grad.mul_(valid.unsqueeze(1))
            if need_hidden:
                grad_hidden[start : start + chunk_size] = (grad.to(weight.dtype) @ weight).to(
                    hidden.dtype
                )
            if need_weight:
                grad_weight.addmm_(grad.t(), h.float())  # [V, D], in place: no [V, D] temporary
        # Kept as attributes, not saved tensors (they are results, not inputs): the backward
        # hands them on without another reference, so autograd can adopt the [V, D] gradient
        # as the weight's .grad instead of copying it.
        ctx.grads = [grad_hidden, grad_weight]
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.grads
        ctx.grads = None
        if grad_hidden is not None:
            grad_hidden.mul_(grad_output.to(grad_hidden.dtype))  # in place: no second copy
        if grad_weight is not None:
            grad_weight = grad_weight.mul_(grad_output).to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None


def token_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: Optional[int],
) -> Tuple[torch.Tensor, torch.Tensor]:
    """(summed next-token cross-entropy, number of supervised targets), both 0-dim float32.

    ``hidden`` [B, L, D] are the LLM's final hidden states, ``weight`` [V, D] its output head,
    ``labels`` [B, L] with -100 where nothing is supervised. ``chunk_size`` tokens per chunk;
    None or 0: the plain full-logits computation (the reference).
    """
    targets = next_token_targets(labels).flatten()  # [B*L]
    flat = hidden.flatten(0, 1)  # [B*L, D], a view
    count = (targets != IGNORE_INDEX).sum().float()
    if not chunk_size:
        logits = (flat @ weight.t()).float()
        return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum"), count
    return LinearCrossEntropy.apply(flat, weight, targets, chunk_size), count
