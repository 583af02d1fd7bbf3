"""Static-shape scatter/gather of vision tokens and the token-length interpolation."""

from __future__ import annotations

import pytest
import torch

from cambrian_train.models.multimodal import gather_at, scatter_at
from cambrian_train.models.vision.resample import resample_tokens


def test_scatter_writes_only_valid_slots_and_gather_reads_back():
    hidden = torch.randn(2, 10, 3)
    positions = torch.tensor([[[1, 2], [5, 6]], [[0, 1], [0, 1]]])
    values = torch.randn(2, 2, 2, 3)
    mask = torch.tensor([[True, True], [True, False]])
    out = scatter_at(hidden, positions, values, mask)
    assert out.shape == hidden.shape
    torch.testing.assert_close(gather_at(out, positions)[0], values[0])
    torch.testing.assert_close(out[1, 0:2], values[1, 0])
    untouched = torch.ones(2, 10, dtype=torch.bool)
    untouched[0, [1, 2, 5, 6]] = False
    untouched[1, [0, 1]] = False
    torch.testing.assert_close(out[untouched], hidden[untouched])


def test_scatter_is_differentiable_in_values():
    values = torch.randn(1, 1, 2, 4, requires_grad=True)
    out = scatter_at(torch.zeros(1, 5, 4), torch.tensor([[[3, 4]]]), values, torch.tensor([[True]]))
    out.sum().backward()
    assert torch.equal(values.grad, torch.ones_like(values))


def test_resample_identity_and_bilinear():
    x = torch.randn(2, 16, 5)
    assert resample_tokens(x, 16) is x
    const = torch.full((1, 64, 3), 2.5)
    torch.testing.assert_close(resample_tokens(const, 16), torch.full((1, 16, 3), 2.5))
    # a horizontal ramp stays a monotone ramp after downsampling 4x4 -> 2x2
    ramp = torch.arange(4.0).repeat(4).reshape(1, 16, 1)
    out = resample_tokens(ramp, 4).reshape(2, 2)
    assert torch.all(out[:, 1] > out[:, 0]) and torch.allclose(out[0], out[1])


def test_resample_rejects_non_square():
    with pytest.raises(ValueError, match="num_tokens=15 is not a perfect square"):
        resample_tokens(torch.randn(1, 16, 2), 15)
    with pytest.raises(ValueError, match="num_tokens=12"):
        resample_tokens(torch.randn(1, 12, 2), 4)
