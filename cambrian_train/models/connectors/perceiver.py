"""The ``perceiver`` connector: a Flamingo-style Perceiver Resampler (Alayrac et al. 2022).

Each tower's features go through their own Linear to the common width W
(``vision_hidden_size``) and receive a learned per-tower embedding (and, with
``perceiver_position_embed``, a learned embedding per token position of that tower); the towers'
sequences are concatenated into one media sequence [N, ΣT_t, W]. ``model.image_token_len`` learned
latents [L, W] then run ``connector_depth`` layers of

    latents += to_out(MHA(q = LN(latents), kv = [LN_media(media); LN(latents)]))   (bias-free)
    latents += Linear(GELU(Linear(LN(latents))))                                  (× ff_mult)

(the latents also attend to themselves, as in the paper), a final LayerNorm and a Linear to the
LLM width. The L outputs are the image's vision tokens, laid out by the model as a side×side grid,
so L must be a perfect square.

With ``perceiver_mask_padding`` (default), the media tokens whose cells are pad-to-square filler
(``boxes``, cells decided by ``padding_rule``) are masked out of the keys; the latents are always
keys, so no query ever has an empty key set (an all-padding image, e.g. an empty slot, yields the
latents' self-attention only). Shapes are static: the mask is computed on the device from the
boxes, never read on the host.

FSDP: ``resampler.layers`` (a ModuleList) holds one module per layer, for a backend that wants
them as separate sharding units.
"""

from __future__ import annotations

import math
from typing import Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from cambrian_train.config.schema import ConnectorConfig
from cambrian_train.models.connectors.sva import valid_token_mask
from cambrian_train.models.vision.resample import grid_side
from cambrian_train.registry import CONNECTORS

# initial scale of the per-tower and per-position media embeddings (ViT/BERT convention); the
# flamingo-pytorch reference draws its time embedding from N(0, 1), which would swamp projected
# features of scale ~0.5 at the start
EMBED_STD = 0.02


class PerceiverAttention(nn.Module):
    """Latents attend to [media; latents]: pre-norms, bias-free q / kv / out projections."""

    def __init__(self, width: int, num_heads: int):
        super().__init__()
        if width % num_heads:
            raise ValueError(
                f"model.connector.vision_hidden_size={width} is not divisible by "
                f"model.connector.num_heads={num_heads}"
            )
        self.num_heads = num_heads
        self.norm_media = nn.LayerNorm(width)
        self.norm_latents = nn.LayerNorm(width)
        self.to_q = nn.Linear(width, width, bias=False)
        self.to_kv = nn.Linear(width, 2 * width, bias=False)
        self.to_out = nn.Linear(width, width, bias=False)

    def forward(
        self, media: torch.Tensor, latents: torch.Tensor, key_mask: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """media [N, T, W], latents [N, L, W], key_mask [N, T + L] bool (True = attended) or
        None → the attention's output [N, L, W] (before the residual)."""
        n, num_latents, width = latents.shape
        h = self.num_heads
        lat = self.norm_latents(latents)
        q = self.to_q(lat)  # [N, L, W]
        kv_input = torch.cat([self.norm_media(media), lat], dim=1)  # [N, T + L, W]
        k, v = self.to_kv(kv_input).chunk(2, dim=-1)  # [N, T + L, W] each
        q, k, v = (x.unflatten(-1, (h, width // h)).transpose(1, 2) for x in (q, k, v))
        mask = None if key_mask is None else key_mask[:, None, None, :]  # [N, 1, 1, T + L]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # [N, H, L, W/H]
        return self.to_out(out.transpose(1, 2).reshape(n, num_latents, width))


class PerceiverLayer(nn.Module):
    """One resampler layer: attention then feed-forward, each with a residual."""

    def __init__(self, width: int, num_heads: int, ff_mult: int):
        super().__init__()
        self.attn = PerceiverAttention(width, num_heads)
        self.ff = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, ff_mult * width, bias=False),
            nn.GELU(),
            nn.Linear(ff_mult * width, width, bias=False),
        )

    def forward(self, media, latents, key_mask):
        latents = latents + self.attn(media, latents, key_mask)
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    """``num_latents`` learned latents through ``depth`` layers over a media sequence."""

    def __init__(self, width: int, depth: int, num_heads: int, ff_mult: int, num_latents: int):
        super().__init__()
        self.latents = nn.Parameter(torch.randn(num_latents, width))  # N(0, 1) as the reference
        self.layers = nn.ModuleList(PerceiverLayer(width, num_heads, ff_mult) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def forward(self, media: torch.Tensor, media_mask: Optional[torch.Tensor]) -> torch.Tensor:
        """media [N, T, W], media_mask [N, T] bool (True = a real token) or None → [N, L, W]."""
        n = media.shape[0]
        latents = self.latents.to(media.dtype).expand(n, -1, -1)  # [N, L, W]
        key_mask = None
        if media_mask is not None:  # the latents are always keys
            always = torch.ones(n, latents.shape[1], dtype=torch.bool, device=media.device)
            key_mask = torch.cat([media_mask, always], dim=1)  # [N, T + L]
        for layer in self.layers:
            latents = layer(media, latents, key_mask)
        return self.norm(latents)


@CONNECTORS.register("perceiver")
class PerceiverConnector(nn.Module):
    """features {tower: [N, T_t, C_t]} (+ content boxes) → [N, image_token_len, llm width]."""

    def __init__(
        self,
        cfg: ConnectorConfig,
        tower_sizes: Dict[str, int],
        tower_tokens: Dict[str, int],
        llm_hidden_size: int,
        image_token_len: int,
    ):
        super().__init__()
        side = math.isqrt(image_token_len) if image_token_len > 0 else 0
        if side * side != image_token_len:
            raise ValueError(
                f"model.image_token_len={image_token_len} is not a perfect square: the perceiver "
                "connector outputs model.image_token_len latents, which the model lays out as a "
                "side x side grid of vision tokens (e.g. 64, 144, 576)"
            )
        if cfg.perceiver_ff_mult < 1:
            raise ValueError(
                f"model.connector.perceiver_ff_mult={cfg.perceiver_ff_mult} must be >= 1"
            )
        if cfg.connector_depth < 1:
            raise ValueError(f"model.connector.connector_depth={cfg.connector_depth} must be >= 1")
        width = cfg.vision_hidden_size
        self.cfg = cfg
        self.tower_names = list(tower_sizes)
        self.tower_tokens = dict(tower_tokens)
        self.image_token_len = image_token_len
        self.media_proj = nn.ModuleDict(
            {name: nn.Linear(tower_sizes[name], width) for name in self.tower_names}
        )
        self.media_embed = nn.Parameter(torch.randn(len(self.tower_names), width) * EMBED_STD)
        if cfg.perceiver_position_embed:
            self.media_pos_embed = nn.ParameterDict(
                {
                    name: nn.Parameter(torch.randn(tower_tokens[name], width) * EMBED_STD)
                    for name in self.tower_names
                }
            )
        else:
            self.media_pos_embed = None
        self.resampler = PerceiverResampler(
            width, cfg.connector_depth, cfg.num_heads, cfg.perceiver_ff_mult, image_token_len
        )
        self.proj = nn.Linear(width, llm_hidden_size)

    def media(
        self, features: Dict[str, torch.Tensor], boxes: Optional[torch.Tensor]
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """→ (the media sequence [N, ΣT_t, W] in tower order, its valid mask [N, ΣT_t] bool or
        None when nothing is masked)."""
        parts, valid = [], []
        for t, name in enumerate(self.tower_names):
            proj = self.media_proj[name]
            x = features[name]
            if x.shape[1] != self.tower_tokens[name]:
                raise ValueError(
                    f"tower {name} gave {x.shape[1]} tokens but model.towers.{name}.num_tokens="
                    f"{self.tower_tokens[name]}"
                )
            x = proj(x.to(proj.weight.dtype)) + self.media_embed[t]  # [N, T_t, W]
            if self.media_pos_embed is not None:
                x = x + self.media_pos_embed[name]
            parts.append(x)
            if boxes is not None and self.cfg.perceiver_mask_padding:
                side = grid_side(x.shape[1])
                valid.append(valid_token_mask(boxes.to(torch.float32), side, self.cfg.padding_rule))
        mask = torch.cat(valid, dim=1) if valid else None
        return torch.cat(parts, dim=1), mask

    def forward(
        self, features: Dict[str, torch.Tensor], boxes: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, None]:
        """boxes [N, 4] (content box per image, see sva.valid_token_mask) or None →
        (vision tokens [N, image_token_len, D], None: no context for in-LLM layers)."""
        media, mask = self.media(features, boxes)
        return self.proj(self.resampler(media, mask)), None
