"""True token lengths of training records, computed once per data file and tokenisation, cached.

The length of a record is the number of tokens :meth:`ImageTextEncoder.encode_turns` gives it:
the template's rendered segments split at ``<image>``, each piece tokenised on its own, plus
``slot_len`` placeholder positions per image slot. Slots come from data/media.py's plan, as the
dataset's: with ``data.tiling`` on, one per tile, the tile counts read from the image headers
(no decoding; one file open per image, once per data file); a video, ``num_frames`` slots and
its frame lines. Pieces are tokenised in batches with the fast
tokenizer's Rust backend, in forked processes over the CPUs for large files: a single process
does about 1.5k LLaVA records a second (tiny byte-level BPE, ~400 text tokens a record), so 7M
records take minutes on a many-core host, once.

An interleaved document (data/documents.py) counts its texts' tokens, ``slot_len`` per image,
and its BOS/EOS.

A record that cannot be read or rendered (malformed JSON, unknown role, ...) still gets a length:
an estimate (its JSON text length / 4, or 1 when it cannot be read) flagged ``estimated``, so the
sampler keeps its index and the dataset sees it and counts it as skipped; no index is dropped.

Cache: ``data.jsonl.len-<key>.npy`` (int32 ``[3, N]``: length, multimodal, estimated) with
``data.jsonl.len-<key>.json`` (the file's identity — size and mtime, or a URL's version fields,
as :func:`jsonl_index.source_stamp` — the key and the record count), beside the file or, where
that directory is not writable (and for URLs), under ``$CAMBRIAN_INDEX_DIR`` (default
``~/.cache/cambrian-train/index``): the policy of :mod:`cambrian_train.data.jsonl_index`.
``<key>`` hashes the tokenizer's content, the template, ``slot_len``, the system prompt, the
video frame count and the tiling settings (with tiling on, also the image folder: the images
themselves are not hashed), so a change of any of them, or of the file, computes the lengths
again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from cambrian_train.data.documents import document_pieces, is_document
from cambrian_train.data.jsonl_index import cache_key, cache_root, source_stamp
from cambrian_train.data.media import plan_media
from cambrian_train.data.records import RecordError
from cambrian_train.data.templates import IMAGE_TAG, TemplateMismatch, parse_turns
from cambrian_train.data.tiling import enabled
from cambrian_train.fileutil import file_lock, is_url, local_path, write_atomic, write_text_atomic

log = logging.getLogger(__name__)
FORMAT_VERSION = 3  # 2: interleaved documents get their encoded lengths; 3: videos and tiles
CHARS_PER_TOKEN = 4  # estimate for records that cannot be encoded
BATCH_RECORDS = 2048  # records whose pieces are tokenised in one call
CHUNK_RECORDS = 16384  # records a process handles at a time
PROCESS_RECORDS = 20000  # records per process at least (fewer: not worth a fork)


@dataclass(frozen=True)
class LengthSpec:
    """What a record's token length depends on (besides the record)."""

    tokenizer: object
    template: object  # templates.Template or TokenizerTemplate
    slot_len: int
    system_prompt: Optional[str] = None
    image_folder: str = ""  # where image headers are read (tiling on only)
    tiling: Optional[object] = None  # a TilingConfig; None or max_num 0: one slot per image
    num_frames: int = 8  # slots of a video record

    @classmethod
    def from_encoder(cls, encoder) -> LengthSpec:
        """The spec of an :class:`ImageTextEncoder` (its lengths are what it encodes)."""
        return cls(
            encoder.tokenizer,
            encoder.template,
            encoder.slot_len,
            encoder.system_prompt,
            encoder.image_folder,
            encoder.tiling,
            encoder.num_frames,
        )

    def key(self) -> str:
        """Hex digest of everything the lengths depend on (the cache key)."""
        digest = hashlib.sha256()
        digest.update(f"v{FORMAT_VERSION}|{self.slot_len}|{self.system_prompt!r}|".encode())
        t = self.tiling
        tiles = (
            (t.max_num, t.min_num, t.tile_size, t.thumbnail, self.image_folder)
            if enabled(t)
            else None
        )
        digest.update(f"frames={self.num_frames}|tiles={tiles!r}|".encode())
        digest.update(template_fingerprint(self.template).encode())
        digest.update(tokenizer_fingerprint(self.tokenizer))
        return digest.hexdigest()[:16]


@dataclass(frozen=True)
class RecordLengths:
    """Per-record lengths: ``lengths`` int32 [N] (> 0), ``multimodal`` and ``estimated`` bool
    [N] (``estimated``: the record could not be encoded; its length is a text-length guess)."""

    lengths: np.ndarray
    multimodal: np.ndarray
    estimated: np.ndarray

    def __len__(self) -> int:
        return len(self.lengths)

    def signed(self) -> np.ndarray:
        """LLaVA's convention: +length for multimodal records, -length for text-only ones."""
        return np.where(self.multimodal, self.lengths, -self.lengths).astype(np.int32)

    def take(self, index: np.ndarray) -> RecordLengths:
        return RecordLengths(self.lengths[index], self.multimodal[index], self.estimated[index])

    def to_array(self) -> np.ndarray:
        return np.stack([self.lengths, self.multimodal, self.estimated]).astype(np.int32)

    @classmethod
    def from_array(cls, array: np.ndarray) -> RecordLengths:
        array = np.asarray(array)
        return cls(array[0].astype(np.int32), array[1].astype(bool), array[2].astype(bool))

    @classmethod
    def concat(cls, parts: Sequence[RecordLengths]) -> RecordLengths:
        return cls(
            np.concatenate([p.lengths for p in parts]).astype(np.int32),
            np.concatenate([p.multimodal for p in parts]).astype(bool),
            np.concatenate([p.estimated for p in parts]).astype(bool),
        )


def template_fingerprint(template) -> str:
    """Text that changes whenever the template would render differently."""
    tokenizer = getattr(template, "tokenizer", None)
    if tokenizer is not None:  # TokenizerTemplate: the tokenizer's Jinja template renders
        return f"{template.name}|{getattr(tokenizer, 'chat_template', None)!r}"
    return repr(template)


def tokenizer_fingerprint(tokenizer) -> bytes:
    """Bytes that change whenever the tokenizer would encode differently."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        return hashlib.sha256(backend.to_str().encode()).digest()
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(f"{type(tokenizer).__name__}|{vocab!r}".encode()).digest()


def piece_counter(tokenizer) -> Callable[[List[str]], np.ndarray]:
    """A function: text pieces → their token counts (no special tokens added), batched.

    Uses the Rust backend of a fast tokenizer directly (half the time of ``tokenizer(list)``);
    on the first call it checks a few pieces against ``tokenizer(piece)`` and falls back to the
    tokenizer's own call if they differ.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)

    def by_call(pieces: List[str]) -> np.ndarray:
        ids = tokenizer(pieces, add_special_tokens=False)["input_ids"]
        return np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(pieces))

    if backend is None:
        return by_call
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    checked = False

    def by_backend(pieces: List[str]) -> np.ndarray:
        nonlocal checked, encode
        counts = np.fromiter(
            (len(e.ids) for e in encode(pieces, add_special_tokens=False)),
            dtype=np.int64,
            count=len(pieces),
        )
        if not checked and pieces:
            checked = True
            sample = pieces[:16]
            if not np.array_equal(counts[: len(sample)], by_call(sample)):
                log.info("tokenizer backend counts differ from tokenizer(); using tokenizer()")
                encode = None
        if encode is None:
            return by_call(pieces)
        return counts

    return by_backend


def record_pieces(record, spec: LengthSpec) -> Tuple[List[str], int, bool, int]:
    """(text pieces to tokenise, number of image tags, multimodal, extra tokens) of one record,
    exactly as :func:`cambrian_train.data.tokenize.encode` splits it (an interleaved document:
    as data/documents.py encodes it, BOS/EOS the extra tokens). Raises RecordError / ValueError
    for a record the dataset would reject before tokenising."""
    if is_document(record):
        return document_pieces(record, spec.tokenizer)
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        raise RecordError("bad_record", "not a dict with a 'conversations' list")
    turns = parse_turns(record["conversations"], str(record.get("id", "?")))
    plan = plan_media(record, turns, spec.image_folder, spec.tiling, spec.num_frames)
    multimodal = bool(plan.counts)
    pieces: List[str] = []
    tags = 0
    for segment in spec.template.render(plan.turns, spec.system_prompt):
        parts = segment.text.split(IMAGE_TAG)
        tags += len(parts) - 1
        pieces.extend(p for p in parts if p)
    return pieces, tags, multimodal, 0


def _estimate(record) -> Tuple[int, bool]:
    """(estimated length, multimodal) of a record that could not be encoded."""
    if not isinstance(record, dict):
        return 1, False
    try:
        chars = len(json.dumps(record))
    except (TypeError, ValueError):
        chars = len(repr(record))
    return max(1, chars // CHARS_PER_TOKEN), bool(record.get("image") or record.get("video"))


def _range_lengths(records: Sequence, spec: LengthSpec, first: int, stop: int) -> np.ndarray:
    """int64 [3, stop - first] (length, multimodal, estimated) of records ``first:stop``."""
    count = piece_counter(spec.tokenizer)
    out = np.zeros((3, stop - first), dtype=np.int64)
    for begin in range(first, stop, BATCH_RECORDS):
        end = min(stop, begin + BATCH_RECORDS)
        pieces: List[str] = []
        owners: List[int] = []
        for i in range(begin, end):
            record = None
            try:
                record = records[i]
                parts, tags, multimodal, extra = record_pieces(record, spec)
            except TemplateMismatch:
                raise  # a fault of the template, not of the record
            except (RecordError, ValueError):
                out[0, i - first], out[1, i - first] = _estimate(record)
                out[2, i - first] = 1
                continue
            out[:2, i - first] = tags * spec.slot_len + extra, multimodal
            pieces.extend(parts)
            owners.extend([i - begin] * len(parts))
        if pieces:
            per_record = np.bincount(owners, weights=count(pieces), minlength=end - begin)
            out[0, begin - first : end - first] += per_record.astype(np.int64)  # exact in float64
    return out


_WORK: Optional[Tuple[Sequence, LengthSpec]] = None  # (records, spec) of a pool's processes


def _set_work(records: Sequence, spec: LengthSpec) -> None:
    global _WORK
    _WORK = (records, spec)


def _range_job(bounds: Tuple[int, int]) -> np.ndarray:
    assert _WORK is not None, "pool process without work"
    return _range_lengths(*_WORK, *bounds)


def default_processes(num_records: int) -> int:
    """Processes for computing lengths: the CPUs this process may use (up to 32), one per
    ``PROCESS_RECORDS`` records at least."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cpus or 1, 32, num_records // PROCESS_RECORDS))


def compute_lengths(
    records: Sequence,
    spec: LengthSpec,
    label: str = "records",
    processes: Optional[int] = None,
) -> RecordLengths:
    """Lengths of every record of ``records`` (no cache), tokenising in batches, in
    ``processes`` forked processes (default :func:`default_processes`) for large inputs."""
    n = len(records)
    processes = default_processes(n) if processes is None else processes
    ranges = [(first, min(n, first + CHUNK_RECORDS)) for first in range(0, n, CHUNK_RECORDS)]
    parts: List[np.ndarray] = []
    started = last_log = time.perf_counter()

    def progress(part: np.ndarray) -> None:
        nonlocal last_log
        parts.append(part)
        now = time.perf_counter()
        if now - last_log > 30:
            last_log = now
            done = sum(p.shape[1] for p in parts)
            log.info(
                "lengths of %s: %d / %d records (%.0f/s)", label, done, n, done / (now - started)
            )

    if processes > 1 and len(ranges) > 1 and "fork" in mp.get_all_start_methods():
        with mp.get_context("fork").Pool(processes, _set_work, (records, spec)) as pool:
            for part in pool.imap(_range_job, ranges):
                progress(part)
    else:
        for first, stop in ranges:
            progress(_range_lengths(records, spec, first, stop))
    array = np.concatenate(parts, axis=1) if parts else np.zeros((3, 0), dtype=np.int64)
    lengths = np.maximum(array[0], 1)
    if lengths.max(initial=0) > np.iinfo(np.int32).max:
        raise ValueError(f"{label}: a record has {lengths.max()} tokens, beyond int32")
    estimated = array[2].astype(bool)
    if estimated.any():
        log.info("%s: %d of %d records could not be encoded (estimated)", label, estimated.sum(), n)
    return RecordLengths(lengths.astype(np.int32), array[1].astype(bool), estimated)


def _candidates(path: str, key: str) -> List[Path]:
    """Beside a local file, then the cache dir (a URL's only place)."""
    in_cache = cache_root() / f"{Path(local_path(path)).name}.{cache_key(path)}.len-{key}"
    if is_url(path):
        return [in_cache]
    return [Path(f"{local_path(path)}.len-{key}"), in_cache]


def _stamp(path: str, key: str) -> dict:
    return dict(source_stamp(path), lengths_version=FORMAT_VERSION, key=key)


def _load(base: Path, stamp: dict, num_records: int) -> Optional[RecordLengths]:
    try:
        meta = json.loads(Path(f"{base}.json").read_text())
        if {k: meta.get(k) for k in stamp} != stamp or meta.get("num_records") != num_records:
            return None
        array = np.load(f"{base}.npy")
    except (OSError, ValueError):
        return None
    if array.shape != (3, num_records):
        return None
    return RecordLengths.from_array(array)


def _save(base: Path, lengths: RecordLengths, stamp: dict) -> bool:
    """Write atomically (temporary names, then rename); False when the place is not writable."""
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(f"{base}.npy", lambda handle: np.save(handle, lengths.to_array()))
        write_text_atomic(f"{base}.json", json.dumps(dict(stamp, num_records=len(lengths))))
        return True
    except OSError:
        return False


def file_lengths(records: Sequence, path: str, spec: LengthSpec) -> RecordLengths:
    """The (cached) lengths of ``records``, the records of data file ``path``.

    The first process to need them computes them under a file lock; the others wait and load.
    """
    key = spec.key()
    stamp = _stamp(path, key)
    candidates = _candidates(path, key)
    for base in candidates:
        cached = _load(base, stamp, len(records))
        if cached is not None:
            return cached
    lengths: Optional[RecordLengths] = None
    for base in candidates:
        try:
            with file_lock(Path(f"{base}.lock")):
                cached = _load(base, stamp, len(records))  # another process may have finished
                if cached is not None:
                    return cached
                if lengths is None:
                    started = time.perf_counter()
                    lengths = compute_lengths(records, spec, path)
                    log.info(
                        "token lengths of %s: %d records in %.1f s",
                        path,
                        len(lengths),
                        time.perf_counter() - started,
                    )
                if _save(base, lengths, stamp):
                    log.info("token lengths of %s stored at %s.npy", path, base)
                    return lengths
        except OSError:
            continue
    log.warning("could not store the token lengths of %s; they are computed on every run", path)
    return lengths if lengths is not None else compute_lengths(records, spec, path)
