"""A frozen copy of the SVA attention as models/connectors/sva.py computed it before the fast
path (issue 12, item 5): every window token goes through ``k_proj_i`` / ``v_proj_i`` (LayerNorm,
Linear) after ``pos_embed_i`` is added, then one masked SDPA per query.

Same module and parameter names as sva.py, so one state dict loads into both; tests and
tools/bench_sva.py compare the fast layers against these. Not used by the package.
"""

from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.linear_1 = nn.Linear(d_in, d_hidden, bias=False)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(d_hidden, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class MultiKVCrossAttention(nn.Module):
    """One query per row attends jointly to the concatenated keys/values of several towers."""

    def __init__(self, q_dim: int, kv_dims: List[int], hidden: int, num_heads: int):
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden size {hidden} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.q_proj = nn.Sequential(nn.LayerNorm(q_dim), nn.Linear(q_dim, hidden, bias=False))
        for i, kv_dim in enumerate(kv_dims):
            self.add_module(
                f"k_proj_{i}",
                nn.Sequential(nn.LayerNorm(kv_dim), nn.Linear(kv_dim, hidden, bias=False)),
            )
            self.add_module(
                f"v_proj_{i}",
                nn.Sequential(nn.LayerNorm(kv_dim), nn.Linear(kv_dim, hidden, bias=False)),
            )
        self.num_kv = len(kv_dims)
        self.o_proj = nn.Linear(hidden, q_dim, bias=True)

    def forward(
        self, queries: torch.Tensor, kvs: List[torch.Tensor], masks: List[torch.Tensor]
    ) -> torch.Tensor:
        """queries [M, Dq]; kvs[t] [M, K_t, C_t]; masks[t] [M, K_t] bool → [M, Dq]."""
        m = queries.shape[0]
        q = self.q_proj(queries).reshape(m, self.num_heads, 1, -1)  # [M, H, 1, hd]
        keys = torch.cat([getattr(self, f"k_proj_{i}")(kv) for i, kv in enumerate(kvs)], dim=1)
        values = torch.cat([getattr(self, f"v_proj_{i}")(kv) for i, kv in enumerate(kvs)], dim=1)
        k = keys.reshape(m, keys.shape[1], self.num_heads, -1).transpose(1, 2)  # [M, H, K, hd]
        v = values.reshape(m, values.shape[1], self.num_heads, -1).transpose(1, 2)
        mask = torch.cat(masks, dim=1)  # [M, K]
        has_key = mask.any(dim=1)  # [M]; a fully padded window attends to nothing
        mask = mask | ~has_key[:, None]  # keep softmax finite, output zeroed below
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        out = out.reshape(m, -1) * has_key[:, None].to(out.dtype)  # [M, hidden]
        return self.o_proj(out)


class VisionCrossAttentionLayer(nn.Module):
    """Queries (+ a global context) attend to their windows in every tower; residual MLP out."""

    def __init__(
        self,
        q_dim: int,
        context_dim: int,
        kv_dims: List[int],
        window_sides: List[int],
        hidden: int,
        num_heads: int,
    ):
        super().__init__()
        self.window_sides = list(window_sides)
        self.proj_context = nn.Linear(context_dim, hidden, bias=False)
        self.proj_in = nn.Linear(q_dim + hidden, hidden, bias=False)
        self.cross_attn = MultiKVCrossAttention(hidden, kv_dims, hidden, num_heads)
        self.norm = nn.LayerNorm(hidden)
        self.proj_out = MLP(hidden, hidden, q_dim)
        for i, (side, kv_dim) in enumerate(zip(window_sides, kv_dims)):
            if side > 1:  # a one-token window needs no position
                self.register_parameter(
                    f"pos_embed_{i}", nn.Parameter(torch.randn(side * side, kv_dim) * 0.02)
                )

    def forward(
        self,
        queries: torch.Tensor,
        context: torch.Tensor,
        windows: List[torch.Tensor],
        masks: List[torch.Tensor],
    ) -> torch.Tensor:
        """queries [M, Dq], context [M, Dc] (or one per image, repeated here as the old
        connector did before calling), windows[t] [M, w_t², C_t], masks[t] [M, w_t²]."""
        residual = queries
        if context.shape[0] != queries.shape[0]:
            context = context.repeat_interleave(queries.shape[0] // context.shape[0], dim=0)
        x = self.proj_in(torch.cat([queries, self.proj_context(context)], dim=-1))
        kvs = [
            win + getattr(self, f"pos_embed_{i}").to(win.dtype) if side > 1 else win
            for i, (win, side) in enumerate(zip(windows, self.window_sides))
        ]
        x = x + self.cross_attn(x, kvs, masks)
        return self.proj_out(self.norm(x)) + residual


class VisionTokenSampler(nn.Module):
    """``depth`` stacked cross-attention layers over the same windows."""

    def __init__(self, depth: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(VisionCrossAttentionLayer(**layer_kwargs) for _ in range(depth))

    def forward(self, queries, context, windows, masks):
        for layer in self.layers:
            queries = layer(queries, context, windows, masks)
        return queries
