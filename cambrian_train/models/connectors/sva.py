"""The Spatial Vision Aggregator (SVA) connector of Cambrian-1 (REFERENCE §1).

Each tower's features are projected to ``vision_hidden_size`` (Linear-GELU-Linear-LayerNorm). A
query grid of s×s tokens per group attends, layer after layer, to every tower at once; query
(i, j) sees only window (i, j) of each tower (an S×S grid cut into s×s windows of (S/s)² features).
Windows are gathered into the batch dimension, so attention is one batched op whose cost is
linear in the number of tower tokens. Query groups are resized to ``image_token_len`` and
concatenated, then an MLP maps them to the LLM width.

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


def valid_token_mask(boxes: torch.Tensor, side: int) -> torch.Tensor:
    """boxes [N, 4] (x0, y0, x1, y1 of real content in [0, 1]) → [N, side*side] bool.

    A token is valid when its cell centre lies inside the box (pad-to-square leaves the rest).
    """
    centres = (torch.arange(side, device=boxes.device, dtype=boxes.dtype) + 0.5) / side
    x0, y0, x1, y1 = (boxes[:, k, None] for k in range(4))
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
        """queries [M, Dq], context [M, Dc], windows[t] [M, w_t², C_t], masks[t] [M, w_t²]."""
        residual = queries
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


@dataclass
class TowerContext:
    """Projected tower features and their valid masks, shared by the connector's samplers and
    the SVA layers inside the LLM (passed explicitly per forward)."""

    features: List[torch.Tensor]  # per tower [N, S_t², W]
    valid: List[torch.Tensor]  # per tower [N, S_t²] bool

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
        self.vision_query = nn.Parameter(torch.randn(cfg.num_query_group, width) * 0.02)
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
                ),
            )
        self.mm_projector = nn.Sequential(
            nn.Linear(width * cfg.num_query_group, llm_hidden_size),
            nn.GELU(),
            nn.Linear(llm_hidden_size, llm_hidden_size),
        )
        # SVA layers re-inserted inside the LLM: queries are the LLM's hidden states at the
        # image_token_len grid positions (see models/connectors/interleave.py)
        self.llm_query_side = grid_side(image_token_len)
        self.insert_after = [
            cfg.insert.start + k * cfg.insert.stride for k in range(cfg.insert.count)
        ]
        self.vision_sampler_layers = nn.ModuleList(
            VisionTokenSampler(
                1,
                q_dim=llm_hidden_size,
                context_dim=llm_hidden_size,
                kv_dims=[width] * len(self.tower_names),
                window_sides=[self._window(s, self.llm_query_side) for s in self.tower_sides],
                hidden=width,
                num_heads=cfg.num_heads,
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
                valid.append(valid_token_mask(boxes.to(torch.float32), side))
        return TowerContext(projected, valid)

    def forward(
        self, features: Dict[str, torch.Tensor], boxes: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, TowerContext]:
        """→ (vision tokens [N, image_token_len, D], the towers' context for in-LLM layers)."""
        ctx = self.tower_context(features, boxes)
        return self.aggregate(ctx), ctx

    def aggregate(self, ctx: TowerContext) -> torch.Tensor:
        n = ctx.features[0].shape[0]
        # global context: mean of the first tower's projected valid features
        first, first_valid = ctx.features[0], ctx.valid[0].to(ctx.features[0].dtype)
        denom = first_valid.sum(1, keepdim=True).clamp(min=1.0)
        global_ctx = (first * first_valid[..., None]).sum(1) / denom  # [N, W]
        groups = []
        for g, side in enumerate(self.query_sides):
            windows, masks = ctx.windows(side)
            m = n * side * side
            queries = self.vision_query[g].to(first.dtype).expand(m, -1)  # [N*s², W]
            context = global_ctx.repeat_interleave(side * side, dim=0)  # [N*s², W]
            out = getattr(self, f"vision_sampler_{g}")(queries, context, windows, masks)
            out = out.reshape(n, side * side, -1)
            groups.append(resample_tokens(out, self.image_token_len))  # [N, T, W]
        return self.mm_projector(torch.cat(groups, dim=-1))  # [N, T, D]
