"""The four-category synthetic suite: ``data.synthetic.kind=suite`` (``data=synthetic_suite``).

Twelve task families (data/suite_tasks.py) in Cambrian-1's four categories, each asked in two
fixed forms: short answer (the question, then :data:`SHORT_INSTRUCTION`; scored by normalised
exact match) and multiple choice (the question, lettered options ``A. ...``, then
:data:`MCQ_INSTRUCTION`; scored by option letter or option text). A share ``mcq_fraction`` of
train and test questions is multiple choice.

Files under ``root`` (the layout of data/synthetic.py, so ``data=synthetic``'s paths apply):
``pretrain.jsonl`` (stage-1 captions of every task's scenes, ids ``cap-``), ``train.jsonl``
(stage-2 questions of every task, LLaVA ``conversations`` plus ``task``, ``category``, ``format``
and ``template``, ids ``vqa-``), ``test.jsonl`` (``num_test`` questions per task, ids
``test-<task>-``: id, image, question, answer (the letter for MCQ), choices (the options; empty
for short answers), task, category, format, template, question_type (= task)), ``suite.yaml``
(``cambrian-eval --suite`` file: each task's benchmark ``syn_<task>`` -> ``test.jsonl``),
``images/`` and ``manifest.json``.

Every record draws from its own ``random.Random`` seeded by (seed, split, task or index), so
the output is deterministic and the splits use independent streams (no image is shared; tested).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from cambrian_train.config.schema import SyntheticConfig
from cambrian_train.data.suite_tasks import TASKS, Question
from cambrian_train.data.synthetic import CAPTION_PROMPTS, config_dict, synthetic_paths

SUITE_FORMAT_VERSION = 1
SHORT_INSTRUCTION = "Answer with a single word or number."
MCQ_INSTRUCTION = "Answer with the option's letter."
LETTERS = "ABCD"
BENCHMARK_PREFIX = "syn_"


def task_names(cfg: SyntheticConfig) -> list[str]:
    """The suite's tasks in table order (``cfg.tasks``, empty = all)."""
    return [t for t in TASKS if t in cfg.tasks] if cfg.tasks else list(TASKS)


def validate_suite(cfg: SyntheticConfig) -> None:
    """Raise ``ValueError`` naming the field and value of the first invalid suite setting."""
    for name in ("num_pretrain", "num_train", "num_test"):
        if getattr(cfg, name) < 0:
            raise ValueError(f"synthetic.{name} must be >= 0, got {getattr(cfg, name)}")
    if cfg.image_size < 48:
        raise ValueError(f"synthetic.image_size must be >= 48 for the suite, got {cfg.image_size}")
    unknown = [t for t in cfg.tasks if t not in TASKS]
    if unknown:
        raise ValueError(
            f"synthetic.tasks: unknown tasks {unknown} (supported: {', '.join(TASKS)})"
        )
    if not 0.0 <= cfg.mcq_fraction <= 1.0:
        raise ValueError(f"synthetic.mcq_fraction must be in [0, 1], got {cfg.mcq_fraction}")


def format_prompt(text: str, answer: str, options) -> tuple[str, str]:
    """(``text`` with its options lettered A-D and the fixed instruction, gold answer: the
    option's letter, or ``answer`` itself with the short-answer instruction when no options)."""
    if not options:
        return f"{text} {SHORT_INSTRUCTION}", answer
    lines = [f"{LETTERS[i]}. {option}" for i, option in enumerate(options)]
    return "\n".join([text, *lines, MCQ_INSTRUCTION]), LETTERS[list(options).index(answer)]


def question_prompt(question: Question) -> tuple[str, str, list[str]]:
    """(question text with its options and fixed instruction, gold answer, options)."""
    prompt, gold = format_prompt(question.text, question.answer, question.options)
    return prompt, gold, list(question.options)


def _rng(seed: int, split: str, key: str) -> random.Random:
    return random.Random(f"cambrian-suite/{seed}/{split}/{key}")


def _ask(rng: random.Random, cfg: SyntheticConfig, task: str) -> tuple[Question, dict[str, Any]]:
    category, make = TASKS[task]
    mcq = rng.random() < cfg.mcq_fraction
    question = make(rng, cfg.image_size, mcq)
    text, answer, options = question_prompt(question)
    fields = {
        "task": task,
        "category": category,
        "format": "mcq" if mcq else "short",
        "template": f"{question.template}/{'mcq' if mcq else 'short'}",
    }
    return question, {"question": text, "answer": answer, "choices": options, **fields}


def _conversation(question: str, answer: str) -> list[dict[str, str]]:
    return [{"from": "human", "value": "<image>\n" + question}, {"from": "gpt", "value": answer}]


def pretrain_record(cfg: SyntheticConfig, index: int):
    rng = _rng(cfg.seed, "pretrain", str(index))
    task = rng.choice(task_names(cfg))
    question = TASKS[task][1](rng, cfg.image_size, False)
    name = f"cap-{index:06d}"
    caption = question.caption[0].upper() + question.caption[1:]
    conversation = _conversation(rng.choice(CAPTION_PROMPTS), caption)
    record = {"id": name, "image": f"{name}.png", "conversations": conversation, "task": task}
    return question.image, record


def train_record(cfg: SyntheticConfig, index: int):
    rng = _rng(cfg.seed, "train", str(index))
    question, fields = _ask(rng, cfg, rng.choice(task_names(cfg)))
    name = f"vqa-{index:06d}"
    conversation = _conversation(fields.pop("question"), fields.pop("answer"))
    fields.pop("choices")
    record = {"id": name, "image": f"{name}.png", "conversations": conversation, **fields}
    return question.image, record


def held_out_record(cfg: SyntheticConfig, task: str, index: int):
    question, fields = _ask(_rng(cfg.seed, "test", f"{task}/{index}"), cfg, task)
    name = f"test-{task}-{index:05d}"
    record = {"id": name, "image": f"{name}.png", **fields, "question_type": task}
    return question.image, record


def _write(path: Path, images: Path, made) -> int:
    count = 0
    with path.open("w", encoding="utf-8", newline="\n") as handle:
        for image, record in made:
            image.save(images / record["image"], "PNG")
            handle.write(json.dumps(record) + "\n")
            count += 1
    return count


def suite_yaml(cfg: SyntheticConfig) -> str:
    """The ``cambrian-eval --suite`` file: one benchmark per task, all reading test.jsonl."""
    return "".join(f"{BENCHMARK_PREFIX}{task}: test.jsonl\n" for task in task_names(cfg))


def build_suite(out: Path, cfg: SyntheticConfig) -> dict[str, int]:
    """Render every split into the (new) directory ``out``; the manifest is written last."""
    paths = synthetic_paths(out)
    paths.image_folder.mkdir(parents=True)
    tasks = task_names(cfg)
    counts = {
        "pretrain": _write(
            paths.pretrain_path,
            paths.image_folder,
            (pretrain_record(cfg, i) for i in range(cfg.num_pretrain)),
        ),
        "train": _write(
            paths.train_path,
            paths.image_folder,
            (train_record(cfg, i) for i in range(cfg.num_train)),
        ),
        "test": _write(
            paths.test_path,
            paths.image_folder,
            (held_out_record(cfg, t, i) for t in tasks for i in range(cfg.num_test)),
        ),
    }
    (out / "suite.yaml").write_text(suite_yaml(cfg))
    manifest = {
        "format_version": SUITE_FORMAT_VERSION,
        "config": config_dict(cfg),
        "counts": counts,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return counts
