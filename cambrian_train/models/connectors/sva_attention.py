"""The SVA's cross-attention: one query per row attends jointly to the windows of several
towers, computed without projecting the tokens of large windows (models/connectors/sva.py holds
the layers and the connector around it; this module is their attention arithmetic).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn


def folds_projections(tokens: int, kv_dim: int, hidden: int, num_heads: int) -> bool:
    """Whether a tower's windows of ``tokens`` features take the folded path (projections moved
    onto the query and the attention-weighted sum) rather than projecting every window token.

    Folding holds ``2·heads·kv_dim`` values per query for the backward (the query mapped back
    into feature space per head, the weighted feature sum) where projecting holds about
    ``2·tokens·(kv_dim + hidden)`` (the normalised tokens, the keys and values); at widths
    well above the head count it also takes fewer FLOPs for any window of more than one token.
    Fold when it holds less: 4×4 windows at 16 heads fold, one-token windows never do.
    """
    return tokens * (kv_dim + hidden) > num_heads * kv_dim


class SharedWindows:
    """The windows and masks every layer of a sampler attends to, and what those layers share:
    the joint key mask (a fully padded window keeps every key, its output is zeroed) and each
    tower's own LayerNorm statistics (centred features, their variance, the normalised
    features), computed once on first use. Built per forward (nothing outlives it)."""

    def __init__(
        self,
        windows: List[torch.Tensor],
        masks: List[torch.Tensor],
        empty_window: str = "zero",
    ):
        self.windows = list(windows)
        if empty_window == "attend_all":  # the original: per tower, all of an empty window
            masks = [m | ~m.any(dim=1, keepdim=True) for m in masks]
        elif empty_window != "zero":
            raise ValueError(f"empty_window={empty_window!r} is not one of ['attend_all', 'zero']")
        self.masks = list(masks)
        mask = torch.cat(self.masks, dim=1)  # [M, K]
        self.has_key = mask.any(dim=1)  # [M]
        self.blocked = ~mask & self.has_key[:, None]  # [M, K] keys no query may see
        self._cache: Dict[tuple, object] = {}

    def centred(self, t: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Tower t: (x - mean(x) [M, K, C] in the matmuls' dtype, its variance [M, K] fp32)."""
        key = ("centred", t)
        if key not in self._cache:
            x = self.windows[t]
            xf, c = _wide(x), x.shape[-1]
            xc = xf - xf.sum(dim=-1, keepdim=True) / c  # sums: no [M, K, C] divisions
            self._cache[key] = (_operand(xc, x.dtype), xc.square().sum(dim=-1) / c)
        return self._cache[key]

    def normalized(self, t: int, eps: float) -> torch.Tensor:
        """Tower t's features normalised (LayerNorm without affine) [M, K, C], in the matmuls'
        dtype."""
        key = ("normalized", t, eps)
        if key not in self._cache:
            x = self.windows[t]
            y = F.layer_norm(x, x.shape[-1:], eps=eps)
            self._cache[key] = _operand(y, y.dtype)
        return self._cache[key]


def _operand(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """x as a shared matmul operand: in the autocast dtype where autocast would cast a float32
    tensor at each matmul (once here, instead of a copy per use and layer), else in ``dtype``."""
    device = x.device.type
    autocast = torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)
    if x.dtype == torch.float32 and autocast:
        return x.to(torch.get_autocast_dtype(device))
    return x.to(dtype)


def _wide(x: torch.Tensor) -> torch.Tensor:
    """x in float32 at least (statistics and softmax of half-precision inputs)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class _TokenDots(torch.autograd.Function):
    """x [M, K, C], p [K, C] → [M, K] of x[m, k]·p[k] (x's dtype). Autograd of the elementwise
    form makes two [M, K, C] products and a broadcast reduction in the backward; this one makes
    dx = g·p and reduces dp = Σ_m g[m, k]·x[m, k] with one batched matmul over k."""

    @staticmethod
    def forward(ctx, x, p):
        ctx.save_for_backward(x, p)
        return (x * p).sum(dim=-1)

    @staticmethod
    def backward(ctx, g):
        x, p = ctx.saved_tensors
        g = g.to(x.dtype)
        dx = (g[..., None] * p).to(x.dtype) if ctx.needs_input_grad[0] else None
        dp = None
        if ctx.needs_input_grad[1]:  # [K, 1, M] @ [K, M, C]
            dp = torch.bmm(g.t()[:, None, :], x.transpose(0, 1))[:, 0].to(p.dtype)
        return dx, dp


def _fold(linear: nn.Linear, norm: nn.LayerNorm, num_heads: int):
    """``Linear(LayerNorm(·))`` as ``W·diag(γ)`` [H, hd, C] on normalised input plus ``W·β``
    [H, hd]."""
    weight = linear.weight  # [hidden, C]
    hd = weight.shape[0] // num_heads
    scaled = (weight * norm.weight).view(num_heads, hd, weight.shape[1])
    return scaled, torch.mv(weight, norm.bias).view(num_heads, hd)


class MultiKVCrossAttention(nn.Module):
    """One query per row attends jointly to the windows of several towers.

    Computes ``softmax(q_h·k_hj / √hd) v_hj`` summed over every tower's window tokens j, with
    ``k_j = k_proj_t(x_j + p_j)``, ``v_j = v_proj_t(x_j + p_j)`` (p: the layer's position
    embedding, if any), without projecting the tokens of large windows
    (:func:`folds_projections`):

    - keys: ``q_h·W_h(γ⊙ŷ_j + β) = (γ⊙W_hᵀq_h)·ŷ_j + q_h·W_hβ``, one projection per query;
    - values: ``Σ_j a_hj W_h(γ⊙ŷ_j + β) = W_h(γ⊙Σ_j a_hj ŷ_j) + (Σ_j a_hj) W_hβ``;
    - ``ŷ_j = (x_j + p_j - μ_j)·r_j`` with ``x_j + p_j - μ_j = x̄_j + p̄_j`` (both centred) and
      ``r_j = 1/√(var(x_j) + var(p_j) + 2·mean(x̄_j⊙p̄_j) + ε)``, so ``x + p`` is never formed;
      x̄ and var(x) are shared by the layers of a sampler (:class:`SharedWindows`).

    Windows of few tokens (one-token windows always) are projected as before, from the shared
    normalised features (from LayerNorm(x + p) per layer when they carry a position).
    Parameters are those of the ``Linear(LayerNorm)`` modules, as in the official checkpoints;
    only their products with the weights (``W·diag(γ)``, ``W·β``) are formed per forward.
    """

    def __init__(
        self,
        q_dim: int,
        kv_dims: List[int],
        hidden: int,
        num_heads: int,
        o_proj_bias: bool = False,
        empty_window: str = "attend_all",
    ):
        super().__init__()
        if hidden % num_heads:
            raise ValueError(f"hidden size {hidden} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.empty_window = empty_window
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
        self.o_proj = nn.Linear(hidden, q_dim, bias=o_proj_bias)

    def forward(
        self,
        queries: torch.Tensor,
        kvs: List[torch.Tensor],
        masks: List[torch.Tensor],
        pos_embeds: Optional[List[Optional[torch.Tensor]]] = None,
        shared: Optional[SharedWindows] = None,
    ) -> torch.Tensor:
        """queries [M, Dq]; kvs[t] [M, K_t, C_t]; masks[t] [M, K_t] bool → [M, Dq].

        Keys and values are ``kvs[t] + pos_embeds[t]`` ([K_t, C_t], None for none);
        ``shared`` (built from kvs and masks when None) carries what layers share."""
        if shared is None:
            shared = SharedWindows(kvs, masks, self.empty_window)
        m, h = queries.shape[0], self.num_heads
        q = self.q_proj(queries)
        hd = q.shape[-1] // h
        q = (q * hd**-0.5).view(m, h, hd)  # [M, H, hd], scaled
        logits, values = [], []
        for t in range(self.num_kv):
            x = shared.windows[t]
            pos = None if pos_embeds is None else pos_embeds[t]
            k_norm, k_lin = getattr(self, f"k_proj_{t}")
            v_norm, v_lin = getattr(self, f"v_proj_{t}")
            wk, bk = _fold(k_lin, k_norm, h)
            wv, bv = _fold(v_lin, v_norm, h)
            if folds_projections(x.shape[1], x.shape[2], h * hd, h):
                s, value = self._folded(q, shared, t, pos, wk, bk, wv, bv, k_norm.eps, v_norm.eps)
            else:
                s, value = self._projected(
                    q, shared, t, pos, wk, bk, wv, bv, k_norm.eps, v_norm.eps
                )
            logits.append(s)
            values.append(value)
        scores = _wide(torch.cat(logits, dim=-1))  # [M, H, K]
        scores = scores.masked_fill(shared.blocked[:, None, :], float("-inf"))
        weights = scores.softmax(dim=-1).split([x.shape[1] for x in shared.windows], dim=-1)
        out = sum(value(a) for a, value in zip(weights, values))  # [M, H, hd]
        out = out.reshape(m, h * hd).to(q.dtype) * shared.has_key[:, None].to(q.dtype)
        return self.o_proj(out)

    @staticmethod
    def _folded(q, shared, t, pos, wk, bk, wv, bv, k_eps, v_eps):
        """Tower t without projecting its tokens: (logits [M, H, K], weights → [M, H, hd])."""
        xc, var = shared.centred(t)  # [M, K, C], [M, K]
        pk = pv = None
        if pos is not None:  # LayerNorm(x + p) from the statistics of x and p
            pf = _wide(pos.to(xc.dtype))
            pc = pf - pf.mean(dim=-1, keepdim=True)  # [K, C]
            cov = _wide(_TokenDots.apply(xc, pc.to(xc.dtype))) / pc.shape[-1]  # [M, K]
            var = (var + pc.square().mean(dim=-1) + 2.0 * cov).clamp_min(0.0)
            pc = pc.to(xc.dtype)
            # the centred positions projected once per layer: [K, H, hd]
            pk = F.linear(pc, wk.flatten(0, 1)).view(pc.shape[0], *wk.shape[:2])
            pv = F.linear(pc, wv.flatten(0, 1)).view(pc.shape[0], *wv.shape[:2])
        rk = torch.rsqrt(var + k_eps)  # [M, K]
        rv = rk if v_eps == k_eps else torch.rsqrt(var + v_eps)
        # head-major views and bmm (no einsum): no copies of the [M, H, C] tensors
        qh = q.transpose(0, 1)  # [H, M, hd]
        qt = torch.bmm(qh, wk).transpose(0, 1)  # the query in feature space [M, H, C]
        s = torch.bmm(qt, xc.transpose(1, 2))  # [M, H, K]
        if pk is not None:
            s = s + torch.bmm(qh, pk.permute(1, 2, 0)).transpose(0, 1)
        s = s * rk[:, None, :] + (q * bk).sum(dim=-1, keepdim=True)

        def value(a):  # a [M, H, K] → [M, H, hd]
            ar = (a * rv[:, None, :]).to(xc.dtype)
            z = torch.bmm(ar, xc)  # the weighted centred features [M, H, C]
            o = torch.bmm(z.transpose(0, 1), wv.transpose(1, 2))  # [H, M, hd]
            if pv is not None:
                o = o + torch.bmm(ar.transpose(0, 1), pv.transpose(0, 1))
            return o.transpose(0, 1) + a.sum(dim=-1, keepdim=True) * bv

        return s, value

    @staticmethod
    def _projected(q, shared, t, pos, wk, bk, wv, bv, k_eps, v_eps):
        """Tower t with its tokens projected: (logits [M, H, K], weights → [M, H, hd])."""
        x = shared.windows[t]
        m, tokens, c = x.shape
        h, hd = wk.shape[:2]
        if pos is None:  # normalised once per sampler
            yk, yv = shared.normalized(t, k_eps), shared.normalized(t, v_eps)
        else:
            y = x + pos.to(x.dtype)
            yk = F.layer_norm(y, (c,), eps=k_eps)
            yv = yk if v_eps == k_eps else F.layer_norm(y, (c,), eps=v_eps)
        if yk is yv:  # keys and values in one matmul
            weight, bias = torch.cat([wk, wv]).flatten(0, 1), torch.cat([bk, bv]).flatten()
            k, v = F.linear(yk, weight, bias).view(m, tokens, 2 * h, hd).split(h, dim=2)
        else:
            k = F.linear(yk, wk.flatten(0, 1), bk.flatten()).view(m, tokens, h, hd)
            v = F.linear(yv, wv.flatten(0, 1), bv.flatten()).view(m, tokens, h, hd)
        s = (q[:, None] * k).sum(dim=-1).transpose(1, 2)  # [M, H, K]

        def value(a):  # a [M, H, K]
            return (a.transpose(1, 2)[..., None].to(v.dtype) * v).sum(dim=1)

        return s, value
