"""Domain adaptation: plain-text documents → one cached token stream per split → fixed blocks.

Documents, by file type (SageMaker JumpStart's formats; local paths or fsspec URLs):

- ``.txt``: with ``data.text.txt_unit=line`` (default) every non-blank line is a document — the
  rows HF ``datasets``' text loader (behind ``run_clm``) makes; blank lines are dropped. With
  ``file`` the whole file is one document.
- ``.csv``: the ``text`` column; without one, the first column (as SageMaker does; logged).
- ``.json`` / ``.jsonl``: the ``text`` field of each record; when the first record has no
  ``text``, its first field (logged). A record whose field is missing or not a string, or a
  malformed JSONL line, is counted as skipped (logged with the split's figures).

Each document is tokenised without special tokens and wrapped as ``[BOS] ids EOS`` (BOS when the
tokenizer has one), so documents are joined by EOS. The documents of a split are concatenated
in file order into one uint32 token stream and cut into blocks of ``max_input_length`` tokens,
every token supervised — HF ``group_texts``: the remainder shorter than a block is dropped
(counted and logged).

Cache: ``<name>.<path key>.tok-<key>.{train,val}.bin`` (raw uint32) with ``….json`` (counts; the
commit marker, written last) under the data cache dir (``$CAMBRIAN_INDEX_DIR``, default
``~/.cache/cambrian-train/index``). ``<key>`` hashes the files' identities (size + mtime, or a
URL's version), the tokenizer, the split settings and ``txt_unit``. The block length is not in
it: blocks are views of the stream, so another ``max_input_length`` reuses the cache. One
process computes it under a file lock; every process memory-maps it.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from cambrian_train.data.dataset import Sample
from cambrian_train.data.instruct import text_sample
from cambrian_train.data.jsonl_index import cache_key, cache_root, open_binary, source_stamp
from cambrian_train.data.lengths import tokenizer_fingerprint
from cambrian_train.data.records import RecordError, open_records
from cambrian_train.fileutil import file_lock, write_text_atomic

log = logging.getLogger(__name__)
FORMAT_VERSION = 1
TEXT_FIELD = "text"
SUFFIXES = (".txt", ".csv", ".json", ".jsonl")
TOKENIZE_BATCH = 512  # documents per tokenizer call
SPLITS = ("train", "val")


def corpus_kind(path: str) -> str:
    """The file type of a corpus path; ValueError naming the accepted suffixes."""
    for suffix in SUFFIXES:
        if path.endswith(suffix):
            return suffix[1:]
    raise ValueError(f"text corpus {path} must end in one of {list(SUFFIXES)}")


def _text_stream(path: str) -> io.TextIOWrapper:
    return io.TextIOWrapper(open_binary(path), encoding="utf-8", newline="")


def iter_documents(path: str, txt_unit: str = "line") -> Iterator[Optional[str]]:
    """The documents of ``path`` in file order; None for one that cannot be used (module
    docstring), so positions stay those of the file's rows."""
    kind = corpus_kind(path)
    if kind == "txt":
        with _text_stream(path) as stream:
            if txt_unit == "file":
                text = stream.read()
                if text.strip():
                    yield text
                return
            for line in stream:
                line = line.rstrip("\r\n")
                if line.strip():
                    yield line
    elif kind == "csv":
        with _text_stream(path) as stream:
            reader = csv.DictReader(stream)
            if not reader.fieldnames:
                raise ValueError(f"CSV corpus {path} has no header row")
            column = _pick_field(list(reader.fieldnames), path, "column")
            for row in reader:
                value = row.get(column)
                yield value if isinstance(value, str) and value.strip() else None
    else:
        records = open_records(path)
        field = None
        for i in range(len(records)):
            try:
                record = records[i]
            except RecordError:
                yield None
                continue
            if not isinstance(record, dict):
                yield None
                continue
            if field is None:
                field = _pick_field(list(record), path, "field")
            value = record.get(field)
            yield value if isinstance(value, str) and value.strip() else None


def _pick_field(names: List[str], path: str, what: str) -> str:
    if TEXT_FIELD in names:
        return TEXT_FIELD
    if not names:
        raise ValueError(f"text corpus {path}: its first record has no fields")
    log.warning(
        "text corpus %s has no %r %s: using the first one, %r", path, TEXT_FIELD, what, names[0]
    )
    return names[0]


@dataclass(frozen=True)
class StreamSpec:
    """What a split's token stream depends on."""

    train_path: str
    validation_path: Optional[str]
    split_ratio: float
    split_seed: int
    txt_unit: str

    def key(self, tokenizer) -> str:
        digest = hashlib.sha256()
        stamps = [source_stamp(self.train_path)]
        if self.validation_path is not None:
            stamps.append(source_stamp(self.validation_path))
        fields = [FORMAT_VERSION, stamps, self.validation_path is not None, self.txt_unit]
        fields += [self.split_ratio, self.split_seed]
        fields += [tokenizer.bos_token_id, tokenizer.eos_token_id]
        digest.update(json.dumps(fields, sort_keys=True).encode())
        digest.update(tokenizer_fingerprint(tokenizer))
        return digest.hexdigest()[:16]


def split_indices(n: int, ratio: float, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """(train, validation) positions of ``n`` items: the membership HF ``datasets``'
    ``train_test_split(test_size=ratio, seed=seed)`` gives — ``ceil(ratio × n)`` held out, the
    first of ``np.random.default_rng(seed).permutation(n)`` — in that permutation's order."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"data.text.validation_split_ratio={ratio} must be in [0, 1)")
    n_val = int(np.ceil(ratio * n - 1e-9)) if ratio > 0 else 0
    order = np.random.default_rng(seed).permutation(n)
    return order[n_val:], order[:n_val]


def _encode_documents(texts: List[str], tokenizer) -> List[np.ndarray]:
    head = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return [np.asarray(head + x + [tokenizer.eos_token_id], dtype=np.uint32) for x in ids]


def _write_streams(spec: StreamSpec, tokenizer, files: Dict[str, Path]) -> dict:
    """Tokenise the documents into the split files; returns the counts (the meta)."""
    counts = {s: {"documents": 0, "skipped": 0, "tokens": 0} for s in SPLITS}
    if spec.validation_path is None:
        n = sum(1 for _ in iter_documents(spec.train_path, spec.txt_unit))
        _, val = split_indices(n, spec.split_ratio, spec.split_seed)
        held_out = np.zeros(n, dtype=bool)
        held_out[val] = True
        sources = [(spec.train_path, held_out)]
    else:
        sources = [(spec.train_path, None), (spec.validation_path, "val")]
    handles = {s: open(files[s], "wb") for s in SPLITS}
    pending: Dict[str, List[str]] = {s: [] for s in SPLITS}

    def flush(split: str) -> None:
        if not pending[split]:
            return
        for tokens in _encode_documents(pending[split], tokenizer):
            handles[split].write(tokens.tobytes())
            counts[split]["tokens"] += len(tokens)
        pending[split].clear()

    try:
        for path, membership in sources:
            for position, text in enumerate(iter_documents(path, spec.txt_unit)):
                if isinstance(membership, str):
                    split = membership
                elif membership is None:
                    split = "train"
                else:
                    split = "val" if membership[position] else "train"
                if text is None:
                    counts[split]["skipped"] += 1
                    continue
                counts[split]["documents"] += 1
                pending[split].append(text)
                if len(pending[split]) >= TOKENIZE_BATCH:
                    flush(split)
            for split in SPLITS:
                flush(split)
    finally:
        for handle in handles.values():
            handle.close()
    return counts


def token_streams(spec: StreamSpec, tokenizer) -> Tuple[Dict[str, np.ndarray], dict]:
    """({split: uint32 token stream (memory-mapped)}, counts), computed once and cached."""
    key = spec.key(tokenizer)
    base = cache_root() / f"{Path(spec.train_path).name}.{cache_key(spec.train_path)}.tok-{key}"
    files = {s: Path(f"{base}.{s}.bin") for s in SPLITS}
    meta_file = Path(f"{base}.json")
    with file_lock(Path(f"{base}.lock")):
        if not meta_file.exists():
            tmp = {s: f.with_name(f".{f.name}.tmp-{os.getpid()}") for s, f in files.items()}
            try:
                counts = _write_streams(spec, tokenizer, tmp)
                for split in SPLITS:
                    os.replace(tmp[split], files[split])
            finally:
                for path in tmp.values():
                    path.unlink(missing_ok=True)
            write_text_atomic(meta_file, json.dumps({"key": key, "counts": counts}))
            log.info("text corpus %s tokenised: %s (cached at %s)", spec.train_path, counts, base)
    counts = json.loads(meta_file.read_text())["counts"]
    streams = {}
    for split in SPLITS:
        n = counts[split]["tokens"]
        size = files[split].stat().st_size
        if size != 4 * n:
            raise ValueError(f"token cache {files[split]} holds {size} bytes, not 4 x {n}")
        streams[split] = (
            np.memmap(files[split], dtype=np.uint32, mode="r", shape=(n,))
            if n
            else np.zeros(0, dtype=np.uint32)
        )
    return streams, counts


class BlockDataset(torch.utils.data.Dataset):
    """Consecutive ``block_len``-token blocks of a token stream, every token supervised; the
    remainder shorter than a block is dropped; ``max_blocks`` > 0 keeps the first ones."""

    def __init__(self, stream: Sequence, block_len: int, max_blocks: int = -1, name: str = ""):
        if block_len < 2:
            raise ValueError(f"block length {block_len} must be >= 2")
        self.stream, self.block_len, self.name = stream, block_len, name
        whole = len(stream) // block_len
        self.dropped_tokens = len(stream) - whole * block_len
        self.num_blocks = whole if max_blocks < 0 else min(whole, max_blocks)

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.num_blocks:
            raise IndexError(f"block {index} out of range for {self.num_blocks} blocks")
        start = index * self.block_len
        ids = np.asarray(self.stream[start : start + self.block_len], dtype=np.int64).tolist()
        return text_sample(f"{self.name}block{index}", ids, list(ids), index)
