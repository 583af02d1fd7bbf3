"""Text-only priors learned from the training data, and their scores through the eval harness.

:class:`TextPrior` counts the answers of a LLaVA-format training file (every human turn and the
gpt turn that follows it; ``<image>`` tags and extra whitespace dropped from the question). It
answers a test question with the majority training answer of the same question text; for a text
the training data never asks, with the majority answer of the question's template (records'
``template`` field, as the synthetic suite writes it; a test item's ``meta["template"]``); else
with the majority answer of the whole training file. Ties go to the alphabetically first answer,
so the prior does not depend on record order. Nothing is learned from the test set: this is the
score of a model that reads only the question and has memorised the training answers.

``cambrian-eval --text-prior TRAIN ...`` (:func:`run_prior_benchmark`) scores it on any registered
benchmark with the benchmark's own extraction and scoring; its ``results.json`` carries
``"baseline": true``, so ``cambrian-tabulate`` lists it as a baseline row.
"""

from __future__ import annotations

import logging
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional, Tuple

from cambrian_train import storage
from cambrian_train.data.records import RecordError, open_records
from cambrian_train.data.templates import IMAGE_TAG

log = logging.getLogger(__name__)
SOURCES = ("text", "template", "overall")


def question_key(text: str) -> str:
    """A question as the prior matches it: image tags removed, whitespace collapsed."""
    return " ".join(text.replace(IMAGE_TAG, " ").split())


def record_pairs(record: Dict[str, Any]) -> List[Tuple[str, str]]:
    """(question, answer) of every human turn followed by a gpt turn of a LLaVA record."""
    turns = record.get("conversations") or []
    pairs = []
    for ask, reply in zip(turns, turns[1:]):
        if not (isinstance(ask, dict) and isinstance(reply, dict)):
            continue
        if ask.get("from") == "human" and reply.get("from") == "gpt":
            question, answer = ask.get("value"), reply.get("value")
            if isinstance(question, str) and isinstance(answer, str) and answer.strip():
                pairs.append((question_key(question), answer.strip()))
    return pairs


def _majority(counts: Counter) -> str:
    top = max(counts.values())
    return min(answer for answer, n in counts.items() if n == top)


@dataclass
class TextPrior:
    """Answer counts of a training file per question text, per template and overall."""

    by_text: Dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    by_template: Dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    overall: Counter = field(default_factory=Counter)
    num_records: int = 0
    num_skipped: int = 0

    def add(self, question: str, answer: str, template: Optional[str] = None) -> None:
        self.by_text[question_key(question)][answer] += 1
        if template:
            self.by_template[template][answer] += 1
        self.overall[answer] += 1

    @classmethod
    def from_records(cls, records: Iterable[Dict[str, Any]]) -> TextPrior:
        prior = cls()
        for record in records:
            prior.num_records += 1
            template = record.get("template")
            for question, answer in record_pairs(record):
                prior.add(question, answer, template if isinstance(template, str) else None)
        return prior

    @classmethod
    def from_path(cls, path: str) -> TextPrior:
        """The prior of a LLaVA JSON/JSONL file; unreadable records are counted and skipped."""
        if not storage.exists(path):
            raise ValueError(f"text prior: training file {path} does not exist")
        records = open_records(path)
        good = []
        skipped = 0
        for index in range(len(records)):
            try:
                good.append(records[index])
            except RecordError as err:
                skipped += 1
                log.debug("text prior: %s record %d skipped: %s", path, index, err)
        prior = cls.from_records(good)
        prior.num_skipped = skipped
        if not prior.overall:
            raise ValueError(f"text prior: {path} holds no human/gpt question-answer pair")
        if skipped:
            log.warning("text prior: %d unreadable records of %s skipped", skipped, path)
        return prior

    def predict(self, question: str, template: Optional[str] = None) -> Tuple[str, str]:
        """(answer, source): source is "text", "template" or "overall" (module docstring)."""
        counts = self.by_text.get(question_key(question))
        if counts:
            return _majority(counts), "text"
        if template and self.by_template.get(template):
            return _majority(self.by_template[template]), "template"
        return _majority(self.overall), "overall"

    def majority(self) -> str:
        """The most common answer of the whole training file."""
        return _majority(self.overall)


def run_prior_benchmark(
    prior: TextPrior,
    train_path: str,
    benchmark,
    data: str,
    out: str,
    *,
    model_id: str = "text-only-prior",
    limit: Optional[int] = None,
) -> Dict[str, Any]:
    """Score the prior's answers on one benchmark exactly as ``run_benchmark`` scores a model's;
    writes ``out/<benchmark>/{predictions.jsonl,results.json}``; → the results dict."""
    from cambrian_train.eval.runner import (
        Decoding,
        Stopping,
        load_items,
        prediction_records,
        results_record,
        write_outputs,
    )

    items = load_items(benchmark, data, limit)
    answers, sources = [], Counter()
    for item in items:
        answer, source = prior.predict(item.prompt, item.meta.get("template"))
        answers.append(answer)
        sources[source] += 1
    records, extracted = prediction_records(benchmark, items, answers)
    metrics = benchmark.score(items, extracted)
    results = results_record(
        model_id,
        benchmark,
        metrics,
        Decoding(),
        Stopping((), ()),
        baseline=True,
        prior={
            "train": str(train_path),
            "records": prior.num_records,
            "skipped": prior.num_skipped,
            "answered_from": {s: sources[s] for s in SOURCES},
        },
        data=str(data),
        limit=limit,
    )
    write_outputs(storage.join(out, benchmark.name), records, results)
    return results
