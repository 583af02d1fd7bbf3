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
from cambrian_train.models.connectors.sva_attention import (  # noqa: F401  (re-exported)
    MultiKVCrossAttention,
    SharedWindows,
    folds_projections,
)
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
