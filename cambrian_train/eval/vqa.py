"""Short-answer VQA evaluation (the demo's held-out set, or any file in the same format).

Test file: JSONL (or JSON list) of ``{"id", "image", "question", "answer", "choices"?,
"template"?}``. Score: exact match of the normalised greedy answer. Baselines that need no model,
both learned from the *training* file (``eval/priors.py``), never from the test set: the
training set's most common answer given to every question, and the text-only prior (the majority
training answer per question text, then per template).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from cambrian_train.data.dataset import ImageTextEncoder
from cambrian_train.data.records import RecordError, open_records
from cambrian_train.data.templates import IMAGE_TAG
from cambrian_train.eval.benchmarks.base import EvalItem
from cambrian_train.eval.priors import TextPrior
from cambrian_train.eval.runner import make_batch
from cambrian_train.eval.text import normalize_answer
from cambrian_train.infer.generate import generate

log = logging.getLogger(__name__)


@dataclass
class Question:
    id: str
    image: str
    question: str
    answer: str
    choices: List[str]
    template: Optional[str] = None


def load_questions(path: str) -> List[Question]:
    """Read and check a test file; a malformed entry is an error naming it."""
    questions = []
    records = open_records(path)
    for i in range(len(records)):
        try:
            rec = records[i]
        except RecordError as err:
            raise ValueError(f"test file {path}: {err}") from None
        missing = [k for k in ("image", "question", "answer") if k not in rec]
        if missing:
            raise ValueError(f"test file {path}: entry {i} ({rec.get('id')}) lacks {missing}")
        questions.append(
            Question(
                str(rec.get("id", i)),
                rec["image"],
                rec["question"],
                str(rec["answer"]),
                [str(c) for c in rec.get("choices", [])],
                rec.get("template") if isinstance(rec.get("template"), str) else None,
            )
        )
    if not questions:
        raise ValueError(f"test file {path} holds no question")
    return questions


def baselines(questions: Sequence[Question], prior: TextPrior) -> Dict[str, float]:
    """Test accuracy of answering every question with the training set's majority answer, and of
    the text-only prior learned from the training set (``prior``)."""
    gold = [normalize_answer(q.answer) for q in questions]
    majority = normalize_answer(prior.majority())
    prior_answers = [normalize_answer(prior.predict(q.question, q.template)[0]) for q in questions]
    return {
        "majority_class_train": sum(g == majority for g in gold) / len(gold),
        "text_only_prior_train": sum(g == a for g, a in zip(gold, prior_answers)) / len(gold),
    }


def question_text(q) -> str:
    """The user turn of a test question: its text, with the image tag first unless it has one."""
    return q.question if IMAGE_TAG in q.question else f"{IMAGE_TAG}\n{q.question}"


@torch.no_grad()
def evaluate_vqa(
    model,
    encoder: ImageTextEncoder,
    questions: Sequence[Question],
    device: torch.device,
    batch_size: int = 16,
    max_new_tokens: int = 8,
) -> Dict[str, object]:
    """Greedy answers for every question; returns accuracy and per-question predictions.

    Every batch is padded to the longest prompt of the whole set, so a compiling backend sees
    one prompt shape.
    """
    was_training = model.training
    model.eval()
    prompts = [
        encoder.encode_prompt(question_text(q), encoder.tile_counts([q.image])) for q in questions
    ]
    seq_len = max(len(p.input_ids) for p in prompts)
    predictions = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        items = [EvalItem(q.id, [q.image], q.question, q.answer) for q in chunk]
        batch = make_batch(
            encoder, items, prompts[start : start + batch_size], seq_len, encoder.max_images
        )
        answers = generate(model, batch.to(device), encoder.tokenizer, max_new_tokens)
        for q, text in zip(chunk, answers):
            correct = normalize_answer(text) == normalize_answer(q.answer)
            predictions.append(
                {"id": q.id, "prediction": text, "answer": q.answer, "correct": correct}
            )
    model.train(was_training)
    accuracy = sum(p["correct"] for p in predictions) / len(predictions)
    return {"accuracy": accuracy, "count": len(predictions), "predictions": predictions}
