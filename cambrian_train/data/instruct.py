"""Instruction records (SageMaker JumpStart style) → text-only training samples.

A record is any JSON object (``{"instruction", "context", "response"}`` or other fields); a
``template.json`` = ``{"prompt": "...{instruction}...", "completion": " {response}"}`` renders
it. The prompt and the completion are tokenised separately (no special tokens added) and laid
out as::

    [BOS] prompt-ids completion-ids EOS        labels: -100 on BOS and the prompt

BOS is the tokenizer's ``bos_token`` (left out when it has none); EOS its ``eos_token``, which
closes the completion and is supervised. Tokenising the prompt on its own gives exactly the ids
an inference prompt gets, so what the model learns to continue is what it later sees; no token
can straddle the prompt/completion boundary.

Truncation (``max_input_length``): a sequence longer than the limit is cut from the right — the
prompt's head is kept and the completion's tail (and then EOS) dropped, as a right-truncating
tokenizer does. A record whose prompt alone fills the limit has no completion token left and is
skipped as ``prompt_too_long``. A record lacking a field the template names is skipped as
``missing_field``; a record that is not an object as ``bad_record``.
"""

from __future__ import annotations

import json
import string
from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

import torch

from cambrian_train import storage
from cambrian_train.data.dataset import Sample, Skipped
from cambrian_train.data.records import RecordError
from cambrian_train.data.tokenize import IGNORE_INDEX

TEMPLATE_KEYS = ("prompt", "completion")


@dataclass(frozen=True)
class PromptTemplate:
    """A template.json: ``prompt`` and ``completion`` with ``{field}`` slots."""

    prompt: str
    completion: str
    source: str = "template.json"

    @property
    def fields(self) -> Tuple[str, ...]:
        """The record fields the template names, in order of first use."""
        seen: List[str] = []
        for text in (self.prompt, self.completion):
            for name in template_fields(text, self.source):
                if name not in seen:
                    seen.append(name)
        return tuple(seen)

    def render(self, record: dict) -> Tuple[str, str]:
        """(prompt, completion) of ``record``; RecordError ``missing_field`` naming the field."""
        for name in self.fields:
            if name not in record or record[name] is None:
                raise RecordError(
                    "missing_field", f"no field {name!r} (template {self.source} names it)"
                )
        return self.prompt.format_map(record), self.completion.format_map(record)


def template_fields(text: str, source: str) -> List[str]:
    """The ``{name}`` slots of ``text``; ValueError for a malformed one or one with a format
    spec, conversion or attribute/index access (only plain field names are allowed)."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as err:
        raise ValueError(f"{source}: {text!r} is not a valid template: {err}") from None
    names = []
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier() or spec or conversion:
            raise ValueError(
                f"{source}: slot {{{name}{'!' + conversion if conversion else ''}"
                f"{':' + spec if spec else ''}}} in {text!r}: only plain {{field}} names are "
                "allowed"
            )
        names.append(name)
    return names


def parse_template(raw: Union[str, bytes], source: str) -> PromptTemplate:
    """A template.json's text → PromptTemplate; ValueError naming ``source`` when it is not an
    object of exactly ``prompt`` and ``completion`` strings, or its completion has no slot."""
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ValueError(f"{source} is not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{source} must be a JSON object with keys {list(TEMPLATE_KEYS)}")
    unknown = sorted(set(data) - set(TEMPLATE_KEYS))
    missing = [k for k in TEMPLATE_KEYS if k not in data]
    if unknown or missing:
        raise ValueError(
            f"{source}: keys must be exactly {list(TEMPLATE_KEYS)} (unknown: {unknown}, "
            f"missing: {missing})"
        )
    for key in TEMPLATE_KEYS:
        if not isinstance(data[key], str):
            raise ValueError(f"{source}: {key!r} must be a string, got {data[key]!r}")
    template = PromptTemplate(data["prompt"], data["completion"], source)
    template.fields  # noqa: B018 (parses both strings: a malformed slot fails here)
    if not template_fields(template.completion, source):
        raise ValueError(
            f"{source}: completion {template.completion!r} names no field; it must render the "
            'response, e.g. " {response}"'
        )
    return template


def load_template(path: str) -> PromptTemplate:
    """Read and check a template.json (local path or URL)."""
    if not storage.exists(path):
        raise ValueError(
            f"template {path} does not exist (data.text.template; default: template.json beside "
            "data.train_path)"
        )
    return parse_template(storage.read_text(path), path)


@dataclass
class InstructionEncoder:
    """Renders and tokenises instruction records (module docstring)."""

    tokenizer: object
    template: PromptTemplate
    max_length: int

    def encode(self, record) -> Tuple[List[int], List[int]]:
        """(input_ids, labels) of one record; RecordError reasons: bad_record, missing_field,
        prompt_too_long."""
        if not isinstance(record, dict):
            raise RecordError("bad_record", f"not a JSON object: {str(record)[:80]!r}")
        prompt, completion = self.template.render(record)
        tok = self.tokenizer
        head = [] if tok.bos_token_id is None else [tok.bos_token_id]
        prompt_ids = head + tok(prompt, add_special_tokens=False)["input_ids"]
        answer = tok(completion, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        if len(prompt_ids) >= self.max_length:
            raise RecordError(
                "prompt_too_long",
                f"prompt of {len(prompt_ids)} tokens leaves no completion token within "
                f"max_input_length={self.max_length}",
            )
        ids = (prompt_ids + answer)[: self.max_length]
        labels = [IGNORE_INDEX] * len(prompt_ids) + ids[len(prompt_ids) :]
        return ids, labels


def text_sample(record_id: str, ids: List[int], labels: List[int], index: int) -> Sample:
    """A :class:`Sample` without images."""
    return Sample(record_id, ids, labels, [], {}, torch.zeros(0, 4), index)


class InstructionDataset(torch.utils.data.Dataset):
    """Training samples from instruction records (a Sequence of dicts)."""

    def __init__(self, records: Sequence, encoder: InstructionEncoder):
        self.records = records
        self.encoder = encoder

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Union[Sample, Skipped]:
        record_id = f"#{index}"
        try:
            record = self.records[index]
            if isinstance(record, dict) and "id" in record:
                record_id = str(record["id"])
            ids, labels = self.encoder.encode(record)
        except RecordError as err:
            return Skipped(index, record_id, err.reason, err.detail)
        return text_sample(record_id, ids, labels, index)
