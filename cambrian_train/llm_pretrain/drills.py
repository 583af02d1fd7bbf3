"""Text-only drills for pre-training the tiny LLM: the answer formats a real LLM brings along.

A pre-trained LLM already follows "Answer with the option's letter." and "Answer with a single
word or number.", and knows that three plus four is seven; a random-init 4-layer Llama knows
none of it, so in a VLM built on it every multiple-choice item of the synthetic suite stays at
chance whatever the towers see. These drills teach those text skills on text alone -- no image,
no scene, nothing a question of the suite asks about a picture:

- ``match``: which option is the given word (the option-letter indirection),
- ``category``: which option is a colour / shape / number / word (word classes),
- ``sum``: a + b of two numbers 0-9 written as digits,
- ``count``: how many words a written list holds (1-5),
- ``copy``: repeat the given word.

Every drill except ``copy`` comes as short answer and as multiple choice (letters A-D, options
shuffled, the suite's own instructions and layout, data/suite.py), half and half. The vocabulary
is the suite's answer words (colours, shape kinds, number words, digits, written words), so the
copying transfers to the tokens the VLM answers with. Drill ``i`` of seed ``s`` is drawn from
``random.Random("cambrian-llm-drills/<s>/<i>")``.
"""

from __future__ import annotations

import random
from typing import Callable, Dict, List, Tuple

from cambrian_train.data import suite_render as render
from cambrian_train.data.suite import LETTERS, format_prompt
from cambrian_train.data.suite_tasks import NUMBER_WORDS, WORDS
from cambrian_train.data.synthetic import COLORS

CLASSES: Dict[str, Tuple[str, ...]] = {
    "colour": tuple(COLORS),
    "shape": tuple(render.KINDS),
    "number": tuple(str(n) for n in range(10)) + tuple(NUMBER_WORDS),
    "written word": tuple(WORDS),
}
VOCABULARY = tuple(w for words in CLASSES.values() for w in words)
MCQ_FRACTION = 0.5


def _options(rng: random.Random, answer: str, pool: List[str]) -> List[str]:
    """The answer and 1-3 distinct distractors from ``pool``, shuffled."""
    others = [w for w in dict.fromkeys(pool) if w != answer]
    options = [answer, *rng.sample(others, min(len(others), rng.randint(1, len(LETTERS) - 1)))]
    rng.shuffle(options)
    return options


def match(rng: random.Random, mcq: bool) -> Tuple[str, str, List[str]]:
    word = rng.choice(VOCABULARY)
    if mcq:
        return f"Which option is {word}?", word, _options(rng, word, list(VOCABULARY))
    lines = rng.sample([w for w in VOCABULARY if w != word], rng.randint(1, 3)) + [word]
    rng.shuffle(lines)
    return f"Which of {', '.join(lines)} is {word}?", word, []


def category(rng: random.Random, mcq: bool) -> Tuple[str, str, List[str]]:
    name = rng.choice(tuple(CLASSES))
    word = rng.choice(CLASSES[name])
    pool = [w for other, words in CLASSES.items() if other != name for w in words]
    options = _options(rng, word, pool)
    if mcq:
        return f"Which option is a {name}?", word, options
    return f"Which of {', '.join(options)} is a {name}?", word, []


def add(rng: random.Random, mcq: bool) -> Tuple[str, str, List[str]]:
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    answer = str(a + b)
    pool = [str(n) for n in range(19)]
    return f"What is {a} plus {b}?", answer, _options(rng, answer, pool) if mcq else []


def count(rng: random.Random, mcq: bool) -> Tuple[str, str, List[str]]:
    number = rng.randint(1, 5)
    words = [rng.choice(VOCABULARY) for _ in range(number)]
    answer = str(number)
    pool = [str(n) for n in range(1, 6)]
    text = f"How many words are in: {' '.join(words)}?"
    return text, answer, _options(rng, answer, pool) if mcq else []


def copy(rng: random.Random, mcq: bool) -> Tuple[str, str, List[str]]:
    word = rng.choice(VOCABULARY)
    return f"Say the word {word}.", word, []


DRILLS: Dict[str, Callable[[random.Random, bool], Tuple[str, str, List[str]]]] = {
    "match": match,
    "category": category,
    "sum": add,
    "count": count,
    "copy": copy,
}


def drill(seed: int, index: int) -> Tuple[str, str, str]:
    """Drill ``index`` of stream ``seed``: (kind, prompt, answer)."""
    rng = random.Random(f"cambrian-llm-drills/{seed}/{index}")
    kind = rng.choice(tuple(DRILLS))
    mcq = rng.random() < MCQ_FRACTION
    text, answer, options = DRILLS[kind](rng, mcq)
    prompt, gold = format_prompt(text, answer, options)
    return kind, prompt, gold
