"""Local file-system helpers: a lock for assets built once (tiny checkpoints, data sets, indexes),
atomic writes (a reader sees the old file or the new one, never half of one), and the test of
whether a path is a URL. Paths that may be URLs go through storage.py, which builds on these."""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Union


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``path`` (created with its parents if missing), so
    concurrent processes — torchrun ranks, pytest workers — build a shared asset once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def is_url(path: str) -> bool:
    """True for a remote fsspec URL (``gs://``, ``memory://``, …); ``file://`` is local."""
    return "://" in path and not path.startswith("file://")


def local_path(path: str) -> str:
    return path.removeprefix("file://")


SHARED_FILE_MODE = 0o644  # caches beside data stay readable by its other users


def write_atomic(
    path: Union[str, Path], write: Callable[[BinaryIO], None], mode: int = SHARED_FILE_MODE
) -> None:
    """``write(handle)`` into a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            write(handle)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: Union[str, Path], text: str, mode: int = SHARED_FILE_MODE) -> None:
    write_atomic(path, lambda handle: handle.write(text.encode()), mode)
