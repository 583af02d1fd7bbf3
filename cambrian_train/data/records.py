"""LLaVA-format records from JSON (one list) or JSONL (one record a line), read lazily.

Paths are local or fsspec URLs (``gs://bucket/x.jsonl`` with ``gcsfs`` installed). A JSONL file
is indexed by byte offset (data/jsonl_index.py: one pass, cached, memory-mapped) and a record is
read only when asked for, by a ranged read; the file is never held in memory. A JSON list is
stream-converted once into a JSONL copy in the cache dir (:class:`JsonListReader`: memory bounded
by the largest record) and then served the same way. A JSONL line that is not valid JSON raises
:class:`RecordError` (reason ``malformed_json``), which the dataset counts and skips; malformed
JSON inside a list is a ValueError naming the file and byte offset, since the list cannot be
split safely past it.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import logging
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Iterator, Optional, Sequence

import numpy as np

from cambrian_train.data.jsonl_index import (
    cache_key,
    cache_root,
    load_index,
    open_binary,
    open_range_reader,
    source_stamp,
)
from cambrian_train.fileutil import SHARED_FILE_MODE, file_lock, is_url, local_path
from cambrian_train.storage import StorageError, filesystem, retry

log = logging.getLogger(__name__)
READ_CHUNK_BYTES = 1 << 20
_NEAR_END = 16  # a decode error this close to the buffer's end may only be a cut-off value


class RecordError(ValueError):
    """A record that cannot be used; ``reason`` is a short machine-readable key."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class JsonlRecords(Sequence):
    """Random access to the non-blank lines of a JSONL file through a byte-offset index.

    Each process opens its own reader on first access, so the object pickles into loader
    workers (the offsets travel as the index file's path and are memory-mapped again there).
    ``source`` names the user's file in messages when this is a converted copy.
    """

    def __init__(self, path: str, source: Optional[str] = None):
        self.path = path
        self.source = source or path
        index = load_index(path)
        self._offsets = index.offsets  # int64 [num_records]
        self._size = index.size
        self._index_file = index.file
        self._reader = None
        self._reader_pid: Optional[int] = None

    def __len__(self) -> int:
        return len(self._offsets)

    def raw(self, index: int) -> bytes:
        """The bytes of record ``index`` (its line, plus any blank lines after it)."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"record {index} out of range for {len(self)} records")
        start = int(self._offsets[index])
        end = int(self._offsets[index + 1]) if index + 1 < len(self) else self._size
        if self._reader is None or self._reader_pid != os.getpid():
            self._reader = open_range_reader(self.path)  # one reader per process
            self._reader_pid = os.getpid()
        return self._reader.read(start, end - start)

    def __getitem__(self, index: int) -> Any:
        data = self.raw(index)
        try:
            return json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise RecordError("malformed_json", f"{self.source} record {index}: {err}") from None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__, _reader=None, _reader_pid=None)
        if self._index_file is not None:
            state["_offsets"] = None  # re-mapped from the file, not copied through the pipe
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self._offsets is None:
            self._offsets = np.load(self._index_file, mmap_mode="r")


class JsonListReader:
    """The items of one JSON list read from a binary stream, decoded one at a time.

    Reads fixed-size chunks and decodes each item with ``json.JSONDecoder.raw_decode``; only the
    undecoded tail is kept, so memory is bounded by the largest item, not the file.
    """

    def __init__(self, stream: BinaryIO, name: str, chunk_bytes: int = READ_CHUNK_BYTES):
        self._stream = stream
        self._name = name
        self._chunk_bytes = chunk_bytes
        self._decoder = json.JSONDecoder()
        self._utf8 = codecs.getincrementaldecoder("utf-8")()
        self._buf = ""
        self._pos = 0  # next character to read in _buf
        self._base = 0  # byte offset in the file of _buf[0]
        self._bytes_read = 0
        self._eof = False

    def _error(self, pos: int, what: str, buf: Optional[str] = None, base: int = 0) -> ValueError:
        """The error at character ``pos`` of ``buf`` (default: the current buffer)."""
        if buf is None:
            buf, base = self._buf, self._base
        offset = base + len(buf[:pos].encode("utf-8"))
        return ValueError(
            f"{self._name}: {what} at byte {offset}; the JSON list cannot be split safely past "
            "this point (fix the file or convert it to JSONL)"
        )

    def _fill(self, num_bytes: int) -> bool:
        """Append up to ``num_bytes`` more of the stream; False at the end of the file."""
        if self._eof:
            return False
        self._base += len(self._buf[: self._pos].encode("utf-8"))
        self._buf, self._pos = self._buf[self._pos :], 0
        data = self._stream.read(num_bytes)
        try:
            self._buf += self._utf8.decode(data, final=not data)
        except UnicodeDecodeError as err:
            raise ValueError(
                f"{self._name}: invalid UTF-8 ({err.reason}) near byte "
                f"{self._bytes_read + max(err.start, 0)}"
            ) from None
        self._bytes_read += len(data)
        self._eof = not data
        return bool(data)

    def _peek(self) -> str:
        """The next character after whitespace (a leading BOM counts as whitespace), '' at EOF."""
        while True:
            while self._pos < len(self._buf) and self._buf[self._pos] in " \t\r\n\ufeff":
                self._pos += 1
            if self._pos < len(self._buf):
                return self._buf[self._pos]
            if not self._fill(self._chunk_bytes):
                return ""

    def _item(self) -> Any:
        self._peek()
        while True:
            try:
                item, end = self._decoder.raw_decode(self._buf, self._pos)
            except json.JSONDecodeError as err:
                buf, base = self._buf, self._base  # as they were: _fill moves the buffer
                cut_off = err.msg.startswith("Unterminated string") or (
                    err.pos >= len(self._buf) - _NEAR_END
                )
                pending = len(self._buf) - self._pos
                if not cut_off or not self._fill(max(self._chunk_bytes, pending)):
                    raise self._error(err.pos, f"malformed JSON ({err.msg})", buf, base) from None
                continue
            if end == len(self._buf) and self._fill(self._chunk_bytes):
                continue  # a number at the buffer's end may go on in the next chunk
            self._pos = end
            return item

    def __iter__(self) -> Iterator[Any]:
        first = self._peek()
        if first != "[":
            found = repr(first) if first else "an empty file"
            raise self._error(self._pos, f"expected a JSON list of records, found {found}")
        self._pos += 1
        if self._peek() == "]":
            self._pos += 1
        else:
            while True:
                yield self._item()
                sep = self._peek()
                if sep == "]":
                    self._pos += 1
                    break
                if sep != ",":
                    found = repr(sep) if sep else "the end of the file"
                    raise self._error(
                        self._pos, f"expected ',' or ']' after an item, found {found}"
                    )
                self._pos += 1
        if self._peek():
            raise self._error(self._pos, "data after the end of the list")


def iter_jsonl(stream: BinaryIO, name: str) -> Iterator[Any]:
    """The records of a JSONL stream in order; a malformed line is a ValueError naming it."""
    offset = 0
    for line_number, line in enumerate(stream, start=1):
        if not line.isspace():
            try:
                yield json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as err:
                raise ValueError(
                    f"{name}: line {line_number} (byte {offset}) is not valid JSON: {err}"
                ) from None
        offset += len(line)


def write_jsonl(records: Iterable[Any], out: BinaryIO) -> int:
    """Write one compact JSON document a line; returns the number of records."""
    count = 0
    for record in records:
        out.write(json.dumps(record, ensure_ascii=False).encode("utf-8") + b"\n")
        count += 1
    return count


def write_json_list(records: Iterable[Any], out: BinaryIO) -> int:
    """Write one JSON list, an item a line; returns the number of records."""
    count = 0
    out.write(b"[")
    for record in records:
        out.write((b",\n" if count else b"\n") + json.dumps(record, ensure_ascii=False).encode())
        count += 1
    out.write(b"\n]\n")
    return count


@contextlib.contextmanager
def atomic_output(path: str) -> Iterator[BinaryIO]:
    """A binary writer whose content appears at ``path`` only when the block succeeds."""
    if is_url(path):
        fs, fs_path = filesystem(path)
        tmp = f"{fs_path}.tmp-{uuid.uuid4().hex}"
        try:
            with fs.open(tmp, "wb") as out:
                yield out
            retry(lambda: fs.mv(tmp, fs_path), "move into place", path)
        finally:
            if fs.exists(tmp):
                fs.rm(tmp)
        return
    target = Path(local_path(path))
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=target.parent, prefix=f".{target.name}.", delete=False
    ) as out:
        try:
            yield out
        except BaseException:
            out.close()
            os.unlink(out.name)
            raise
    os.chmod(out.name, SHARED_FILE_MODE)
    os.replace(out.name, target)


def convert_file(src: str, dst: str) -> int:
    """Stream a JSON list to JSONL or back (local paths or URLs); returns the record count.

    The output appears only once complete; a malformed input is a ValueError naming its place.
    """
    kinds = {".json": "json", ".jsonl": "jsonl"}
    src_kind, dst_kind = kinds.get(Path(src).suffix), kinds.get(Path(dst).suffix)
    if src_kind is None or dst_kind is None or src_kind == dst_kind:
        raise ValueError(f"convert {src} -> {dst}: one must end in .json and the other in .jsonl")
    with open_binary(src) as stream, atomic_output(dst) as out:
        if src_kind == "json":
            return write_jsonl(JsonListReader(stream, src), out)
        return write_json_list(iter_jsonl(stream, src), out)


def _is_converted(target: Path, meta: Path, stamp: dict) -> bool:
    try:
        return target.is_file() and json.loads(meta.read_text()) == stamp
    except (OSError, ValueError):
        return False


def cached_jsonl(path: str) -> str:
    """The JSONL copy of JSON list ``path`` in the cache dir, converted when missing or stale."""
    stamp = source_stamp(path)
    target = cache_root() / f"{Path(local_path(path)).stem}.{cache_key(path)}.jsonl"
    meta = target.with_name(target.name + ".source.json")
    if _is_converted(target, meta, stamp):
        return str(target)
    try:
        with file_lock(target.with_name(target.name + ".lock")):
            if not _is_converted(target, meta, stamp):
                with open_binary(path) as src, atomic_output(str(target)) as out:
                    count = write_jsonl(JsonListReader(src, path), out)
                with atomic_output(str(meta)) as out:
                    out.write(json.dumps(stamp).encode())
                log.info("converted JSON list %s: %d records -> %s", path, count, target)
    except StorageError:  # reading the source failed: not a cache problem
        raise
    except OSError as err:
        raise ValueError(
            f"{path}: cannot write its JSONL copy under {cache_root()} ({err}); set "
            "CAMBRIAN_INDEX_DIR to a writable directory or convert it with cambrian-data convert"
        ) from None
    return str(target)


def open_records(path: str) -> Sequence:
    """Open a ``.json`` list or ``.jsonl`` file of records (local path or fsspec URL)."""
    if path.endswith(".jsonl"):
        return JsonlRecords(path)
    if path.endswith(".json"):
        return JsonlRecords(cached_jsonl(path), source=path)
    raise ValueError(f"data file {path} must end in .json or .jsonl")
