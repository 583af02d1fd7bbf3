"""Byte-offset indexes of JSONL files, built once and cached.

The index of ``data.jsonl`` is ``data.jsonl.idx.npy`` (int64 offsets of its non-blank lines)
with ``data.jsonl.idx.json`` (the file's size and mtime when indexed). It is stored beside the
file, or, where that directory is not writable, under ``$CAMBRIAN_INDEX_DIR`` (default
``~/.cache/cambrian-train/index``). A changed file (size or mtime) is re-indexed. The offsets are
memory-mapped, so a 7M-record index costs page cache, not process memory.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from array import array
from pathlib import Path
from typing import Optional

import numpy as np

from cambrian_train.fileutil import file_lock

log = logging.getLogger(__name__)
FORMAT_VERSION = 1


def scan_offsets(path: str) -> np.ndarray:
    """Offsets of the non-blank lines of ``path``, in one buffered pass."""
    offsets = array("q")  # 8 bytes a record while scanning, not a Python int each
    with open(path, "rb") as fh:
        pos = 0
        for line in fh:
            if not line.isspace():
                offsets.append(pos)
            pos += len(line)
    return np.frombuffer(offsets, dtype=np.int64).copy()


def _stamp(path: str) -> dict:
    stat = os.stat(path)
    return {"version": FORMAT_VERSION, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _candidates(path: str) -> list[Path]:
    beside = Path(path + ".idx")
    cache_root = Path(
        os.environ.get("CAMBRIAN_INDEX_DIR", Path.home() / ".cache" / "cambrian-train" / "index")
    )
    digest = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]
    return [beside, cache_root / f"{Path(path).name}.{digest}.idx"]


def _load(base: Path, stamp: dict) -> Optional[np.ndarray]:
    meta, data = base.with_suffix(".idx.json"), base.with_suffix(".idx.npy")
    try:
        if json.loads(meta.read_text()) != stamp:
            return None
        return np.load(data, mmap_mode="r")
    except (OSError, ValueError):
        return None


def _save(base: Path, offsets: np.ndarray, stamp: dict) -> bool:
    """Write atomically (temporary names, then rename); False when the place is not writable."""
    try:
        base.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=base.parent, suffix=".npy", delete=False) as tmp:
            np.save(tmp, offsets)
        os.replace(tmp.name, base.with_suffix(".idx.npy"))
        meta_tmp = base.with_suffix(".idx.json.tmp")
        meta_tmp.write_text(json.dumps(stamp))
        os.replace(meta_tmp, base.with_suffix(".idx.json"))
        return True
    except OSError:
        return False


def jsonl_offsets(path: str) -> np.ndarray:
    """The (cached) offsets of ``path``'s records; builds and stores the index when stale."""
    stamp = _stamp(path)
    candidates = _candidates(path)
    for base in candidates:
        offsets = _load(base, stamp)
        if offsets is not None:
            return offsets
    offsets = scan_offsets(path)
    for base in candidates:
        try:
            lock = file_lock(base.with_suffix(".idx.lock"))
            with lock:
                if _save(base, offsets, stamp):
                    log.info("indexed %s: %d records -> %s", path, len(offsets), base)
                    return offsets
        except OSError:
            continue
    log.warning("could not store the index of %s; it is rebuilt on every open", path)
    return offsets
