"""The ``mlp2x_gelu`` connector: towers concatenated on channels, then Linear → GELU → Linear."""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from cambrian_train.config.schema import ConnectorConfig
from cambrian_train.registry import CONNECTORS


@CONNECTORS.register("mlp2x_gelu")
class MLPConnector(nn.Module):
    """features {tower: [N, T, C_t]} (same T for all towers) → [N, T, llm_hidden_size]."""

    def __init__(
        self,
        cfg: ConnectorConfig,
        tower_sizes: Dict[str, int],
        tower_tokens: Dict[str, int],
        llm_hidden_size: int,
        image_token_len: int,
    ):
        super().__init__()
        for name, tokens in tower_tokens.items():
            if tokens != image_token_len:
                raise ValueError(
                    f"model.towers.{name}.num_tokens={tokens} differs from "
                    f"model.image_token_len={image_token_len} (required by mlp2x_gelu)"
                )
        self.tower_names = list(tower_sizes)
        in_size = sum(tower_sizes.values())
        self.net = nn.Sequential(
            nn.Linear(in_size, llm_hidden_size),
            nn.GELU(),
            nn.Linear(llm_hidden_size, llm_hidden_size),
        )

    def forward(
        self, features: Dict[str, torch.Tensor], boxes: Optional[torch.Tensor] = None
    ) -> Tuple[torch.Tensor, None]:
        """→ (vision tokens [N, T, D], None: no context for in-LLM layers)."""
        x = torch.cat([features[name] for name in self.tower_names], dim=-1)  # [N, T, ΣC]
        return self.net(x.to(self.net[0].weight.dtype)), None
