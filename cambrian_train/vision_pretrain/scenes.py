"""Image-caption batches for tower pre-training, drawn from the synthetic scene sampler.

Scenes come from data/synthetic.py's sampler and renderer (the demo's image distribution:
1-3 shapes, distinct kinds and colours, 64 px); half of them also carry a written word, as the
data set's "word" question type draws them, and every caption is ``_caption(scene)`` ("a red
circle and a blue square. The word CAT is written."). Image ``i`` of stream ``split`` draws from
``random.Random("cambrian-synthetic/<seed>/towers-<split>/<i>")``: the split names differ from
the data set's (``pretrain``/``train``/``test``), so no pre-training or probe image is one of
the demo's, whatever the seeds. Used by train.py (``split="pretrain"``) and probe.py.

Hard negatives (``pretrain_batch``): in a batch of random scenes the colours alone tell almost
every caption from the others, so a contrastive tower would never need the shapes. Half of each
pre-training batch is therefore the other half's "twins": the same scene (boxes, colours,
background, word) with the shape kinds reassigned, captioned accordingly — the compositional
hard negatives of NegCLIP (Yuksekgonul et al. 2023), here drawn rather than mined.
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from typing import List, Sequence, Tuple

import numpy as np
import torch

from cambrian_train.config.schema import SyntheticConfig
from cambrian_train.data.synthetic import SHAPES, Scene, _caption, _render, _sample_scene

WORD_FRACTION = 0.5  # of the images that carry a written word
CONTEXT_LENGTH = 32  # caption tokens incl. EOS (the longest caption is 25)
_PLAIN = SyntheticConfig(question_types=["color", "shape", "count"])
_WORDED = dataclasses.replace(_PLAIN, question_types=["color", "shape", "count", "word"])


def sample_scene(seed: int, split: str, index: int, image_size: int) -> Scene:
    """Scene ``index`` of stream (seed, split): the demo's sampler, a word on half of them."""
    rng = random.Random(f"cambrian-synthetic/{seed}/towers-{split}/{index}")
    base = _WORDED if rng.random() < WORD_FRACTION else _PLAIN
    return _sample_scene(rng, dataclasses.replace(base, image_size=image_size))


def shape_twin(scene: Scene, rng: random.Random) -> Scene:
    """``scene`` with its shapes' kinds reassigned (distinct kinds, at least one changed)."""
    kinds = tuple(shape.kind for shape in scene.shapes)
    options = [p for p in itertools.permutations(SHAPES, len(kinds)) if p != kinds]
    new_kinds = rng.choice(options)
    shapes = tuple(dataclasses.replace(s, kind=k) for s, k in zip(scene.shapes, new_kinds))
    return dataclasses.replace(scene, shapes=shapes)


def render_batch(scenes: Sequence[Scene], image_size: int) -> torch.Tensor:
    """Scenes → uint8 pixels [B, 3, S, S] (what the data pipeline feeds the towers)."""
    arrays = np.stack([np.asarray(_render(scene, image_size)) for scene in scenes])  # [B, S, S, 3]
    return torch.from_numpy(arrays).permute(0, 3, 1, 2).contiguous()


def scene_batch(
    seed: int, split: str, start: int, batch_size: int, image_size: int
) -> Tuple[List[Scene], torch.Tensor]:
    """Scenes ``start .. start + batch_size - 1`` of a stream and their pixels [B, 3, S, S]."""
    scenes = [sample_scene(seed, split, start + i, image_size) for i in range(batch_size)]
    return scenes, render_batch(scenes, image_size)


def pretrain_batch(
    seed: int, step: int, batch_size: int, image_size: int
) -> Tuple[List[Scene], torch.Tensor]:
    """Pre-training batch ``step``: scenes ``step·B/2 ..`` of stream ``pretrain`` followed by
    their shape twins (B even), and the pixels [B, 3, S, S]."""
    if batch_size % 2:
        raise ValueError(f"pre-training batch_size must be even (scene + twin), got {batch_size}")
    half = batch_size // 2
    first = step * half
    scenes = [sample_scene(seed, "pretrain", first + i, image_size) for i in range(half)]
    twins = [
        shape_twin(scene, random.Random(f"cambrian-synthetic/{seed}/towers-twin/{first + i}"))
        for i, scene in enumerate(scenes)
    ]
    scenes += twins
    return scenes, render_batch(scenes, image_size)


def tokenize_captions(tokenizer, captions: Sequence[str]) -> torch.Tensor:
    """Captions → token ids [B, CONTEXT_LENGTH]: the caption, EOS, then padding (no BOS).

    Each text tower pools its own way from this layout: CLIP at the first EOS, OpenCLIP at EOS
    (``pool_type: eos``), SigLIP at the last position.
    """
    ids = torch.full((len(captions), CONTEXT_LENGTH), tokenizer.pad_token_id, dtype=torch.long)
    for row, caption in enumerate(captions):
        tokens = tokenizer(caption, add_special_tokens=False)["input_ids"] + [
            tokenizer.eos_token_id
        ]
        if len(tokens) > CONTEXT_LENGTH:
            raise ValueError(
                f"caption {caption!r} is {len(tokens)} tokens, over CONTEXT_LENGTH="
                f"{CONTEXT_LENGTH} of the pre-training text towers"
            )
        ids[row, : len(tokens)] = torch.tensor(tokens)
    return ids


def captions_of(scenes: Sequence[Scene]) -> List[str]:
    return [_caption(scene) for scene in scenes]
