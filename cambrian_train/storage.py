"""The one storage layer: every path a run reads or writes is a local path or an fsspec URL.

Run outputs (``output_dir``: results, config, metrics, predictions, end-of-stage checkpoints),
``init_from``, ``resume``, exports and evaluation outputs all go through these functions, so a
``gs://`` path works wherever a local one does. ``file://`` paths are local (``fileutil.is_url``).

- Reads and writes of a URL are retried on transient errors (``OSError`` other than a missing,
  existing or forbidden path; DCP's ``CheckpointException`` when every failure is one) with
  exponential backoff, ``CAMBRIAN_STORAGE_ATTEMPTS`` (4) attempts from
  ``CAMBRIAN_STORAGE_BACKOFF_S`` (0.5 s) doubling; then :class:`StorageError` names the path and
  the number of attempts. Local errors are raised at once.
- Whole-file writes are atomic: a local file is written beside its target and renamed; a URL
  object is written whole (an object store shows the old object or the new one).
- A directory is published (:func:`publish_dir`) by a rename locally; on a URL by copying its
  files with a chosen marker file last (readers treat the marker as "complete").
- safetensors need local files: URLs go through a local temporary file.
- What must stay local for a URL run (Hydra's files, wandb's directory, a PNG before upload) lives
  in :func:`local_mirror`; URL directories that a loader needs locally (``from_pretrained``) are
  downloaded once into :func:`download_dir`'s cache.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Dict, List, Tuple, TypeVar, Union

from cambrian_train.fileutil import file_lock, is_url, local_path, write_atomic

log = logging.getLogger(__name__)

PathLike = Union[str, os.PathLike]
T = TypeVar("T")
ATTEMPTS_ENV = "CAMBRIAN_STORAGE_ATTEMPTS"
BACKOFF_ENV = "CAMBRIAN_STORAGE_BACKOFF_S"
LOCAL_DIR_ENV = "CAMBRIAN_LOCAL_DIR"  # root of local mirrors and downloads of URL paths
# protocols whose fsspec implementation lives in a separate package
FS_PACKAGES = {
    "gs": "gcsfs",
    "gcs": "gcsfs",
    "s3": "s3fs",
    "s3a": "s3fs",
    "az": "adlfs",
    "abfs": "adlfs",
    "abfss": "adlfs",
}
# errors that say something about the path, not the connection: retrying cannot help
_PERMANENT = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError)


class StorageError(OSError):
    """A storage operation that still failed after its retries (the message names the path)."""


# ---- retries -----------------------------------------------------------------------------------


def is_transient(err: BaseException) -> bool:
    """Whether ``err`` may pass on a retry: an I/O, timeout or connection error (not a missing
    or forbidden path, nor one already retried), or DCP's per-rank ``CheckpointException`` made
    only of such errors."""
    if isinstance(err, (*_PERMANENT, PermissionError, StorageError)):  # StorageError: retried
        return False
    if isinstance(err, OSError):  # TimeoutError and ConnectionError are OSErrors
        return True
    failures = getattr(err, "failures", None)
    if isinstance(failures, dict) and failures:
        return all(is_transient(exc) for exc, _ in failures.values())
    return False


def retry(fn: Callable[[], T], what: str, path: PathLike) -> T:
    """``fn()``; on a URL, transient errors are retried with exponential backoff, then raised as
    :class:`StorageError` naming ``what``, ``path`` and the number of attempts."""
    if not is_url(str(path)):
        return fn()
    attempts = max(1, int(os.environ.get(ATTEMPTS_ENV, "4")))
    delay = float(os.environ.get(BACKOFF_ENV, "0.5"))
    attempt = 0
    while True:
        attempt += 1
        try:
            return fn()
        except BaseException as err:  # DCP's CheckpointException is a BaseException
            if not is_transient(err):
                raise
            if attempt == attempts:
                raise StorageError(
                    f"{what} {path}: failed {attempts} times, giving up "
                    f"(last error: {type(err).__name__}: {err})"
                ) from err
            log.warning(
                "%s %s: %s: %s (attempt %d of %d); retrying in %.2f s",
                what,
                path,
                type(err).__name__,
                err,
                attempt,
                attempts,
                delay,
            )
            time.sleep(delay)
            delay *= 2


# ---- names ------------------------------------------------------------------------------------


def filesystem(url: str):
    """``url`` → (fsspec filesystem, path inside it); ValueError when its package is missing."""
    import fsspec

    protocol = url.split("://", 1)[0]
    package = FS_PACKAGES.get(protocol)
    if package is not None:
        try:
            importlib.import_module(package)
        except ImportError:
            raise ValueError(
                f"{url}: {protocol}:// paths need the '{package}' package (pip install {package})"
            ) from None
    try:
        return fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as err:
        raise ValueError(f"{url}: no filesystem for {protocol}:// ({err})") from None


def join(base: PathLike, *parts: str) -> str:
    """``base/part/...``: '/'-joined for a URL, ``os.path.join`` for a local path."""
    base = str(base)
    if is_url(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def absolute(path: PathLike) -> str:
    """A URL as given; a local path made absolute (``file://`` dropped)."""
    path = str(path)
    return path if is_url(path) else str(Path(local_path(path)).resolve())


def basename(path: PathLike) -> str:
    return str(path).rstrip("/").rsplit("/", 1)[-1]


def parent(path: PathLike) -> str:
    path = str(path)
    if is_url(path):
        return path.rstrip("/").rsplit("/", 1)[0]
    return os.path.dirname(os.path.abspath(local_path(path)))


# ---- queries ----------------------------------------------------------------------------------


def _query(method: str, path: PathLike):
    path = str(path)
    if not is_url(path):
        return getattr(os.path, method)(local_path(path))
    fs, inner = filesystem(path)
    return retry(lambda: getattr(fs, method)(inner), method, path)


def exists(path: PathLike) -> bool:
    return bool(_query("exists", path))


def isfile(path: PathLike) -> bool:
    return bool(_query("isfile", path))


def isdir(path: PathLike) -> bool:
    return bool(_query("isdir", path))


def ls(path: PathLike) -> List[str]:
    """Names of the entries of directory ``path`` (sorted; [] when it does not exist)."""
    path = str(path)
    if not is_url(path):
        local = local_path(path)
        return sorted(os.listdir(local)) if os.path.isdir(local) else []
    fs, inner = filesystem(path)

    def names() -> List[str]:
        if not fs.isdir(inner):
            return []
        return sorted({basename(e) for e in fs.ls(inner, detail=False)} - {""})

    return retry(names, "list", path)


def _files(path: str) -> Dict[str, dict]:
    """Files under URL directory ``path``: relative name → fsspec info."""
    fs, inner = filesystem(path)
    found = retry(lambda: fs.find(inner, detail=True), "list", path)
    root = inner.rstrip("/") + "/"
    return {name[len(root) :]: info for name, info in found.items() if name.startswith(root)}


# ---- reads and writes --------------------------------------------------------------------------


def read_bytes(path: PathLike) -> bytes:
    path = str(path)
    if not is_url(path):
        return Path(local_path(path)).read_bytes()
    fs, inner = filesystem(path)
    return retry(lambda: fs.cat_file(inner), "read", path)


def read_text(path: PathLike) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (parents created)."""
    path = str(path)
    if not is_url(path):
        target = Path(local_path(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(target, lambda handle: handle.write(data))
        return
    fs, inner = filesystem(path)
    retry(lambda: fs.pipe_file(inner, data), "write", path)


def write_text(path: PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def upload(local: PathLike, path: PathLike) -> None:
    """Copy local file ``local`` to ``path`` (atomically)."""
    path = str(path)
    if not is_url(path):
        target = Path(local_path(path))
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(local, "rb") as src:
            write_atomic(target, lambda handle: shutil.copyfileobj(src, handle))
        return
    fs, inner = filesystem(path)
    retry(lambda: fs.put_file(str(local), inner), "upload to", path)


def download(path: PathLike, local: PathLike) -> None:
    """Copy file ``path`` to the local file ``local`` (parents created)."""
    path = str(path)
    Path(local).parent.mkdir(parents=True, exist_ok=True)
    if not is_url(path):
        shutil.copyfile(local_path(path), local)
        return
    fs, inner = filesystem(path)
    retry(lambda: fs.get_file(inner, str(local)), "download", path)


def makedirs(path: PathLike) -> None:
    path = str(path)
    if not is_url(path):
        os.makedirs(local_path(path), exist_ok=True)
        return
    fs, inner = filesystem(path)
    retry(lambda: fs.makedirs(inner, exist_ok=True), "create", path)


def rm(path: PathLike) -> None:
    """Remove a file or a directory tree; nothing when it does not exist."""
    path = str(path)
    if not is_url(path):
        local = local_path(path)
        if os.path.isdir(local) and not os.path.islink(local):
            shutil.rmtree(local)
        elif os.path.lexists(local):
            os.unlink(local)
        return
    fs, inner = filesystem(path)

    def remove() -> None:
        if fs.exists(inner):
            fs.rm(inner, recursive=True)

    retry(remove, "remove", path)


def publish_dir(tmp: PathLike, final: PathLike, last: str) -> str:
    """Replace directory ``final`` by the complete directory ``tmp`` (same store).

    Locally a rename. On a URL the files are copied into ``final`` (its old content removed
    first) with ``last`` -- the file readers check for completeness -- copied after all others,
    then ``tmp`` is removed; a crash midway leaves ``final`` without ``last``.
    """
    tmp, final = str(tmp), str(final)
    if not is_url(final):
        rm(final)
        os.rename(local_path(tmp), local_path(final))
        return final
    fs, _ = filesystem(final)
    names = sorted(_files(tmp), key=lambda name: name == last)
    if last not in names:
        raise AssertionError(f"{tmp} lacks its completeness marker {last}")
    rm(final)
    for name in names:
        src, dst = filesystem(join(tmp, name))[1], filesystem(join(final, name))[1]
        retry(functools.partial(fs.cp_file, src, dst), "copy to", join(final, name))
    rm(tmp)
    return final


def upload_dir(local: PathLike, path: PathLike, last: str) -> str:
    """Copy local directory ``local`` to URL ``path`` (old content removed), ``last`` last."""
    root = Path(local)
    names = sorted(
        (str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()),
        key=lambda name: name == last,
    )
    if last not in names:
        raise AssertionError(f"{local} lacks its completeness marker {last}")
    rm(path)
    for name in names:
        upload(root / name, join(path, name))
    return str(path)


# ---- safetensors --------------------------------------------------------------------------------


def save_safetensors(tensors: Dict, path: PathLike) -> None:
    """``safetensors.torch.save_file`` to a local path or a URL (through a local temp file)."""
    from safetensors.torch import save_file

    path = str(path)
    if not is_url(path):
        save_file(tensors, local_path(path))
        return
    with tempfile.TemporaryDirectory(prefix="cambrian-upload-") as tmp:
        local = os.path.join(tmp, basename(path))
        save_file(tensors, local)
        upload(local, path)


def load_safetensors(path: PathLike) -> Dict:
    """``safetensors.torch.load_file`` of a local path or a URL (through a local temp file)."""
    from safetensors.torch import load_file

    path = str(path)
    if not is_url(path):
        return load_file(local_path(path))
    with tempfile.TemporaryDirectory(prefix="cambrian-download-") as tmp:
        local = os.path.join(tmp, basename(path))
        download(path, local)
        return load_file(local)


# ---- local companions of URL paths ---------------------------------------------------------------


def local_root() -> Path:
    default = Path.home() / ".cache" / "cambrian-train"
    return Path(os.environ.get(LOCAL_DIR_ENV, default))


def _url_key(url: str) -> Tuple[str, str]:
    protocol, rest = url.split("://", 1)
    return protocol, rest.strip("/")


def local_mirror(path: PathLike) -> str:
    """Where local-only companions of ``path`` go: ``path`` itself when local, else
    ``<local root>/runs/<protocol>/<bucket/path>`` (``$CAMBRIAN_LOCAL_DIR``)."""
    path = str(path)
    if not is_url(path):
        return absolute(path)
    protocol, rest = _url_key(path)
    return str(local_root() / "runs" / protocol / rest)


def download_dir(path: PathLike) -> str:
    """A local copy of URL directory ``path`` (a local path is returned as is).

    Cached under ``<local root>/downloads``, keyed by the URL and its files' sizes and versions,
    so a changed directory is fetched again; the copy appears by a rename once complete.
    """
    path = str(path)
    if not is_url(path):
        return local_path(path)
    files = _files(path)
    if not files:
        raise ValueError(f"{path}: no files there")
    stamp = sorted(
        (name, info.get("size"), *(str(info.get(k)) for k in ("generation", "etag", "mtime")))
        for name, info in files.items()
    )
    key = hashlib.sha256(json.dumps([path, stamp]).encode()).hexdigest()[:16]
    dest = local_root() / "downloads" / f"{basename(path)}-{key}"
    with file_lock(dest.with_name(dest.name + ".lock")):
        if not dest.is_dir():
            tmp = dest.with_name(f"{dest.name}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            for name in files:
                download(join(path, name), tmp / name)
            os.rename(tmp, dest)
            log.info("downloaded %s (%d files) to %s", path, len(files), dest)
    return str(dest)
