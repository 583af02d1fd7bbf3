"""Multiple-choice prompts and option-letter extraction, shared by the MCQ benchmarks.

Prompt body (LLaVA/Cambrian layout): the question, then one line per option ``"A. text"``; the
benchmark appends its fixed suffix (usually :data:`~.base.MCQ_SUFFIX`).

Extraction rule (:func:`extract_choice`), first match wins; the result is an option letter among
the item's options, or ``""`` (unparsed, scored wrong):

1. the whole answer is a letter, optionally wrapped/followed: ``B``, ``b``, ``(B)``, ``B.``,
   ``B)``, ``B:``;
2. the answer equals one option's text (case, surrounding spaces and a final period ignored);
3. an answer phrase: the last ``answer is B`` / ``answer: (B)`` / ``Answer: B.`` (the letter
   stands alone: followed by punctuation or the end, or in parentheses; "answer is a dog" is
   not a letter);
4. the answer starts with an upper-case option marker: ``B. red``, ``(B) red``, ``B) red``,
   ``B: red`` (a leading article "A cat ..." is not a marker).

Surrounding markdown emphasis / quotes (``**B**``, ``"B"``) are stripped first.
:class:`MultipleChoiceBenchmark` is the base of the benchmarks scored by letter accuracy.
"""

from __future__ import annotations

import re
import string
from typing import Any, ClassVar, Dict, Optional, Sequence

from cambrian_train.eval.benchmarks.base import (
    Benchmark,
    EvalItem,
    accuracy_results,
    check_predictions,
)

LETTERS = string.ascii_uppercase

_BARE = re.compile(r"\(?([A-Za-z])\)?[.:)]?")
_PHRASE = re.compile(
    r"answer\s*(?:is)?\s*[:：]?\s*(?:\(([A-Za-z])\)|\b([A-Za-z])\b(?=\s*(?:[.,:;)]|$)))",
    re.IGNORECASE,
)
_LEADING = re.compile(r"(?:\(([A-Za-z])\)|([A-Z])[.:)])(?:\s|$)")


def option_lines(choices: Sequence[str]) -> str:
    """``"A. first\\nB. second ..."``."""
    if len(choices) > len(LETTERS):
        raise ValueError(f"{len(choices)} options exceed the {len(LETTERS)} option letters")
    return "\n".join(f"{LETTERS[i]}. {choice}" for i, choice in enumerate(choices))


def mcq_body(question: str, choices: Sequence[str]) -> str:
    """The question followed by its lettered options."""
    return f"{question}\n{option_lines(choices)}"


def letter_of(index: int, choices: Sequence[str]) -> str:
    """The letter of option ``index`` (0-based); ValueError if out of range."""
    if not 0 <= index < len(choices):
        raise ValueError(f"answer index {index} outside the {len(choices)} options")
    return LETTERS[index]


def index_letter(value: Any, choices: Sequence[str], path: Any, item_id: Any) -> str:
    """The letter of a 0-based answer index given as int or str; ValueError naming the item."""
    try:
        return letter_of(int(value), choices)
    except (TypeError, ValueError):
        raise ValueError(
            f"{path}: item {item_id} answer {value!r} is not an index into its "
            f"{len(choices)} options"
        ) from None


def _clean(text: str) -> str:
    return text.strip().strip("*_\"'` ").strip()


def _norm_option(text: str) -> str:
    return " ".join(_clean(text).lower().rstrip(".").split())


def _match_letter(match: Optional[re.Match]) -> Optional[str]:
    if match is None:
        return None
    return next(g for g in match.groups() if g is not None).upper()


def extract_choice(prediction: str, choices: Sequence[str]) -> str:
    """The option letter a generated answer names (module docstring rules), else ``""``."""
    valid = LETTERS[: len(choices)]
    text = _clean(prediction)
    if not text:
        return ""
    letter = _match_letter(_BARE.fullmatch(text))
    if letter is None:
        norm = _norm_option(text)
        letter = next((valid[i] for i, c in enumerate(choices) if _norm_option(c) == norm), None)
    if letter is None:
        phrases = list(_PHRASE.finditer(text))
        letter = _match_letter(phrases[-1]) if phrases else None
    if letter is None:
        letter = _match_letter(_LEADING.match(text))
    return letter if letter is not None and letter in valid else ""


class MultipleChoiceBenchmark(Benchmark):
    """A benchmark whose items are scored by option letter: accuracy, plus per ``score_keys``."""

    score_keys: ClassVar[tuple] = ()

    def extract(self, prediction: str, item: EvalItem) -> str:
        return extract_choice(prediction, item.choices)

    def score(self, items: Sequence[EvalItem], predictions: Sequence[str]) -> Dict[str, Any]:
        check_predictions(self.name, items, predictions)
        correct = [p == item.answer for item, p in zip(items, predictions)]
        return accuracy_results(items, predictions, correct, *self.score_keys)
