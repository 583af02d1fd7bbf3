"""VisionLanguageModel: vision towers → connector (+ row newlines) → decoder LLM.

``forward(batch)`` returns the next-token loss over supervised tokens (mean, or sum and count).
Vision tokens are computed for every image slot (static shapes) and written into the token
embeddings at ``batch.vision_positions``; empty slots are never written. With an SVA connector whose
``insert.count`` > 0, SVA layers also run inside the LLM (models/connectors/interleave.py) on a
context built here and passed explicitly with each LLM forward.
"""

from __future__ import annotations

import math
from typing import Dict, List

import torch
from torch import nn
from transformers import PreTrainedModel

from cambrian_train.batch import Batch
from cambrian_train.config.schema import ModelConfig
from cambrian_train.models import lora
from cambrian_train.models.connectors.interleave import (
    CONTEXT_KWARG,
    LLMVisionContext,
    attach_samplers,
)
from cambrian_train.models.llm import (
    causal_attention,
    decoder_layers,
    packed_forward_kwargs,
    plain_linear_head,
)
from cambrian_train.models.loss import token_loss
from cambrian_train.models.multimodal import scatter_at
from cambrian_train.models.vision.base import ImageSpec, VisionTower, normalize_pixels


def _trainable_part(module: nn.Module) -> List[nn.Parameter]:
    """A part's adapters when it has LoRA adapters, else all of its parameters."""
    if lora.has_adapters(module):
        return lora.adapter_parameters(module)
    return list(module.parameters())


class VisionLanguageModel(nn.Module):
    def __init__(
        self,
        cfg: ModelConfig,
        towers: Dict[str, VisionTower],
        connector: nn.Module,
        llm: PreTrainedModel,
    ):
        super().__init__()
        self.cfg = cfg
        self.towers = nn.ModuleDict(towers)
        self.connector = connector
        self.llm = llm
        hidden = llm.config.hidden_size
        self.side = math.isqrt(cfg.image_token_len)
        if cfg.image_newline:
            self.image_newline = nn.Parameter(torch.randn(hidden) / math.sqrt(hidden))
        else:
            self.register_parameter("image_newline", None)
        plain_linear_head(llm)  # the chunked loss applies the head itself
        self.deferred_weights: List = []  # models/weights.py: loaded by the backend, sharded
        samplers = getattr(connector, "vision_sampler_layers", None)
        self.has_llm_samplers = bool(samplers)
        if self.has_llm_samplers:
            attach_samplers(llm, samplers, connector.insert_after)

    # -- what backends apply their policies to (they never reach into the parts) ----------------
    def shard_units(self) -> List[nn.Module]:
        """The model's sharding units, innermost first (each is gathered whole in turn under
        FSDP): every decoder layer, every tower, every in-LLM SVA layer (run from decoder-layer
        hooks, not through the connector's forward), every perceiver layer, the connector. The
        root holds the rest (embeddings, head, final norm, image newline)."""
        units: List[nn.Module] = list(decoder_layers(self.llm))
        units += list(self.towers.values())
        units += list(getattr(self.connector, "vision_sampler_layers", []))
        resampler = getattr(self.connector, "resampler", None)  # the perceiver's layers
        units += list(resampler.layers) if resampler is not None else []
        units.append(self.connector)
        return units

    def compile_units(self) -> List[nn.Module]:
        """Blocks worth compiling one by one (identical decoder layers)."""
        return list(decoder_layers(self.llm))

    def set_gradient_checkpointing(self, enabled: bool, checkpoint_fn=None) -> None:
        """Recompute decoder-layer activations in the backward pass, with the backend's
        ``checkpoint_fn`` (default: torch's non-reentrant checkpoint)."""
        if not enabled:
            self.llm.gradient_checkpointing_disable()
        elif checkpoint_fn is None:
            self.llm.gradient_checkpointing_enable({"use_reentrant": False})
        else:
            self.llm._set_gradient_checkpointing(
                enable=True, gradient_checkpointing_func=checkpoint_fn
            )

    @property
    def slot_len(self) -> int:
        """Sequence positions per image: h*(w+1) with newlines, else h*w."""
        return self.side * (self.side + int(self.image_newline is not None))

    def image_specs(self) -> Dict[str, ImageSpec]:
        return {name: tower.image_spec for name, tower in self.towers.items()}

    def param_groups(self) -> Dict[str, List[nn.Parameter]]:
        """Parameters that may train, by group: connector (with newline), sva, llm, towers.
        A part with LoRA adapters (models/lora.py) offers only its adapters: its base stays
        frozen in every stage."""
        sva_ids = {id(p) for p in getattr(self.connector, "sva_parameters", list)()}
        connector = [p for p in self.connector.parameters() if id(p) not in sva_ids]
        if self.image_newline is not None:
            connector.append(self.image_newline)
        return {
            "connector": connector,
            "sva": [p for p in self.connector.parameters() if id(p) in sva_ids],
            "llm": _trainable_part(self.llm),
            "towers": [p for t in self.towers.values() for p in _trainable_part(t)],
        }

    def encode_images(self, pixel_values: Dict[str, torch.Tensor], boxes=None):
        """{tower: [N, 3, S, S] uint8 (or normalised float)}, boxes [N, 4] → (vision tokens
        [N, slot_len, D] with rows
        closed by newlines, the connector's tower context or None)."""
        features = {
            name: tower(normalize_pixels(pixel_values[name], tower.image_spec))
            for name, tower in self.towers.items()
        }
        tokens, towers = self.connector(features, boxes)  # [N, h*w, D]
        if self.image_newline is None:
            return tokens, towers
        n, _, d = tokens.shape
        grid = tokens.reshape(n, self.side, self.side, d)
        newline = self.image_newline.to(tokens.dtype).expand(n, self.side, 1, d)
        return torch.cat([grid, newline], dim=2).reshape(n, self.slot_len, d), towers

    def grid_positions(self, batch: Batch) -> torch.Tensor:
        """Sequence positions of the h*w visual tokens, newline slots dropped: [G, I, h*w]."""
        if self.image_newline is None:
            return batch.vision_positions
        b, i, _ = batch.vision_positions.shape
        rows = batch.vision_positions.reshape(b, i, self.side, self.side + 1)
        return rows[..., : self.side].reshape(b, i, self.side * self.side)

    def embed(self, batch: Batch):
        """→ (token embeddings with vision tokens scattered in [B, L, D], the LLM-side vision
        context for in-LLM SVA layers or None)."""
        g, i = batch.image_mask.shape  # image groups (batch.py)
        if i == 0:  # no image slots (text-only data): no tower or connector work at all
            return self.llm.get_input_embeddings()(batch.input_ids), None
        flat = {k: v.flatten(0, 1) for k, v in batch.pixel_values.items()}  # [G*I, 3, S, S]
        vision, towers = self.encode_images(flat, batch.image_boxes.flatten(0, 1))
        vision = vision.reshape(g, i, self.slot_len, -1)  # [G, I, Q, D]
        embeds = self.llm.get_input_embeddings()(batch.input_ids)  # [B, L, D]
        embeds = scatter_at(embeds, batch.vision_positions, vision, batch.image_mask)
        if not self.has_llm_samplers:
            return embeds, None
        windows, masks = towers.windows(self.connector.llm_query_side)
        global_context = None  # llm_context="llm_mean": the hook averages the hidden states
        if self.connector.llm_context == "connector":
            global_context = towers.global_context
        context = LLMVisionContext(
            self.grid_positions(batch),
            batch.image_mask,
            windows,
            masks,
            embeds.shape[1],
            global_context,
        )
        return embeds, context

    def llm_kwargs(self, context) -> dict:
        """Extra keyword arguments for an LLM forward/generate carrying the vision context."""
        return {CONTEXT_KWARG: context} if context is not None else {}

    def logits(self, batch: Batch) -> torch.Tensor:
        embeds, context = self.embed(batch)
        out = self.llm(
            inputs_embeds=embeds,
            attention_mask=batch.attention_mask,
            use_cache=False,
            **self.llm_kwargs(context),
        )
        return out.logits  # [B, L, V]

    def forward(self, batch: Batch, reduction: str = "mean"):
        """Next-token cross-entropy over the batch's supervised tokens (labels -100 ignored).

        ``reduction="mean"``: their mean (0-dim). ``"sum"``: (the sum, the token count), both
        0-dim float32 — the trainer divides the sum over all micro-batches and data-parallel
        ranks by the total count (train/step.py), so every backend and accumulation optimises
        the same objective. (A ``forward`` argument, not another method: FSDP2 gathers the root
        parameters in ``forward``.)"""
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction={reduction!r}: use 'mean' or 'sum'")
        hidden = self.hidden_states(batch)
        # the head applied chunk by chunk: no [B*L, V] logits (models/loss.py)
        total, count = token_loss(
            hidden, self.llm.get_output_embeddings().weight, batch.labels, self.cfg.loss_chunk_size
        )
        if reduction == "sum":
            return total, count
        return total / count.clamp(min=1.0)

    def hidden_states(self, batch: Batch) -> torch.Tensor:
        """The LLM's final hidden states [B, L, D] (after its final norm) for a training batch:
        right-padded rows attend causally; packed rows (batch.py) attend within their samples
        only, with per-sample positions. Run inside ``causal_attention`` (the trainer holds it
        for a whole stage, so recomputed activations see the same attention)."""
        embeds, context = self.embed(batch)
        kwargs = self.llm_kwargs(context)
        with causal_attention(self.llm):  # a no-op inside the trainer's (nested)
            if batch.packed:
                kwargs.update(
                    packed_forward_kwargs(
                        self.llm, batch.position_ids, batch.segment_ids, embeds.dtype
                    )
                )
            decoder = self.llm.get_decoder()
            return decoder(inputs_embeds=embeds, use_cache=False, **kwargs).last_hidden_state
