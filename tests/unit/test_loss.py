"""The chunked next-token loss equals the full-logits cross-entropy, in value and gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cambrian_train.models.loss import next_token_targets, token_loss


def _reference(hidden, weight, labels):
    """The textbook computation: logits of every position but the last vs the next label."""
    logits = (hidden[:, :-1] @ weight.t()).float()
    targets = labels[:, 1:]
    total = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum")
    return total, (targets != -100).sum().float()


def _inputs(seed=0, b=3, length=11, d=16, v=50):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, length, d, generator=g, requires_grad=True)
    weight = torch.randn(v, d, generator=g, requires_grad=True)
    labels = torch.randint(0, v, (b, length), generator=g)
    labels[0, :4] = -100  # a prompt
    labels[1, 7:] = -100  # padding
    labels[2, :] = -100  # nothing supervised in this row
    return hidden, weight, labels


def test_targets_shift_left():
    labels = torch.tensor([[1, 2, 3], [-100, 5, 6]])
    assert next_token_targets(labels).tolist() == [[2, 3, -100], [5, 6, -100]]


@pytest.mark.parametrize("chunk_size", [1, 4, 7, 1000, None])
def test_loss_and_gradients_equal_the_full_logits(chunk_size):
    hidden, weight, labels = _inputs()
    ref_total, ref_count = _reference(hidden, weight, labels)
    ref_total.backward()
    ref_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    total, count = token_loss(hidden, weight, labels, chunk_size)
    (total * 0.5).backward()  # an upstream factor reaches both gradients
    assert float(count) == float(ref_count) == (11 - 4) + (7 - 1)  # rows 0 and 1; row 2: none
    torch.testing.assert_close(total, ref_total, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(hidden.grad, 0.5 * ref_grads[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weight.grad, 0.5 * ref_grads[1], rtol=1e-5, atol=1e-6)


def test_frozen_head_gets_no_gradient():
    hidden, weight, labels = _inputs()
    weight = weight.detach()
    total, _ = token_loss(hidden, weight, labels, 4)
    total.backward()
    ref = hidden.detach().clone().requires_grad_(True)
    _reference(ref, weight, labels)[0].backward()
    torch.testing.assert_close(hidden.grad, ref.grad, rtol=1e-5, atol=1e-6)


def test_bf16_autocast_matches_a_bf16_reference():
    hidden, weight, labels = _inputs(d=32, v=64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        total, _ = token_loss(hidden, weight, labels, 5)
        ref, _ = _reference(hidden, weight, labels)
    torch.testing.assert_close(total, ref, rtol=2e-2, atol=1e-1)
