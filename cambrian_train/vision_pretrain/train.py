"""The pre-training loop shared by all tower families, and the per-family recipes.

``pretrain_tower(family, out)`` builds the family's pre-training model (language.py or
selfsup.py) from the tiny random-init asset, trains it for ``steps`` AdamW steps on fresh
synthetic image-caption batches (scenes.py ``pretrain_batch``: B/2 new scenes of stream
``pretrain`` of ``data_seed`` and their shape twins, so no scene repeats), with linear warm-up,
cosine decay and gradient clipping, then saves the tower into ``out`` in its family's format
together with ``pretrain.json`` (the recipe, the loss curve, the wall time). Everything is
seeded: the same recipe gives the same weights (on one machine and thread count).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch

from cambrian_train.train.optim import lr_factor
from cambrian_train.vision_pretrain.scenes import (
    CONTEXT_LENGTH,
    captions_of,
    pretrain_batch,
    tokenize_captions,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Recipe:
    """How one family is pre-trained (the defaults of ``pretrain_tower``)."""

    objective: str  # clip | siglip | dino_ibot
    steps: int
    batch_size: int = 64  # half new scenes, half their shape twins
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_frac: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0  # initialises the text tower / heads and drives crops, masks, drop-path
    data_seed: int = 1000  # the scene stream (disjoint from the data set's splits anyway)
    image_size: int = 64

    def key(self) -> dict:
        return dataclasses.asdict(self)


RECIPES: Dict[str, Recipe] = {  # each about 90 s on one core of the 2-core machine
    "clip": Recipe("clip", steps=500, batch_size=64, lr=2e-3),
    "siglip": Recipe("siglip", steps=450, batch_size=64, lr=2e-3),
    "convnext": Recipe("clip", steps=200, batch_size=64, lr=2e-3),
    "dinov2": Recipe("dino_ibot", steps=150, batch_size=64, lr=4e-3),
}
FAMILIES = tuple(RECIPES)
# Bump when the objectives, models or data stream change what a recipe produces.
PRETRAIN_FORMAT = 1


def recipe_digest(recipe: Recipe) -> str:
    """A short digest of the recipe and PRETRAIN_FORMAT: names the cached asset directory."""
    text = json.dumps([PRETRAIN_FORMAT, recipe.key()], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def recipe_for(family: str, steps: Optional[int] = None) -> Recipe:
    """The family's recipe, with ``steps`` replaced when given (ValueError when unknown / < 1)."""
    if family not in RECIPES:
        raise ValueError(f"tower family {family!r} is not one of {list(FAMILIES)}")
    recipe = RECIPES[family]
    if steps is None:
        return recipe
    if steps < 1:
        raise ValueError(f"pre-training steps must be >= 1, got {steps}")
    return dataclasses.replace(recipe, steps=steps)


def build_model(family: str, recipe: Recipe):
    """The family's pre-training module (``loss``, ``after_step``, ``save``), seeded."""
    from transformers import AutoTokenizer

    from cambrian_train.tiny import ensure_asset

    torch.manual_seed(recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(ensure_asset("tokenizer"))
    if recipe.objective == "dino_ibot":
        from cambrian_train.vision_pretrain.selfsup import Dinov2SelfDistillation

        return Dinov2SelfDistillation(seed=recipe.seed), tokenizer
    if family == "convnext":
        from cambrian_train.vision_pretrain.language import OpenCLIPContrastive

        return OpenCLIPContrastive(tokenizer, CONTEXT_LENGTH), tokenizer
    from cambrian_train.vision_pretrain.language import HFContrastive

    return HFContrastive(family, tokenizer, CONTEXT_LENGTH), tokenizer


def lr_at(recipe: Recipe, step: int) -> float:
    """Linear warm-up over ``warmup_frac`` of the steps, then cosine decay to 0 (the VLM
    trainer's schedule, train/optim.py)."""
    warmup = max(1, round(recipe.warmup_frac * recipe.steps))
    return recipe.lr * lr_factor(step, recipe.steps, warmup, "cosine")


def train(model, tokenizer, recipe: Recipe, log_every: int = 50) -> List[float]:
    """Run the recipe's steps on ``model``; returns the loss of every step."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]  # norms, biases, the learned scalars
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=recipe.lr, betas=(0.9, 0.98))
    model.train()
    losses = []
    for step in range(recipe.steps):
        scenes, pixels = pretrain_batch(
            recipe.data_seed, step, recipe.batch_size, recipe.image_size
        )
        ids = tokenize_captions(tokenizer, captions_of(scenes))
        for group in optimizer.param_groups:
            group["lr"] = lr_at(recipe, step)
        loss = model.loss(pixels, ids)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        optimizer.step()
        model.after_step(step, recipe.steps)
        losses.append(float(loss.detach()))
        if log_every and (step % log_every == 0 or step == recipe.steps - 1):
            log.info(
                "%s step %d/%d loss %.4f", recipe.objective, step + 1, recipe.steps, losses[-1]
            )
    model.eval()
    return losses


def pretrain_tower(
    family: str, out: Path, recipe: Optional[Recipe] = None, log_every: int = 50
) -> dict:
    """Pre-train ``family``'s tiny tower (``recipe``, default the family's) and save it, and
    ``pretrain.json``, into ``out``; returns that report."""
    recipe = recipe or recipe_for(family)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    model, tokenizer = build_model(family, recipe)
    losses = train(model, tokenizer, recipe, log_every)
    model.save(out)
    report = dict(
        family=family,
        recipe=recipe.key(),
        threads=torch.get_num_threads(),
        seconds=round(time.perf_counter() - start, 1),
        losses=[round(v, 5) for v in losses],
    )
    (out / "pretrain.json").write_text(json.dumps(report, indent=1) + "\n")
    log.info(
        "pre-trained %s in %.1f s: loss %.4f → %.4f",
        family,
        report["seconds"],
        losses[0],
        losses[-1],
    )
    return report
