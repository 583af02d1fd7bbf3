"""The data of a text-only fine-tuning run (``data.text``, SageMaker JumpStart semantics).

``build_text_data`` turns ``data.train_path`` (+ ``data.text``) into a training and a
validation dataset of image-free :class:`Sample`\\ s and the row length:

- ``instruction_tuned=true``: JSON/JSONL records rendered by a template.json (data/instruct.py);
- ``false``: domain adaptation, documents packed into blocks (data/text_corpus.py).

Validation: ``validation_path`` when given, else ``validation_split_ratio`` of the training
records (instruction) or documents (domain) split off with ``train_data_split_seed`` — the
membership of HF ``train_test_split`` (``text_corpus.split_indices``). ``max_train_samples`` /
``max_val_samples`` (-1 = all) then keep the first N *samples* of each split: records in the
split's order (instruction), blocks in stream order (domain: after grouping, as ``run_clm``).

Row length (``max_input_length``): -1 → min(1024, ``tokenizer.model_max_length``); a positive
value is capped at ``model_max_length``; the result must fit the LLM's positions.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from cambrian_train import storage
from cambrian_train.config.schema import TextDataConfig
from cambrian_train.data.instruct import InstructionDataset, InstructionEncoder, load_template
from cambrian_train.data.records import open_records
from cambrian_train.data.text_corpus import BlockDataset, StreamSpec, split_indices, token_streams

log = logging.getLogger(__name__)
DEFAULT_LENGTH = 1024
TEMPLATE_FILE = "template.json"


@dataclass
class TextData:
    train: torch.utils.data.Dataset
    val: Optional[torch.utils.data.Dataset]
    seq_len: int
    summary: dict  # what was read, split and dropped (logged, and in the stage's results)


class IndexedRecords(Sequence):
    """The records of ``records`` at ``indices`` (a split), in that order."""

    def __init__(self, records: Sequence, indices: np.ndarray):
        self.records, self.indices = records, np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.records[int(self.indices[index])]


def resolve_max_input_length(value: int, tokenizer, max_positions: Optional[int] = None) -> int:
    """The row length of a text stage (module docstring); ValueError naming the setting."""
    model_max = int(getattr(tokenizer, "model_max_length", DEFAULT_LENGTH) or DEFAULT_LENGTH)
    if value == -1:
        length = min(DEFAULT_LENGTH, model_max)
    elif value >= 2:
        length = min(value, model_max)
    else:
        raise ValueError(f"data.text.max_input_length={value} must be -1 or >= 2")
    if max_positions is not None and length > max_positions:
        raise ValueError(
            f"data.text.max_input_length={value} gives rows of {length} tokens, more than the "
            f"LLM's {max_positions} positions: set data.text.max_input_length <= {max_positions}"
        )
    return length


def first(n: int, limit: int) -> int:
    """How many of ``n`` items ``max_*_samples=limit`` keeps (-1 = all)."""
    if limit == -1:
        return n
    if limit < 1:
        raise ValueError(f"max_train_samples / max_val_samples={limit} must be -1 or >= 1")
    return min(n, limit)


def template_path(cfg: TextDataConfig, train_path: str) -> str:
    return cfg.template or storage.join(storage.parent(train_path), TEMPLATE_FILE)


def build_text_data(
    cfg: TextDataConfig, train_path: str, tokenizer, max_positions: Optional[int] = None
) -> TextData:
    """Training and validation datasets of ``train_path`` under ``cfg`` (module docstring)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("text fine-tuning closes every sequence with EOS: the tokenizer has none")
    seq_len = resolve_max_input_length(cfg.max_input_length, tokenizer, max_positions)
    if cfg.instruction_tuned:
        return _instruction_data(cfg, train_path, tokenizer, seq_len)
    return _domain_data(cfg, train_path, tokenizer, seq_len)


def _instruction_data(cfg: TextDataConfig, train_path: str, tokenizer, seq_len: int) -> TextData:
    template = load_template(template_path(cfg, train_path))
    encoder = InstructionEncoder(tokenizer, template, seq_len)
    records = open_records(train_path)
    if cfg.validation_path is not None:
        train = IndexedRecords(records, np.arange(len(records)))
        val_records = open_records(cfg.validation_path)
        val = IndexedRecords(val_records, np.arange(len(val_records)))
    else:
        train_idx, val_idx = split_indices(
            len(records), cfg.validation_split_ratio, cfg.train_data_split_seed
        )
        train, val = IndexedRecords(records, train_idx), IndexedRecords(records, val_idx)
    summary = {"format": "instruction", "template": template.source, "seq_len": seq_len}
    summary.update(train_records=len(train), val_records=len(val))
    train = IndexedRecords(train.records, train.indices[: first(len(train), cfg.max_train_samples)])
    val = IndexedRecords(val.records, val.indices[: first(len(val), cfg.max_val_samples)])
    summary.update(train_samples=len(train), val_samples=len(val))
    if not len(train):
        raise ValueError(f"data.train_path={train_path}: no training records after the split")
    log.info("instruction tuning on %s: %s", train_path, summary)
    return TextData(
        InstructionDataset(train, encoder),
        InstructionDataset(val, encoder) if len(val) else None,
        seq_len,
        summary,
    )


def _domain_data(cfg: TextDataConfig, train_path: str, tokenizer, seq_len: int) -> TextData:
    if cfg.txt_unit not in ("line", "file"):
        raise ValueError(f"data.text.txt_unit={cfg.txt_unit!r} is not one of ['line', 'file']")
    spec = StreamSpec(
        train_path,
        cfg.validation_path,
        cfg.validation_split_ratio,
        cfg.train_data_split_seed,
        cfg.txt_unit,
    )
    streams, counts = token_streams(spec, tokenizer)
    name = storage.basename(train_path)
    train = BlockDataset(streams["train"], seq_len, cfg.max_train_samples, f"{name}:train:")
    val = BlockDataset(streams["val"], seq_len, cfg.max_val_samples, f"{name}:val:")
    summary = {"format": "domain", "seq_len": seq_len, "documents": counts}
    summary.update(
        train_blocks=len(train),
        val_blocks=len(val),
        dropped_tokens={"train": train.dropped_tokens, "val": val.dropped_tokens},
    )
    log.info(
        "domain adaptation on %s: %d train / %d val blocks of %d tokens; remainders dropped "
        "(group_texts): %d train and %d val tokens; documents %s",
        train_path,
        len(train),
        len(val),
        seq_len,
        train.dropped_tokens,
        val.dropped_tokens,
        counts,
    )
    if not len(train):
        raise ValueError(
            f"data.train_path={train_path}: its training split has {counts['train']['tokens']} "
            f"tokens, less than one block of data.text.max_input_length={seq_len}"
        )
    return TextData(train, val if len(val) else None, seq_len, summary)
