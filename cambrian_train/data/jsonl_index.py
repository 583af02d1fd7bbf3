"""Byte-offset indexes of JSONL files, local or remote (fsspec URLs such as ``gs://``).

The index of ``data.jsonl`` is ``data.jsonl.idx.npy`` (int64 offsets of its non-blank lines)
with ``data.jsonl.idx.json`` (the file's identity when indexed: size and mtime, or for a URL the
size plus the store's version fields — generation, etag, mtime). A local file's index is stored
beside it, or, where that directory is not writable, under the cache dir (``$CAMBRIAN_INDEX_DIR``,
default ``~/.cache/cambrian-train/index``); a remote file's index always lives in the cache dir,
keyed by its URL. A changed file is re-indexed. Offsets are memory-mapped, so a 7M-record index
costs page cache, not process memory; the scan reads fixed-size chunks and finds line starts with
numpy, so memory stays bounded whatever the file size.

:func:`open_range_reader` gives the per-process byte-range reader behind ``JsonlRecords``:
``os.pread`` on a local file, ``seek`` + ``read`` on an fsspec file for a URL. A URL whose
filesystem package is not installed (``gs://`` without ``gcsfs``) is a ValueError naming it.
Reads of a URL (its info, opens, the index scan, record reads) are retried on transient errors
with backoff a bounded number of times, then fail naming the URL (``storage.retry``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, List, Optional, Tuple

import numpy as np

from cambrian_train.fileutil import (
    file_lock,
    is_url,
    local_path,
    write_atomic,
    write_text_atomic,
)
from cambrian_train.storage import filesystem, retry

log = logging.getLogger(__name__)
FORMAT_VERSION = 2
SCAN_CHUNK_BYTES = 8 << 20
RANGE_BLOCK_BYTES = 64 << 10  # read-ahead of a remote record read (neighbours come with it)
# fields of fsspec's ``info()`` that change when an object is rewritten (first ones are exact)
VERSION_FIELDS = (
    "generation",
    "etag",
    "ETag",
    "md5Hash",
    "mtime",
    "LastModified",
    "updated",
    "modified",
    "created",
)
_WHITESPACE = np.zeros(256, dtype=bool)
_WHITESPACE[list(b" \t\n\r\x0b\x0c")] = True


def cache_root() -> Path:
    default = Path.home() / ".cache" / "cambrian-train" / "index"
    return Path(os.environ.get("CAMBRIAN_INDEX_DIR", default))


def cache_key(path: str) -> str:
    """A short stable key for a file: its URL, or its absolute local path."""
    name = path if is_url(path) else os.path.abspath(local_path(path))
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def source_stamp(path: str) -> dict:
    """The identity of ``path`` now (size + mtime, or a URL's version fields).

    ValueError when the file does not exist.
    """
    if not is_url(path):
        try:
            stat = os.stat(local_path(path))
        except FileNotFoundError:
            raise ValueError(f"data file {path} does not exist") from None
        return {"version": FORMAT_VERSION, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    fs, fs_path = filesystem(path)
    try:
        info = retry(lambda: fs.info(fs_path), "read the size and version of", path)
    except FileNotFoundError:
        raise ValueError(f"data file {path} does not exist") from None
    identity = {key: str(info[key]) for key in VERSION_FIELDS if info.get(key) is not None}
    if not identity:
        log.warning("%s: the store reports no version field; changes are seen by size only", path)
    return {"version": FORMAT_VERSION, "url": path, "size": int(info["size"]), **identity}


def open_binary(path: str, block_size: int = SCAN_CHUNK_BYTES) -> BinaryIO:
    """A sequential binary reader of a local path or URL."""
    if not is_url(path):
        return open(local_path(path), "rb")
    fs, fs_path = filesystem(path)
    return retry(
        lambda: fs.open(fs_path, "rb", block_size=block_size, cache_type="readahead"),
        "open",
        path,
    )


class _LocalRangeReader:
    def __init__(self, path: str):
        self._fd = os.open(local_path(path), os.O_RDONLY)

    def read(self, start: int, length: int) -> bytes:
        return os.pread(self._fd, length, start)  # no shared file position: fork-safe

    def close(self) -> None:
        os.close(self._fd)


class _RemoteRangeReader:
    def __init__(self, url: str):
        self._url = url
        self._fh = open_binary(url, block_size=RANGE_BLOCK_BYTES)

    def read(self, start: int, length: int) -> bytes:
        return retry(
            lambda: self._read(start, length), f"read bytes {start}+{length} of", self._url
        )

    def _read(self, start: int, length: int) -> bytes:
        try:
            self._fh.seek(start)
            return self._fh.read(length)
        except OSError:
            self._fh.close()  # its buffer may be half filled: the next attempt opens afresh
            self._fh = open_binary(self._url, block_size=RANGE_BLOCK_BYTES)
            raise

    def close(self) -> None:
        self._fh.close()


def open_range_reader(path: str):
    """An object with ``read(start, length) -> bytes`` and ``close()`` for ``path``."""
    return _RemoteRangeReader(path) if is_url(path) else _LocalRangeReader(path)


def scan_offsets(stream: BinaryIO, chunk_bytes: int = SCAN_CHUNK_BYTES) -> np.ndarray:
    """Offsets of the non-blank lines of ``stream``: int64 [num_records], one chunked pass.

    Per chunk, the pieces are the lines ending in it and the tail after its last newline; a
    piece has text when any of its bytes is not whitespace (one ``reduceat``). Temporaries are
    two bytes per chunk byte plus 8 per line.
    """
    parts: List[np.ndarray] = []
    line_start, line_has_text, pos = 0, False, 0  # the line still open at the chunk boundary
    while True:
        chunk = stream.read(chunk_bytes)
        if not chunk:
            break
        data = np.frombuffer(chunk, dtype=np.uint8)
        ends = np.flatnonzero(data == 10)  # newline positions
        starts = np.concatenate([[0], ends + 1])  # of the pieces: lines ending here, then tail
        if starts[-1] == len(data):
            starts = starts[:-1]  # the chunk ends with a newline: no tail
        text = np.logical_or.reduceat(~_WHITESPACE[data], starts)  # [pieces] any text
        if len(ends):
            has_text = text[: len(ends)]
            has_text[0] |= line_has_text
            line_starts = starts[: len(ends)] + pos
            line_starts[0] = line_start
            parts.append(line_starts[has_text])
            line_start, line_has_text = pos + int(ends[-1]) + 1, False
        if len(starts) > len(ends):
            line_has_text |= bool(text[-1])
        pos += len(data)
    if line_has_text:  # a last line without a newline
        parts.append(np.array([line_start]))
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


@dataclass
class JsonlIndex:
    """Where a JSONL file's records start, and where the last one ends."""

    offsets: np.ndarray  # int64 [num_records], memory-mapped when ``file`` is set
    size: int  # the file's size when indexed
    file: Optional[Path]  # the stored ``.idx.npy`` (None: kept in memory only)


def _candidates(path: str) -> List[Path]:
    in_cache = cache_root() / f"{Path(local_path(path)).name}.{cache_key(path)}.idx"
    if is_url(path):
        return [in_cache]
    return [Path(local_path(path) + ".idx"), in_cache]


def _files(base: Path) -> Tuple[Path, Path]:
    return base.with_suffix(".idx.json"), base.with_suffix(".idx.npy")


def _load(base: Path, stamp: dict) -> Optional[np.ndarray]:
    meta, data = _files(base)
    try:
        if json.loads(meta.read_text()) != stamp:
            return None
        return np.load(data, mmap_mode="r")
    except (OSError, ValueError):
        return None


def _save(base: Path, offsets: np.ndarray, stamp: dict) -> bool:
    """Write atomically (temporary names, then rename); False when the place is not writable."""
    meta, data = _files(base)
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(data, lambda handle: np.save(handle, offsets))
        write_text_atomic(meta, json.dumps(stamp))
        return True
    except OSError:
        return False


def _scan(path: str) -> np.ndarray:
    def scan() -> np.ndarray:
        with open_binary(path) as stream:
            return scan_offsets(stream)

    return retry(scan, "index", path)


def load_index(path: str) -> JsonlIndex:
    """The (cached) index of ``path``; built under a lock and stored when missing or stale."""
    stamp = source_stamp(path)
    candidates = _candidates(path)
    for base in candidates:
        offsets = _load(base, stamp)
        if offsets is not None:
            return JsonlIndex(offsets, stamp["size"], _files(base)[1])
    scanned = None
    for base in candidates:
        try:
            with file_lock(base.with_suffix(".idx.lock")):
                offsets = _load(base, stamp)  # another process may have built it meanwhile
                if offsets is None:
                    scanned = _scan(path) if scanned is None else scanned
                    if not _save(base, scanned, stamp):
                        continue
                    log.info("indexed %s: %d records -> %s", path, len(scanned), base)
                    offsets = _load(base, stamp)
                if offsets is not None:
                    return JsonlIndex(offsets, stamp["size"], _files(base)[1])
        except OSError:
            continue
    log.warning("could not store the index of %s; it is rebuilt on every open", path)
    return JsonlIndex(_scan(path) if scanned is None else scanned, stamp["size"], None)
