"""Pre-training of the tiny Llama on text drills (drills.py): the tiny asset ``llama_pt``.

``pretrain_llm(out)`` loads the random-init tiny Llama asset (tiny.py ``llama``), trains it for
``steps`` AdamW steps on fresh drills (batch ``i`` holds drills ``i·B .. i·B+B-1``, so none
repeats) rendered in the chat template the VLM trains with (``llama3``, no system prompt: the
demo's), with the loss on the answers and end-of-turn markers only, as in stage 2. Linear
warm-up, cosine decay, gradient clipping; seeded, so one recipe gives one set of weights (on one
machine and thread count). Saves the model and tokenizer in HF format into ``out`` with
``pretrain.json`` (the recipe, the losses, the held-out drill accuracy, the wall time).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from cambrian_train.data.suite import MCQ_INSTRUCTION
from cambrian_train.data.templates import Turn, get_template
from cambrian_train.llm_pretrain.drills import DRILLS, drill
from cambrian_train.train.optim import lr_factor

log = logging.getLogger(__name__)

TEMPLATE = "llama3"  # configs/model/llm/tiny_llama.yaml's template
IGNORE = -100
HELD_OUT_SEED = 10_000  # drills of this seed are never trained on
# Bump when the drills, the loss or the loop change what a recipe produces.
PRETRAIN_FORMAT = 1


@dataclass(frozen=True)
class Recipe:
    steps: int = 600
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup_frac: float = 0.05
    grad_clip: float = 1.0
    seed: int = 0
    held_out: int = 500  # drills scored after training

    def key(self) -> dict:
        return dataclasses.asdict(self)


def recipe_digest(recipe: Recipe) -> str:
    text = json.dumps([PRETRAIN_FORMAT, recipe.key()], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def recipe_with(steps: Optional[int]) -> Recipe:
    if steps is not None and steps < 1:
        raise ValueError(f"pre-training steps must be >= 1, got {steps}")
    return Recipe() if steps is None else dataclasses.replace(Recipe(), steps=steps)


def encode(tokenizer, prompt: str, answer: str) -> Tuple[List[int], List[int]]:
    """Token ids and labels of one drill as a one-turn conversation (answers supervised)."""
    template = get_template(TEMPLATE)
    ids, labels = [], []
    for segment in template.render([Turn("user", prompt), Turn("assistant", answer)], ""):
        tokens = tokenizer(segment.text, add_special_tokens=False)["input_ids"]
        ids += tokens
        labels += tokens if segment.supervised else [IGNORE] * len(tokens)
    return ids, labels


def batch(tokenizer, drills: Sequence[Tuple[str, str, str]]) -> Dict[str, torch.Tensor]:
    """Right-padded ids, labels and attention mask of ``drills`` ((kind, prompt, answer) each)."""
    encoded = [encode(tokenizer, prompt, answer) for _, prompt, answer in drills]
    length = max(len(ids) for ids, _ in encoded)
    out = {
        "input_ids": torch.full((len(encoded), length), tokenizer.pad_token_id),
        "labels": torch.full((len(encoded), length), IGNORE),
        "attention_mask": torch.zeros(len(encoded), length, dtype=torch.long),
    }
    for row, (ids, labels) in enumerate(encoded):
        out["input_ids"][row, : len(ids)] = torch.tensor(ids)
        out["labels"][row, : len(ids)] = torch.tensor(labels)
        out["attention_mask"][row, : len(ids)] = 1
    return out


def lr_at(recipe: Recipe, step: int) -> float:
    """Linear warm-up over ``warmup_frac`` of the steps, then cosine decay to 0 (the VLM
    trainer's schedule, train/optim.py)."""
    warmup = max(1, round(recipe.warmup_frac * recipe.steps))
    return recipe.lr * lr_factor(step, recipe.steps, warmup, "cosine")


def loss_of(model, inputs: Dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean cross-entropy over the supervised tokens (labels shifted by one)."""
    logits = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].flatten(0, 1), inputs["labels"][:, 1:].flatten(), ignore_index=IGNORE
    )


def drill_format(prompt: str) -> str:
    """``mcq`` for a drill laid out with lettered options (data/suite.py), else ``short``."""
    return "mcq" if prompt.endswith(MCQ_INSTRUCTION) else "short"


@torch.no_grad()
def drill_accuracy(model, tokenizer, count: int, seed: int = HELD_OUT_SEED) -> Dict[str, float]:
    """Greedy exact-answer accuracy (percent) on ``count`` held-out drills, per kind, per kind
    and answer format (``match/mcq``), per format and overall: every answer token must be the
    argmax given the gold prefix (teacher forcing)."""
    model.eval()
    drills = [drill(seed, i) for i in range(count)]
    right: Dict[str, List[bool]] = {}
    for start in range(0, count, 100):
        chunk = drills[start : start + 100]
        inputs = batch(tokenizer, chunk)
        logits = model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]
        ).logits
        predicted = logits[:, :-1].argmax(-1)
        target = inputs["labels"][:, 1:]
        supervised = target != IGNORE
        correct = ((predicted == target) | ~supervised).all(dim=1)
        for (kind, prompt, _), ok in zip(chunk, correct.tolist()):
            fmt = drill_format(prompt)
            for key in (kind, f"{kind}/{fmt}", fmt):
                right.setdefault(key, []).append(ok)
    order = [k for k in DRILLS if k in right]
    order += sorted(k for k in right if "/" in k) + [f for f in ("short", "mcq") if f in right]
    scores = {k: 100.0 * sum(right[k]) / len(right[k]) for k in order}
    scores["overall"] = 100.0 * sum(sum(right[k]) for k in DRILLS if k in right) / count
    return scores


def train(model, tokenizer, recipe: Recipe, log_every: int = 100) -> List[float]:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": recipe.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=recipe.lr,
        betas=(0.9, 0.98),
    )
    model.train()
    losses = []
    for step in range(recipe.steps):
        first = step * recipe.batch_size
        inputs = batch(tokenizer, [drill(recipe.seed, first + i) for i in range(recipe.batch_size)])
        for group in optimizer.param_groups:
            group["lr"] = lr_at(recipe, step)
        loss = loss_of(model, inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
        if log_every and (step % log_every == 0 or step == recipe.steps - 1):
            log.info("llm drills step %d/%d loss %.4f", step + 1, recipe.steps, losses[-1])
    model.eval()
    return losses


def pretrain_llm(out: Path, random_init: str, recipe: Optional[Recipe] = None) -> dict:
    """Train the Llama saved in ``random_init`` on drills and save it (HF format) into ``out``;
    returns the report also written to ``out/pretrain.json``."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    recipe = recipe or Recipe()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    torch.manual_seed(recipe.seed)
    tokenizer = AutoTokenizer.from_pretrained(random_init)
    model = LlamaForCausalLM.from_pretrained(random_init, dtype=torch.float32)
    before = drill_accuracy(model, tokenizer, recipe.held_out)
    losses = train(model, tokenizer, recipe)
    after = drill_accuracy(model, tokenizer, recipe.held_out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    report = dict(
        recipe=recipe.key(),
        threads=torch.get_num_threads(),
        seconds=round(time.perf_counter() - start, 1),
        held_out_accuracy={"random_init": before, "pretrained": after},
        losses=[round(v, 5) for v in losses],
    )
    (out / "pretrain.json").write_text(json.dumps(report, indent=1) + "\n")
    log.info(
        "pre-trained the tiny Llama in %.1f s: loss %.3f -> %.3f, held-out drills %.1f%% -> %.1f%%",
        report["seconds"],
        losses[0],
        losses[-1],
        before["overall"],
        after["overall"],
    )
    return report
