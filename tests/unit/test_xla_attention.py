"""The TPU flash-attention wrapper's plumbing, on CPU: the Pallas kernel replaced by a plain
reference with its signature, the wrapper must give what the causal SDPA gives — grouped-query
heads, scaling, dtype, and packed segments included."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cambrian_train.backends.xla_attention import make_flash_attention, partition_spec
from cambrian_train.models.llm import _causal_sdpa, segment_mask


def reference_kernel(q, k, v, causal, q_segment_ids, kv_segment_ids, sm_scale, **kwargs):
    """What the Pallas kernel computes, written out: softmax(q kᵀ · scale + mask) v."""
    assert causal and kwargs["partition_spec"] == partition_spec(False)
    length = q.shape[2]
    allowed = torch.ones(length, length, dtype=torch.bool).tril()[None, None]
    if q_segment_ids is not None:
        assert q_segment_ids.dtype == torch.int32
        same = q_segment_ids[:, :, None] == kv_segment_ids[:, None, :]
        allowed = allowed & same[:, None]
    scores = (q @ k.transpose(-1, -2)).float() * sm_scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    return (F.softmax(scores, dim=-1).to(v.dtype)) @ v


class Module:
    num_key_value_groups = 2
    is_causal = True
    training = True


@pytest.mark.parametrize("packed", [False, True])
def test_flash_wrapper_equals_causal_sdpa(packed):
    gen = torch.Generator().manual_seed(0)
    b, heads, kv_heads, length, hd = 2, 4, 2, 12, 8
    q = torch.randn(b, heads, length, hd, generator=gen)
    k = torch.randn(b, kv_heads, length, hd, generator=gen)
    v = torch.randn(b, kv_heads, length, hd, generator=gen)
    kwargs = {}
    if packed:
        kwargs["segment_ids"] = torch.tensor([[1] * 5 + [2] * 4 + [0] * 3, [1] * 12])
    flash = make_flash_attention(reference_kernel, None, partition_spec(False))
    got, weights = flash(Module(), q, k, v, None, scaling=0.3, **kwargs)
    want, _ = _causal_sdpa(Module(), q, k, v, None, scaling=0.3, **dict(kwargs))
    assert weights is None and got.shape == (b, length, heads, hd)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    if packed:  # the second sample ignores the first: equal to running it alone
        alone, _ = flash(Module(), q[:1, :, 5:9], k[:1, :, 5:9], v[:1, :, 5:9], None, scaling=0.3)
        torch.testing.assert_close(got[:1, 5:9], alone, rtol=1e-5, atol=1e-5)


def test_segment_mask_is_block_diagonal_causal():
    mask = segment_mask(torch.tensor([[1, 1, 2, 2, 0]]))[0, 0].int().tolist()
    assert mask == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 1, 1, 0],
        [0, 0, 0, 0, 1],
    ]


def test_flash_only_on_xla(compose, tiny_overrides):
    from cambrian_train.config.validate import ConfigError

    with pytest.raises(ConfigError, match="backend.attention=flash is torch_xla"):
        compose([*tiny_overrides, "backend.attention=flash"], validate_it=True)
