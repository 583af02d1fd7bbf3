"""The Spatial Vision Aggregator (SVA) connector of Cambrian-1 (REFERENCE §1).

Each tower's features are projected to ``vision_hidden_size`` (Linear-GELU-Linear-LayerNorm). A
query grid of s×s tokens per group attends, layer after layer, to every tower at once; query
(i, j) sees only window (i, j) of each tower (an S×S grid cut into s×s windows of (S/s)² features).
Windows are gathered into the batch dimension, so attention is one batched op whose cost is
linear in the number of tower tokens. Query groups are resized to ``image_token_len`` and
concatenated, then an MLP maps them to the LLM width.

The attention does not project every window token through ``k_proj_i`` / ``v_proj_i`` when a
window holds many: the key projection moves onto the query, the value projection after the
weighted sum, and LayerNorm(x + pos_embed) comes from the statistics of x (shared by a sampler's
layers) and of the position embedding (:class:`MultiKVCrossAttention`). Same outputs and
gradients as projecting (tests/unit/sva_reference.py), several times fewer FLOPs and less
activation memory (tools/bench_sva.py).

Submodule names mirror the official checkpoints (``vision_sampler_{g}``, ``mm_projector_aux_{i}``,
``vision_query``, ``mm_projector``), see models/convert.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from cambrian_train.config.schema import ConnectorConfig
from cambrian_train.models.vision.resample import grid_side, resample_tokens
from cambrian_train.registry import CONNECTORS


def window_partition(x: torch.Tensor, side: int) -> torch.Tensor:
    """[N, S*S, C] → [N*side*side, (S/side)², C]: row-major windows of a row-major grid."""
    grid = grid_side(x.shape[1])
    if grid % side:
        raise ValueError(f"query grid side {side} does not divide tower grid side {grid}")
    w = grid // side
    return rearrange(x, "n (sh wh sw ww) c -> (n sh sw) (wh ww) c", sh=side, sw=side, wh=w, ww=w)


def valid_token_mask(boxes: torch.Tensor, side: int, rule: str = "centre") -> torch.Tensor:
    """boxes [N, 4] (x0, y0, x1, y1 of real content in [0, 1]) → [N, side*side] bool.

    ``centre``: a token is valid when its cell centre lies inside the box (pad-to-square leaves
    the rest). ``original``: the original code's rule (``unmask_attention_mask``): the content
    spans ``int(side · extent)`` cells of the shorter side and ``(side - that) // 2`` cells are
    masked at each end of it; the longer side is never masked.
    """
    x0, y0, x1, y1 = (boxes[:, k, None] for k in range(4))
    index = torch.arange(side, device=boxes.device)
    if rule == "original":
        # int() of a product that is an integer in exact arithmetic must not drop to the one
        # below from float rounding: nudge by far less than one cell
        extent_w = torch.floor((x1 - x0) * side + 1e-4)
        extent_h = torch.floor((y1 - y0) * side + 1e-4)
        pad_w = torch.div(side - extent_w, 2, rounding_mode="floor")
        pad_h = torch.div(side - extent_h, 2, rounding_mode="floor")
        cols = (index >= pad_w) & (index < side - pad_w)  # [N, side]
        rows = (index >= pad_h) & (index < side - pad_h)
        return (rows[:, :, None] & cols[:, None, :]).flatten(1)
    if rule != "centre":
        raise ValueError(f"padding rule {rule!r} is not one of ['original', 'centre']")
    centres = (index.to(boxes.dtype) + 0.5) / side
    cols = (centres >= x0) & (centres < x1)  # [N, side]
    rows = (centres >= y0) & (centres < y1)  # [N, side]
    return (rows[:, :, None] & cols[:, None, :]).flatten(1)


class MLP(nn.Module):
    def __init__(self, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.linear_1 = nn.Linear(d_in, d_hidden, bias=False)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(d_hidden, d_out, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


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
        o_proj_bias: bool = False,
        empty_window: str = "attend_all",
        pos_embed_std: float = 1.0,
    ):
        super().__init__()
        self.window_sides = list(window_sides)
        self.proj_context = nn.Linear(context_dim, hidden, bias=False)
        self.proj_in = nn.Linear(q_dim + hidden, hidden, bias=False)
        self.cross_attn = MultiKVCrossAttention(
            hidden, kv_dims, hidden, num_heads, o_proj_bias, empty_window
        )
        self.norm = nn.LayerNorm(hidden)
        self.proj_out = MLP(hidden, hidden, q_dim)
        for i, (side, kv_dim) in enumerate(zip(window_sides, kv_dims)):
            if side > 1:  # a one-token window needs no position
                self.register_parameter(
                    f"pos_embed_{i}",
                    nn.Parameter(torch.randn(side * side, kv_dim) * pos_embed_std),
                )

    def forward(
        self,
        queries: torch.Tensor,
        context: torch.Tensor,
        windows: List[torch.Tensor],
        masks: List[torch.Tensor],
        shared: Optional[SharedWindows] = None,
    ) -> torch.Tensor:
        """queries [M, Dq], context [N, Dc] with N dividing M (one context per image, its M/N
        queries consecutive; or one per query), windows[t] [M, w_t², C_t], masks[t] [M, w_t²];
        ``shared``: the sampler's :class:`SharedWindows` of these windows (built if None).

        ``proj_in([q, proj_context(c)])`` is computed as ``W_q·q + W_c·proj_context(c)`` with
        the context's share once per image, not once per query (the same function)."""
        residual = queries
        m, n = queries.shape[0], context.shape[0]
        if m % n:
            raise ValueError(f"{n} contexts for {m} queries: one per image or one per query")
        weight = self.proj_in.weight  # [hidden, Dq + hidden]
        dq = queries.shape[-1]
        ctx = F.linear(self.proj_context(context), weight[:, dq:])  # [N, hidden]
        x = F.linear(queries, weight[:, :dq])
        x = x + (ctx if n == m else ctx.repeat_interleave(m // n, dim=0))
        pos = [
            getattr(self, f"pos_embed_{i}") if side > 1 else None
            for i, side in enumerate(self.window_sides)
        ]
        x = x + self.cross_attn(x, windows, masks, pos_embeds=pos, shared=shared)
        return self.proj_out(self.norm(x)) + residual


class VisionTokenSampler(nn.Module):
    """``depth`` stacked cross-attention layers over the same windows (statistics shared)."""

    def __init__(self, depth: int, **layer_kwargs):
        super().__init__()
        self.layers = nn.ModuleList(VisionCrossAttentionLayer(**layer_kwargs) for _ in range(depth))

    def forward(self, queries, context, windows, masks):
        shared = SharedWindows(windows, masks, self.layers[0].cross_attn.empty_window)
        for layer in self.layers:
            queries = layer(queries, context, windows, masks, shared=shared)
        return queries


@dataclass
class TowerContext:
    """Projected tower features and their valid masks, shared by the connector's samplers and
    the SVA layers inside the LLM (passed explicitly per forward)."""

    features: List[torch.Tensor]  # per tower [N, S_t², W]
    valid: List[torch.Tensor]  # per tower [N, S_t²] bool
    global_context: Optional[torch.Tensor] = None  # [N, W]: the connector's, per image

    def windows(self, side: int):
        """Windows for an s×s query grid: ([N*s², w_t², W] per tower, [N*s², w_t²] masks)."""
        feats = [window_partition(f, side) for f in self.features]
        masks = [window_partition(v[..., None], side)[..., 0] for v in self.valid]
        return feats, masks


@CONNECTORS.register("sva")
class SVAConnector(nn.Module):
    """features {tower: [N, S_t², C_t]} (+ content boxes) → [N, image_token_len, llm width]."""

    def __init__(
        self,
        cfg: ConnectorConfig,
        tower_sizes: Dict[str, int],
        tower_tokens: Dict[str, int],
        llm_hidden_size: int,
        image_token_len: int,
    ):
        super().__init__()
        width = cfg.vision_hidden_size
        self.tower_names = list(tower_sizes)
        self.tower_sides = [grid_side(tower_tokens[n]) for n in self.tower_names]
        self.query_sides = [grid_side(q) for q in cfg.query_num_list]
        self.image_token_len = image_token_len
        for i, name in enumerate(self.tower_names):
            self.add_module(
                f"mm_projector_aux_{i}",
                nn.Sequential(
                    nn.Linear(tower_sizes[name], width),
                    nn.GELU(),
                    nn.Linear(width, width),
                    nn.LayerNorm(width),
                ),
            )
        self.cfg = cfg
        query_std = cfg.vision_query_std
        if query_std is None:  # the original: 1 / sqrt(LLM width)
            query_std = llm_hidden_size**-0.5
        self.vision_query = nn.Parameter(torch.randn(cfg.num_query_group, width) * query_std)
        semantics = dict(
            o_proj_bias=cfg.o_proj_bias,
            empty_window=cfg.empty_window,
            pos_embed_std=cfg.pos_embed_std,
        )
        for g, side in enumerate(self.query_sides):
            self.add_module(
                f"vision_sampler_{g}",
                VisionTokenSampler(
                    cfg.connector_depth,
                    q_dim=width,
                    context_dim=width,
                    kv_dims=[width] * len(self.tower_names),
                    window_sides=[self._window(s, side) for s in self.tower_sides],
                    hidden=width,
                    num_heads=cfg.num_heads,
                    **semantics,
                ),
            )
        self.mm_projector = nn.Sequential(
            nn.Linear(width * cfg.num_query_group, llm_hidden_size),
            nn.GELU(),
            nn.Linear(llm_hidden_size, llm_hidden_size),
        )
        # SVA layers re-inserted inside the LLM: queries are the LLM's hidden states at the
        # image_token_len grid positions (see models/connectors/interleave.py); their context is
        # the connector's global context (vision width) or the LLM hidden states' mean
        self.llm_context = cfg.llm_context
        llm_context_dim = width if cfg.llm_context == "connector" else llm_hidden_size
        self.llm_query_side = grid_side(image_token_len)
        self.insert_after = [
            cfg.insert.start + k * cfg.insert.stride for k in range(cfg.insert.count)
        ]
        self.vision_sampler_layers = nn.ModuleList(
            VisionTokenSampler(
                1,
                q_dim=llm_hidden_size,
                context_dim=llm_context_dim,
                kv_dims=[width] * len(self.tower_names),
                window_sides=[self._window(s, self.llm_query_side) for s in self.tower_sides],
                hidden=width,
                num_heads=cfg.num_heads,
                **semantics,
            )
            for _ in self.insert_after
        )

    @staticmethod
    def _window(tower_side: int, query_side: int) -> int:
        if tower_side % query_side:
            raise ValueError(
                f"query grid side {query_side} does not divide tower grid side {tower_side}"
            )
        return tower_side // query_side

    def sva_parameters(self) -> List[nn.Parameter]:
        """The parameters trained with ``sva_lr`` (queries and samplers)."""
        params = [self.vision_query, *self.vision_sampler_layers.parameters()]
        for g in range(len(self.query_sides)):
            params += list(getattr(self, f"vision_sampler_{g}").parameters())
        return params

    def tower_context(
        self, features: Dict[str, torch.Tensor], boxes: Optional[torch.Tensor]
    ) -> TowerContext:
        projected, valid = [], []
        for i, name in enumerate(self.tower_names):
            proj = getattr(self, f"mm_projector_aux_{i}")
            x = features[name]
            projected.append(proj(x.to(proj[0].weight.dtype)))  # [N, S², W]
            side = self.tower_sides[i]
            if boxes is None:
                valid.append(torch.ones(x.shape[0], side * side, dtype=torch.bool, device=x.device))
            else:
                valid.append(valid_token_mask(boxes.to(torch.float32), side, self.cfg.padding_rule))
        ctx = TowerContext(projected, valid)
        ctx.global_context = self.global_context(ctx)
        return ctx

    def global_context(self, ctx: TowerContext) -> torch.Tensor:
        """[N, W]: the mean of the first tower's projected features — over every token (the
        original) or, with ``context_masked``, over the valid ones only."""
        first = ctx.features[0]
        if not self.cfg.context_masked:
            return first.mean(dim=1)
        valid = ctx.valid[0].to(first.dtype)
        return (first * valid[..., None]).sum(1) / valid.sum(1, keepdim=True).clamp(min=1.0)

    def forward(
        self, features: Dict[str, torch.Tensor], boxes: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, TowerContext]:
        """→ (vision tokens [N, image_token_len, D], the towers' context for in-LLM layers)."""
        ctx = self.tower_context(features, boxes)
        return self.aggregate(ctx), ctx

    def aggregate(self, ctx: TowerContext) -> torch.Tensor:
        n, first = ctx.features[0].shape[0], ctx.features[0]
        global_ctx = ctx.global_context  # [N, W]
        if global_ctx is None:
            global_ctx = self.global_context(ctx)
        groups = []
        for g, side in enumerate(self.query_sides):
            windows, masks = ctx.windows(side)
            m = n * side * side
            queries = self.vision_query[g].to(first.dtype).expand(m, -1)  # [N*s², W]
            # one context per image: the layers project it once, not per query
            out = getattr(self, f"vision_sampler_{g}")(queries, global_ctx, windows, masks)
            out = out.reshape(n, side * side, -1)
            groups.append(resample_tokens(out, self.image_token_len))  # [N, T, W]
        return self.mm_projector(torch.cat(groups, dim=-1))  # [N, T, D]
